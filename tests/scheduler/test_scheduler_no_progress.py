"""A job that makes no progress is not run again forever, through the real SLURM cluster.

The stage is test_scheduler_requeue.py's: 3 steps, one step per job (a 1 ms wall-time budget), so its first
job trains step 1, checkpoints, exits 75 and is requeued in place. Every later run of the stage is stopped
before it trains: a stop signal (SIGTERM) reaches its training worker, and only the worker, as soon as the
worker handles stop signals (its `SigCgt`), while it is held (SIGSTOP) and its log shows it has not started
training. So it exits 75 ("nothing trained yet"), as a job does that a signal for its step's processes (not
its launcher) stops during start-up. Such a job advanced nothing: the launcher does not requeue it and says
why in the job's log ("no progress since step 1"), SLURM accounts it FAILED, and Snakemake gives the stage
its retries (here 1) and then fails it. Without the progress rule the stage would be requeued for ever.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from cluster_helpers import REQUIRED, daemon_problem, start_pipeline
from node_processes import catches, freeze, workers_in
from test_scheduler_requeue import STAGE, job_log, job_runs, stage_config

from kotomamba.train.run_dir import step_of
from kotomamba.train.status import complete_checkpoint

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
pytest.importorskip("snakemake")
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))


@pytest.mark.scheduler("slurm")
def test_a_job_that_makes_no_progress_fails_after_the_retries_and_says_why(local_run, tmp_path):
    problem = daemon_problem("slurm")
    if problem:
        pytest.fail(f"slurm is not up: {problem}")
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    first, stopped = None, []
    with start_pipeline(local_run, tmp_path / "run", STAGE, stage_config(0.001), "slurm", retries=1) as pipeline:
        def stop_later_workers_before_they_train() -> bool:
            """Stop each worker after the first job's as soon as it handles stop signals; True once Snakemake ended."""
            nonlocal first
            for pid in workers_in(pipeline.workdir):
                if first is None:
                    first = pid  # the stage's first job: it trains step 1 and is requeued in place
                if pid == first or pid in stopped or not catches(pid, signal.SIGTERM):
                    continue
                freeze([pid])
                started = "steps to go" in job_log(pipeline.workdir)
                assert not started, f"worker {pid} started training before it could be stopped"
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
                stopped.append(pid)
            return pipeline.process.poll() is not None

        pipeline.wait_until("snakemake ends", stop_later_workers_before_they_train, interval=0.01)
    output = pipeline.output()
    log = job_log(pipeline.workdir)
    run = pipeline.run
    assert pipeline.process.returncode != 0, output[-4000:]
    # The first job advanced the stage by one step; nothing after it did.
    assert step_of(complete_checkpoint(run)) == 1 and not run.final.exists()
    starts = [json.loads(line)["start_step"] for line in run.jobs.read_text().splitlines()]
    assert starts[0] == 0 and set(starts[1:]) <= {1}, starts
    # Two Snakemake attempts (the retry), each a SLURM job; the first ran twice (requeued in place once after
    # its progress), then neither was requeued again: each ended FAILED, and the stage failed.
    submitted = pipeline.job_ids()
    assert len(submitted) == 2 and len(stopped) == 2, (submitted, stopped, output[-4000:])
    assert job_runs("slurm", submitted[0], since) == ["REQUEUED", "FAILED"]
    assert job_runs("slurm", submitted[1], since) == ["FAILED"]
    # The last job's log, which Snakemake shows with the failure, says why it was not run again.
    reason = re.search(r"kotomamba launch: slurm job \d+ exits 75 and is not requeued: no progress since step 1",
                       log)
    assert reason, log[-3000:]
    assert reason.group(0) in output
