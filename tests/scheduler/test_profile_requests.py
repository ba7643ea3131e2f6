"""What the qsub-based profiles ask the scheduler for, and how SGE status reads a job, without
daemons: the GPU, slot and node requests derived from `gpus_per_node` / `nodes` (rules/common.smk),
the environment passed to PBS jobs, and Grid Engine's per-job status with error states."""
from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def load(profile: str, name: str):
    spec = importlib.util.spec_from_file_location(f"{profile}_{name}", PROFILES / profile / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sge_submit, sge_status, abci_submit = load("sge", "submit"), load("sge", "status"), load("abci", "submit")


def properties(rule="train", threads=8, **resources) -> dict:
    return {"rule": rule, "jobid": 7, "threads": threads, "resources": resources}


def values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, item in enumerate(command[:-1]) if item == flag]


def pe_request(command: list[str]) -> list[str]:
    return command[command.index("-pe") + 1:command.index("-pe") + 3] if "-pe" in command else []


@pytest.fixture(autouse=True)
def no_site_settings(monkeypatch):
    for name in ("STYLE", "PE", "MPI_PE", "GPU_RESOURCE", "MEMORY_RESOURCE", "QUEUE", "EXTRA"):
        monkeypatch.delenv(f"KOTOMAMBA_SGE_{name}", raising=False)
    monkeypatch.delenv("KOTOMAMBA_ABCI_QUEUE", raising=False)
    monkeypatch.setenv("KOTOMAMBA_ABCI_GROUP", "gaa50000")


def test_sge_multi_node_job_takes_one_slot_per_host_and_its_gpus_per_host(monkeypatch):
    monkeypatch.setenv("KOTOMAMBA_SGE_MPI_PE", "mpi")
    monkeypatch.setenv("KOTOMAMBA_SGE_MEMORY_RESOURCE", "mem_req")
    command = sge_submit.qsub_command(properties(nodes=4, gpus_per_node=8, mem_mb=64000, runtime=90), "j", "log")
    assert pe_request(command) == ["mpi", "4"]
    assert values(command, "-l") == ["gpu=8", "h_rt=01:30:00", "mem_req=64000M"]


def test_sge_one_node_job_spreads_gpus_and_memory_over_its_slots(monkeypatch):
    monkeypatch.setenv("KOTOMAMBA_SGE_GPU_RESOURCE", "gpus")
    monkeypatch.setenv("KOTOMAMBA_SGE_MEMORY_RESOURCE", "h_vmem")
    command = sge_submit.qsub_command(properties(threads=4, nodes=1, gpus_per_node=4, mem_mb=8000), "j", "log")
    assert pe_request(command) == ["smp", "4"] and values(command, "-l") == ["gpus=1", "h_vmem=2000M"]
    evaluate = sge_submit.qsub_command(properties("evaluate", threads=1, gpus_per_node=1), "j", "log")
    assert "-pe" not in evaluate and values(evaluate, "-l") == ["gpus=1"]
    cpu_only = sge_submit.qsub_command(properties("tokenize", threads=2), "j", "log")
    assert not any(value.startswith("gpu") for value in values(cpu_only, "-l"))


def test_sge_multi_node_job_without_a_spanning_pe_stops_before_qsub():
    with pytest.raises(sge_submit.SettingError, match="KOTOMAMBA_SGE_MPI_PE"):
        sge_submit.qsub_command(properties(nodes=2), "j", "log")


@pytest.mark.parametrize("resources, queue", [
    ({"nodes": 2, "gpus_per_node": 8}, "rt_HF"),
    ({"nodes": 1, "gpus_per_node": 8}, "rt_HF"),
    ({"gpus_per_node": 1}, "rt_HG"),
    ({"nodes": 1}, "rt_HF"),            # training without a GPU request still takes a full node
    ({}, "rt_HC"),
])
def test_abci_resource_type_follows_the_gpu_request(resources, queue):
    command = abci_submit.qsub_command(properties(**resources), "j")
    assert values(command, "-q") == [queue]
    assert "-V" in command  # the submitting environment (NCCL_*, WANDB_*, HF_*) reaches the job


QSTAT_EQW = """==============================================================
job_number:                 12
owner:                      root
error reason          1:      12/01/2026 15:04:44 [0:4203]: error: can't chdir to /nonexistent: No such file
scheduling info:            Job is in error state
"""
QACCT_TWO_HOSTS = """==============================================================
qname        all.q
hostname     ktnode1
failed       0
exit_status  {first}
==============================================================
qname        all.q
hostname     ktnode2
failed       0
exit_status  0
"""


