"""Skipped steps: configured iteration ranges (survive resume) and non-finite losses (abort after N)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from train_helpers import (assert_same_weights, final_weights, losses, records, run_train, weights_at,
                           write_config)


@pytest.mark.slow
def test_skip_ranges_consume_batches_without_training_and_survive_resume(tmp_path):
    skips = {"skip_ranges": [[3, 4], [7, 7]]}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(write_config(tmp_path, straight, train=skips, eval={"interval": 0},
                           checkpoint={"interval": 2, "keep_last": 0}))
    by_step = {r["step"]: r for r in records(straight) if "val_loss" not in r}
    assert sorted(by_step) == list(range(1, 9))
    assert [s for s, r in by_step.items() if r.get("skipped") == "range"] == [3, 4, 7]
    assert all("loss" not in by_step[s] for s in (3, 4, 7)) and sorted(losses(straight)) == [1, 2, 5, 6, 8]
    # The batches of steps 3 and 4 were consumed (the sample position moves on) ...
    assert [by_step[s]["consumed_samples"] for s in (2, 4, 5)] == [8, 16, 20]
    assert by_step[8]["skipped_range"] == 3
    # ... but not trained on: the weights after step 4 are those after step 2; step 6's differ.
    assert_same_weights(weights_at(straight, 2), weights_at(straight, 4))
    assert not torch.equal(weights_at(straight, 4)["lm_head.weight"], weights_at(straight, 6)["lm_head.weight"])
    final = json.loads((straight / "final.json").read_text())
    assert (final["skipped_range"], final["consumed_samples"]) == (3, 32)
    # Stopped inside the first range (after step 3) and before the second: the resumed run skips
    # step 4 and 7 and consumes the same batches as the straight one, so every number is equal.
    config = write_config(tmp_path, resumed, train={**skips, "max_steps_this_job": 3}, eval={"interval": 0},
                          checkpoint={"interval": 2, "keep_last": 0})
    run_train(config)
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    run_train(config, "train.max_steps_this_job=null")
    assert losses(resumed) == losses(straight)
    assert [r.get("skipped") for r in records(resumed)] == [r.get("skipped") for r in records(straight)]
    assert_same_weights(final_weights(straight), final_weights(resumed))


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_the_run_aborts_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # An absurd learning rate without clipping: the first update sends the weights to ~1e30 and
    # every later forward overflows.
    config = write_config(tmp_path, run_dir, optim={"lr": 1.0e30, "min_lr": 0.0}, eval={"interval": 0},
                          schedule={"style": "constant", "warmup_steps": 0},
                          train={"steps": 20, "grad_clip": None, "max_consecutive_nonfinite": 3},
                          checkpoint={"interval": 1, "keep_last": 0})
    result = run_train(config, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "3 consecutive steps with a non-finite loss or gradient at step 4" in result.stdout
    history = records(run_dir)
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert math.isfinite(history[0]["loss"]) and history[0]["skipped_nonfinite"] == 0
    for count, record in enumerate(history[1:], start=1):
        assert not (math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])), record
        assert record["skipped_nonfinite"] == count
    # The abort wrote its checkpoint; the skipped steps changed nothing after step 1's update.
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert_same_weights(weights_at(run_dir, 1), weights_at(run_dir, 4))
    assert not (run_dir / "final.json").exists()
