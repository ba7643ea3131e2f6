"""A compute node lost mid-job, through the real SLURM cluster: the stage still finishes, as if nothing happened.

The training job runs on one node. Once its log shows a complete checkpoint and a later step, the node is
lost: its slurmd and every process of the job on it are stopped at one instant and killed (node_processes.py),
what a crash or power loss does. The node is then set DOWN, as a health check or an administrator does at
once and the controller itself after `SlurmdTimeout` (here it took minutes), which ends the job NODE_FAIL.
profiles/slurm submits jobs requeue-able (`slurm-requeue`), so SLURM runs the job again under the same id and
Snakemake's SLURM plugin leaves it to SLURM: one Snakemake job, no retry used. The node's slurmd is started
again and the node returns to service (`ReturnToService=2`). The rerun must resume from the newest complete
checkpoint at the moment of the loss (not from a checkpoint the kill left half-written), log each step once,
and end with the losses and the weights of an uninterrupted run.

The loss is triggered by the run directory's contents and lands where the test says: the job's processes are
frozen once a checkpoint is complete and a later step is logged, and the test fails unless, at that instant,
a checkpoint is complete and the stage not finished (STEPS leaves the steps that pass while a poll becomes a
SIGSTOP).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from cluster_helpers import REPO, REQUIRED, SETUP_LINE, daemon_problem, logged_steps, scheduler_env, start_pipeline
from node_processes import alive, freeze, job_processes, kill, worker_processes
from test_scheduler_requeue import STAGE, finished_as_the_reference, job_log, losses, retrained
from test_scheduler_requeue import stage_config as requeue_stage_config

from kotomamba.train.run_dir import step_of
from kotomamba.train.status import complete_checkpoint

COMMON = REPO / "tests" / "scheduler" / "common.sh"
STEPS = 20
INTERVAL = 5  # a checkpoint every INTERVAL steps

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
pytest.importorskip("snakemake")
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))


def stage_config() -> dict:
    """test_scheduler_requeue.py's stage of STEPS steps on one process, a checkpoint every INTERVAL steps."""
    config = requeue_stage_config(None, steps=STEPS)
    config["train"]["checkpoint"] = {"interval": INTERVAL, "keep_last": 2}
    config["resources"]["train"]["runtime"] = 10
    return config


@pytest.fixture(scope="module")
def reference(local_run, tmp_path_factory) -> Path:
    """The uninterrupted run, on this machine (one job), from `local_run`'s data (conftest.py)."""
    return retrained(local_run, tmp_path_factory.mktemp("reference") / "run", stage_config())


def slurm(*command: str) -> str:
    return subprocess.run(list(command), capture_output=True, text=True, env=scheduler_env(SETUP_LINE),
                          timeout=60).stdout.strip()


def running_job(workdir: Path) -> tuple[str, str] | None:
    """(job id, node) of the running SLURM job whose working directory is ``workdir``."""
    for line in slurm("squeue", "-h", "-t", "R", "-o", "%i|%N|%Z").splitlines():
        job_id, node, directory = line.split("|", 2)
        if Path(directory) == workdir and node:
            return job_id, node
    return None


def slurmd_pid(node: str) -> int | None:
    pid_file = Path(f"/run/slurm/slurmd-{node}.pid")
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text().split()[0])
    return pid if alive(pid) else None


def node_state(node: str) -> str:
    return slurm("sinfo", "-h", "-n", node, "-o", "%t")


def restore_node(node: str) -> None:
    """Start the node's slurmd again if it is gone, and wait until the node takes jobs."""
    if slurmd_pid(node) is None:
        start = f'SCRIPT=restore DAEMON_LOGS=""; source {COMMON}; node_exec {node} "exec /usr/sbin/slurmd -N {node}"'
        subprocess.run(["bash", "-c", start], check=True, timeout=60)
    deadline = time.monotonic() + 60
    while not re.match(r"(idle|mix|alloc)$", node_state(node)):
        if time.monotonic() > deadline:
            raise AssertionError(f"node {node} did not come back: sinfo says {node_state(node)!r}")
        if node_state(node).startswith("down") and slurmd_pid(node) is not None:
            # ReturnToService=2 brings it back once slurmd registers; an administrator's resume if not.
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        time.sleep(0.5)


