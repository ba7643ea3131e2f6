"""Every reproduction config asks each cluster for the GPUs, memory and wall time its size needs.

One `snakemake -n` per config and cluster profile (no daemons) gives the resources rules/common.smk
derives from the run under that profile; the SLURM executor reads them as they are (`gres`, `nodes`,
`mem_mb`, `runtime`), and the qsub-based profiles' submit.py turns them into their own requests.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml

from config_paths import REPO, RUN_CONFIGS, provide_inputs

pytestmark = pytest.mark.slow
pytest.importorskip("snakemake")


def load_submit(profile: str):
    spec = importlib.util.spec_from_file_location(f"{profile}_submit", REPO / "profiles" / profile / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def planned_resources(result: subprocess.CompletedProcess) -> dict[str, dict[str, str]]:
    """Each planned rule's printed resources (the first job of each rule)."""
    planned: dict[str, dict[str, str]] = {}
    for block in result.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        line = re.search(r"^\s+resources: (.*)$", block, re.M)
        if line and rule not in planned:
            planned[rule] = dict(item.split("=", 1) for item in line.group(1).split(", ") if "=" in item)
    return planned


def dry_run(path, workdir, profile: str) -> dict[str, dict[str, str]]:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n", "all",
               "--profile", str(REPO / "profiles" / profile), "--configfile", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return planned_resources(result)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_config_requests_its_gpus_memory_and_wall_time(path, tmp_path, monkeypatch):
    config = yaml.safe_load(path.read_text())
    provide_inputs(tmp_path, config)
    planned = dry_run(path, tmp_path, "slurm")
    launch, wanted = config["launch"], config["resources"]
    assert launch["device"] == "gpu"
    train = planned["train"]
    assert (train["gres"], train["nodes"]) == (f"gpu:{launch['nproc_per_node']}", str(launch["nodes"]))
    assert (train["mem_mb"], train["runtime"]) == (str(wanted["train"]["mem_mb"]), str(wanted["train"]["runtime"]))
    for rule in ("convert", "evaluate"):
        assert planned[rule]["gres"] == "gpu:1" and planned[rule]["mem_mb"] == str(wanted[rule]["mem_mb"])
    assert "gres" not in planned["tokenize"]

    # The qsub-based profiles: each one's own dry run, its resources through its submit.py.
    monkeypatch.setenv("KOTOMAMBA_SGE_MPI_PE", "mpi")
    monkeypatch.setenv("KOTOMAMBA_ABCI_GROUP", "gaa50000")
    for name in ("KOTOMAMBA_SGE_STYLE", "KOTOMAMBA_SGE_GPU_RESOURCE", "KOTOMAMBA_ABCI_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    by_profile = {profile: dry_run(path, tmp_path, profile) for profile in ("sge", "abci")}
    for rule, gpus in (("train", launch["nproc_per_node"]), ("evaluate", 1)):
        properties = {profile: {"rule": rule, "threads": launch["nproc_per_node"] if rule == "train" else 1,
                                "resources": {key: int(value) if value.isdigit() else value
                                              for key, value in by_profile[profile][rule].items()}}
                      for profile in by_profile}
        sge = load_submit("sge").qsub_command(properties["sge"], "job.sh", "log")
        per_slot = gpus if launch["nodes"] > 1 else -(-gpus // properties["sge"]["threads"])
        assert f"gpu={per_slot}" in sge, sge
        abci = load_submit("abci").qsub_command(properties["abci"], "job.sh")
        assert abci[abci.index("-q") + 1] == ("rt_HF" if rule == "train" else "rt_HG"), abci
