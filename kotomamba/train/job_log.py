"""Which jobs trained a run directory: one line in ``jobs.jsonl`` per job, appended when its start is decided.

A stage that outlasts a job's wall time takes several jobs; how many it has used is read back from here
(``kotomamba status``). The line is written once the start plan is carried out (before any step), so a
job that dies while building its model counts too: it used a job all the same. The file moves with the
rest of a run when the run is superseded, so each generation counts its own jobs.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from kotomamba.train.run_dir import STEP_DIR, RunDir


def record_job_start(run: RunDir, resume_from: Path | None, world_size: int) -> None:
    """Append this job's line: when, where, how many processes, and the step it starts from."""
    match = STEP_DIR.match(resume_from.name) if resume_from is not None else None
    line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
                       "world_size": world_size, "start_step": int(match.group(1)) if match else 0},
                      sort_keys=True) + "\n"
    # One write of one short line with O_APPEND: a reader sees the line whole or not at all.
    fd = os.open(run.jobs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_job_starts(run: RunDir) -> list[dict] | None:
    """The recorded job starts, oldest first (``None`` for a run from before jobs were recorded)."""
    if not run.jobs.is_file():
        return None
    # Only lines with their newline are complete (a job killed mid-write leaves at most a torn last line).
    return [json.loads(line) for line in run.jobs.read_text().splitlines(keepends=True) if line.endswith("\n")]
