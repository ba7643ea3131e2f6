"""The processes of one SLURM job on a compute node of the test clusters, found from /proc, and losing that
node: its scheduler daemon and the job's processes killed at once, as a crash or power loss would.

A node (tests/scheduler/common.sh) is a network namespace: its daemons and every process they start share
it, so "on node N" is "in the network namespace of N's daemon". A job's processes are told apart from the
other jobs' (and from the Grid Engine daemons on the same node) by the job id in their environment
(``SLURM_JOB_ID``) or, for SLURM's own per-job daemons that carry no such variable, by the job id in their
command line (``slurmstepd: [ID.batch]``).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kotomamba.train.torchrun_stop import TORCHRUN_MODULE


def _read(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone meanwhile, or a kernel thread
        return b""


def net_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running (a zombie, which PID 1 here may never reap, counts as gone)."""
    status = _read(pid, "status").decode(errors="replace")
    return bool(status) and "\nState:\tZ" not in status


def job_processes(job_id: str, daemon_pid: int) -> list[int]:
    """Pids of SLURM job ``job_id``'s processes on the node whose slurmd is ``daemon_pid``."""
    node = net_namespace(daemon_pid)
    assert node is not None, f"the scheduler daemon {daemon_pid} is not running"
    wanted = f"SLURM_JOB_ID={job_id}".encode()
    daemon = f"slurmstepd: [{job_id}.".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (daemon_pid, os.getpid()) or not alive(int(entry.name)):
            continue
        pid = int(entry.name)
        if net_namespace(pid) != node:
            continue
        command = _read(pid, "cmdline").replace(b"\0", b" ")
        if wanted in _read(pid, "environ").split(b"\0") or command.startswith(daemon):
            found.append(pid)
    return found


def parent(pid: int) -> int:
    """``pid``'s parent process (0 once it is gone)."""
    for line in _read(pid, "status").decode(errors="replace").splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def is_worker(pid: int) -> bool:
    """Whether ``pid`` is a training worker: ``kotomamba launch --worker-exit-dir`` (one per rank) that torchrun
    started (the launcher's ``TORCHRUN_MODULE``, whose command line holds theirs), not torchrun itself nor a
    process torchrun or a worker forked and that has not exec'd yet: until it execs, a child has its parent's
    command line and signal handlers, so torchrun's child looked like a worker that handles SIGTERM, and
    Python's subprocess, which resets every handler in the child just before exec, let a SIGTERM sent then
    kill it instead of stopping the worker it was about to become."""
    def argv(of: int) -> list[bytes]:
        return _read(of, "cmdline").split(b"\0")

    own = argv(pid)
    return b"--worker-exit-dir" in own and TORCHRUN_MODULE.encode() not in own and \
        TORCHRUN_MODULE.encode() in argv(parent(pid))


def worker_processes(pids: list[int]) -> list[int]:
    """The training workers among ``pids``."""
    return [pid for pid in pids if is_worker(pid)]


def workers_in(directory: Path) -> list[int]:
    """The running training workers whose working directory is ``directory`` (a pipeline's, on any node)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if Path(cwd) == directory and is_worker(int(entry.name)) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _signal_set(pid: int, field: str) -> set[int]:
    """The signals of a /proc/PID/status mask line (``SigCgt``: caught, ``ShdPnd``: pending for the process)."""
    for line in _read(pid, "status").decode(errors="replace").splitlines():
        if line.startswith(f"{field}:"):
            mask = int(line.split()[1], 16)
            return {signum for signum in range(1, 65) if mask >> (signum - 1) & 1}
    return set()


def catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler of its own for ``signum``."""
    return signum in _signal_set(pid, "SigCgt")


def pending(pid: int) -> set[int]:
    """The signals sent to ``pid`` (kill(2)) and not yet delivered: a stopped process keeps them until SIGCONT."""
    return _signal_set(pid, "ShdPnd")


def send(pids: list[int], signum: int) -> None:
    """Send ``signum`` to each of ``pids`` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def freeze(pids: list[int]) -> None:
    """Stop ``pids`` (SIGSTOP): nothing of them runs, writes or answers from now on."""
    send(pids, signal.SIGSTOP)


def resume(pids: list[int]) -> None:
    """Let ``freeze``d ``pids`` run again (SIGCONT); their pending signals are delivered first."""
    send(pids, signal.SIGCONT)


def kill(pids: list[int], timeout: float = 30.0) -> None:
    """SIGKILL ``pids`` and wait until none runs."""
    send(pids, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running after SIGKILL: {[p for p in pids if alive(p)]}"
        time.sleep(0.1)
