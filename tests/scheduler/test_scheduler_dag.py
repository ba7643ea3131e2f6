"""The tiny DAG through real SLURM and Grid Engine daemons on localhost, compared with a local run.

Start the daemons first (as root): `tests/scheduler/start_slurm.sh` and `tests/scheduler/start_sge.sh`.
With KOTOMAMBA_SCHEDULER_TESTS=1 (CI) a daemon that is not up FAILS the tier; without it the tier
is skipped, so quick developer runs need no daemons.

Each run tokenizes the builtin corpus and trains one tiny stage as a scheduler job of 2 CPU
processes (`kotomamba launch --nproc-per-node 2` inside the job); the tokenized .bin/.idx must
equal the local run's byte for byte and the training losses must be equal.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
# Snakemake 9 needs Python >= 3.11; on 3.10 the library is tested without the pipeline.
pytest.importorskip("snakemake")

REQUIRED = os.environ.get("KOTOMAMBA_SCHEDULER_TESTS") == "1"
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))


def scheduler_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SGE_ROOT", "/var/lib/gridengine")
    env.setdefault("SGE_CELL", "default")
    env.setdefault("KOTOMAMBA_SLURM_ACCOUNT", "ci")
    env["OMP_NUM_THREADS"] = "1"
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
        result = subprocess.run(command, capture_output=True, text=True, env=scheduler_env(), timeout=60)
        if result.returncode != 0:
            return f"`{' '.join(command)}` failed ({result.stderr.strip()}): run tests/scheduler/start_{name}.sh"
    return None


def tiny_config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["run"] = "sched"
    config["corpus"]["sources"][0]["max_bytes"] = 200_000
    config["tokenizer"]["vocab_size"] = 800
    config["model"].update(d_model=32, n_layer=2)
    config["stages"] = [config["stages"][0]]
    config["stages"][0]["train"]["train"] = {"steps": 12}
    config["stages"][0]["train"]["data"] = {"seq_length": 32}
    config["train"]["train"].update(micro_batch_size=2, global_batch_size=4)
    config["train"]["schedule"] = {**config["train"]["schedule"], "warmup_steps": 2}
    config["train"]["eval"] = {"interval": 6, "steps": 1}
    config["train"]["checkpoint"] = {"interval": 6, "keep_last": 1}
    config["train"]["logging"] = {"interval": 1}
    config["launch"] = {"nodes": 1, "nproc_per_node": 2}
    config["resources"] = {"train": {"runtime": 20, "mem_mb": 3000}}
    return config


def run_pipeline(workdir: Path, *profile_args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True)
    config_file = workdir / "sched.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config()))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config_file), "--until", "train", *profile_args]
    return subprocess.run(command, capture_output=True, text=True, env=scheduler_env(), cwd=workdir, timeout=1800)


def outputs(workdir: Path) -> tuple[dict[str, bytes], list[tuple]]:
    """(tokenized .bin/.idx contents by name, the training (step, loss) records)."""
    root = workdir / "results" / "sched"
    tokenized = {path.name: path.read_bytes() for path in sorted(root.rglob("*")) if path.suffix in (".bin", ".idx")}
    metrics = sorted(root.rglob("metrics.jsonl"))
    assert metrics, f"no metrics.jsonl under {root}"
    losses = []
    for line in metrics[0].read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.append((record.get("step"), record["loss"]))
    assert losses, f"{metrics[0]} has no losses"
    return tokenized, losses


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local") / "run"
    result = run_pipeline(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return outputs(workdir)


PROFILES = {
    "slurm": ["--profile", str(REPO / "profiles" / "slurm"), "--slurm-init-seconds-before-status-checks", "2"],
    "sge": ["--profile", str(REPO / "profiles" / "sge")],
}


@pytest.mark.parametrize("scheduler", sorted(PROFILES))
def test_dag_through_scheduler_equals_local_run(scheduler, local_run, tmp_path):
    problem = daemon_problem(scheduler)
    if problem:
        pytest.fail(f"{scheduler} is not up: {problem}")
    workdir = tmp_path / "run"
    result = run_pipeline(workdir, *PROFILES[scheduler])
    logs = "\n".join(path.read_text(errors="replace")[-3000:] for path in workdir.rglob("*.log"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:] + logs[-6000:]
    assert ("submitted with SLURM jobid" if scheduler == "slurm" else "with external jobid") in result.stdout + result.stderr
    tokenized, losses = outputs(workdir)
    local_tokenized, local_losses = local_run
    assert sorted(tokenized) == sorted(local_tokenized) and tokenized, "different tokenized files"
    for name in tokenized:
        assert tokenized[name] == local_tokenized[name], f"{name} differs from the local run's"
    assert losses == local_losses
