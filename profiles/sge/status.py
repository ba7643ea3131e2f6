#!/usr/bin/env python3
"""Print one of running / success / failed for a Grid Engine job id (cluster-generic status).

A job ``qstat`` still lists is running unless its state has an ``E`` (error: it will not run).
A job that left ``qstat`` is judged by ``qacct -j``: ``failed`` and ``exit_status`` both 0 is
success. Accounting is written a moment after the job ends (``flush_time``), so a job in neither
is reported running and asked about again at the next status check.
"""
from __future__ import annotations

import subprocess
import sys
import time


def qstat_state(job_id: str) -> str | None:
    """The state column of ``qstat`` for this job ("r", "qw", "Eqw", ...), None when not listed."""
    result = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True)
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[0] == job_id:
            return fields[4]
    return None


def parse_qacct(text: str) -> dict[str, str]:
    """``qacct -j`` output as a dict of its first record ("failed", "exit_status", ...)."""
    record: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("=") and record:
            break
        key, _, value = line.partition(" ")
        if key and value:
            record.setdefault(key, value.strip())
    return record


def status(job_id: str, attempts: int = 5) -> str:
    state = qstat_state(job_id)
    if state is not None:
        return "failed" if "E" in state else "running"
    for attempt in range(attempts):
        result = subprocess.run(["qacct", "-j", job_id], capture_output=True, text=True)
        if result.returncode == 0:
            record = parse_qacct(result.stdout)
            failed = record.get("failed", "0").split()[0]
            return "success" if failed == "0" and record.get("exit_status", "1").split()[0] == "0" else "failed"
        if qstat_state(job_id) is not None:
            return "running"
        time.sleep(1)
    return "running"


if __name__ == "__main__":
    print(status(sys.argv[1]))
