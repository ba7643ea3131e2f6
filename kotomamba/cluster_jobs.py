"""What the qsub-based profiles (``profiles/sge``, ``profiles/abci``) share: reading Snakemake's job
properties, site settings from resources or environment, wall-time formatting, the job wrapper's
environment lines, the submission itself, and the chains of resubmitted jobs (submitted again,
followed by the status and cancel commands).

Snakemake's cluster-generic executor calls a profile's ``submit.py JOBSCRIPT``; the job script
carries a ``# properties = {...}`` line with the job's rule, threads and resources. Its cancel
command is ``python3 -m kotomamba.cluster_jobs cancel SCHEDULER JOB_ID...`` (the profiles' cancel.sh).
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


# Every site setting the qsub profiles read (profiles/sge/submit.py, profiles/abci/submit.py, whose docstrings
# say what each means): the run config's check (kotomamba/pipeline/resources.py) refuses any other `sge_*` or
# `abci_*` resource, so a misspelt one stops the run instead of being ignored at submission.
SITE_SETTINGS = ("sge_style", "sge_pe", "sge_mpi_pe", "sge_gpu_resource", "sge_queue", "sge_group",
                 "sge_resource_type", "sge_memory_resource", "sge_modules", "sge_setup", "sge_extra",
                 "abci_group", "abci_queue", "abci_modules", "abci_setup", "abci_extra")


def setting(properties: dict, name: str, defaults: dict, required_for: str | None = None) -> str:
    """A site setting: the job's resource ``name`` (the run config's ``resources.<rule>``), else the
    environment's ``KOTOMAMBA_<NAME>``, else ``defaults``; ``required_for`` names what needs it when
    it may not be empty. ``name`` is one of ``SITE_SETTINGS``."""
    assert name in SITE_SETTINGS, f"{name} is not listed in SITE_SETTINGS"
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


class Resubmissions:
    """Requeue by resubmission, for schedulers that cannot run a job again in place (PBS Pro: only
    operators may ``qrerun``; Grid Engine: a rescheduled multi-host job never started again on the test
    cluster, docs/clusters.md). Files in ``directory`` (on the shared file system, beside the logs):

    - ``<id>.qsub``: the job's qsub command (JSON), kept by submit.py;
    - ``<id>``: the request, written by ``kotomamba launch`` (the wrapper exports its path as
      ``KOTOMAMBA_REQUEUE_FILE``) when training stopped for the job's wall time after advancing;
    - ``<id>.next``: the id of the job submitted again for ``<id>``; Snakemake keeps asking about the
      first id, which status.py and the cancel command follow along this chain to the newest job.
    """

    # Each profile's directory, relative to the workflow's directory (where Snakemake runs the profile's
    # commands): beside the job logs of profiles/sge ("sge") and profiles/abci ("pbs").
    DIRECTORIES = {"sge": Path(".snakemake", "sge_logs", "requeue"), "pbs": Path(".snakemake", "pbs_logs", "requeue")}

    def __init__(self, directory: Path):
        self.directory = directory

    @classmethod
    def of(cls, scheduler: str) -> Resubmissions:
        """The chain of the profile for ``scheduler`` (a key of ``DIRECTORIES``)."""
        return cls(cls.DIRECTORIES[scheduler])

    def request_file(self, job_id_variable: str) -> str:
        """The wrapper's ``KOTOMAMBA_REQUEUE_FILE`` value (shell), the job id taken from ``$VARIABLE``."""
        return f'{shlex.quote(str(self.directory.resolve()))}/"${job_id_variable}"'

    def record(self, command: list[str], job_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{job_id}.qsub").write_text(json.dumps(command))

    def newest(self, job_id: str) -> str:
        """The last job of the chain of resubmissions that started with ``job_id``."""
        while (self.directory / f"{job_id}.next").is_file():
            job_id = (self.directory / f"{job_id}.next").read_text().strip()
        return job_id

    def requested(self, job_id: str) -> bool:
        return (self.directory / job_id).is_file()

    def resubmit(self, job_id: str, parse_id) -> str:
        """Submit finished job ``job_id``'s script again with its qsub command (``parse_id(stdout)`` is the
        new id); record and return the new id."""
        command = json.loads((self.directory / f"{job_id}.qsub").read_text())
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
        new_id = parse_id(result.stdout)
        self.record(command, new_id)
        (self.directory / f"{job_id}.next").write_text(new_id + "\n")
        (self.directory / job_id).unlink()
        return new_id

    def cancel(self, job_ids: list[str]) -> int:
        """``qdel`` (Grid Engine's and PBS's) the newest job of each chain that started with one of ``job_ids``;
        qdel's exit code."""
        return subprocess.run(["qdel", *(self.newest(job_id) for job_id in job_ids)]).returncode


USAGE = f"usage: python3 -m kotomamba.cluster_jobs cancel {{{','.join(Resubmissions.DIRECTORIES)}}} JOB_ID..."


def main(argv: list[str]) -> int:
    """The profiles' cancel command (cluster-generic's ``cancel.sh JOB_ID...``): ``cancel SCHEDULER JOB_ID...``."""
    if len(argv) < 3 or argv[0] != "cancel" or argv[1] not in Resubmissions.DIRECTORIES:
        print(USAGE, file=sys.stderr)
        return 2
    return Resubmissions.of(argv[1]).cancel(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
