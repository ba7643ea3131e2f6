#!/usr/bin/env python3
"""Print one of running / success / failed for a Grid Engine job id (cluster-generic status).

One job per query, whatever the size of the cluster: ``qstat -j JOB_ID`` answers while the job is
queued or running; a job in an error state (``Eqw``: it will never run, e.g. its working directory
or log path is missing) shows an ``error reason`` there: it is reported failed, the reason goes to
stderr (Snakemake's log) and the job is removed with ``qdel``, so no dead job stays queued. A job
``qstat -j`` no longer knows is judged by ``qacct -j``: ``failed`` and ``exit_status`` both 0 is
success. Accounting is written a moment after the job ends (``flush_time``), so a job in neither is
reported running and asked about again at the next status check, until it has been in neither for
``UNSEEN_GRACE_S``: then it is reported failed (a job id the cluster forgot, accounting turned off or
rotated away), where Snakemake used to wait for it forever.

A job that Grid Engine ran again as the same job (exit 99: submit.py's requeue in place of a training
job that stopped for its wall time) has records of every run, in the order they ended; each rescheduled
run ends with a master record ``failed 25 : rescheduling``. Only the records after the last of those,
the last run's, are judged; none yet means the last run's are still being written.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from kotomamba.cluster_jobs import Resubmissions

CHAIN = Resubmissions.of("sge")

# Where status.py notes each job id that neither qstat nor qacct knows (the file's mtime: since when), beside
# the logs, and how long before such a job counts as failed: far past accounting's lag (flush_time, 15 s by
# default; qacct reads a file that the qmaster writes in batches), short of a forgotten job blocking the run.
UNSEEN = Path(".snakemake", "sge_logs", "unseen")
UNSEEN_GRACE_S = 600


def unseen_for(job_id: str) -> float:
    """Seconds since the status check that first found ``job_id`` in neither qstat nor qacct (0 the first time)."""
    marker = UNSEEN / job_id
    if not marker.exists():
        UNSEEN.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return 0.0
    return time.time() - marker.stat().st_mtime


def qstat_job(job_id: str) -> str | None:
    """``qstat -j JOB_ID`` of a job the qmaster still holds, None once it left (or never was)."""
    result = subprocess.run(["qstat", "-j", job_id], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 and "job_number" in result.stdout else None


def error_reasons(qstat_text: str) -> list[str]:
    """The ``error reason`` lines of ``qstat -j``: non-empty when the job is in an error state."""
    return [line.split(":", 1)[1].strip() for line in qstat_text.splitlines() if line.startswith("error reason")]


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


RESCHEDULED = "25"  # qacct's `failed` code of a run that Grid Engine ends to run the job again


def accounted_status(text: str) -> str | None:
    """success/failed from ``qacct -j``, judging the last run: every record of it (a multi-host job has
    one per host) must have ``failed`` 0 and ``exit_status`` 0. None while that run has no record yet."""
    records = [parse_qacct(block) for block in re.split(r"^=+$", text, flags=re.M)]
    records = [record for record in records if record]
    rescheduled = [i for i, record in enumerate(records) if record.get("failed", "").split()[:1] == [RESCHEDULED]]
    if rescheduled:
        records = records[rescheduled[-1] + 1:]
        if not records:
            return None
    ok = records and all(record.get("failed", "1").split()[0] == "0"
                         and record.get("exit_status", "1").split()[0] == "0" for record in records)
    return "success" if ok else "failed"


def status(job_id: str, attempts: int = 5) -> str:
    job_id = CHAIN.newest(job_id)
    live = qstat_job(job_id)
    if live is not None:
        reasons = error_reasons(live)
        if not reasons:
            return "running"
        print(f"Grid Engine job {job_id} is in an error state and is removed: {'; '.join(reasons)}", file=sys.stderr)
        subprocess.run(["qdel", job_id], capture_output=True, text=True)
        return "failed"
    if CHAIN.requested(job_id):
        try:
            new_id = CHAIN.resubmit(job_id, lambda out: out.strip().splitlines()[0].split(".")[0])
        except OSError as exc:
            print(f"Grid Engine job {job_id} asked to run again, but {exc}", file=sys.stderr)
            return "failed"
        print(f"Grid Engine job {job_id} asked to run again; submitted as {new_id}", file=sys.stderr)
        return "running"
    for _ in range(attempts):
        result = subprocess.run(["qacct", "-j", job_id], capture_output=True, text=True)
        judged = accounted_status(result.stdout) if result.returncode == 0 else None
        if judged is not None:
            (UNSEEN / job_id).unlink(missing_ok=True)
            return judged
        if qstat_job(job_id) is not None:
            return "running"
        time.sleep(1)
    if unseen_for(job_id) < UNSEEN_GRACE_S:
        return "running"
    print(f"Grid Engine job {job_id} is known to neither `qstat -j` nor `qacct -j` for {UNSEEN_GRACE_S} s: reported "
          "failed (is accounting on? `qacct -j` of a finished job should list it)", file=sys.stderr)
    return "failed"


if __name__ == "__main__":
    print(status(sys.argv[1]))
