"""What the schedulers (SLURM, Grid Engine, PBS) tell a job, and how a job asks one to run it again.

Read from the variables and files a scheduler gives a job (nothing here starts a process but the
scheduler's own query and requeue commands):

| fact | SLURM | Grid Engine | PBS (ABCI 3.0) |
| --- | --- | --- | --- |
| job id | ``SLURM_JOB_ID`` | ``JOB_ID`` (with ``PE_HOSTFILE``, ``SGE_JOB_HOSTLIST`` or ``SGE_ROOT``) | ``PBS_JOBID`` |
| hosts | ``SLURM_JOB_NODELIST`` (``SLURM_STEP_NODELIST`` in a step), else ``scontrol show job`` | ``PE_HOSTFILE``, else ``SGE_JOB_HOSTLIST`` | ``PBS_NODEFILE`` |
| time left | ``squeue -o %L`` | ``h_rt`` of ``qstat -j`` | ``qstat -f``: walltime limit less used |
| run again | ``scontrol requeue`` | one host: the job wrapper's exit 99; several: the profile's status script resubmits (``KOTOMAMBA_REQUEUE_FILE``) | the profile's status script resubmits (``KOTOMAMBA_REQUEUE_FILE``) |

The rendezvous port of a job is ``10000 + JOB_ID % 50000`` (as the predecessor's ABCI scripts chose
it), so every node and every rank computes the same one. Exit code 75 (``stop_signals.EXIT_REQUEUE``,
EX_TEMPFAIL) is what training returns when it checkpointed before its end: "run me again".
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import socket
import subprocess
from pathlib import Path

from kotomamba.errors import UserError

REQUEUE_FILE = "KOTOMAMBA_REQUEUE_FILE"
SLURM_NODELIST_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The nodes a scheduler gave this job: ``scheduler`` is "slurm", "sge" or "pbs"."""

    scheduler: str
    job_id: str
    hosts: tuple[str, ...]


def job_id(env: dict[str, str]) -> str | None:
    """The scheduler's id of the job this process runs in (SLURM, PBS, Grid Engine), or None."""
    return env.get("SLURM_JOB_ID") or env.get("PBS_JOBID") or env.get("JOB_ID") or None


def rendezvous_port(job: str) -> int:
    """``10000 + JOB_ID % 50000`` from the job id's leading digits ("1234.pbs1" -> 11234)."""
    digits = re.match(r"\d*", job).group(0)
    if not digits:
        raise UserError(f"cannot derive a rendezvous port from job id {job!r}; pass --rdzv-port or export "
                        "MASTER_PORT")
    return 10000 + int(digits) % 50000


def _unique(hosts: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(host for host in hosts if host))


def read_pe_hostfile(path: str) -> tuple[str, ...]:
    """Hosts of a Grid Engine ``$PE_HOSTFILE`` (lines "host slots queue processors")."""
    return _unique([line.split()[0] for line in Path(path).read_text().splitlines() if line.strip()])


def read_host_list(path: str) -> tuple[str, ...]:
    """Hosts of a file with one host name per line, repeats allowed (``$PBS_NODEFILE``,
    ``$SGE_JOB_HOSTLIST``), in first-seen order."""
    return _unique([line.strip() for line in Path(path).read_text().splitlines()])


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return parts + [text[start:]]


def _range_names(ranges: str) -> list[str]:
    """"01-03,07" -> ["01", "02", "03", "07"] (widths kept)."""
    names = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        names += [low] if not high else [f"{n:0{len(low)}d}" for n in range(int(low), int(high) + 1)]
    return names


def expand_nodelist(nodelist: str) -> tuple[str, ...]:
    """A SLURM host list in host order: ``"gpu[01-03,07],login1"``, ``"n[1-2]-ib"`` (slurm.conf(5),
    "hostlist expressions"); each bracket of a name multiplies it out, left to right."""
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        pieces = re.split(r"\[([^\]]*)\]", item)  # literal, ranges, literal, ranges, ..., literal
        choices = [[piece] if i % 2 == 0 else _range_names(piece) for i, piece in enumerate(pieces)]
        hosts += ["".join(parts) for parts in itertools.product(*choices)]
    return _unique(hosts)


def slurm_job_fields(job: str) -> dict[str, str]:
    """``scontrol show job -o JOB_ID`` as a dict ("NodeList", "CPUs/Task", "NumNodes", ...).

    Needed because Snakemake's SLURM jobstep executor removes the allocation's ``SLURM_*``
    variables (all but the job id) before running an ``mpi`` rule's shell command.
    """
    result = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UserError(f"launch: `scontrol show job {job}` failed: {result.stderr.strip()}")
    return dict(token.split("=", 1) for token in result.stdout.split() if "=" in token)


