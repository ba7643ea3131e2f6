"""The trainer on one process: loss goes down, run-dir contents, exact resume, signals, kill -9."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from train_helpers import VOCAB, final_weights, losses, run_train, train_env, write_config

@pytest.mark.slow
def test_loss_decreases_and_run_dir_is_complete(tmp_path):
    run_dir = tmp_path / "run"
    run_train(write_config(tmp_path, run_dir, train={"steps": 30}, checkpoint={"interval": 10}, eval={"interval": 10}))
    history = losses(run_dir)
    assert sorted(history) == list(range(1, 31))
    assert np.mean([history[s] for s in range(26, 31)]) < np.mean([history[s] for s in range(1, 6)]) - 0.5
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_record = next(r for r in records if r["step"] == 30 and "loss" in r)
    for key in ("grad_norm", "lr", "tokens_per_s", "tokens_per_s_per_gpu", "tflops", "ppl",
                "optim/decay/update_weight_ratio", "optim/no_decay/exp_avg_norm", "skipped_nonfinite"):
        assert key in step_record, key
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["step"] == 30 and final["checkpoint"] == "checkpoints/step_00000030"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_00000020", "step_00000030"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and any(k.endswith(".idx") for k in manifest["inputs"])
    assert json.loads((run_dir / "model_config.json").read_text())["vocab_size"] == VOCAB
    assert (run_dir / "config.resolved.yaml").is_file()
    # The "model" entry of a checkpoint loads on one process, under mamba-ssm key names.
    weights = final_weights(run_dir)
    assert "backbone.layers.1.mixer.A_log" in weights and weights["backbone.embedding.weight"].shape == (64, 32)


@pytest.mark.slow
def test_exact_resume(tmp_path):
    straight, segmented = tmp_path / "straight", tmp_path / "segmented"
    run_train(write_config(tmp_path, straight))
    config = write_config(tmp_path, segmented, train={"max_steps_this_job": 3})
    run_train(config)
    assert not (segmented / "final.json").exists()
    assert (segmented / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    run_train(config, "train.max_steps_this_job=null")
    assert losses(segmented) == losses(straight)
    a, b = final_weights(straight), final_weights(segmented)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The whole final checkpoint too (optimizer, RNG, data position): what final.json's digest covers.
    digests = [json.loads((run / "final.json").read_text())["weights"] for run in (straight, segmented)]
    assert digests[0] == digests[1]


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"trainer exited early ({process.returncode}): {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.2)


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kotomamba", "train", "--config", str(config)],
                            env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_with_the_requeue_code(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, run_dir, train={"steps": 500}, checkpoint={"interval": 0}, eval={"interval": 0})
    process = _start(config)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 75
    step = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert step >= 3 and max(losses(run_dir)) == step
    assert not (run_dir / "final.json").exists()


@pytest.mark.slow
def test_kill_9_resumes_from_the_last_complete_checkpoint(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_train(write_config(tmp_path, straight, train={"steps": 24}, checkpoint={"interval": 2}, eval={"interval": 0}))
    config = write_config(tmp_path, killed, train={"steps": 24}, checkpoint={"interval": 2}, eval={"interval": 0})
    process = _start(config)
    latest = killed / "checkpoints" / "latest"
    _wait_for(lambda: latest.is_file() and latest.read_text().strip() >= "step_00000004", process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    complete = int(latest.read_text().strip().split("_")[1])
    logged_before_kill = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    # A save cut short leaves only a temporary directory behind; it must never be resumed from.
    partial = killed / "checkpoints" / ".step_00000099.tmp"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half")
    run_train(config)
    assert not partial.exists()
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "loss" in record]
    # The restart replaced what was logged after the last complete checkpoint: every step once ...
    assert steps == list(range(1, 25)) and complete >= 4 and logged_before_kill
    # ... and its losses and weights equal an uninterrupted run's.
    assert losses(killed) == losses(straight)
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_changed_config_starts_over_and_keeps_the_earlier_run(tmp_path):
    run_dir = tmp_path / "run"
    run_train(write_config(tmp_path, run_dir, train={"steps": 4}))
    earlier = losses(run_dir)
    # Only a logging setting changed: the finished run is resumed (nothing to do), not redone.
    run_train(write_config(tmp_path, run_dir, train={"steps": 4}, logging={"interval": 2}))
    assert losses(run_dir) == earlier and not (run_dir / "superseded").exists()
    # A different schedule is another training: it starts from step 0; the earlier run is kept aside.
    run_train(write_config(tmp_path, run_dir, train={"steps": 6}, optim={"lr": 1.0e-3}))
    assert sorted(losses(run_dir)) == list(range(1, 7)) and losses(run_dir)[1] == earlier[1]
    assert losses(run_dir)[4] != earlier[4]
    superseded = run_dir / "superseded" / "1"
    assert (superseded / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert json.loads((run_dir / "final.json").read_text())["step"] == 6
