"""Requeue in place (kotomamba/train/requeue.py): which exits of a training job ask for the same job again.

The launcher runs as in a Grid Engine job (``JOB_ID``, ``SGE_ROOT``; no qmaster knows the id, so no
wall-time budget comes from the scheduler) whose wrapper named a requeue file, as profiles/sge/submit.py
does; the trainer's own budget is below a step's time, so each launch trains one step and exits 75.
The whole chain through real schedulers is tests/scheduler/test_scheduler_requeue.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import train_env, write_config

from kotomamba.train.job_log import read_job_starts, record_job_start
from kotomamba.train.requeue import after_training, no_progress
from kotomamba.train.run_dir import RunDir
from kotomamba.train.scheduler_facts import REQUEUE_FILE

pytestmark = pytest.mark.slow


def launch_as_grid_engine_job(config: Path, request: Path) -> subprocess.CompletedProcess:
    env = {**train_env(), "JOB_ID": "4711", "SGE_ROOT": "/var/lib/gridengine", REQUEUE_FILE: str(request)}
    env.pop("SLURM_JOB_ID", None)
    command = [sys.executable, "-m", "kotomamba", "launch", "--", "train", "--config", str(config)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_a_job_that_advanced_its_stage_asks_for_a_requeue_one_that_did_not_fails(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, run_dir, train={"steps": 3, "wall_time_budget_s": 0.001},
                          eval={"interval": 0}, checkpoint={"interval": 0, "keep_last": 1})
    request = tmp_path / "requeue-request"
    for step in (1, 2):
        result = launch_as_grid_engine_job(config, request)
        assert result.returncode == 75, result.stderr[-3000:]
        assert request.read_text() == "4711\n" and "requeue in place" in result.stderr
        request.unlink()  # as the wrapper does before the next run
        assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"
    result = launch_as_grid_engine_job(config, request)  # the last step finishes the stage
    assert result.returncode == 0 and not request.exists(), result.stderr[-3000:]
    assert json.loads((run_dir / "final.json").read_text())["step"] == 3

    # No progress: a job that recorded no start, or whose newest checkpoint is the step it started from.
    run = RunDir(run_dir)
    starts = read_job_starts(run)
    assert [start["start_step"] for start in starts] == [0, 1, 2]
    assert no_progress(run, starts[:2]) is None  # the third job advanced from step 2 to 3
    assert "recorded no start" in no_progress(run, starts)
    record_job_start(run, run.checkpoint(3), world_size=1)
    assert "step 3, the step it started from" in no_progress(run, starts)
    env = {REQUEUE_FILE: str(request)}
    assert after_training(75, False, run, starts, "sge", "4711", env) == 75 and not request.exists()
    # A stop signal (cancelled, preempted, killed at the limit) is never requeued by kotomamba.
    assert after_training(75, True, run, starts[:2], "sge", "4711", env) == 75 and not request.exists()
    # Other exits pass through untouched: success, failures.
    assert [after_training(code, False, run, starts[:2], "sge", "4711", env) for code in (0, 1)] == [0, 1]
    assert not request.exists()
    # A run started over (its records moved to superseded/): the new job log's first line is this job's.
    (run_dir / "superseded").mkdir()
    run.jobs.rename(run_dir / "superseded" / "jobs.jsonl")
    record_job_start(run, None, world_size=1)
    assert no_progress(run, starts) is None
