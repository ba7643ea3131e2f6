"""Issue 21: `kotomamba submissions` shows the sbatch / qsub line a run really submits, and a run whose
jobs SLURM would refuse for want of an account stops before its first submission. Against the test
clusters (tests/scheduler/start_slurm.sh, start_sge.sh); the SLURM one enforces associations like most
sites."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("snakemake_executor_plugin_slurm")  # Snakemake 9 and its plugins need Python >= 3.11

from cluster_helpers import PROFILES, REPO, REQUIRED, daemon_problem, scheduler_env  # noqa: E402
from kotomamba.pipeline.submissions import RUN_UUID, enforced_accounting  # noqa: E402
problem = daemon_problem("slurm")
pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))

TARGET = "results/default/corpus/pydoc.jsonl"  # one short job: the builtin corpus
CONFIG = str(REPO / "config.yaml")


def view(workdir: Path, env: dict, profile: str = "slurm") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kotomamba", "submissions", "--profile", str(REPO / "profiles" / profile),
               "--configfile", CONFIG, TARGET, "--", "-s", str(REPO / "Snakefile")]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir, timeout=300)


def sbatch_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("sbatch ")]


@pytest.mark.scheduler("slurm")
def test_the_view_shows_the_sbatch_line_the_slurm_executor_runs(tmp_path):
    assert problem is None, problem
    env = scheduler_env("true")  # KOTOMAMBA_SLURM_ACCOUNT=ci
    shown = view(tmp_path, env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [expected] = sbatch_lines(shown.stdout)
    assert " -A ci " in expected and " -t 30 --mem 2000 " in expected

    # The real run: the plugin logs each sbatch call it makes (--verbose).
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               TARGET, *PROFILES["slurm"], "--configfile", CONFIG, "--verbose"]
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    calls = [line.split("sbatch call: ", 1)[1] for line in (run.stdout + run.stderr).splitlines()
             if "sbatch call: " in line]
    assert len(calls) == 1, calls
    words = calls[0].split(" ")
    uuid = words[words.index("--job-name") + 1]
    assert calls[0].replace(f"--job-name {uuid} ", f"--job-name '{RUN_UUID}' ") == expected
    assert (tmp_path / TARGET).is_file()


@pytest.mark.scheduler("slurm")
def test_an_empty_account_is_checked_against_the_clusters_enforcement(tmp_path):
    assert problem is None, problem
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    assert "associations" in enforced_accounting(config)  # as the test cluster is set up

    env = {**scheduler_env("true"), "KOTOMAMBA_SLURM_ACCOUNT": ""}
    with_default = view(tmp_path, env)  # root has a default account: a warning, the view succeeds
    assert with_default.returncode == 0, with_default.stdout + with_default.stderr
    assert "warning: no SLURM account for corpus: this cluster enforces associations" in with_default.stdout
    assert "default account" in with_default.stdout

    # A user without an association (the executor asks SLURM as getpass.getuser(), from $USER too).
    stranger = {**env, "USER": "kt-no-association", "LOGNAME": "kt-no-association"}
    refused = view(tmp_path, stranger)
    assert refused.returncode == 1
    assert "error: no SLURM account for corpus" in refused.stdout and "has no default account" in refused.stdout
    assert "KOTOMAMBA_SLURM_ACCOUNT" in refused.stdout

    # The real run stops in the Snakefile's onstart, before its first sbatch (no SLURM log directory).
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               TARGET, *PROFILES["slurm"], "--configfile", CONFIG]
    run = subprocess.run(command, capture_output=True, text=True, env=stranger, cwd=tmp_path, timeout=300)
    assert run.returncode != 0
    assert "nothing was submitted" in run.stderr and "has no default account" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / ".snakemake" / "slurm_logs" / "rule_corpus").exists()
    assert not (tmp_path / TARGET).exists()


@pytest.mark.scheduler("sge")
def test_the_view_shows_the_qsub_line_the_sge_profile_runs(tmp_path):
    """The real submission's qsub arguments are logged by a `qsub` first on PATH that runs Grid Engine's."""
    sge_problem = daemon_problem("sge")
    assert sge_problem is None, sge_problem
    env = scheduler_env("true")
    shown = view(tmp_path, env, "sge")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [expected] = [line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("qsub ")]

    wrapper = tmp_path / "bin" / "qsub"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/qsub.args\nexec {shutil.which("qsub")} "$@"\n')
    wrapper.chmod(0o755)
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               TARGET, *PROFILES["sge"], "--configfile", CONFIG]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={**env, "PATH": f"{wrapper.parent}:{env['PATH']}"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = ["qsub", *(tmp_path / "qsub.args").read_text().splitlines()]
    jobscript = Path(ran[-1])  # .snakemake/tmp.<random>/snakejob.corpus.<id>.sh.sge.sh, known only then
    assert jobscript.name.startswith("snakejob.corpus.") and jobscript.parent.name.startswith("tmp.")
    shown_words = shlex.split(expected)
    assert shown_words[:-1] == ran[:-1]
    assert Path(shown_words[-1]).name == jobscript.name
    assert (tmp_path / TARGET).is_file()


@pytest.mark.scheduler("slurm")
def test_a_partition_or_account_the_cluster_does_not_have_stops_the_run_before_any_job(tmp_path):
    """A misspelt partition or account would be refused by sbatch, and one set for a single rule only when the run
    reached that rule; the view and the real run's onstart ask the cluster (sinfo, sacctmgr) first."""
    assert problem is None, problem
    env = {**scheduler_env("true"), "KOTOMAMBA_SLURM_PARTITION": "nope", "KOTOMAMBA_SLURM_ACCOUNT": "nobody"}
    refused = view(tmp_path, env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "rule corpus: partition 'nope' is not one of this cluster's (debug, sinfo)" in refused.stdout
    assert "rule corpus: account 'nobody' has no association with user root" in refused.stdout
    assert "KOTOMAMBA_SLURM_ACCOUNT" in refused.stdout

    # One rule's partition misspelt in the run config: the real run stops in onstart, before its first sbatch.
    config = tmp_path / "typo.yaml"
    config.write_text(Path(CONFIG).read_text() + "resources:\n  corpus: {slurm_partition: debugg}\n")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               TARGET, *PROFILES["slurm"], "--configfile", str(config)]
    run = subprocess.run(command, capture_output=True, text=True, env=scheduler_env("true"), cwd=tmp_path, timeout=300)
    assert run.returncode != 0
    assert "nothing was submitted" in run.stderr and "partition 'debugg' is not one of" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / ".snakemake" / "slurm_logs" / "rule_corpus").exists()
    assert not (tmp_path / TARGET).exists()