def test_sge_status_removes_jobs_in_error_state(monkeypatch, capsys):
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        stdout = QSTAT_EQW if command[:2] == ["qstat", "-j"] else ""
        return type("Result", (), {"returncode": 0, "stdout": stdout, "stderr": ""})()

    monkeypatch.setattr(sge_status.subprocess, "run", run)
    assert sge_status.status("12") == "failed"
    assert ["qdel", "12"] in calls and all(command[:2] != ["qstat", "-u"] for command in calls)
    assert "can't chdir" in capsys.readouterr().err


def test_sge_status_fails_a_job_neither_qstat_nor_qacct_knows_after_a_grace(monkeypatch, tmp_path, capsys):
    """A job id the cluster forgot (accounting off or rotated away) was reported running forever: Snakemake
    waited for it without end. Accounting's lag is waited for, then the job is failed, saying why."""
    def run(command, **kwargs):
        return type("Result", (), {"returncode": 1, "stdout": "", "stderr": "error: job id 42 not found"})()

    monkeypatch.setattr(sge_status.subprocess, "run", run)
    monkeypatch.setattr(sge_status.time, "sleep", lambda seconds: None)
    monkeypatch.chdir(tmp_path)
    assert sge_status.status("42") == "running"  # accounting may lag: asked again later
    marker = tmp_path / sge_status.UNSEEN / "42"
    first_seen = marker.stat().st_mtime - sge_status.UNSEEN_GRACE_S - 1
    os.utime(marker, (first_seen, first_seen))
    assert sge_status.status("42") == "failed"
    assert "job 42 is known to neither `qstat -j` nor `qacct -j`" in capsys.readouterr().err


@pytest.mark.parametrize("first, expected", [("0", "success"), ("1", "failed")])
def test_sge_status_needs_every_host_of_a_finished_job_to_succeed(first, expected):
    assert sge_status.accounted_status(QACCT_TWO_HOSTS.format(first=first)) == expected


# A job Grid Engine ran three times (exit 99 twice: requeue in place), as qacct -j prints it: the records
# of each run in the order they ended, each rescheduled run's ending with `failed 25 : rescheduling`.
QACCT_RESCHEDULED = """==============================================================
hostname     ktnode1
failed       25  : rescheduling
exit_status  99
==============================================================
hostname     ktnode2
failed       25  : rescheduling
exit_status  99
==============================================================
hostname     ktnode1
failed       0
exit_status  {last}
"""


@pytest.mark.parametrize("last, expected", [("0", "success"), ("1", "failed")])
def test_sge_status_judges_the_last_run_of_a_rescheduled_job(last, expected):
    assert sge_status.accounted_status(QACCT_RESCHEDULED.format(last=last)) == expected
    # The last run's record not written yet: not judged (asked again), never the exit-99 runs' failure.
    first_runs = QACCT_RESCHEDULED.rsplit("=" * 62, 1)[0]
    assert sge_status.accounted_status(first_runs) is None


@pytest.mark.parametrize("requested, code", [(True, 99), (False, 3)])
def test_sge_wrapper_turns_a_requeue_request_into_the_reschedule_code(tmp_path, requested, code):
    """The wrapper submit.py writes, run by bash as Grid Engine runs it: a job whose launcher wrote the
    requeue file exits 99 (Grid Engine runs it again); otherwise the job script's own exit status."""
    request = 'echo "$JOB_ID" > "$KOTOMAMBA_REQUEUE_FILE"; ' if requested else ""
    jobscript = f"#!/bin/sh\n# properties = {{}}\n{request}exit 3\n"
    wrapper = tmp_path / "job.sge.sh"
    wrapper.write_text(sge_submit.wrapper_script(properties(), jobscript))
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "JOB_ID": "41"}
    assert subprocess.run(["bash", str(wrapper)], env=env).returncode == code
    assert not (tmp_path / "kotomamba-requeue.41").exists()  # a later run starts without a request


def test_sge_multi_host_wrapper_leaves_the_request_for_status_to_submit_again(tmp_path, monkeypatch):
    """A multi-host job's wrapper never asks for a reschedule (Grid Engine did not start one again): the
    launcher's request lands in submit.py's resubmission directory and the job's own exit status stands."""
    monkeypatch.chdir(tmp_path)
    jobscript = '#!/bin/sh\n# properties = {}\necho "$JOB_ID" > "$KOTOMAMBA_REQUEUE_FILE"; exit 75\n'
    wrapper = tmp_path / "job.sge.sh"
    wrapper.write_text(sge_submit.wrapper_script(properties(nodes=2), jobscript))
    sge_submit.RESUBMISSIONS.record(["qsub", "x"], "41")
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "JOB_ID": "41"}
    assert subprocess.run(["bash", str(wrapper)], env=env).returncode == 75
    assert sge_submit.RESUBMISSIONS.requested("41") and sge_submit.RESUBMISSIONS.newest("41") == "41"
