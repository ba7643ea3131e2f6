"""``--resume DIR`` starts a trajectory of its own: a rollback to one of the run's own checkpoints keeps what the
earlier trajectory left past it (later checkpoints, final.json) in a new generation, and retention keeps the
checkpoint rolled back to; another run's checkpoint resumed into a directory holding a run supersedes that run,
so its final.json no longer says the new one is complete."""
from __future__ import annotations

import json

import pytest

from kotomamba.train.run_dir import RunDir
from train_helpers import run_train, write_config

RUN = {"train": {"steps": 8}, "eval": {"interval": 0, "final": False}, "checkpoint": {"interval": 2, "keep_last": 2}}


@pytest.mark.slow
def test_a_rollback_sets_the_later_trajectory_aside_and_keeps_its_target(tmp_path):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, **RUN)
    run_train(config, "train.max_steps_this_job=6")  # step_4, step_6
    result = run_train(config, "train.skip_ranges=[[5,5]]", "train.max_steps_this_job=1",
                       "--resume", str(run.checkpoint(4)))
    assert "rolled back to step_00000004" in result.stdout, result.stdout
    assert [p.name for p in run.step_dirs()] == ["step_00000005", "step_00000004"]
    assert run.latest.read_text().strip() == "step_00000005"
    aside = run.superseded / "1"
    assert (aside / "checkpoints" / "step_00000006").is_dir() and (aside / "model_config.json").is_file()
    assert (aside / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    # The next plain job goes on from the rolled-back trajectory, with the skip it applied.
    result = run_train(config, "train.skip_ranges=[[5,5]]")
    assert f"resuming from {run.checkpoint(5)}" in result.stdout, result.stdout
    assert json.loads(run.final.read_text())["skipped_range"] == 1


@pytest.mark.slow
def test_another_runs_checkpoint_supersedes_a_finished_run(tmp_path):
    finished, other = RunDir(tmp_path / "finished"), RunDir(tmp_path / "other")
    config = write_config(tmp_path, finished.root, **RUN)
    run_train(config, "train.steps=4")
    run_train(write_config(tmp_path, other.root, **RUN), "train.max_steps_this_job=2")
    result = run_train(config, "train.max_steps_this_job=2", "--resume", str(other.checkpoint(2)))
    assert "starting over (--resume" in result.stdout, result.stdout
    assert (finished.superseded / "1" / "final.json").is_file() and not finished.final.exists()
    result = run_train(config)
    assert "nothing to do" not in result.stdout and f"resuming from {finished.checkpoint(4)}" in result.stdout
    assert json.loads(finished.final.read_text())["step"] == 8
