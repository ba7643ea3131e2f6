"""Requeue in place: a training job that stopped for its wall time asks its scheduler to run it again.

Inside a job with a time limit the trainer checkpoints and exits 75 before the limit (the launcher
gives it the job's time left as ``train.wall_time_budget_s``). Snakemake counts any nonzero exit as a
failure, and its retries are meant for failures; so the launcher, on the job's first host, turns that
exit into "run this same job again" when the job moved the stage forward:

- the trainer exited 75 and the launcher was not told to stop: a stop signal means the job is being
  cancelled (``scancel``, ``qdel``, Snakemake interrupted), preempted or killed at its limit, and what
  comes next is the scheduler's or the user's decision: a cancelled job stays cancelled;
- this job recorded its start in the run's job log (job_log.py: a line appended during this launch),
  and the run's newest complete checkpoint (integrity.json recorded) is past the step it started from.

Otherwise exit 75 stays a failure: Snakemake's retries apply, and a job that cannot advance is not run
again forever. A requeued job reruns the same Snakemake job script, whose training resumes from the
last checkpoint (``--resume auto``); Snakemake itself sees one job that ran long.

How a job runs again is the scheduler's, and known only here:

- a job wrapper that names a file in ``KOTOMAMBA_REQUEUE_FILE`` owns it: the file is written, and
  profiles/sge/submit.py's wrapper ends the job with exit 99, which Grid Engine answers by rescheduling
  the same job (sge_conf(5): "FORBID_RESCHEDULE" unset, the default); for profiles/abci (PBS Pro, where
  only operators may ``qrerun`` a job) its status.py submits the finished job again and follows it;
- SLURM: ``scontrol requeue $SLURM_JOB_ID``. The owner may requeue their own batch job when it is
  requeue-able (``JobRequeue=1``, SLURM's default, or ``sbatch --requeue``); SLURM ends this run at
  once and starts the batch script again under the same job id once ``AuthInfo=cred_expire`` (120 s
  by default) has passed (slurm.conf(5)). snakemake-executor-plugin-slurm counts REQUEUED and
  PENDING as still active.
- anything else (a PBS job script of your own, say): no requeue; exit 75 fails the job as before.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kotomamba.errors import UserError
from kotomamba.train.job_log import read_job_starts
from kotomamba.train.run_dir import RunDir, step_of
from kotomamba.train.status import complete_checkpoint
from kotomamba.train.stop_signals import EXIT_REQUEUE

REQUEUE_FILE = "KOTOMAMBA_REQUEUE_FILE"


def training_run(args: list[str]) -> RunDir | None:
    """The run directory a ``train --config F [overrides]`` command trains (None for other commands)."""
    if args[:1] != ["train"]:
        return None
    from kotomamba.train.cli import parse_args
    from kotomamba.train.config import load_config

    options = parse_args(args[1:])
    return RunDir(load_config(options.config, options.overrides).run_dir)


def no_progress(run: RunDir, starts_before: list[dict]) -> str | None:
    """Why this job did not advance the stage, or None when it did: it recorded its start in the job log
    (the last line is not one of ``starts_before``, read before training; a run started over moved those
    to ``superseded/``) and the newest complete checkpoint is past the step it started from."""
    starts = read_job_starts(run) or []
    checkpoint = complete_checkpoint(run)
    reached = step_of(checkpoint) if checkpoint is not None else 0
    if not starts or starts[-1] in starts_before:
        return f"no progress since step {reached}: it recorded no start in {run.jobs} (stopped before training)"
    start = int(starts[-1]["start_step"])
    if reached <= start:
        return (f"no progress since step {start}: its newest complete checkpoint is at step {reached}, "
                "the step it started from")
    return None


def ask_scheduler(scheduler: str, job_id: str, nodes: int, env: dict[str, str]) -> str | None:
    """Ask for this job of ``nodes`` hosts to run again; the reason it cannot be, or None when asked."""
    if scheduler == "sge" and nodes > 1:
        # Seen with Son of Grid Engine 8.1.9 (tests/scheduler): a rescheduled job is kept off every host of
        # its previous run "until clean up of a previous run has finished", which for the hosts of its
        # `qrsh -inherit` tasks did not happen in 6 minutes; on two hosts it never ran again.
        return "Grid Engine does not start a rescheduled multi-host job again (docs/clusters.md)"
    if env.get(REQUEUE_FILE):
        try:
            Path(env[REQUEUE_FILE]).write_text(f"{job_id}\n")
        except OSError as exc:
            return f"cannot write the requeue request {env[REQUEUE_FILE]} ({exc})"
        return None
    if scheduler == "slurm":
        try:
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`scontrol requeue {job_id}` failed ({exc})"
        if result.returncode != 0:
            return (f"`scontrol requeue {job_id}` failed: {result.stderr.strip()} (is the job requeue-able? "
                    "`scontrol show job` shows Requeue=1; set JobRequeue=1 or pass --requeue)")
        return None
    return f"a {scheduler} job cannot be requeued from inside (see docs/clusters.md)"


def after_training(code: int, signalled: bool, run: RunDir | None, starts_before: list[dict], scheduler: str,
                   job_id: str, nodes: int, env: dict[str, str]) -> int:
    """The job's exit code once training exited with ``code``: requeue the job where it advanced the stage.

    Returns ``code`` unchanged: after a SLURM requeue SLURM ends the job anyway, and where the request
    is a file (``KOTOMAMBA_REQUEUE_FILE``) the profile's job wrapper or status script acts on it.
    """
    if code != EXIT_REQUEUE or run is None:
        return code
    where = f"{scheduler} job {job_id}"
    if signalled:
        why = "the launcher was told to stop (cancelled, preempted or at its limit)"
    else:
        why = no_progress(run, starts_before)
    if why is None:
        why = ask_scheduler(scheduler, job_id, nodes, env)
        if why is None:
            print(f"kotomamba launch: {where} advanced {run.root} and stopped for its wall time; asked "
                  "to run it again, resuming there (requeue in place)", file=sys.stderr, flush=True)
            return code
    print(f"kotomamba launch: {where} exits {code} and is not requeued: {why}", file=sys.stderr, flush=True)
    return code


def run_of(args: list[str]) -> tuple[RunDir | None, list[dict]]:
    """(the run directory of a ``train`` command, its job log's starts now), read before training starts."""
    try:
        run = training_run(args)
    except (UserError, SystemExit):
        return None, []  # the trainer reports the bad command or config itself
    return run, (read_job_starts(run) or []) if run is not None else []
