"""Every reproduction config asks each cluster for the GPUs, memory and wall time its size needs.

One dry run per config and cluster profile (no daemons) gives the jobs and resources rules/common.smk
derives from the run under that profile, and each job's submission as `kotomamba submissions` shows it
(kotomamba/pipeline/submissions.py): the SLURM executor's sbatch line, the qsub-based profiles' submit.py.
"""
from __future__ import annotations

import shlex

import pytest
import yaml

from config_paths import REPO, RUN_CONFIGS, provide_inputs

pytestmark = pytest.mark.slow
pytest.importorskip("snakemake")


def planned(path, workdir, profile: str) -> dict:
    """The first submitted job of each rule under ``profile``, and the profile."""
    from kotomamba.pipeline.submissions import Profile, plan

    jobs = plan(str(REPO / "profiles" / profile), str(path), ["all"], ["-s", str(REPO / "Snakefile"), "-d", str(workdir)])
    first: dict = {}
    for job in jobs:
        first.setdefault(job.rule, job)
    return first, Profile.from_dir(REPO / "profiles" / profile)


def submitted(profile, job, workdir) -> list[str]:
    from kotomamba.pipeline.submissions import submission

    return shlex.split(submission(profile, job, workdir))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_config_requests_its_gpus_memory_and_wall_time(path, tmp_path, monkeypatch):
    config = yaml.safe_load(path.read_text())
    provide_inputs(tmp_path, config)
    # Both named, so that the plugin's guesses (sacct, sinfo) are never asked: a machine with SLURM's
    # commands and no reachable controller would fail them.
    monkeypatch.setenv("KOTOMAMBA_SLURM_ACCOUNT", "ci")
    monkeypatch.setenv("KOTOMAMBA_SLURM_PARTITION", "gpu")
    jobs, slurm = planned(path, tmp_path, "slurm")
    launch, wanted = config["launch"], config["resources"]
    assert launch["device"] == "gpu"
    train = jobs["train"].resources
    assert (train["gres"], train["nodes"]) == (f"gpu:{launch['nproc_per_node']}", launch["nodes"])
    assert (train["mem_mb"], train["runtime"]) == (wanted["train"]["mem_mb"], wanted["train"]["runtime"])
    for rule in ("convert", "evaluate"):
        assert jobs[rule].resources["gres"] == "gpu:1" and jobs[rule].resources["mem_mb"] == wanted[rule]["mem_mb"]
    assert "gres" not in jobs["tokenize"].resources
    sbatch = submitted(slurm, jobs["train"], tmp_path)
    assert f"--gres=gpu:{launch['nproc_per_node']}" in sbatch and f"--nodes={launch['nodes']}" in sbatch, sbatch
    assert sbatch[sbatch.index("-t") + 1] == str(wanted["train"]["runtime"]) and ["-A", "ci"] == sbatch[
        sbatch.index("-A"):sbatch.index("-A") + 2] and sbatch[sbatch.index("-p") + 1] == "gpu"

    # The qsub-based profiles: each one's own dry run, its jobs through its submit.py.
    monkeypatch.setenv("KOTOMAMBA_SGE_MPI_PE", "mpi")
    monkeypatch.setenv("KOTOMAMBA_ABCI_GROUP", "gaa50000")
    for name in ("KOTOMAMBA_SGE_STYLE", "KOTOMAMBA_SGE_GPU_RESOURCE", "KOTOMAMBA_ABCI_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    by_profile = {profile: planned(path, tmp_path, profile) for profile in ("sge", "abci")}
    for rule, gpus in (("train", launch["nproc_per_node"]), ("evaluate", 1)):
        jobs, profile = by_profile["sge"]
        sge = submitted(profile, jobs[rule], tmp_path)
        per_slot = gpus if launch["nodes"] > 1 else -(-gpus // jobs[rule].threads)
        assert f"gpu={per_slot}" in sge, sge
        jobs, profile = by_profile["abci"]
        abci = submitted(profile, jobs[rule], tmp_path)
        assert abci[abci.index("-q") + 1] == ("rt_HF" if rule == "train" else "rt_HG"), abci
