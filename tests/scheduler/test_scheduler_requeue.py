"""Requeue through the real clusters: a training stage longer than one job finishes unattended, on one
node and on two (ktnode1 and ktnode2, one process each, gloo on CPU).

The stage's jobs get a 1-minute wall time (`resources.train.runtime: 1`) and the stage needs 3 jobs
whatever the machine's speed: its trainer config sets `train.wall_time_budget_s` below any step's time,
so every job trains exactly one step, checkpoints and exits 75 (the last step finishes the stage
instead), and 3 steps take 3 jobs. Each such job advanced the stage, so the launcher has its
scheduler run it again as the same job (SLURM: `scontrol requeue`; Grid Engine, one host: exit 99 from
the profile's wrapper), or, for a two-host Grid Engine job, the profile's status.py submits it again. Snakemake runs with `--retries 0`: the chain must not use retries, and sees one
job. The job log counts the jobs; the losses and the final weights must equal an uninterrupted local
run's of the same world size (one process, or two on this machine), which both schedulers share (the
tokenized data and tokenizer are copied, so only training runs on the cluster). On two nodes, each node
launcher reports the trainer's 75 to srun as success and records it (so `srun --kill-on-bad-exit` does
not kill the other node mid-checkpoint), and the job's launcher sees "requeue".

Cluster settings that keep this short (tests/scheduler/start_*.sh): SLURM's `cred_expire` (a requeued
job waits that long before it may start again; 120 s by default) and Grid Engine's `load_report_time`
(a host runs a rescheduled job again only once its execd reported the previous run cleaned up).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cluster_helpers import (PROFILES, REQUIRED, SETUP_LINE, Pipeline, copy_without_stage, daemon_problem,
                             logged_steps, scheduler_env, start_pipeline)
from node_processes import freeze, pending, resume, workers_in
from test_scheduler_dag import tiny_config

from kotomamba.cluster_jobs import Resubmissions
from kotomamba.train.stop_signals import STOP_SIGNALS

REPO = Path(__file__).resolve().parents[2]
STEPS = 3

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
pytest.importorskip("snakemake")
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))


def stage_config(budget: float | None, nodes: int = 1, nproc_per_node: int = 1, steps: int = STEPS) -> dict:
    """`steps` steps on `nodes` nodes of `nproc_per_node` processes, checkpoints only where a job stops or
    the stage ends; `budget`: the trainer's wall-time budget in seconds (None: no budget)."""
    config = tiny_config(nodes=1)
    config["launch"] = {"nodes": nodes, "nproc_per_node": nproc_per_node, "device": "cpu"}
    config["stages"][0]["train"]["train"] = {"steps": steps}
    config["train"]["eval"] = {"interval": 0, "steps": 1}
    config["train"]["checkpoint"] = {"interval": 0, "keep_last": 1}
    if budget is not None:
        config["train"]["train"]["wall_time_budget_s"] = budget
    config["resources"] = {"train": {"runtime": 1, "mem_mb": 2000}}
    return config


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    config_file = workdir / "sched.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config_file), "--until", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, env=scheduler_env(SETUP_LINE), cwd=workdir, timeout=900)


STAGE = "results/sched/train/pretrain"  # tiny_config's run, its first stage


def stage_dir(workdir: Path) -> Path:
    return workdir / STAGE


def job_log(workdir: Path) -> str:
    """The training stage's job log so far ("" before a job of it wrote one)."""
    path = workdir / "results" / "sched" / "logs" / "train" / "pretrain.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def losses(workdir: Path) -> list[tuple]:
    lines = (stage_dir(workdir) / "metrics.jsonl").read_text().splitlines()
    return [(record["step"], record["loss"]) for record in map(json.loads, lines) if "loss" in record]


def finished_as_the_reference(workdir: Path, reference: Path, steps: int) -> None:
    """Every logged loss and the final weights are the uninterrupted run's."""
    assert losses(workdir) == losses(reference)
    final, expected = (json.loads((stage_dir(path) / "final.json").read_text()) for path in (workdir, reference))
    assert final["step"] == steps and final["weights"] == expected["weights"]


