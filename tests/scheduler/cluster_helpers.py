"""Running the pipeline through the test clusters (tests/scheduler/start_slurm.sh, start_sge.sh):
whether the tier must run, the jobs' environment, a check that a scheduler takes jobs, the profiles."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# With KOTOMAMBA_SCHEDULER_TESTS=1 (CI) a cluster that is not up FAILS the tier; without it the tier
# is skipped, so quick developer runs need no daemons.
REQUIRED = os.environ.get("KOTOMAMBA_SCHEDULER_TESTS") == "1"

PROFILES = {
    "slurm": ["--profile", str(REPO / "profiles" / "slurm"), "--slurm-init-seconds-before-status-checks", "2",
              "--slurm-keep-successful-logs"],
    "sge": ["--profile", str(REPO / "profiles" / "sge")],
}


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
