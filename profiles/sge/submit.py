#!/usr/bin/env python3
"""Submit one Snakemake job script to Grid Engine (SGE, SoGE, UGE/AGE); print the job id.

Called by Snakemake's cluster-generic executor as ``submit.py JOBSCRIPT``. The job's rule, threads
and resources come from the ``# properties = {...}`` line Snakemake writes into the job script; the
site settings from the job's resources (the run config's ``resources.<rule>``) or the environment:

| resource | environment | meaning |
| --- | --- | --- |
| ``sge_style`` | ``KOTOMAMBA_SGE_STYLE`` | ``pe`` (default): ``-pe PE slots``; ``abci``: ``-g GROUP -l TYPE=nodes`` (ABCI 2.0, UGE sites) |
| ``sge_pe`` | ``KOTOMAMBA_SGE_PE`` | parallel environment for one-node jobs (default ``smp``) |
| ``sge_mpi_pe`` | ``KOTOMAMBA_SGE_MPI_PE`` | parallel environment spanning nodes; required for ``nodes > 1`` in ``pe`` style |
| ``sge_queue`` | ``KOTOMAMBA_SGE_QUEUE`` | ``-q`` queue (optional) |
| ``sge_group`` | ``KOTOMAMBA_SGE_GROUP`` | ``-g`` group; required in ``abci`` style |
| ``sge_resource_type`` | ``KOTOMAMBA_SGE_RESOURCE_TYPE`` | ``abci`` style node type (default ``rt_AF``) |
| ``sge_memory_resource`` | ``KOTOMAMBA_SGE_MEMORY_RESOURCE`` | complex given ``mem_mb`` per slot, e.g. ``h_vmem`` (default: none) |
| ``sge_modules`` | ``KOTOMAMBA_SGE_MODULES`` | ``module load`` these (space separated) before the job |
| ``sge_setup`` | ``KOTOMAMBA_SGE_SETUP`` | a shell line run before the job, e.g. ``source ~/venv/bin/activate`` |
| ``sge_extra`` | ``KOTOMAMBA_SGE_EXTRA`` | further ``qsub`` arguments |

``runtime`` (minutes) becomes ``-l h_rt``; ``threads`` the slots; ``nodes`` the node count. A
missing required setting stops here, before ``qsub``, with a message naming it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

DEFAULTS = {"sge_style": "pe", "sge_pe": "smp", "sge_resource_type": "rt_AF"}


class SettingError(Exception):
    """A required site setting is missing or invalid."""


def job_properties(jobscript: str) -> dict:
    """The JSON of the ``# properties = {...}`` line Snakemake writes into every job script."""
    for line in Path(jobscript).read_text().splitlines():
        if line.startswith("# properties = "):
            return json.loads(line[len("# properties = "):])
    raise SettingError(f"{jobscript}: no '# properties = ' line; is this a Snakemake job script?")


def setting(properties: dict, name: str, required_for: str | None = None) -> str:
    """A site setting: the job's resource ``name``, else ``KOTOMAMBA_<NAME>``, else the default."""
    value = properties.get("resources", {}).get(name)
    if value in (None, ""):
        value = os.environ.get(f"KOTOMAMBA_{name.upper()}", "")
    if value in (None, ""):
        value = DEFAULTS.get(name, "")
    if required_for and value == "":
        raise SettingError(
            f"{required_for} needs `{name}`: export KOTOMAMBA_{name.upper()}=... or set "
            f"`resources: {{{properties.get('rule', '<rule>')}: {{{name}: ...}}}}` in the run config"
        )
    return str(value)


def hms(minutes: float) -> str:
    """``minutes`` as Grid Engine's ``HH:MM:SS``."""
    seconds = int(round(float(minutes) * 60))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def qsub_command(properties: dict, script: str, log: str) -> list[str]:
    """The ``qsub`` command line for one job (``-terse`` makes qsub print the bare job id)."""
    resources = properties.get("resources", {})
    rule = properties.get("rule", "job")
    threads = int(properties.get("threads", 1))
    nodes = int(resources.get("nodes", 1) or 1)
    command = ["qsub", "-terse", "-cwd", "-V", "-S", "/bin/bash", "-j", "y", "-o", log,
               "-N", re.sub(r"[^A-Za-z0-9_.-]", "_", f"smk.{rule}")]
    style = setting(properties, "sge_style")
    if style == "abci":
        group = setting(properties, "sge_group", required_for="Grid Engine `abci` style (qsub -g GROUP)")
        command += ["-g", group, "-l", f"{setting(properties, 'sge_resource_type')}={nodes}"]
    elif style == "pe":
        if nodes > 1:
            pe = setting(properties, "sge_mpi_pe", required_for=f"a {nodes}-node job")
            command += ["-pe", pe, str(nodes * threads)]
        elif threads > 1:
            command += ["-pe", setting(properties, "sge_pe"), str(threads)]
    else:
        raise SettingError(f"sge_style must be `pe` or `abci`, got {style!r}")
    if resources.get("runtime"):
        command += ["-l", f"h_rt={hms(resources['runtime'])}"]
    memory = setting(properties, "sge_memory_resource")
    if memory and resources.get("mem_mb"):
        per_slot = -(-int(resources["mem_mb"]) // max(threads, 1))
        command += ["-l", f"{memory}={per_slot}M"]
    if setting(properties, "sge_queue"):
        command += ["-q", setting(properties, "sge_queue")]
    command += shlex.split(setting(properties, "sge_extra"))
    return command + [script]


def wrapper_script(properties: dict, jobscript_text: str) -> str:
    """The job script Grid Engine runs: modules, the setup line, then Snakemake's job script."""
    lines = ["#!/bin/bash", "# Written by profiles/sge/submit.py for Snakemake job "
             f"{properties.get('jobid', '?')} (rule {properties.get('rule', '?')})."]
    modules = setting(properties, "sge_modules").split()
    if modules:
        lines += ["type module >/dev/null 2>&1 || source /etc/profile.d/modules.sh",
                  f"module load {' '.join(shlex.quote(module) for module in modules)}"]
    if setting(properties, "sge_setup"):
        lines.append(setting(properties, "sge_setup"))
    body = [line for line in jobscript_text.splitlines() if not line.startswith("#!")]
    return "\n".join(lines + body) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: submit.py JOBSCRIPT", file=sys.stderr)
        return 2
    jobscript = argv[0]
    try:
        properties = job_properties(jobscript)
        log_dir = Path(".snakemake", "sge_logs", properties.get("rule", "job"))
        log_dir.mkdir(parents=True, exist_ok=True)
        script = f"{jobscript}.sge.sh"
        command = qsub_command(properties, script, str(log_dir.resolve() / "$JOB_NAME.$JOB_ID.log"))
        Path(script).write_text(wrapper_script(properties, Path(jobscript).read_text()))
    except SettingError as error:
        print(f"profiles/sge/submit.py: {error}", file=sys.stderr)
        return 1
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"profiles/sge/submit.py: {' '.join(map(shlex.quote, command))} failed:\n{result.stderr}",
              file=sys.stderr)
        return result.returncode
    print(result.stdout.strip().splitlines()[0].split(".")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
