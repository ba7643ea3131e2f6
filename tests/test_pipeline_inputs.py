"""How a run config names its inputs (local paths, URLs, hub files) and the override file that moves them: checked
before any job runs, each problem at its file, line and key; nothing asked of the network."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kotomamba.data.input_lock import InputLock
from kotomamba.errors import UserError
from kotomamba.pipeline import RunPaths, stage_train_config, validate

REPO = Path(__file__).resolve().parents[1]
REV = "0123456789abcdef0123456789abcdef01234567"
PIN = "ab" * 32
SHARDS = [f"hf://datasets/acme/corpus@{REV}/train/00.jsonl.zst#sha256={PIN}", f"hf://datasets/acme/corpus@{REV}/train/01.jsonl"]
TOKENIZER = f"hf://acme/words@{REV}/tokenizer.json"
INIT = [f"hf://acme/model@{REV}/config.json", f"hf://acme/model@{REV}/pytorch_model.bin"]


def write(path: Path, **sections) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["corpus"]["sources"] = [{"name": "web", "urls": SHARDS}]
    config["tokenizer"] = {"type": "HuggingFaceTokenizer", "model": TOKENIZER}
    config["init"] = INIT
    config.update(sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False, width=1000))
    return path


def check(*paths: Path) -> dict:
    merged = {}
    for path in paths:
        for key, value in yaml.safe_load(path.read_text()).items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
                else value
    return validate(merged, [str(p) for p in paths])


def line_of(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_remote_inputs_are_kept_under_the_run_and_feed_the_first_stage(tmp_path):
    config = check(write(tmp_path / "run.yaml"))
    paths = RunPaths(config)
    assert paths.tokenizer_model == "results/default/inputs/tokenizer/tokenizer.json"
    assert paths.init_files == ["results/default/inputs/init/config.json", "results/default/inputs/init/pytorch_model.bin"]
    first = stage_train_config(config, "pretrain")
    assert first["init"]["from"] == "results/default/inputs/init"
    assert first["data"]["tokenizer_model"] == paths.tokenizer_model
    shards = paths.shards("web")
    assert [(s.location, s.sha256, s.is_download) for s in shards] == [
        (SHARDS[0].split("#")[0], PIN, True), (SHARDS[1], None, True)]
    assert paths.corpus_files("web") == ["results/default/corpus/web/00000.jsonl.zst",
                                         "results/default/corpus/web/00001.jsonl"]


def test_inputs_the_pipeline_cannot_fetch_are_named_at_their_line(tmp_path):
    run = write(tmp_path / "run.yaml", init=f"acme/model@{REV}",
                corpus={"sources": [{"name": "web", "urls": ["hf://datasets/acme/corpus/train/00.jsonl"]}]},
                tokenizer={"type": "HuggingFaceTokenizer", "model": f"{TOKENIZER}#sha256=abc"})
    with pytest.raises(UserError) as info:
        check(run)
    message = str(info.value)
    assert (f"{run}:{line_of(run, 'corpus/train/00')}: corpus.sources[0].urls[0]: hf://datasets/acme/corpus/train/"
            "00.jsonl: a hub file is hf://org/name@<revision>/<path>") in message
    assert f"{run}:{line_of(run, 'model: hf://')}: tokenizer.model: {TOKENIZER}#sha256=abc: sha256 must be 64 hex" \
        in message
    assert (f"{run}:{line_of(run, 'init:')}: init: acme/model@{REV}: name the files of the hub repository as a "
            f"list, [hf://acme/model@{REV}/config.json") in message
    without_config = write(tmp_path / "weights-only.yaml", init=INIT[1:])
    with pytest.raises(UserError, match=r"weights-only.yaml:\d+: init: a released model's files include its "
                                        r"config.json"):
        check(without_config)
    # It was the trainer's "field 'init.from' must be str or null, got []", in words of a file the user never saw.
    empty = write(tmp_path / "empty.yaml", init=[])
    with pytest.raises(UserError, match=r"empty.yaml:\d+: init: \[\] (should be non-empty|is too short)"):
        check(empty)


def test_an_override_file_moves_inputs_and_names_its_own_mistakes(tmp_path):
    (tmp_path / "pile").mkdir()
    for name in ("00.jsonl.zst", "01.jsonl"):
        (tmp_path / "pile" / name).write_text("{}\n")
    run = write(tmp_path / "run.yaml")
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"inputs_override": {
        f"hf://datasets/acme/corpus@{REV}/train/": f"{tmp_path}/pile/",  # a prefix: both shards, read locally
        TOKENIZER: "https://mirror.example/words/tokenizer.json",  # a mirror
    }}, width=1000))
    config = check(run, mine)
    assert config["corpus"]["sources"][0]["urls"] == [f"{tmp_path}/pile/00.jsonl.zst", f"{tmp_path}/pile/01.jsonl"]
    assert config["tokenizer"]["model"] == "https://mirror.example/words/tokenizer.json"
    assert "inputs_override" not in config  # applied; what is recorded is what is read
    assert RunPaths(config).corpus_artifacts("web") == []  # local shards: nothing to download

    pinned_mirror = tmp_path / "pinned.yaml"
    pinned_mirror.write_text(yaml.safe_dump({"inputs_override": {SHARDS[0].split("#")[0]: "https://mirror.example/00.jsonl.zst"}}))
    assert check(run, pinned_mirror)["corpus"]["sources"][0]["urls"][0] == f"https://mirror.example/00.jsonl.zst#sha256={PIN}"

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"inputs_override": {
        TOKENIZER.replace("words", "wrods"): "tokenizer.json",
        INIT[0]: f"{tmp_path}/nowhere/config.json",
    }}, width=1000))
    with pytest.raises(UserError) as info:
        check(run, wrong)
    message = str(info.value)
    assert f"{wrong}:{line_of(wrong, 'wrods')}: inputs_override.{TOKENIZER.replace('words', 'wrods')}: matches no " \
           "input of this run" in message
    assert f"{wrong}:{line_of(wrong, 'acme/model')}: inputs_override.{INIT[0]}: {tmp_path}/nowhere/config.json: not " \
           f"found (replacing {INIT[0]})" in message


def test_a_key_is_located_in_the_config_file_that_sets_it(tmp_path):
    run = write(tmp_path / "run.yaml")
    later = tmp_path / "later.yaml"
    later.write_text("tokenize:\n  workers: 1\n\n  append_eod: maybe\n")
    with pytest.raises(UserError, match=r"later.yaml:4: tokenize.append_eod: 'maybe' is not of type 'boolean'"):
        check(run, later)


def test_lock_records_each_input_once_and_sorted(tmp_path):
    lock = InputLock(tmp_path / "results" / "inputs.lock.yaml")
    assert lock.get("hf://a") is None
    lock.record("hf://b", "2" * 64)
    lock.record("hf://a", "1" * 64)
    lock.record("hf://b", "2" * 64)
    assert lock.get("hf://a") == "1" * 64
    text = lock.path.read_text()
    assert text.startswith("# sha256 of each remote input") and text.index("hf://a") < text.index("hf://b")
    assert yaml.safe_load(text) == {"hf://a": "1" * 64, "hf://b": "2" * 64}
