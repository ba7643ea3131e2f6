"""The Grid Engine profile's cancel command (cluster-generic's `cancel.sh JOB_ID...`) through the real Grid
Engine: Snakemake names the first job of a chain of resubmissions (kotomamba.cluster_jobs.Resubmissions, a
multi-host job submitted again by status.py), and the job that runs, the newest of the chain, is deleted,
and no other."""
from __future__ import annotations

import subprocess
import time

import pytest
from cluster_helpers import REPO, REQUIRED, daemon_problem, scheduler_env

from kotomamba.cluster_jobs import Resubmissions

pytestmark = [pytest.mark.scheduler]
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))


def queued(job_id: str, env: dict[str, str]) -> bool:
    """Whether Grid Engine still holds job ``job_id`` (queued or running)."""
    return subprocess.run(["qstat", "-j", job_id], capture_output=True, env=env).returncode == 0


@pytest.mark.scheduler("sge")
def test_cancel_deletes_the_newest_job_of_the_chain_snakemake_names(tmp_path):
    problem = daemon_problem("sge")
    if problem:
        pytest.fail(f"sge is not up: {problem}")
    env = scheduler_env("true")
    sleeper = ["qsub", "-terse", "-b", "y", "-cwd", "-j", "y", "-o", "/dev/null", "sleep", "600"]
    first, newest = (subprocess.run(sleeper, capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
                     .stdout.strip() for _ in range(2))
    try:
        chain = tmp_path / Resubmissions.of("sge").directory
        chain.mkdir(parents=True)
        (chain / f"{first}.next").write_text(f"{newest}\n")  # what status.py records on resubmitting
        subprocess.run([str(REPO / "profiles" / "sge" / "cancel.sh"), first], env=env, cwd=tmp_path, check=True,
                       capture_output=True)
        deadline = time.monotonic() + 60  # a hang guard only
        while queued(newest, env):
            assert time.monotonic() < deadline, f"job {newest} still queued after cancel.sh {first}"
            time.sleep(0.5)
        assert queued(first, env), f"cancel.sh {first} deleted job {first}, which its resubmission replaced"
    finally:
        subprocess.run(["qdel", first, newest], capture_output=True, env=env)