@pytest.mark.scheduler("slurm")
def test_slurm_job_on_a_lost_node_resumes_from_the_last_complete_checkpoint(local_run, reference, tmp_path):
    problem = daemon_problem("slurm")
    if problem:
        pytest.fail(f"slurm is not up: {problem}")
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    with start_pipeline(local_run, tmp_path / "run", STAGE, stage_config(), "slurm", retries=1) as pipeline:
        run, node = pipeline.run, None
        try:
            job_id, node = pipeline.wait_until("the training job runs", lambda: running_job(pipeline.workdir),
                                               interval=0.2)

            def checkpoint_then_a_later_step():
                checkpoint = complete_checkpoint(run)
                steps = logged_steps(run)
                return checkpoint if checkpoint is not None and steps and steps[-1] > step_of(checkpoint) else None

            pipeline.wait_until("a complete checkpoint and a later step", checkpoint_then_a_later_step, interval=0.01)
            daemon = slurmd_pid(node)
            processes = job_processes(job_id, daemon)
            assert worker_processes(processes), f"no training worker among job {job_id}'s processes on {node}"
            freeze(processes + [daemon])  # the node is gone from this instant
            # Where the loss lands: after a complete checkpoint, with steps of the stage still to train.
            resumable = complete_checkpoint(run)
            logged_at_loss = losses(pipeline.workdir)
            assert resumable is not None and logged_at_loss[-1][0] < STEPS and not run.final.exists(), (
                f"step {logged_at_loss[-1][0]} of {STEPS} was done before the node could be lost")
            half_written = sorted(path.name for path in run.checkpoints.glob(".step_*.tmp"))
            kill(processes + [daemon])
            # What a health check (or SlurmdTimeout, minutes later) does with a node that stopped answering: DOWN,
            # which ends its jobs (NODE_FAIL).
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=lost in a kotomamba test"],
                           check=True, capture_output=True)
            pipeline.wait_until(f"job {job_id} ends with {node}",
                                lambda: job_id not in slurm("squeue", "-h", "-t", "R", "-o", "%i").split(), interval=0.5)
            restore_node(node)
            pipeline.finish()
        finally:
            if node is not None:
                restore_node(node)
    output = pipeline.output()
    log = job_log(pipeline.workdir)
    assert pipeline.process.returncode == 0, output[-5000:] + log[-3000:]
    # One Snakemake job, no retry used: SLURM ran the lost job again itself (profiles/slurm: slurm-requeue).
    assert pipeline.job_ids() == [job_id], output[-4000:]
    # The run as SLURM accounted it: the run lost with its node, then the rerun that finished.
    runs = slurm("sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-S", since, "-o", "State,NodeList").splitlines()
    assert runs[0] == f"NODE_FAIL|{node}" and runs[-1].startswith("COMPLETED|"), runs
    # The rerun resumed from the newest checkpoint complete at the loss, never from a half-written one.
    starts = [json.loads(line)["start_step"] for line in run.jobs.read_text().splitlines()]
    assert starts == [0, step_of(resumable)], (starts, resumable, half_written)
    assert f"resumed from step {step_of(resumable)}" in log, log[-3000:]
    assert not list(run.checkpoints.glob(".step_*.tmp")), "a half-written checkpoint was left behind"
    # Every step logged once, each loss (and the final weights) those of the uninterrupted run.
    logged = losses(pipeline.workdir)
    assert [step for step, _ in logged] == list(range(1, STEPS + 1))
    assert logged_at_loss[: step_of(resumable)] == logged[: step_of(resumable)]
    finished_as_the_reference(pipeline.workdir, reference, STEPS)
