#!/usr/bin/env python3
"""Submit one Snakemake job script to Grid Engine (SGE, SoGE, UGE/AGE); print the job id.

Called by Snakemake's cluster-generic executor as ``submit.py JOBSCRIPT``. The job's rule, threads
and resources come from the ``# properties = {...}`` line Snakemake writes into the job script; the
site settings from the job's resources (the run config's ``resources.<rule>``) or the environment:

| resource | environment | meaning |
| --- | --- | --- |
| ``sge_style`` | ``KOTOMAMBA_SGE_STYLE`` | ``pe`` (default): ``-pe PE slots``; ``abci``: ``-g GROUP -l TYPE=nodes`` (ABCI 2.0, UGE sites) |
| ``sge_pe`` | ``KOTOMAMBA_SGE_PE`` | parallel environment for one-node jobs (default ``smp``) |
| ``sge_mpi_pe`` | ``KOTOMAMBA_SGE_MPI_PE`` | parallel environment spanning nodes with one slot per host (``allocation_rule 1``, ``control_slaves TRUE``); required for ``nodes > 1`` in ``pe`` style |
| ``sge_gpu_resource`` | ``KOTOMAMBA_SGE_GPU_RESOURCE`` | consumable complex that counts GPUs (default ``gpu``), given ``gpus_per_node`` per host |
| ``sge_queue`` | ``KOTOMAMBA_SGE_QUEUE`` | ``-q`` queue (optional) |
| ``sge_group`` | ``KOTOMAMBA_SGE_GROUP`` | ``-g`` group; required in ``abci`` style |
| ``sge_resource_type`` | ``KOTOMAMBA_SGE_RESOURCE_TYPE`` | ``abci`` style node type (default ``rt_AF``) |
| ``sge_memory_resource`` | ``KOTOMAMBA_SGE_MEMORY_RESOURCE`` | complex given ``mem_mb`` per slot, e.g. ``h_vmem`` (default: none) |
| ``sge_modules`` | ``KOTOMAMBA_SGE_MODULES`` | ``module load`` these (space separated) before the job |
| ``sge_setup`` | ``KOTOMAMBA_SGE_SETUP`` | a shell line run before the job, e.g. ``source ~/venv/bin/activate`` |
| ``sge_extra`` | ``KOTOMAMBA_SGE_EXTRA`` | further ``qsub`` arguments |

``runtime`` (minutes) becomes ``-l h_rt``; ``threads`` the slots of a one-node job; ``nodes`` the
node count (``-pe MPI_PE nodes``: one slot per host); ``gpus_per_node`` (from ``launch.device: gpu``,
rules/common.smk) ``-l GPU_RESOURCE=n`` per slot; ``mem_mb`` (per node) ``-l MEMORY_RESOURCE=m`` per
slot when ``sge_memory_resource`` is set. A missing required setting stops here, before ``qsub``,
with a message naming it.

Requeue: a one-host training job that stopped for its wall time after advancing its stage exits 99
(``REQUEUE_LINES``), and Grid Engine runs it again as the same job; status.py judges its last run. A
multi-host job is submitted again instead (``RESUBMISSIONS``: Grid Engine did not start a rescheduled
multi-host job again on the test cluster), by status.py, which follows the chain of job ids.
"""
from __future__ import annotations

import functools
import re
import shlex
import sys
from pathlib import Path

from kotomamba.cluster_jobs import Resubmissions, SettingError, environment_lines, hms, job_body, submit_main
from kotomamba.cluster_jobs import setting as site_setting

DEFAULTS = {"sge_style": "pe", "sge_pe": "smp", "sge_resource_type": "rt_AF", "sge_gpu_resource": "gpu"}
setting = functools.partial(site_setting, defaults=DEFAULTS)