def retrained(prepared: Path, workdir: Path, config: dict) -> Path:
    """``workdir``: ``prepared`` (a local run) with its training stage run again on this machine, as ``config`` says."""
    copy_without_stage(prepared, workdir, STAGE)
    result = snakemake(workdir, config, "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


@pytest.fixture(scope="module")
def references(local_run, tmp_path_factory):
    """The uninterrupted run of `world` processes and `steps` steps on this machine (one job, no budget); all
    share the tokenized data of `local_run` (conftest.py), which is the one of 1 process and STEPS steps."""
    made: dict[tuple[int, int], Path] = {(1, STEPS): local_run}

    def reference(world: int, steps: int = STEPS) -> Path:
        if (world, steps) not in made:
            workdir = tmp_path_factory.mktemp(f"reference{world}x{steps}") / "run"
            made[world, steps] = retrained(local_run, workdir, stage_config(None, nproc_per_node=world, steps=steps))
        return made[world, steps]

    return reference


def job_runs(scheduler: str, job_id: str, since: str) -> list[str]:
    """Each run of the scheduler's job as its accounting has it (SLURM: state; SGE: `failed` code); SLURM's
    runs started `since` (a controller started with a clean state gives job ids again)."""
    env = scheduler_env(SETUP_LINE)
    if scheduler == "slurm":
        text = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-S", since, "-o", "State"],
                              capture_output=True, text=True, env=env, check=True).stdout
        return text.split()
    for _ in range(20):  # the last run's record is flushed a moment after the job left qstat
        text = subprocess.run(["qacct", "-j", job_id], capture_output=True, text=True, env=env).stdout
        runs = re.findall(r"^failed\s+(\d+)", text, re.M)
        if runs and runs[-1] != "25":
            return runs
        time.sleep(1)
    return runs


@pytest.mark.parametrize("scheduler,nodes", [(name, nodes) for name in sorted(PROFILES) for nodes in (1, 2)])
def test_stage_longer_than_a_job_finishes_by_requeue_in_place(scheduler, nodes, references, tmp_path):
    problem = daemon_problem(scheduler)
    if problem:
        pytest.fail(f"{scheduler} is not up: {problem}")
    reference = references(nodes)
    # The 1 ms budget is below any step's time: one step per job, whatever the machine's speed.
    config = stage_config(0.001, nodes=nodes)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    with start_pipeline(reference, tmp_path / "run", STAGE, config, scheduler, retries=0) as pipeline:
        code = pipeline.finish()
    workdir, output = pipeline.workdir, pipeline.output()
    assert code == 0, output[-5000:] + job_log(workdir)[-3000:]
    # One Snakemake job (no retry, no resubmission) that ran once per step.
    submitted = pipeline.job_ids()
    assert len(submitted) == 1, output[-4000:]
    jobs = [json.loads(line) for line in (stage_dir(workdir) / "jobs.jsonl").read_text().splitlines()]
    assert len(jobs) >= 3 and [job["start_step"] for job in jobs] == list(range(STEPS)), jobs
    assert {job["world_size"] for job in jobs} == {nodes}, jobs
    # Each rerun resumed: none took the Snakefile's restart request for a forced job and started over.
    assert not (stage_dir(workdir) / "superseded").exists()
    if scheduler == "sge" and nodes > 1:
        # Submitted again by the profile's status.py, once per earlier job: a chain of STEPS job ids.
        chain, link = [submitted[0]], workdir / Resubmissions.of("sge").directory / f"{submitted[0]}.next"
        while link.is_file():
            chain.append(link.read_text().strip())
            link = link.with_name(f"{chain[-1]}.next")
        assert len(chain) == STEPS, chain
    else:
        runs = job_runs(scheduler, submitted[0], since)
        requeued = "REQUEUED" if scheduler == "slurm" else "25"
        assert runs.count(requeued) == STEPS - 1 and len(runs) == STEPS, runs
    finished_as_the_reference(workdir, reference, STEPS)


# Steps of a stage stopped by a signal: `stop_mid_stage` holds the workers once step 1 is logged and fails the
# test unless that leaves a step after the one they are in; the rest pass while a poll becomes a SIGSTOP.
PREEMPT_STEPS = 20


