"""A request to start a run directory's training over, left by whoever decided it before the job runs.

Snakemake runs a forced job (``--forcerun train``, ``--force <stage>/final.json``) exactly like any
other, and a job submitted to a cluster re-reads the workflow without knowing it was forced; so the
pipeline leaves this request in the stage's run directory when it starts, and the trainer's start plan
(start_plan.py) honours it under ``--resume auto``: the earlier run is kept as a superseded generation
and training starts from the beginning. The request is removed only once the earlier run has been set
aside, so an interruption in between leaves it pending.
"""
from __future__ import annotations

import os

from kotomamba.io import atomic_write
from kotomamba.train.run_dir import RunDir


def request_restart(run_dir: str | os.PathLike, why: str) -> None:
    """Ask the next trainer in ``run_dir`` to start over, saying ``why`` (one line)."""
    with atomic_write(RunDir(run_dir).restart_request) as handle:
        handle.write(why.strip() + "\n")


def pending_restart(run: RunDir) -> str | None:
    """Why a restart was requested in ``run``, or ``None``."""
    if not run.restart_request.is_file():
        return None
    return run.restart_request.read_text().strip() or "a restart was requested"


def clear_restart(run: RunDir) -> None:
    run.restart_request.unlink(missing_ok=True)
