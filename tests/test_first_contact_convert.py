"""A new user's first conversions: a two-stage run converted from another directory, its card and
generation config honest about the whole run, and hf -> kotomamba -> hf keeping the tokenizer.

The run is made by the real trainer, started (as the pipeline starts it) from a project directory with
repository-relative paths in its configs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kotomamba.convert.cli import main
from kotomamba.convert.run_info import parameter_count
from kotomamba.model.config import MambaConfig
from train_helpers import make_corpus, train_env

REPO = Path(__file__).resolve().parents[1]
STAGES = (("pretrain", 32, None), ("long", 64, "results/r/train/pretrain"))
SHARDS = [f"https://data.example.org/corpus/{i:02d}.jsonl.zst" for i in range(4)]


def _stage_config(name: str, seq_length: int, init: str | None) -> dict:
    return {
        "run_dir": f"results/r/train/{name}", "seed": 1, "init": {"from": init},
        "model": {"preset": "tiny", "ssm_cfg": {"layer": "Mamba2"}, "n_layer": 2, "d_model": 32},
        "data": {"data_path": "1.0 data/corpus_text_document", "split": "90,10,0", "seq_length": seq_length,
                 "tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": "data/tokenizer.json"},
        "train": {"micro_batch_size": 2, "global_batch_size": 4, "steps": 4},
        "optim": {"lr": 3.0e-3, "min_lr": 3.0e-4}, "schedule": {"style": "cosine", "warmup_steps": 1},
        "eval": {"interval": 0, "steps": 1, "final": False}, "checkpoint": {"interval": 4, "keep_last": 1},
        "logging": {"interval": 2},
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project directory holding a two-stage run made from it, as `snakemake` makes one."""
    root = tmp_path_factory.mktemp("project")
    (root / "data").mkdir()
    make_corpus(root / "data")
    env = {**train_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for name, seq_length, init in STAGES:
        config = root / f"{name}.yaml"
        config.write_text(yaml.safe_dump(_stage_config(name, seq_length, init)))
        result = subprocess.run([sys.executable, "-m", "kotomamba", "train", "--config", config.name], cwd=root,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
    # The pipeline's own record of the run, above its stages (what `snakemake` writes beside them).
    corpus = {"sources": [{"name": "corpus", "urls": [*SHARDS, "data/extra/*.jsonl"]}]}
    stages = [{"name": name} for name, _, _ in STAGES]
    (root / "results" / "r" / "config.resolved.yaml").write_text(yaml.safe_dump({"corpus": corpus, "stages": stages}))
    return root


def test_two_stage_run_converts_from_elsewhere_with_an_honest_card(project, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, GenerationConfig

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluation = {"perplexity": {"loss": 3.0, "perplexity": 20.09, "tokens": 640},
                  "sampling": {"temperature": 0.8, "top_k": 0, "top_p": 0.95, "repetition_penalty": 1.0},
                  "samples": [{"prompt": "w1", "completion": " w2", "text": "w1 w2"}]}
    (elsewhere / "eval.json").write_text(json.dumps(evaluation))
    monkeypatch.chdir(elsewhere)
    run = os.path.relpath(project / "results" / "r" / "train" / "long", elsewhere)
    assert main(["--checkpoint", run, "--to", "hf", "--output", "hf", "--eval-json", "eval.json"]) == 0

    tokens = [json.loads((project / "results/r/train" / name / "final.json").read_text())["tokens"]
              for name, _, _ in STAGES]
    assert tokens == [4 * 4 * 32, 4 * 4 * 64]
    card = (elsewhere / "hf" / "README.md").read_text()
    config = MambaConfig.from_dict(json.loads((project / "results/r/train/long/model_config.json").read_text()))
    assert f"- Tokens seen: {sum(tokens):,} over 2 stages" in card
    assert "- Sequence length: 32, 64 (per stage below)" in card
    assert f"- Parameters: {parameter_count(config):,}" in card
    assert "- Training time: " in card
    assert "| pretrain | 4 | 32 | 512 |" in card and "| long | 4 | 64 | 1,024 |" in card
    assert "`corpus_text_document`" in card and "Samples (temperature 0.8, top-k 0, top-p 0.95" in card
    assert (f"- Corpus: corpus: <{SHARDS[0]}>, <{SHARDS[1]}>, <{SHARDS[2]}>, and 1 more URLs, "
            f"1 local file(s) or pattern(s), not published") in card
    assert "data/" not in card and "results/" not in card and str(project) not in card

    generation = GenerationConfig.from_pretrained(str(elsewhere / "hf"))
    assert generation.do_sample and (generation.temperature, generation.top_p) == (0.8, 0.95)
    tokenizer = AutoTokenizer.from_pretrained(str(elsewhere / "hf"), local_files_only=True)
    assert tokenizer.encode("w1 w2 w3", add_special_tokens=False) == [1, 2, 3]


def test_hf_to_kotomamba_keeps_the_tokenizer(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = str(project / "results" / "r" / "train" / "long")
    assert main(["--checkpoint", run, "--to", "hf", "--output", "hf"]) == 0
    assert main(["--checkpoint", "hf", "--to", "kotomamba", "--output", "init"]) == 0
    assert (tmp_path / "init" / "tokenizer.json").is_file()
    assert main(["--checkpoint", "init", "--to", "hf", "--output", "hf-again"]) == 0  # no --tokenizer-* needed
    from transformers import AutoTokenizer

    first, again = (AutoTokenizer.from_pretrained(str(tmp_path / name), local_files_only=True)
                    for name in ("hf", "hf-again"))
    text = "w5 w6 w7 </s> w1"
    assert again.encode(text, add_special_tokens=False) == first.encode(text, add_special_tokens=False)
    assert again.eos_token_id == first.eos_token_id == 63


def test_a_training_run_given_to_generate_says_how_to_convert_it_and_that_works(project, tmp_path, capsys):
    from kotomamba.model.generation import main as generate

    run = project / "results" / "r" / "train" / "long"
    for model in (run, run / "checkpoints" / "step_00000004"):
        assert generate(["--model", str(model), "--prompt", "w1"]) == 2
        error = capsys.readouterr().err
        assert f"--model {model}: a training checkpoint ({run / 'checkpoints' / 'step_00000004'}), not a model " \
            "directory: `kotomamba convert" in error, error
        # The command it names, run as named, makes a model directory that generate reads.
        converted = tmp_path / model.name
        command = error.split("`")[1].replace("DIR", str(converted)).split()
        assert command[:2] == ["kotomamba", "convert"] and main(command[2:]) == 0
        assert generate(["--model", str(converted), "--prompt", "w1", "--max-new-tokens", "2"]) == 0


def test_a_relative_tokenizer_path_that_is_gone_is_named_with_the_run(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    copied = tmp_path / "copy" / "results" / "r" / "train" / "long"  # the run without the project's data/
    moved = tmp_path / "moved" / "long"  # the run directory out of its results/ tree
    for target in (copied, moved):
        shutil.copytree(project / "results" / "r" / "train" / "long", target)
        assert main(["--checkpoint", str(target), "--to", "hf", "--output", "hf"]) == 2
    copied_error, moved_error = capsys.readouterr().err.strip().splitlines()
    assert f"{copied}/config.resolved.yaml: data.tokenizer_model: data/tokenizer.json is not in {tmp_path / 'copy'}" \
        in copied_error
    assert f"{moved}/config.resolved.yaml: data.tokenizer_model: data/tokenizer.json is relative" in moved_error
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("text", ["", "- data\n- tokenizer\n", "42\n", "data:\n  tokenizer_model: [data/tok\n"])
def test_a_broken_run_config_record_is_named_not_read_as_absent(project, tmp_path, monkeypatch, capsys, text):
    # Read as absent, an empty, list or scalar record hid the run's tokenizer: "no tokenizer known" instead.
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "results" / "r" / "train" / "long"
    shutil.copytree(project / "results" / "r" / "train" / "long", run)
    (run / "config.resolved.yaml").write_text(text)
    assert main(["--checkpoint", str(run), "--to", "hf", "--output", "hf"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"kotomamba convert: error: {run / 'config.resolved.yaml'}: ") and "\n" not in error, error
    assert "no tokenizer known" not in error and not (tmp_path / "hf").exists()


def test_report_sums_the_stages_and_names_the_model_size(project, tmp_path):
    evaluation = {"perplexity": {"loss": 3.0, "perplexity": 20.09, "tokens": 640}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    stage_dirs = [f"results/r/train/{name}" for name, _, _ in STAGES]
    result = subprocess.run([sys.executable, str(REPO / "workflow_scripts" / "report.py"), "--stage-dirs", *stage_dirs,
                             "--eval", str(tmp_path / "eval.json"), "--output", str(tmp_path / "report.md"),
                             "--plot", str(tmp_path / "loss.png")], cwd=project, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    config = MambaConfig.from_dict(json.loads((project / "results/r/train/long/model_config.json").read_text()))
    assert f"Model: {parameter_count(config):,} parameters." in report
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in report.splitlines() if line.startswith("| ")}
    assert rows["pretrain"][1:4] == ["4", "32", "512"] and rows["long"][1:4] == ["4", "64", "1,024"]
    assert rows["**all stages**"][1:4] == ["8", "", "1,536"]
    assert all(rows[name][4] != "n/a" for name in ("pretrain", "long", "**all stages**"))  # training time known


def test_card_of_a_continued_released_model_says_what_it_does_not_count():
    from kotomamba.convert.model_card import model_card
    from kotomamba.convert.run_info import RunInfo, StageInfo

    stage = StageInfo("continue", step=10, tokens=40960, seq_length=2048, data=[(1.0, "ja_text_document")])
    info = RunInfo("step_00000010", step=10, init="mamba-130m", stages=[stage])
    card = model_card("hf", MambaConfig().to_dict(), info, None)
    assert "- Tokens seen: 40,960\n- Initialised from: `mamba-130m` (its own training is not counted here)" in card
    assert "- Training time" not in card  # not measured: not claimed
