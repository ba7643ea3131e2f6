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

Deterministic: the kill is triggered by the run directory's contents, and the steps left after it are many
times what is needed to see it land (the test says so plainly if the stage had finished first).
"""
from __future__ import annotations

import json
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
from node_processes import alive, freeze, job_processes, kill, worker_processes
from test_scheduler_dag import SETUP_LINE, tiny_config

from kotomamba.train.run_dir import RunDir, step_of
from kotomamba.train.status import complete_checkpoint

REPO = Path(__file__).resolve().parents[2]
COMMON = REPO / "tests" / "scheduler" / "common.sh"
STEPS = 200
INTERVAL = 10  # a checkpoint every INTERVAL steps

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
pytest.importorskip("snakemake")
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))


def stage_config() -> dict:
    config = tiny_config(nodes=1)
    config["launch"] = {"nodes": 1, "nproc_per_node": 1, "device": "cpu"}
    config["stages"][0]["train"]["train"] = {"steps": STEPS}
    config["train"]["eval"] = {"interval": 0, "steps": 1}
    config["train"]["checkpoint"] = {"interval": INTERVAL, "keep_last": 2}
    config["resources"] = {"train": {"runtime": 10, "mem_mb": 2000}}
    return config


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    config_file = workdir / "sched.yaml"
    config_file.write_text(yaml.safe_dump(stage_config()))
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", str(config_file), "--until", "train", *args]


def stage_dir(workdir: Path) -> Path:
    return workdir / "results" / "sched" / "train" / "pretrain"


def logged_losses(workdir: Path) -> list[tuple]:
    lines = (stage_dir(workdir) / "metrics.jsonl").read_text().splitlines()
    return [(record["step"], record["loss"]) for record in map(json.loads, lines) if "loss" in record]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, on this machine (one job)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    workdir.mkdir()
    result = subprocess.run(snakemake_command(workdir, "--cores", "2"), capture_output=True, text=True,
                            env=scheduler_env(SETUP_LINE), cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


def wait_until(what: str, condition, timeout: float, interval: float = 0.02, watch: subprocess.Popen | None = None):
    """Poll ``condition()`` until it returns something true; fail naming ``what`` after ``timeout`` (a hang
    guard) or when ``watch`` (snakemake) ended first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if watch is not None and watch.poll() is not None:
            raise AssertionError(f"snakemake ended (exit {watch.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


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


def test_slurm_job_on_a_lost_node_resumes_from_the_last_complete_checkpoint(reference, tmp_path):
    problem = daemon_problem("slurm")
    if problem:
        pytest.fail(f"slurm is not up: {problem}")
    workdir = tmp_path / "run"
    # The reference's data, tokenizer and Snakemake records (times kept), without its training stage.
    shutil.copytree(reference, workdir, symlinks=True)
    shutil.rmtree(stage_dir(workdir))
    run = RunDir(stage_dir(workdir))
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    command = snakemake_command(workdir, *PROFILES["slurm"], "--retries", "1")
    log = (tmp_path / "snakemake.log").open("w+")
    snakemake = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=scheduler_env(SETUP_LINE),
                                 cwd=workdir)
    node = None
    try:
        job_id, node = wait_until("the training job runs", lambda: running_job(workdir), 120, 0.2, snakemake)

        def checkpoint_then_a_later_step():
            checkpoint = complete_checkpoint(run)
            if checkpoint is None or not run.metrics.is_file():
                return None
            steps = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines(keepends=True)
                     if line.endswith("\n")]
            return checkpoint if steps and steps[-1] > step_of(checkpoint) else None

        wait_until("a complete checkpoint and a later step", checkpoint_then_a_later_step, 120, 0.01, snakemake)
        daemon = slurmd_pid(node)
        processes = job_processes(job_id, daemon)
        assert worker_processes(processes), f"no training worker among job {job_id}'s processes on {node}"
        freeze(processes + [daemon])  # the node is gone from this instant
        assert not run.final.exists(), f"the stage finished before the node could be lost; raise STEPS ({STEPS})"
        resumable = complete_checkpoint(run)
        half_written = sorted(path.name for path in run.checkpoints.glob(".step_*.tmp"))
        logged_at_loss = logged_losses(workdir)
        kill(processes + [daemon])
        # What a health check (or SlurmdTimeout, minutes later) does with a node that stopped answering: DOWN,
        # which ends its jobs (NODE_FAIL).
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=lost in a kotomamba test"],
                       check=True, capture_output=True)
        wait_until(f"job {job_id} ends with {node}", lambda: job_id not in slurm("squeue", "-h", "-t", "R", "-o", "%i")
                   .split(), 120, 0.5, snakemake)
        restore_node(node)
        snakemake.wait(timeout=300)
    finally:
        try:
            if node is not None:
                restore_node(node)
        finally:
            if snakemake.poll() is None:
                snakemake.send_signal(signal.SIGINT)  # snakemake cancels its jobs, then exits
                snakemake.wait(timeout=300)
    log.seek(0)
    output = log.read()
    train_log = workdir / "results" / "sched" / "logs" / "train" / "pretrain.log"
    job_log = train_log.read_text(errors="replace") if train_log.is_file() else ""
    assert snakemake.returncode == 0, output[-5000:] + job_log[-3000:]
    # One Snakemake job, no retry used: SLURM ran the lost job again itself (profiles/slurm: slurm-requeue).
    assert re.findall(r"submitted with SLURM jobid (\d+)", output) == [job_id], output[-4000:]
    # The run as SLURM accounted it: the run lost with its node, then the rerun that finished.
    runs = slurm("sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-S", since, "-o", "State,NodeList").splitlines()
    assert runs[0] == f"NODE_FAIL|{node}" and runs[-1].startswith("COMPLETED|"), runs
    # The rerun resumed from the newest checkpoint complete at the loss, never from a half-written one.
    starts = [json.loads(line)["start_step"] for line in run.jobs.read_text().splitlines()]
    assert starts == [0, step_of(resumable)], (starts, resumable, half_written)
    assert f"resumed from step {step_of(resumable)}" in job_log, job_log[-3000:]
    assert not list(run.checkpoints.glob(".step_*.tmp")), "a half-written checkpoint was left behind"
    # Every step logged once, each loss (and the final weights) those of the uninterrupted run.
    losses = logged_losses(workdir)
    assert [step for step, _ in losses] == list(range(1, STEPS + 1))
    assert losses == logged_losses(reference)
    assert logged_at_loss[: step_of(resumable)] == losses[: step_of(resumable)]
    final, expected = (json.loads((stage_dir(path) / "final.json").read_text()) for path in (workdir, reference))
    assert final["step"] == STEPS and final["weights"] == expected["weights"]
