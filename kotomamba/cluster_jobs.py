"""What the qsub-based profiles (``profiles/sge``, ``profiles/abci``) share: reading Snakemake's job
properties, site settings from resources or environment, wall-time formatting, the job wrapper's
environment lines and the submission itself.

Snakemake's cluster-generic executor calls a profile's ``submit.py JOBSCRIPT``; the job script
carries a ``# properties = {...}`` line with the job's rule, threads and resources.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path


class SettingError(Exception):
    """A required site setting is missing or invalid."""


def job_properties(jobscript: str) -> dict:
    """The JSON of the ``# properties = {...}`` line Snakemake writes into every job script."""
    for line in Path(jobscript).read_text().splitlines():
        if line.startswith("# properties = "):
            return json.loads(line[len("# properties = "):])
    raise SettingError(f"{jobscript}: no '# properties = ' line; is this a Snakemake job script?")


def setting(properties: dict, name: str, defaults: dict, required_for: str | None = None) -> str:
    """A site setting: the job's resource ``name`` (the run config's ``resources.<rule>``), else the
    environment's ``KOTOMAMBA_<NAME>``, else ``defaults``; ``required_for`` names what needs it when
    it may not be empty."""
    value = properties.get("resources", {}).get(name)
    if value in (None, ""):
        value = os.environ.get(f"KOTOMAMBA_{name.upper()}", "") or defaults.get(name, "")
    if required_for and value == "":
        raise SettingError(
            f"{required_for} needs `{name}`: export KOTOMAMBA_{name.upper()}=... or set "
            f"`resources: {{{properties.get('rule', '<rule>')}: {{{name}: ...}}}}` in the run config"
        )
    return str(value)


def hms(minutes: float) -> str:
    """``minutes`` as ``HH:MM:SS`` (Grid Engine's ``h_rt``, PBS's ``walltime``; hours may exceed 24)."""
    seconds = int(round(float(minutes) * 60))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def environment_lines(modules: str, setup: str) -> list[str]:
    """Job-script lines that load the space-separated ``modules`` and run the ``setup`` shell line."""
    lines = []
    if modules.split():
        lines += ["type module >/dev/null 2>&1 || source /etc/profile.d/modules.sh",
                  f"module load {' '.join(shlex.quote(module) for module in modules.split())}"]
    if setup:
        lines.append(setup)
    return lines


def job_body(jobscript_text: str) -> list[str]:
    """Snakemake's job script without its interpreter line (it runs inside the wrapper)."""
    return [line for line in jobscript_text.splitlines() if not line.startswith("#!")]


def submit_main(argv: list[str], origin: str, prepare, job_id, submitted=None) -> int:
    """A profile's ``submit.py JOBSCRIPT``: ``prepare(properties, jobscript)`` gives the qsub command,
    the wrapper script's path and its text; the wrapper is written and submitted only when every
    setting is there; ``job_id(stdout)`` is printed for Snakemake, after ``submitted(command, id)``
    when given. Returns the exit code."""
    if len(argv) != 1:
        print("usage: submit.py JOBSCRIPT", file=sys.stderr)
        return 2
    try:
        command, script, text = prepare(job_properties(argv[0]), argv[0])
    except SettingError as error:
        print(f"{origin}: {error}", file=sys.stderr)
        return 1
    Path(script).write_text(text)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"{origin}: {' '.join(map(shlex.quote, command))} failed:\n{result.stderr}", file=sys.stderr)
        return result.returncode
    submitted_id = job_id(result.stdout)
    if submitted is not None:
        submitted(command, submitted_id)
    print(submitted_id)
    return 0
