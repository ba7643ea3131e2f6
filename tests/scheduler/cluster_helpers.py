"""Running the pipeline through the test clusters (tests/scheduler/start_slurm.sh, start_sge.sh):
whether the tier must run, the jobs' environment, a check that a scheduler takes jobs, the profiles,
and a pipeline run in the background that a test watches and acts on (``start_pipeline``)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kotomamba.train.metrics_file import read_metrics
from kotomamba.train.run_dir import RunDir

REPO = Path(__file__).resolve().parents[2]
# Each profile's setup hook (modules, venv on a real cluster) runs first in every job; the tests' prints a line
# (test_scheduler_dag.py checks that every job ran it).
SETUP_LINE = 'echo "setup line ran on $(hostname)"'
# A hang guard (seconds) for what a test waits on; nothing here takes a fraction of it.
HANG_GUARD = 600

# With KOTOMAMBA_SCHEDULER_TESTS=1 (CI) a cluster that is not up FAILS the tier; without it the tier
# is skipped, so quick developer runs need no daemons.
REQUIRED = os.environ.get("KOTOMAMBA_SCHEDULER_TESTS") == "1"

PROFILES = {
    "slurm": ["--profile", str(REPO / "profiles" / "slurm"), "--slurm-init-seconds-before-status-checks", "2",
              "--slurm-keep-successful-logs"],
    "sge": ["--profile", str(REPO / "profiles" / "sge")],
}
# Snakemake's line for a job it submitted through each profile, the scheduler's job id as its group.
SUBMITTED = {"slurm": r"submitted with SLURM jobid (\d+)", "sge": r"with external jobid '(\d+)'"}


def scheduler_env(setup_line: str) -> dict[str, str]:
    """The environment snakemake submits with; every job first runs `setup_line` (the profiles' setup
    hook, where a real cluster loads modules or a venv)."""
    env = dict(os.environ)
    env.setdefault("SGE_ROOT", "/var/lib/gridengine")
    env.setdefault("SGE_CELL", "default")
    env.setdefault("KOTOMAMBA_SLURM_ACCOUNT", "ci")
    env.setdefault("KOTOMAMBA_SGE_MPI_PE", "mpi")
    env["OMP_NUM_THREADS"] = "1"
    # The test clusters run jobs as root; Open MPI's mpirun refuses root unless told twice.
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["KOTOMAMBA_SLURM_SETUP"] = env["KOTOMAMBA_SGE_SETUP"] = setup_line
    return env


def daemon_problem(name: str) -> str | None:
    """Why the scheduler `name` cannot take jobs, or None when it can."""
    checks = {
        "slurm": [["sinfo", "-h", "-o", "%t"], ["sacct", "-n", "-X", "-S", "now-1minute"]],
        "sge": [["qstat", "-f"], ["qconf", "-sq", "all.q"]],
    }
    for command in checks[name]:
        if shutil.which(command[0]) is None:
            return f"`{command[0]}` is not installed: run tests/scheduler/start_{name}.sh"
        result = subprocess.run(command, capture_output=True, text=True, env=scheduler_env("true"), timeout=60)
        if result.returncode != 0:
            return f"`{' '.join(command)}` failed ({result.stderr.strip()}): run tests/scheduler/start_{name}.sh"
    return None


def logged_steps(run: RunDir) -> list[int]:
    """The training steps ``run``'s metrics log shows so far (a line still being written is left out)."""
    if not run.metrics.is_file():
        return []
    return [record["step"] for record in read_metrics(run.metrics, note_torn=False) if "loss" in record]


class Pipeline:
    """``snakemake --until train`` running in the background in ``workdir``, its output in ``log``; ``run``: the
    training stage's run directory. Used as a context manager: on leaving, a Snakemake still running gets
    SIGINT (it cancels its jobs) and is waited for."""

    def __init__(self, command: list[str], workdir: Path, scheduler: str, run: RunDir, log: Path):
        self.workdir, self.scheduler, self.run, self.log = workdir, scheduler, run, log
        with log.open("w") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                            env=scheduler_env(SETUP_LINE), cwd=workdir)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=300)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def job_ids(self) -> list[str]:
        """The scheduler's ids of the jobs Snakemake submitted so far, in order."""
        return re.findall(SUBMITTED[self.scheduler], self.output())

    def wait_until(self, what: str, condition, timeout: float = HANG_GUARD, interval: float = 0.02):
        """Poll ``condition()`` until it returns something true, and return that; fail naming ``what`` when
        Snakemake ended first or after ``timeout`` seconds (a hang guard)."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if self.process.poll() is not None:
                raise AssertionError(f"snakemake ended (exit {self.process.returncode}) before {what}:\n"
                                     f"{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f}s")
            time.sleep(interval)
        return value

    def wait_for_step(self, step: int) -> int:
        """Wait until the metrics log shows step ``step`` or a later one; the last step it shows."""
        def reached() -> int | None:
            steps = logged_steps(self.run)
            return steps[-1] if steps and steps[-1] >= step else None

        return self.wait_until(f"step {step} is logged", reached)

    def finish(self, timeout: float = HANG_GUARD) -> int:
        """Wait for Snakemake to end; its exit code."""
        return self.process.wait(timeout=timeout)


def copy_without_stage(prepared: Path, workdir: Path, stage: str) -> None:
    """Copy ``prepared`` (a run of the pipeline: its data, tokenizer and Snakemake's records, times kept) to
    ``workdir`` without its training stage ``stage`` (the stage's directory, relative to the work directory):
    Snakemake in ``workdir`` runs that stage and nothing before it."""
    shutil.copytree(prepared, workdir, symlinks=True)
    shutil.rmtree(workdir / stage)


def start_pipeline(prepared: Path, workdir: Path, stage: str, config: dict, scheduler: str, retries: int) -> Pipeline:
    """Run the training stage ``stage`` of the run config ``config`` on ``scheduler`` (a key of ``PROFILES``) with
    Snakemake's ``retries``, in ``workdir``: a ``copy_without_stage`` of ``prepared``, so only training runs on
    the cluster. Snakemake's output goes beside ``workdir``."""
    copy_without_stage(prepared, workdir, stage)
    config_file = workdir / "sched.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config_file), "--until", "train", *PROFILES[scheduler], "--retries", str(retries)]
    return Pipeline(command, workdir, scheduler, RunDir(workdir / stage), workdir.parent / "snakemake.log")