def detect_allocation(env: dict[str, str]) -> Allocation | None:
    """The scheduler allocation this process runs in, or None outside any scheduler."""
    if env.get("SLURM_JOB_ID"):
        nodelist = env.get("SLURM_JOB_NODELIST") or slurm_job_fields(env["SLURM_JOB_ID"])["NodeList"]
        return Allocation("slurm", env["SLURM_JOB_ID"], expand_nodelist(nodelist))
    if env.get("PBS_JOBID"):
        nodefile = env.get("PBS_NODEFILE")
        hosts = read_host_list(nodefile) if nodefile else (socket.gethostname(),)
        return Allocation("pbs", env["PBS_JOBID"], hosts)
    if env.get("JOB_ID") and (env.get("PE_HOSTFILE") or env.get("SGE_JOB_HOSTLIST") or env.get("SGE_ROOT")):
        if env.get("PE_HOSTFILE"):
            hosts = read_pe_hostfile(env["PE_HOSTFILE"])
        elif env.get("SGE_JOB_HOSTLIST"):
            hosts = read_host_list(env["SGE_JOB_HOSTLIST"])
        else:
            hosts = (socket.gethostname(),)
        return Allocation("sge", env["JOB_ID"], hosts)
    return None


def first_host(env: dict[str, str]) -> str | None:
    """The first host of this process's SLURM step or job, or of its PBS job, from the variables and
    files alone (a rank started by a bare ``srun`` / ``mpirun``); None when none names one."""
    for key in SLURM_NODELIST_VARIABLES:
        if env.get(key):
            return expand_nodelist(env[key])[0]
    nodefile = env.get("PBS_NODEFILE")
    if nodefile and Path(nodefile).is_file():
        hosts = read_host_list(nodefile)
        return hosts[0] if hosts else None
    return None


def parse_duration(text: str) -> float | None:
    """Seconds of a scheduler duration: "[D-]HH:MM:SS", "MM:SS", "SS" or plain seconds; None for
    "UNLIMITED", "INFINITY", "NOT_SET" and other non-durations."""
    text = text.strip()
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not clock or len(parts) > 3 or not all(part.replace(".", "", 1).isdigit() for part in parts):
        return None
    if days and not days.isdigit():
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds + 86400 * int(days or 0)


def _command_output(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def job_seconds_left(allocation: Allocation) -> float | None:
    """Seconds until the scheduler ends this job (None when unlimited or unknown).

    SLURM: ``squeue -o %L``; PBS: ``Resource_List.walltime`` less ``resources_used.walltime`` of
    ``qstat -f``; Grid Engine: the ``h_rt`` of ``qstat -j`` (the launcher runs as the job starts).
    """
    if allocation.scheduler == "slurm":
        output = _command_output(["squeue", "-h", "-j", allocation.job_id, "-o", "%L"])
        return parse_duration(output) if output else None
    if allocation.scheduler == "pbs":
        output = _command_output(["qstat", "-f", allocation.job_id])
        if output is None:
            return None
        fields = dict(line.strip().split(" = ", 1) for line in output.splitlines() if " = " in line)
        limit = parse_duration(fields.get("Resource_List.walltime", ""))
        used = parse_duration(fields.get("resources_used.walltime", "0")) or 0.0
        return None if limit is None else limit - used
    output = _command_output(["qstat", "-j", allocation.job_id])
    for line in (output or "").splitlines():
        if line.startswith("hard resource_list:"):
            for item in line.split(":", 1)[1].strip().split(","):
                name, _, value = item.partition("=")
                if name.strip() == "h_rt":
                    return parse_duration(value)
    return None


def ask_to_run_again(scheduler: str, job: str, env: dict[str, str]) -> str | None:
    """Ask for this job to run again; the reason it cannot be, or None when asked.

    - a job wrapper that names a file in ``KOTOMAMBA_REQUEUE_FILE`` owns it: the file is written, and
      for a one-host job profiles/sge/submit.py's wrapper ends the job with exit 99, which Grid Engine
      answers by rescheduling the same job (sge_conf(5): "FORBID_RESCHEDULE" unset, the default); for a
      multi-host Grid Engine job (a rescheduled one never started again on the test cluster: Son of
      Grid Engine 8.1.9 kept it off the hosts of its ``qrsh -inherit`` tasks "until clean up of a
      previous run has finished") and for profiles/abci (PBS Pro, where only operators may ``qrerun``
      a job) the profile's status.py submits the finished job again and follows it;
    - SLURM: ``scontrol requeue $SLURM_JOB_ID``. The owner may requeue their own batch job when it is
      requeue-able (``JobRequeue=1``, SLURM's default, or ``sbatch --requeue``); SLURM ends this run at
      once and starts the batch script again under the same job id once ``AuthInfo=cred_expire`` (120 s
      by default) has passed (slurm.conf(5)). snakemake-executor-plugin-slurm counts REQUEUED and
      PENDING as still active.
    - anything else (a PBS job script of your own, say): not asked.
    """
    if env.get(REQUEUE_FILE):
        try:
            Path(env[REQUEUE_FILE]).write_text(f"{job}\n")
        except OSError as exc:
            return f"cannot write the requeue request {env[REQUEUE_FILE]} ({exc})"
        return None
    if scheduler == "slurm":
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`scontrol requeue {job}` failed ({exc})"
        if result.returncode != 0:
            return (f"`scontrol requeue {job}` failed: {result.stderr.strip()} (is the job requeue-able? "
                    "`scontrol show job` shows Requeue=1; set JobRequeue=1 or pass --requeue)")
        return None
    return f"a {scheduler} job cannot be requeued from inside (see docs/clusters.md)"