def stop_mid_stage(pipeline: Pipeline, stop) -> int:
    """Stop the stage's first job by the scheduler's command ``stop()`` at a step known before it lands: once step 1
    is logged, the job's two training workers are frozen (SIGSTOP), ``stop()`` runs, and they are let go (SIGCONT)
    only when a stop signal of theirs is pending in each, which they then take at the end of the step they are
    in. Returns the last step logged while they were held: the job stops there or one step later, after a step
    done and before the stage's last step (checked here)."""
    def both_workers() -> list[int] | None:
        found = workers_in(pipeline.workdir)
        return found if len(found) == 2 else None

    workers = pipeline.wait_until("both training workers run", both_workers)
    pipeline.wait_for_step(1)
    freeze(workers)
    try:
        logged = logged_steps(pipeline.run)[-1]
        assert logged <= PREEMPT_STEPS - 2, (f"step {logged} of {PREEMPT_STEPS} was done before the workers were "
                                             "held: the stop would not land before the stage's end")
        stop()
        pipeline.wait_until("a stop signal is pending in every held worker",
                            lambda: all(pending(pid) & set(STOP_SIGNALS) for pid in workers))
    finally:
        resume(workers)
    return logged


@pytest.mark.scheduler("slurm")
def test_two_node_job_stopped_by_a_signal_resumes_in_the_requeued_job(references, tmp_path):
    """`scancel --signal=TERM` mid-stage (what SLURM's warning `--signal=TERM@T` does before a time limit or
    a preemption: the job's steps get the signal): both nodes checkpoint and exit 75, and the job, which
    advanced its stage, is requeued and resumes there; losses and final weights as if never stopped."""
    problem = daemon_problem("slurm")
    if problem:
        pytest.fail(f"slurm is not up: {problem}")
    reference = references(2, PREEMPT_STEPS)
    config = stage_config(None, nodes=2, steps=PREEMPT_STEPS)
    config["resources"]["train"]["runtime"] = 10
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    with start_pipeline(reference, tmp_path / "run", STAGE, config, "slurm", retries=0) as pipeline:
        env = scheduler_env(SETUP_LINE)
        logged = stop_mid_stage(pipeline, lambda: subprocess.run(["scancel", "--signal=TERM", pipeline.job_ids()[0]],
                                                                 check=True, env=env))
        assert pipeline.finish() == 0, pipeline.output()[-5000:]
    assert len(pipeline.job_ids()) == 1, pipeline.output()[-4000:]
    jobs = [json.loads(line) for line in pipeline.run.jobs.read_text().splitlines()]
    # Two runs of the one job: the second resumed from the checkpoint the signal led to, where it landed.
    assert len(jobs) == 2 and jobs[0]["start_step"] == 0, jobs
    assert logged <= jobs[1]["start_step"] <= logged + 1, (logged, jobs)
    assert {job["world_size"] for job in jobs} == {2}, jobs
    assert job_runs("slurm", pipeline.job_ids()[0], since) == ["REQUEUED", "COMPLETED"]
    finished_as_the_reference(pipeline.workdir, reference, PREEMPT_STEPS)


@pytest.mark.scheduler("sge")
def test_two_host_grid_engine_job_deleted_mid_stage_checkpoints_and_the_retry_resumes(references, tmp_path):
    """`qdel` of a two-host Grid Engine job submitted with `-notify`: Grid Engine sends SIGUSR2 first (the
    queue's `notify` time before SIGKILL); the job's launcher passes it to mpirun as SIGUSR1, both hosts
    checkpoint and exit 75, the deleted job is not requeued (a cancelled job stays cancelled) and fails,
    and Snakemake's retry resumes from that checkpoint; losses and final weights as if never stopped."""
    problem = daemon_problem("sge")
    if problem:
        pytest.fail(f"sge is not up: {problem}")
    reference = references(2, PREEMPT_STEPS)
    config = stage_config(None, nodes=2, steps=PREEMPT_STEPS)
    config["resources"]["train"].update(runtime=10, sge_extra="-notify")
    with start_pipeline(reference, tmp_path / "run", STAGE, config, "sge", retries=1) as pipeline:
        env = scheduler_env(SETUP_LINE)
        logged = stop_mid_stage(pipeline, lambda: subprocess.run(["qdel", pipeline.job_ids()[0]], check=True, env=env,
                                                                 capture_output=True))
        assert pipeline.finish() == 0, pipeline.output()[-5000:]
    assert len(pipeline.job_ids()) == 2, pipeline.output()[-4000:]  # the job and its retry
    jobs = [json.loads(line) for line in pipeline.run.jobs.read_text().splitlines()]
    # The retry resumed from the checkpoint the warning signal led to, where it landed (not from step 0).
    assert len(jobs) == 2 and jobs[0]["start_step"] == 0, jobs
    assert logged <= jobs[1]["start_step"] <= logged + 1, (logged, jobs)
    finished_as_the_reference(pipeline.workdir, reference, PREEMPT_STEPS)
