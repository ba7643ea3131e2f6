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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cluster_helpers import PROFILES, REQUIRED, daemon_problem, scheduler_env
from node_processes import alive, catches, freeze, is_worker
from test_scheduler_dag import SETUP_LINE
from test_scheduler_requeue import job_runs, snakemake, stage_config, stage_dir

from kotomamba.train.run_dir import RunDir, step_of
from kotomamba.train.status import complete_checkpoint

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
pytest.importorskip("snakemake")
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))


def training_workers(workdir: Path) -> list[int]:
    """The running training workers (``kotomamba launch --worker-exit-dir``) of the pipeline in ``workdir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if Path(cwd) == workdir and is_worker(int(entry.name)) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A local run of the stage: its tokenized data, tokenizer and Snakemake records are copied, so only
    training runs on the cluster."""
    workdir = tmp_path_factory.mktemp("prepared") / "run"
    workdir.mkdir()
    result = snakemake(workdir, stage_config(None), "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


def test_a_job_that_makes_no_progress_fails_after_the_retries_and_says_why(prepared, tmp_path):
    problem = daemon_problem("slurm")
    if problem:
        pytest.fail(f"slurm is not up: {problem}")
    workdir = tmp_path / "run"
    shutil.copytree(prepared, workdir, symlinks=True)
    shutil.rmtree(stage_dir(workdir))
    run = RunDir(stage_dir(workdir))
    train_log = workdir / "results" / "sched" / "logs" / "train" / "pretrain.log"
    config_file = workdir / "sched.yaml"
    config_file.write_text(yaml.safe_dump(stage_config(0.001)))
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config_file), "--until", "train", *PROFILES["slurm"], "--retries", "1"]
    log = (tmp_path / "snakemake.log").open("w+")
    pipeline = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=scheduler_env(SETUP_LINE),
                                 cwd=workdir)
    first, stopped, deadline = None, [], time.monotonic() + 600  # a hang guard
    try:
        while pipeline.poll() is None:
            assert time.monotonic() < deadline, "snakemake did not end"
            for pid in training_workers(workdir):
                if first is None:
                    first = pid  # the stage's first job: it trains step 1 and is requeued in place
                if pid == first or pid in stopped or not catches(pid, signal.SIGTERM):
                    continue
                freeze([pid])
                banner = train_log.read_text(errors="replace") if train_log.is_file() else ""
                assert "steps to go" not in banner, f"worker {pid} started training before it could be stopped"
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
                stopped.append(pid)
            time.sleep(0.01)
    finally:
        if pipeline.poll() is None:
            pipeline.send_signal(signal.SIGINT)  # snakemake cancels its jobs, then exits
            pipeline.wait(timeout=300)
    log.seek(0)
    output = log.read()
    job_log = train_log.read_text(errors="replace") if train_log.is_file() else ""
    assert pipeline.returncode != 0, output[-4000:]
    # The first job advanced the stage by one step; nothing after it did.
    assert step_of(complete_checkpoint(run)) == 1 and not run.final.exists()
    starts = [json.loads(line)["start_step"] for line in run.jobs.read_text().splitlines()]
    assert starts[0] == 0 and set(starts[1:]) <= {1}, starts
    # Two Snakemake attempts (the retry), each a SLURM job; the first ran twice (requeued in place once after
    # its progress), then neither was requeued again: each ended FAILED, and the stage failed.
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(submitted) == 2 and len(stopped) == 2, (submitted, stopped, output[-4000:])
    assert job_runs("slurm", submitted[0], since) == ["REQUEUED", "FAILED"]
    assert job_runs("slurm", submitted[1], since) == ["FAILED"]
    # The last job's log, which Snakemake shows with the failure, says why it was not run again.
    reason = re.search(r"kotomamba launch: slurm job \d+ exits 75 and is not requeued: no progress since step 1",
                       job_log)
    assert reason, job_log[-3000:]
    assert reason.group(0) in output
