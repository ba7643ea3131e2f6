"""``init.from`` a released mamba-ssm / transformers directory, with and without ``init.resize_vocab``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kotomamba.model.config import preset
from kotomamba.model.lm import MambaLM
from train_helpers import VOCAB, final_weights, records, run_train, train_env, write_config

EMBEDDING = "backbone.embedding.weight"
# One step whose batch is consumed but not trained on: the run's checkpoint holds its initial weights.
UNTRAINED = {"steps": 1, "skip_ranges": [[1, 1]]}


def released_model(directory: Path, vocab_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(vocab_size)
    model = MambaLM(preset("tiny", vocab_size=vocab_size, ssm_cfg={"layer": "Mamba2"}, n_layer=2, d_model=32))
    model.save_pretrained(directory)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def initial_weights(tmp_path: Path, name: str, source: Path, resize: bool) -> dict[str, torch.Tensor]:
    run_dir = tmp_path / name
    run_train(write_config(tmp_path, run_dir, init={"from": str(source), "resize_vocab": resize},
                           train=UNTRAINED, schedule={"warmup_steps": 0}, eval={"interval": 0, "final": False}))
    assert records(run_dir)[0]["skipped"] == "range"
    return final_weights(run_dir)


def assert_body_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key not in (EMBEDDING, "lm_head.weight"):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_init_from_a_mamba_ssm_directory_with_a_smaller_vocabulary(tmp_path):
    source = tmp_path / "released"
    released = released_model(source, vocab_size=48)
    result = run_train(write_config(tmp_path, tmp_path / "refused", init={"from": str(source)}), check=False)
    assert result.returncode == 2
    assert "vocabulary of 48" in result.stderr and "init.resize_vocab" in result.stderr
    weights = initial_weights(tmp_path, "resized", source, resize=True)
    assert json.loads((tmp_path / "resized" / "model_config.json").read_text())["vocab_size"] == VOCAB
    assert_body_equal(weights, released)
    embedding = weights[EMBEDDING]
    assert embedding.shape == (VOCAB, 32)
    # The 48 shared ids keep their rows; the 16 new ones are freshly initialised (normal, std 0.02).
    assert torch.equal(embedding[:48], released[EMBEDDING])
    assert 0.01 < float(embedding[48:].std()) < 0.03
    assert torch.equal(weights["lm_head.weight"], embedding)


@pytest.mark.slow
def test_init_from_a_transformers_directory_with_a_larger_vocabulary(tmp_path):
    mamba_ssm, hf = tmp_path / "released", tmp_path / "released-hf"
    released = released_model(mamba_ssm, vocab_size=80)
    write_config(tmp_path, tmp_path / "unused")  # writes the corpus and its tokenizer.json
    subprocess.run([sys.executable, "-m", "kotomamba", "convert", "--checkpoint", str(mamba_ssm), "--to", "hf",
                    "--output", str(hf), "--tokenizer-type", "HuggingFaceTokenizer",
                    "--tokenizer-model", str(tmp_path / "tokenizer.json")],
                   check=True, env=train_env(), capture_output=True)
    assert json.loads((hf / "config.json").read_text())["model_type"] in ("mamba", "mamba2")
    # Without resizing, a larger vocabulary covers the tokenizer's ids and is kept whole.
    kept = initial_weights(tmp_path, "kept", hf, resize=False)
    assert json.loads((tmp_path / "kept" / "model_config.json").read_text())["vocab_size"] == 80
    assert kept.keys() == released.keys() and all(torch.equal(kept[k], released[k]) for k in kept)
    # Resized, the embedding shrinks to the tokenizer's 64 ids, their rows unchanged.
    resized = initial_weights(tmp_path, "shrunk", hf, resize=True)
    assert_body_equal(resized, released)
    assert torch.equal(resized[EMBEDDING], released[EMBEDDING][:VOCAB])


def test_document_resets_are_refused_for_a_mamba1_model_to_start_from(tmp_path):
    """init.from a Mamba-1 model with data.reset_at_eod: true stops at start-up, before anything but the run
    directory's lock is written."""
    source = tmp_path / "released"
    MambaLM(preset("tiny", vocab_size=VOCAB, ssm_cfg={"layer": "Mamba1"}, n_layer=1, d_model=32)).save_pretrained(source)
    run_dir = tmp_path / "refused"
    result = run_train(write_config(tmp_path, run_dir, init={"from": str(source)}, data={"reset_at_eod": True}),
                       check=False)
    assert result.returncode == 2, result.stderr
    assert f"data.reset_at_eod: cannot be true for a Mamba1 model (init.from {source})" in result.stderr
    assert {p.name for p in run_dir.iterdir()} <= {"run.lock"}, sorted(run_dir.iterdir())

