"""Issue 21: `kotomamba submissions` shows what each qsub profile submits, and a setting a profile needs
stops a real run before its first submission (no PBS here: nothing may reach a qsub). The SLURM side
runs against the test cluster (tests/scheduler/test_submission_view.py), except where no controller answers."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
pytest.importorskip("snakemake")

REPO = Path(__file__).resolve().parents[1]


def env_without(*prefixes: str, **extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    return {**env, **extra}


def view(workdir: Path, profile: str, env: dict, config: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kotomamba", "submissions", "--profile", str(REPO / "profiles" / profile),
               "--configfile", str(config or REPO / "config.yaml"), "--", "-s", str(REPO / "Snakefile")]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir, timeout=300)


def commands(text: str) -> dict[str, list[list[str]]]:
    """Each rule's shown submission commands, split as the shell would."""
    shown: dict[str, list[list[str]]] = {}
    rule = None
    for line in text.splitlines():
        if line.startswith("job "):
            rule = line.split("rule ", 1)[1].split()[0].rstrip(";")
        elif line.startswith("  qsub ") and rule:
            shown.setdefault(rule, []).append(shlex.split(line))
    return shown


def test_abci_view_and_a_run_without_a_group_stop_before_any_qsub(tmp_path):
    unset = env_without("KOTOMAMBA_ABCI_")
    missing = view(tmp_path, "abci", unset)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "error: rule train: ABCI (qsub -P <your ABCI group>) needs `abci_group`: export KOTOMAMBA_ABCI_GROUP" \
        in missing.stdout

    shown = commands(view(tmp_path, "abci", {**unset, "KOTOMAMBA_ABCI_GROUP": "gaa50000"}).stdout)
    assert {"corpus", "tokenizer", "train", "convert", "evaluate", "report"} <= set(shown)
    assert "stage_config" not in shown and "run_record" not in shown  # local rules: never submitted
    for rule, lines in shown.items():
        for command in lines:
            assert command[:3] == ["qsub", "-P", "gaa50000"], command
            assert command[-1].endswith(".pbs.sh") and f"snakejob.{rule}." in command[-1]
    train = shown["train"][0]
    assert train[train.index("-q") + 1] == "rt_HF" and "select=1" in train  # a training job takes a full node
    assert shown["corpus"][0][shown["corpus"][0].index("-q") + 1] == "rt_HC"

    # A real run: the Snakefile's onstart stops it before the first job's submit.py runs.
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "all", "--profile",
                          str(REPO / "profiles" / "abci"), "--configfile", str(REPO / "config.yaml")],
                         capture_output=True, text=True, env=unset, cwd=tmp_path, timeout=300)
    assert run.returncode != 0
    assert "nothing was submitted" in run.stderr and "KOTOMAMBA_ABCI_GROUP" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / ".snakemake" / "pbs_logs").exists() and not (tmp_path / "results").exists()


def test_sge_view_names_the_setting_only_the_multi_node_training_needs(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["launch"] = {**config["launch"], "nodes": 2, "nproc_per_node": 1}
    path = tmp_path / "two-nodes.yaml"
    path.write_text(yaml.safe_dump(config))
    unset = env_without("KOTOMAMBA_SGE_")
    shown = view(tmp_path, "sge", unset, path)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    errors = [line for line in shown.stdout.splitlines() if line.startswith("error: ")]
    assert errors == ["error: rule train: a 2-node job needs `sge_mpi_pe`: export KOTOMAMBA_SGE_MPI_PE=... or set "
                      "`resources: {train: {sge_mpi_pe: ...}}` in the run config"]

    fixed = view(tmp_path, "sge", {**unset, "KOTOMAMBA_SGE_MPI_PE": "mpi"}, path)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    train = commands(fixed.stdout)["train"][0]
    assert train[train.index("-pe") + 1:train.index("-pe") + 3] == ["mpi", "2"]
    assert "h_rt=01:00:00" in train and train[train.index("-o") + 1].endswith("/train/$JOB_NAME.$JOB_ID.log")


@pytest.mark.skipif(shutil.which("sinfo") is None, reason="needs SLURM's commands (sinfo)")
def test_slurm_view_says_once_why_no_partition_can_be_guessed(tmp_path):
    # SLURM's own sinfo, pointed at a controller that does not answer (nothing listens on the discard port).
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=9\n"
                    "NodeName=n1 CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=n1 Default=YES\n")
    env = env_without("KOTOMAMBA_SLURM_", "SLURM_", KOTOMAMBA_SLURM_ACCOUNT="ci", SLURM_CONF=str(conf))
    shown = view(tmp_path, "slurm", env)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    errors = [line for line in shown.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    assert re.match(r"error: rules [a-z_, ]*\btrain\b[a-z_, ]*: no SLURM partition is named, and the SLURM "
                    r"executor's guess of the default one failed \(.*sinfo.*controller.*\); name it "
                    r"\(KOTOMAMBA_SLURM_PARTITION", errors[0]), errors

    named = view(tmp_path, "slurm", {**env, "KOTOMAMBA_SLURM_PARTITION": "gpu"})
    assert named.returncode == 0, named.stdout + named.stderr
    sbatch = [shlex.split(line) for line in named.stdout.splitlines() if line.startswith("  sbatch ")]
    assert sbatch and all(line[line.index("-p") + 1] == "gpu" for line in sbatch), named.stdout


def test_a_local_run_of_a_multi_node_training_stops_before_any_job(tmp_path):
    """Without a scheduler the data stages used to run first, and the training then stopped at its own start
    (`--nnodes 2 needs a SLURM, Grid Engine or PBS allocation`)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["launch"] = {**config["launch"], "nodes": 2, "nproc_per_node": 1}
    path = tmp_path / "two-nodes.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "all", "--profile",
                          str(REPO / "profiles" / "local"), "--configfile", str(path)],
                         capture_output=True, text=True, env=env_without("SLURM_", "PBS_", "JOB_ID"), cwd=tmp_path,
                         timeout=300)
    assert run.returncode != 0
    assert "nothing was run: rule train: launch.nodes 2 needs 2 nodes, and this run has no scheduler" in run.stderr, \
        run.stderr[-3000:]
    assert not (tmp_path / "results").exists()
