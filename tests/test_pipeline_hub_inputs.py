"""A run whose inputs live on the hub, through `snakemake` itself: its corpus shards (a dataset repository), its
tokenizer.json and its initial checkpoint (model repositories) come from a real HTTP server on loopback serving the
hub's URL layout, which HF_ENDPOINT names. A wrong pin fails before training, naming the config's file, line and
field; an unpinned input is held to the sha256 recorded on its first download; an override file puts a local file
in place of a hub input."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
import zstandard
from hub_server import REVISION, hub_at_endpoint
from pipeline_helpers import output_of, planned_jobs, snakemake, tiny_config
from train_helpers import VOCAB, make_corpus

pytestmark = pytest.mark.slow
pytest.importorskip("snakemake")

ROOT = Path("results/hub")
TOKENIZER = f"hf://acme/words@{REVISION}/tokenizer.json"
SHARDS = [f"hf://datasets/acme/corpus@{REVISION}/train/00.jsonl.zst", f"hf://datasets/acme/corpus@{REVISION}/train/01.jsonl"]
INIT = [f"hf://acme/mamba-tiny@{REVISION}/config.json", f"hf://acme/mamba-tiny@{REVISION}/model.safetensors"]


@pytest.fixture
def hub(monkeypatch):
    yield from hub_at_endpoint(monkeypatch)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, bytes]:
    """Every file the hub serves, by the reference the config names it with."""
    from kotomamba.model import MambaLM, preset

    root = tmp_path_factory.mktemp("published")
    tokenizer = Path(make_corpus(root)[0]).read_bytes()  # a real word-level tokenizer.json of VOCAB ids
    documents = [" ".join(f"w{(start + step * k) % (VOCAB - 1)}" for k in range(30)) for start in range(60)
                 for step in (1, 2, 3)]
    lines = [json.dumps({"text": text}).encode() + b"\n" for text in documents]
    torch.manual_seed(0)
    MambaLM(preset("tiny", vocab_size=VOCAB, n_layer=2, d_model=32)).save_pretrained(root / "model")
    return {
        TOKENIZER: tokenizer,
        SHARDS[0]: zstandard.ZstdCompressor().compress(b"".join(lines[::2])),
        SHARDS[1]: b"".join(lines[1::2]),
        INIT[0]: (root / "model" / "config.json").read_bytes(),
        INIT[1]: (root / "model" / "model.safetensors").read_bytes(),
    }


def serve(hub, files: dict[str, bytes]) -> None:
    """Put ``files`` (reference -> bytes) where the hub's resolve URLs of the references point."""
    for reference, body in files.items():
        kind, rest = ("datasets/", reference[len("hf://datasets/"):]) if "//datasets/" in reference else (
            "", reference[len("hf://"):])
        repo, _, path = rest.partition(f"@{REVISION}/")
        hub.files[f"/{kind}{repo}/resolve/{REVISION}/{path}"] = body


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def write_run(workdir: Path, tokenizer: str = TOKENIZER, shards=None, init=None) -> Path:
    config = tiny_config("hub")
    config["corpus"]["sources"] = [{"name": "web", "urls": shards or SHARDS}]
    config["tokenizer"] = {"type": "HuggingFaceTokenizer", "model": tokenizer}
    config["init"] = init
    config["stages"] = [{"name": "pretrain", "train": {"train": {"steps": 4}, "data": {"seq_length": 32},
                                                      "schedule": {"warmup_steps": 1}}}]
    config["launch"] = {"nodes": 1, "nproc_per_node": 1}
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, width=1000))
    return path


def line_of(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_run_whose_inputs_live_on_the_hub(hub, published, tmp_path):
    serve(hub, published)
    pinned = [f"{SHARDS[0]}#sha256={sha256(published[SHARDS[0]])}", SHARDS[1]]  # one pinned, one trusted on first use
    run = write_run(tmp_path, shards=pinned, init=INIT)
    final = ROOT / "train" / "pretrain" / "final.json"
    result = snakemake(tmp_path, run, str(final))
    assert result.returncode == 0, output_of(result)

    root = tmp_path / ROOT
    # Each file fetched once, kept under results/ as published (the shard still compressed).
    assert (root / "corpus" / "web" / "00000.jsonl.zst").read_bytes() == published[SHARDS[0]]
    assert (root / "corpus" / "web" / "00001.jsonl").read_bytes() == published[SHARDS[1]]
    assert (root / "inputs" / "tokenizer" / "tokenizer.json").read_bytes() == published[TOKENIZER]
    assert sorted(p.name for p in (root / "inputs" / "init").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(path for method, path in hub.requests) == sorted(set(path for method, path in hub.requests))
    # The lock records every remote input by its reference, endpoint-free.
    lock = yaml.safe_load((root / "inputs.lock.yaml").read_text())
    assert lock == {reference: sha256(body) for reference, body in published.items()}
    # The stage starts from the fetched model, reads the fetched tokenizer, and its identity holds its sha256.
    stage = yaml.safe_load((root / "train" / "pretrain" / "train.yaml").read_text())
    assert (stage["init"]["from"], stage["data"]["tokenizer_model"]) == (
        str(ROOT / "inputs" / "init"), str(ROOT / "inputs" / "tokenizer" / "tokenizer.json"))
    identity = json.loads((root / "train" / "pretrain" / "identity.json").read_text())
    assert identity["inputs"]["tokenizer"] == sha256(published[TOKENIZER])
    assert sorted(identity["inputs"]["init"]["files"]) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / final).read_text())["step"] == 4

    # Done is done: nothing reruns and the hub is not asked again.
    hub.requests.clear()
    rerun = snakemake(tmp_path, run, "-n", str(final))
    assert "Nothing to be done" in rerun.stdout + rerun.stderr, output_of(rerun)
    assert hub.requests == []


