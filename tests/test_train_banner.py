"""A training job's log opens with what it is about to do, and each logged step says the time left."""
from __future__ import annotations

import json
import re

import pytest

from kotomamba.model import MambaConfig, MambaLM
from kotomamba.train.banner import duration, time_left
from kotomamba.train.run_dir import RunDir
from train_helpers import run_train, write_config


def banner(stdout: str) -> list[str]:
    """The trainer's start-up lines, less its two decisions (data parallelism and the step), which
    test_train_replicate.py and test_train_cuda_graph.py check."""
    return [line.removeprefix("kotomamba train: ") for line in stdout.splitlines()
            if line.startswith("kotomamba train: ")
            and not line.startswith(("kotomamba train: data parallel: ", "kotomamba train: training step: "))]


@pytest.mark.slow
def test_start_up_lines_then_a_resumed_job_says_where_it_resumed(tmp_path):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, train={"steps": 8, "global_batch_size": 8, "micro_batch_size": 2},
                          eval={"interval": 0, "final": False}, checkpoint={"interval": 4})
    first = run_train(config, "train.max_steps_this_job=4")
    model = MambaConfig.from_dict(json.loads(run.model_config.read_text()))
    parameters = sum(p.numel() for p in MambaLM(model, device="meta").parameters())
    count = f"{parameters / 1e3:.2f}k" if parameters >= 1000 else str(parameters)
    expected = [
        f"model mamba2, {count} parameters (2 layers, d_model 32, vocab {model.vocab_size})",
        "1 process (1 node) on cpu, fp32, step: eager",
        "batch 8 x 32 = 256 tokens per step (micro-batch 2, 4 accumulation steps); 8 steps, 2.05k tokens",
        "starting at step 1: 8 steps to go",
    ]
    assert banner(first.stdout)[:4] == expected, first.stdout
    # Every logged step ends with the time left, and the last one of the stage with none to go.
    steps = [line for line in first.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 4 and all(re.search(r"\| eta \d+(m\d\ds|s)$", line) for line in steps), steps

    second = run_train(config)
    assert "resumed from step 4 (checkpoints/step_00000004): 4 steps to go" in banner(second.stdout), second.stdout
    assert [line for line in second.stdout.splitlines() if line.startswith("step 8 ")][0].endswith("| eta 0s")


def test_time_left_and_its_spelling():
    assert time_left(100, 0, 5.0) is None
    assert time_left(100, 10, 5.0) == 50.0
    assert [duration(s) for s in (0.4, 42, 307, 3720, 90061)] == ["0s", "42s", "5m07s", "1h02m", "25h01m"]
