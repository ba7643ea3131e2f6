#!/usr/bin/env python3
"""Submit one Snakemake job script to ABCI 3.0 (PBS Professional); print the job id ("1234.pbs1").

Called by Snakemake's cluster-generic executor as ``submit.py JOBSCRIPT``. The job's rule, threads
and resources come from the ``# properties = {...}`` line Snakemake writes into the job script; the
site settings from the job's resources (the run config's ``resources.<rule>``) or the environment:

| resource | environment | meaning |
| --- | --- | --- |
| ``abci_group`` | ``KOTOMAMBA_ABCI_GROUP`` | ``qsub -P`` group (ABCI project); required |
| ``abci_queue`` | ``KOTOMAMBA_ABCI_QUEUE`` | resource type: ``rt_HF`` (full node, 8 H200; default for training and for jobs asking more than one GPU), ``rt_HG`` (1 GPU; default for a job asking one, e.g. evaluate with ``launch.device: gpu``), ``rt_HC`` (32 cores, no GPU; default otherwise), or a reservation ``R<id>`` |
| ``abci_modules`` | ``KOTOMAMBA_ABCI_MODULES`` | ``module load`` these (space separated; default CUDA 12.6, cuDNN 9.5, HPC-X 2.20) |
| ``abci_setup`` | ``KOTOMAMBA_ABCI_SETUP`` | a shell line run before the job, e.g. ``source ~/venvs/kotomamba/bin/activate`` |
| ``abci_extra`` | ``KOTOMAMBA_ABCI_EXTRA`` | further ``qsub`` arguments |

The run config's ``resources.<rule>`` wins over the environment, which wins over the defaults. ``nodes`` becomes ``-l select=N``, ``runtime``
(minutes) ``-l walltime=HH:MM:SS``; ``gpus_per_node`` (rules/common.smk) picks the default
resource type. A reservation queue ``R<id>`` adds ``-v RTYPE=rt_HF``. ``-V`` gives the job the
submitting shell's environment. The job
runs ``cd $PBS_O_WORKDIR``, the module loads and the setup line, then Snakemake's job script, its
output going straight to ``.snakemake/pbs_logs/<rule>/<job id>.log`` (PBS copies ``-o`` files
only when a job ends). A missing required setting stops here, before ``qsub``.

A training job that stopped for its wall time after advancing its stage asks to run again by a file
(``REQUEUE_DIR``); status.py submits it again (PBS Pro lets only operators rerun a job in place).
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from kotomamba.cluster_jobs import Resubmissions, SettingError, environment_lines, hms, job_body, submit_main
from kotomamba.cluster_jobs import setting as site_setting

DEFAULTS = {"abci_modules": "cuda/12.6/12.6.1 cudnn/9.5/9.5.1 hpcx/2.20"}


def setting(properties: dict, name: str, required: bool = False) -> str:
    return site_setting(properties, name, DEFAULTS, "ABCI (qsub -P <your ABCI group>)" if required else None)


def job_name(rule: str) -> str:
    """A PBS job name: starts with a letter, at most 15 characters of [A-Za-z0-9_.-] is portable."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"smk.{rule}")[:15]


def default_queue(resources: dict, nodes: int) -> str:
    """The resource type a job's request fits: one GPU on one node is ``rt_HG``; more GPUs, several
    nodes or training (which has ``nodes``) a full node ``rt_HF``; no GPU ``rt_HC``."""
    gpus = int(resources.get("gpus_per_node", 0) or 0)
    if gpus == 1 and nodes == 1:
        return "rt_HG"
    return "rt_HF" if gpus > 1 or "nodes" in resources else "rt_HC"


def qsub_command(properties: dict, script: str) -> list[str]:
    """The ``qsub`` command line for one job (PBS prints the job id on stdout)."""
    resources = properties.get("resources", {})
    nodes = int(resources.get("nodes", 1) or 1)
    if nodes < 1:
        raise SettingError(f"nodes must be at least 1, got {nodes}")
    group = setting(properties, "abci_group", required=True)
    queue = setting(properties, "abci_queue") or default_queue(resources, nodes)
    if nodes > 1 and queue not in ("rt_HF",) and not queue.startswith("R"):
        raise SettingError(f"a {nodes}-node job needs the rt_HF resource type (or a reservation), not {queue}")
    # -V: the job gets the submitting environment (NCCL_*, WANDB_*, HF_*, ...), as on SLURM and SGE.
    command = ["qsub", "-P", group, "-q", queue, "-N", job_name(properties.get("rule", "job")),
               "-l", f"select={nodes}", "-V", "-j", "oe", "-o", "/dev/null"]
    if queue.startswith("R"):
        command += ["-v", "RTYPE=rt_HF"]
    if resources.get("runtime"):
        command += ["-l", f"walltime={hms(resources['runtime'])}"]
    command += shlex.split(setting(properties, "abci_extra"))
    return command + [script]


# Requeue by resubmission (PBS Pro reruns a job only by `qrerun`, an operator's command): `kotomamba launch`
# writes REQUEUE_DIR/<job id> when training stopped for the job's wall time after advancing its stage;
# status.py finds it once the job finished, submits the same job script again with the same qsub command
# (REQUEUE_DIR/<job id>.qsub) and follows the chain (<job id>.next); Snakemake sees one job.
RESUBMISSIONS = Resubmissions.of("pbs")
REQUEUE_DIR = RESUBMISSIONS.directory


def wrapper_script(properties: dict, jobscript_text: str, log_dir: str, requeue_dir: str) -> str:
    """The job script PBS runs: workdir, live log, modules, the setup line, Snakemake's job script."""
    lines = [
        "#!/bin/bash",
        f"# Written by profiles/abci/submit.py for Snakemake job {properties.get('jobid', '?')} "
        f"(rule {properties.get('rule', '?')}).",
        'cd "$PBS_O_WORKDIR"',
        f"mkdir -p {shlex.quote(log_dir)}",
        f'exec > {shlex.quote(log_dir)}/"${{PBS_JOBID}}.log" 2>&1',
        f'export KOTOMAMBA_REQUEUE_FILE={shlex.quote(requeue_dir)}/"$PBS_JOBID"',
    ]
    lines += environment_lines(setting(properties, "abci_modules"), setting(properties, "abci_setup"))
    return "\n".join(lines + job_body(jobscript_text)) + "\n"


def submit_command(properties: dict, jobscript: str) -> list[str]:
    """The qsub command line that submits Snakemake's ``jobscript`` (its wrapper beside it); also what
    ``kotomamba submissions`` shows."""
    return qsub_command(properties, f"{jobscript}.pbs.sh")


def prepare(properties: dict, jobscript: str) -> tuple[list[str], str, str]:
    log_dir = str(Path(".snakemake", "pbs_logs", properties.get("rule", "job")).resolve())
    REQUEUE_DIR.mkdir(parents=True, exist_ok=True)
    command = submit_command(properties, jobscript)
    return (command, command[-1],
            wrapper_script(properties, Path(jobscript).read_text(), log_dir, str(REQUEUE_DIR.resolve())))


def main(argv: list[str]) -> int:
    return submit_main(argv, "profiles/abci/submit.py", prepare, lambda out: out.strip().splitlines()[0],
                       submitted=RESUBMISSIONS.record)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