def test_a_wrong_pin_fails_before_training_naming_the_config_line(hub, published, tmp_path):
    serve(hub, published)
    wrong = sha256(b"not the published tokenizer")
    run = write_run(tmp_path, tokenizer=f"{TOKENIZER}#sha256={wrong}")
    final = ROOT / "train" / "pretrain" / "final.json"
    result = snakemake(tmp_path, run, str(final))
    assert result.returncode != 0
    log = (tmp_path / ROOT / "logs" / "inputs" / "tokenizer" / "tokenizer.json.log").read_text()
    line = line_of(run, "model: hf://acme/words")
    assert (f"{run}:{line}: tokenizer.model: {TOKENIZER}: sha256 mismatch: expected {wrong} (as pinned), "
            f"got {sha256(published[TOKENIZER])}") in log, log
    # Nothing of the tokenizer at its final path, and no training job ever started.
    assert not (tmp_path / ROOT / "inputs" / "tokenizer" / "tokenizer.json").exists()
    assert not (tmp_path / ROOT / "train" / "pretrain" / "checkpoints").exists()
    assert "rule train:" not in result.stdout + result.stderr


def test_an_unpinned_input_is_held_to_its_first_download(hub, published, tmp_path):
    serve(hub, published)
    run = write_run(tmp_path)
    shard = ROOT / "corpus" / "web" / "00001.jsonl"
    assert snakemake(tmp_path, run, str(shard)).returncode == 0
    first = yaml.safe_load((tmp_path / ROOT / "inputs.lock.yaml").read_text())
    assert first == {SHARDS[1]: sha256(published[SHARDS[1]])}

    # The hub's file changes under the same reference; the copy here is gone (another machine, a clean-up).
    serve(hub, {SHARDS[1]: published[SHARDS[1]] + b'{"text": "w1 w2"}\n'})
    (tmp_path / shard).unlink()
    result = snakemake(tmp_path, run, str(shard))
    assert result.returncode != 0
    log = (tmp_path / ROOT / "logs" / "corpus" / "web" / "00001.log").read_text()
    line = line_of(run, "train/01.jsonl")
    assert f"{run}:{line}: corpus.sources[0].urls[1]: {SHARDS[1]}: sha256 mismatch" in log, log
    assert f"as recorded in {ROOT}/inputs.lock.yaml on its first download" in log, log
    assert not (tmp_path / shard).exists()
    assert yaml.safe_load((tmp_path / ROOT / "inputs.lock.yaml").read_text()) == first


def test_an_override_file_puts_a_local_file_in_place_of_a_hub_input(hub, published, tmp_path):
    serve(hub, {reference: body for reference, body in published.items() if reference != TOKENIZER})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tokenizer.json").write_bytes(published[TOKENIZER])
    run = write_run(tmp_path)
    override = tmp_path / "local-inputs.yaml"
    override.write_text(f"inputs_override:\n  {TOKENIZER}: mine/tokenizer.json\n")
    dataset = ROOT / "tokenized" / "web_text_document.bin"
    # Merged after the run config (a later --configfile names both: the last one given wins).
    plan = planned_jobs(snakemake(tmp_path, run, "-n", str(dataset), "--configfile", str(run), str(override)))
    assert plan.get("download") == 2 and "fetch_input" not in plan, plan
    resolved = ROOT / "config.resolved.yaml"
    result = snakemake(tmp_path, run, str(dataset), str(resolved), "--configfile", str(run), str(override))
    assert result.returncode == 0, output_of(result)
    assert (tmp_path / dataset).stat().st_size > 0
    assert not any("words" in path for _, path in hub.requests)  # the tokenizer was never asked for
    # What the run read is what it records (the mapping is applied, not kept).
    recorded = yaml.safe_load((tmp_path / resolved).read_text())
    assert recorded["tokenizer"]["model"] == "mine/tokenizer.json" and "inputs_override" not in recorded

    # A key that names no input of the run is refused before anything runs, at its file and line.
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"inputs_override:\n  {TOKENIZER.replace('words', 'wrods')}: mine/tokenizer.json\n")
    result = snakemake(tmp_path, run, "-n", str(dataset), "--configfile", str(run), str(typo))
    assert result.returncode != 0
    assert f"{typo}:2: inputs_override.{TOKENIZER.replace('words', 'wrods')}: matches no input of this run" in \
        result.stdout + result.stderr, output_of(result)

