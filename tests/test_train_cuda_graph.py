"""parallel.cuda_graph on a machine without a GPU: ``true`` is a clear error at startup, before any step;
the default (``auto``) trains eagerly and its log and manifest say so and why. Where graphs run (one
process on a GPU), tests/gpu/test_gpu_training.py checks graphed steps against eager ones; the decision
itself is tested in tests/test_train_step_choice.py."""
from __future__ import annotations

import json

import pytest
import torch

from train_helpers import run_train, write_config


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_graph_without_a_gpu_is_refused_with_the_field(tmp_path):
    config = write_config(tmp_path, tmp_path / "run", parallel={"cuda_graph": True})
    done = run_train(config, check=False)
    assert done.returncode != 0
    assert "parallel.cuda_graph: true cannot run here: no CUDA GPU; set it to auto" in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the eager fallback on a machine without a GPU")
def test_the_default_trains_eagerly_without_a_gpu_and_logs_why(tmp_path):
    config = write_config(tmp_path, tmp_path / "run", train={"steps": 2})
    done = run_train(config)
    said = [line for line in done.stdout.splitlines() if "training step:" in line]
    assert said == ["kotomamba train: training step: eager (parallel.cuda_graph: auto; not graphed: no CUDA GPU)"]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["train_step"] == "eager"
