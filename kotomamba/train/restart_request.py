"""A request to start a run directory's training over, left by whoever decided it before the job runs.

Snakemake runs a forced job (``--forcerun train``, ``--force <stage>/final.json``) exactly like any
other, and a job submitted to a cluster re-reads the workflow without knowing it was forced; so the
pipeline leaves this request in the stage's run directory when it starts, and the trainer honours it
under ``--resume auto``: it keeps the earlier run as a superseded generation and trains from the start.
The request is removed only once the earlier run has been set aside, so an interruption in between
leaves it pending.
"""
from __future__ import annotations

import os
from pathlib import Path

from kotomamba.io import atomic_write

FILE = "restart-requested"


def request_restart(run_dir: str | os.PathLike, why: str) -> None:
    """Ask the next trainer in ``run_dir`` to start over, saying ``why`` (one line)."""
    with atomic_write(Path(run_dir) / FILE) as handle:
        handle.write(why.strip() + "\n")


def pending_restart(run_dir: str | os.PathLike) -> str | None:
    """Why a restart was requested in ``run_dir``, or ``None``."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or "a restart was requested"


def clear_restart(run_dir: str | os.PathLike) -> None:
    (Path(run_dir) / FILE).unlink(missing_ok=True)
