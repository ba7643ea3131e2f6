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

How a job runs again is the scheduler's: ``scheduler_facts.ask_to_run_again`` (SLURM ``scontrol
requeue``; Grid Engine and PBS through the profile's job wrapper or status script).
"""
from __future__ import annotations

import sys

from kotomamba.train.job_log import read_job_starts
from kotomamba.train.run_dir import RunDir, step_of
from kotomamba.train.scheduler_facts import ask_to_run_again
from kotomamba.train.status import complete_checkpoint
from kotomamba.train.stop_signals import EXIT_REQUEUE


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


def after_training(code: int, signalled: bool, run: RunDir | None, starts_before: list[dict], scheduler: str,
                   job_id: str, env: dict[str, str]) -> int:
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
        why = ask_to_run_again(scheduler, job_id, env)
        if why is None:
            print(f"kotomamba launch: {where} advanced {run.root} and stopped for its wall time; asked "
                  "to run it again, resuming there (requeue in place)", file=sys.stderr, flush=True)
            return code
    print(f"kotomamba launch: {where} exits {code} and is not requeued: {why}", file=sys.stderr, flush=True)
    return code