def qsub_command(properties: dict, script: str, log: str) -> list[str]:
    """The ``qsub`` command line for one job (``-terse`` makes qsub print the bare job id)."""
    resources = properties.get("resources", {})
    rule = properties.get("rule", "job")
    threads = int(properties.get("threads", 1))
    nodes = int(resources.get("nodes", 1) or 1)
    command = ["qsub", "-terse", "-cwd", "-V", "-S", "/bin/bash", "-j", "y", "-o", log,
               "-N", re.sub(r"[^A-Za-z0-9_.-]", "_", f"smk.{rule}")]
    style = setting(properties, "sge_style")
    gpus = int(resources.get("gpus_per_node", 0) or 0)
    slots_per_host = threads
    if style == "abci":
        group = setting(properties, "sge_group", required_for="Grid Engine `abci` style (qsub -g GROUP)")
        command += ["-g", group, "-l", f"{setting(properties, 'sge_resource_type')}={nodes}"]
        gpus = 0  # the node type carries its GPUs
    elif style == "pe":
        if nodes > 1:
            # One slot per host (the PE's allocation_rule 1): `nodes` slots are `nodes` hosts, and
            # per-slot consumables (the GPU resource, memory) are per node.
            pe = setting(properties, "sge_mpi_pe", required_for=f"a {nodes}-node job")
            command += ["-pe", pe, str(nodes)]
            slots_per_host = 1
        elif threads > 1:
            command += ["-pe", setting(properties, "sge_pe"), str(threads)]
    else:
        raise SettingError(f"sge_style must be `pe` or `abci`, got {style!r}")
    if gpus:
        # Grid Engine consumables count per slot: the node's GPUs spread over its slots, rounded up.
        per_slot = -(-gpus // max(slots_per_host, 1))
        command += ["-l", f"{setting(properties, 'sge_gpu_resource')}={per_slot}"]
    if resources.get("runtime"):
        command += ["-l", f"h_rt={hms(resources['runtime'])}"]
    memory = setting(properties, "sge_memory_resource")
    if memory and resources.get("mem_mb"):
        per_slot = -(-int(resources["mem_mb"]) // max(slots_per_host, 1))
        command += ["-l", f"{memory}={per_slot}M"]
    if setting(properties, "sge_queue"):
        command += ["-q", setting(properties, "sge_queue")]
    command += shlex.split(setting(properties, "sge_extra"))
    return command + [script]


# Requeue in place (kotomamba/train/requeue.py): `kotomamba launch` writes this file when training stopped
# for the job's wall time after advancing its stage; the job then exits 99, which Grid Engine answers by
# running this same job again (same job id, for Snakemake one job that runs long; sge_conf(5),
# FORBID_RESCHEDULE unset). The file is per run: the job's own TMPDIR, created and removed by Grid Engine.
REQUEUE_LINES = [
    'export KOTOMAMBA_REQUEUE_FILE="${TMPDIR:-/tmp}/kotomamba-requeue.$JOB_ID"',
    'rm -f "$KOTOMAMBA_REQUEUE_FILE"',
]
REQUEUE_EXIT = [
    "status=$?",
    'if [ -e "$KOTOMAMBA_REQUEUE_FILE" ]; then rm -f "$KOTOMAMBA_REQUEUE_FILE"; exit 99; fi',
    "exit $status",
]


# A multi-host job asks to be submitted again (cluster_jobs.Resubmissions): a job that Grid Engine reschedules
# (exit 99) is kept off the hosts of its `qrsh -inherit` tasks "until clean up of a previous run has
# finished", which on the test cluster (Son of Grid Engine 8.1.9, two hosts) never happened.
RESUBMISSIONS = Resubmissions.of("sge")


# `qsub -notify` warns the job's whole process group (SIGUSR2 before SIGKILL, SIGUSR1 before SIGSTOP;
# sge_conf(5)): this shell and Snakemake's job step between it and `kotomamba launch` would die of it at
# once, and the job end with them before training checkpointed. They ignore both (an ignored signal stays
# ignored across exec); the launcher and the trainer install their own handlers.
WARNING_SIGNAL_LINES = ["trap '' USR1 USR2"]


def wrapper_script(properties: dict, jobscript_text: str) -> str:
    """The job script Grid Engine runs: modules, the setup line, then Snakemake's job script (one host: in
    a subshell, so that its exit status can become the reschedule code 99 when training asks for it;
    several: with the resubmission request's path)."""
    lines = ["#!/bin/bash", "# Written by profiles/sge/submit.py for Snakemake job "
             f"{properties.get('jobid', '?')} (rule {properties.get('rule', '?')})."]
    lines += WARNING_SIGNAL_LINES
    lines += environment_lines(setting(properties, "sge_modules"), setting(properties, "sge_setup"))
    if int(properties.get("resources", {}).get("nodes", 1) or 1) > 1:
        lines += [f"export KOTOMAMBA_REQUEUE_FILE={RESUBMISSIONS.request_file('JOB_ID')}"] + job_body(jobscript_text)
    else:
        lines += REQUEUE_LINES + ["("] + job_body(jobscript_text) + [")"] + REQUEUE_EXIT
    return "\n".join(lines) + "\n"


def log_dir(properties: dict) -> Path:
    return Path(".snakemake", "sge_logs", properties.get("rule", "job"))


def submit_command(properties: dict, jobscript: str) -> list[str]:
    """The qsub command line that submits Snakemake's ``jobscript`` (its wrapper beside it); also what
    ``kotomamba submissions`` shows."""
    return qsub_command(properties, f"{jobscript}.sge.sh", str(log_dir(properties).resolve() / "$JOB_NAME.$JOB_ID.log"))


def prepare(properties: dict, jobscript: str) -> tuple[list[str], str, str]:
    log_dir(properties).mkdir(parents=True, exist_ok=True)
    command = submit_command(properties, jobscript)
    return command, command[-1], wrapper_script(properties, Path(jobscript).read_text())


def job_id(qsub_output: str) -> str:
    """-terse prints "<id>" or, for array jobs, "<id>.<range>": Snakemake wants the bare id."""
    return qsub_output.strip().splitlines()[0].split(".")[0]


def main(argv: list[str]) -> int:
    return submit_main(argv, "profiles/sge/submit.py", prepare, job_id, submitted=RESUBMISSIONS.record)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
