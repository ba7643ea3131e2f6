#!/usr/bin/env python3
"""Print one of running / success / failed for a PBS Professional job id (cluster-generic status).

``qstat -x -f JOB_ID`` shows finished jobs too (ABCI keeps them 10 days): ``job_state`` F (finished)
or X (finished array subjob) with ``Exit_status`` 0 is success, any other exit status failed
(PBS reports a job killed at its walltime as 271 = 256 + SIGTERM, a job that never ran as a
negative code); every other state (Q, R, E exiting, H, W, S, B, T, M) is running. A job
``qstat -x`` does not know is failed.

Requeue by resubmission: a training job that stopped for its wall time after advancing its stage left
a request (submit.py's ``REQUEUE_DIR/<job id>``, written by ``kotomamba launch``). Once that job has
finished, it is submitted again with its own qsub command (``<job id>.qsub``), the new id is recorded
as ``<job id>.next`` and the job is reported running; Snakemake keeps asking about the first id, which
is followed along the ``.next`` chain to the newest job, the one judged.
"""
from __future__ import annotations

import subprocess
import sys

from kotomamba.cluster_jobs import Resubmissions

CHAIN = Resubmissions.of("pbs")


def parse_qstat_full(text: str) -> dict[str, str]:
    """``qstat -f`` output as a dict; values PBS wrapped onto tab-indented lines are joined."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("\t") and key is not None:
            fields[key] += line.strip()
        elif " = " in line:
            key, _, value = line.strip().partition(" = ")
            fields[key] = value.strip()
        else:
            key = None
    return fields


def job_status(fields: dict[str, str]) -> str:
    state = fields.get("job_state")
    if state is None:
        return "failed"
    if state not in ("F", "X"):
        return "running"
    return "success" if fields.get("Exit_status", "").strip() == "0" else "failed"


def main(job_id: str) -> str:
    job_id = CHAIN.newest(job_id)
    for _ in range(3):
        result = subprocess.run(["qstat", "-x", "-f", job_id], capture_output=True, text=True)
        if result.returncode == 0:
            judged = job_status(parse_qstat_full(result.stdout))
            if judged != "running" and CHAIN.requested(job_id):
                try:
                    new_id = CHAIN.resubmit(job_id, lambda out: out.strip().splitlines()[0])
                    print(f"PBS job {job_id} asked to run again; submitted as {new_id}", file=sys.stderr)
                except OSError as exc:
                    print(f"PBS job {job_id} asked to run again, but {exc}", file=sys.stderr)
                    return "failed"
                return "running"
            return judged
        if "Unknown Job Id" in result.stderr:
            return "failed"
    return "running"  # the PBS server did not answer: ask again at the next status check


if __name__ == "__main__":
    print(main(sys.argv[1]))
