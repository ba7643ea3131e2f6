"""Async checkpoints (``dcp.async_save`` over gloo) and the wall-time budget (checkpoint, exit 75, resume)."""
from __future__ import annotations

import json

import pytest

from kotomamba.train.checkpoint import STEP_DIR
from train_helpers import (assert_same_weights, final_weights, losses, needs_cpu_sharding, run_hooked, run_train,
                           weights_at, write_config)


@pytest.mark.slow
def test_async_checkpoints_hold_their_steps_weights_and_resume_exactly(tmp_path):
    saves = {"interval": 2, "keep_last": 0}
    sync, asynchronous = tmp_path / "sync", tmp_path / "async"
    run_train(write_config(tmp_path, sync, checkpoint=saves, eval={"interval": 0}))
    config = write_config(tmp_path, asynchronous, checkpoint={**saves, "async": True}, eval={"interval": 0},
                          train={"max_steps_this_job": 5})
    run_train(config)
    checkpoints = asynchronous / "checkpoints"
    # The segment's end waited for its save: step 5 is complete and named by latest.
    assert (checkpoints / "latest").read_text().strip() == "step_00000005"
    assert not list(checkpoints.glob(".*.tmp"))
    run_train(config, "train.max_steps_this_job=null")
    names = sorted(p.name for p in checkpoints.iterdir() if STEP_DIR.match(p.name))
    assert names == ["step_00000002", "step_00000004", "step_00000005", "step_00000006", "step_00000008"]
    assert all((checkpoints / name / ".metadata").is_file() for name in names)
    # Training went on while the files were written; each checkpoint still holds its own step's
    # weights (staged before the next update), the same as a blocking save's.
    for step in (2, 4, 6, 8):
        assert_same_weights(weights_at(sync, step), weights_at(asynchronous, step))
    assert losses(asynchronous) == losses(sync)
    assert_same_weights(final_weights(sync), final_weights(asynchronous))


@pytest.mark.slow
def test_wall_time_budget_checkpoints_exits_75_and_resumes(tmp_path):
    common = {"train": {"steps": 60}, "eval": {"interval": 0}, "checkpoint": {"interval": 0},
              "logging": {"interval": 10}}
    straight, budgeted = tmp_path / "straight", tmp_path / "budgeted"
    run_train(write_config(tmp_path, straight, **common))
    # The budget's clock advances one second per reading (once at start-up, once per step), whatever the
    # machine's load: 20 s run out by step 20 of 60.
    config = write_config(tmp_path, budgeted, **{**common, "train": {"steps": 60, "wall_time_budget_s": 20}})
    result = run_hooked("fake-clock", config)
    assert result.returncode == 75, result.stderr[-3000:]
    assert "(wall-time budget); checkpoint written" in result.stdout
    stopped = int((budgeted / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 1 <= stopped <= 20 and not (budgeted / "final.json").exists()
    run_train(config, "train.wall_time_budget_s=null")
    assert json.loads((budgeted / "final.json").read_text())["step"] == 60
    assert losses(budgeted) == losses(straight)
    assert_same_weights(final_weights(straight), final_weights(budgeted))


@pytest.mark.slow
@needs_cpu_sharding
def test_async_checkpoints_of_two_sharded_processes_equal_blocking_ones(tmp_path):
    saves = {"interval": 2, "keep_last": 0}
    sync, asynchronous = tmp_path / "sync", tmp_path / "async"
    run_train(write_config(tmp_path, sync, checkpoint=saves, eval={"interval": 0}), nproc=2)
    run_train(write_config(tmp_path, asynchronous, checkpoint={**saves, "async": True}, eval={"interval": 0}),
              nproc=2)
    assert (asynchronous / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    for step in (2, 4, 6, 8):
        assert_same_weights(weights_at(sync, step), weights_at(asynchronous, step))
    assert losses(asynchronous) == losses(sync)
