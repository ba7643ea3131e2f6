"""One job per run directory: an exclusive ``flock`` on ``<run_dir>/run.lock``.

The kernel releases a ``flock`` when its holder exits, however it exits (SIGKILL, a node crash
ends the file's open descriptions), so a lock left by a crashed job is stale by construction: the
next job takes it. The file's text ("host pid since") is only for the message naming the holder;
it is never used to decide. Readers (``kotomamba convert``) take a shared lock for as long as they
read, so they neither read a run a trainer is changing nor let a trainer start under them.
``kotomamba status`` only probes (:func:`held_by`): a shared lock given back at once.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from kotomamba.errors import UserError


# A status probe holds its shared lock for microseconds: a trainer starting at that moment tries again
# for this long before it calls the directory in use (a real holder holds it far longer).
PROBE_GRACE_S = 1.0


def _flock(fd: int, shared: bool) -> None:
    """``flock`` without waiting; an exclusive one retries through :data:`PROBE_GRACE_S` first."""
    deadline = time.monotonic() + (0.0 if shared else PROBE_GRACE_S)
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def held_by(path: Path) -> str | None:
    """The holder's text ("host H pid P since T") while a trainer holds the lock, else ``None``.

    Probed with a shared lock that is given back at once, never an exclusive one, so a probe cannot stop a
    trainer, and a reader's shared lock (``kotomamba convert``) does not count as held.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # no job ever locked it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # closing the descriptor below gives the probe's lock back
    except BlockingIOError:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


class RunLock:
    """Held from :meth:`acquire` until :meth:`release` or the end of the process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, shared: bool = False, purpose: str = "another training") -> RunLock:
        """Take the lock without waiting; a ``UserError`` naming the holder if another job has it."""
        if shared:
            if not self.path.is_file():
                return self  # no job ever locked it (a released or copied run): nothing to respect
            fd = os.open(self.path, os.O_RDONLY)
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"{self.path.parent}: cannot take the run directory's lock {self.path.name} "
                                f"({exc.strerror or exc}); is the directory writable?") from None
        try:
            _flock(fd, shared)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            # A reader's shared lock leaves the text of the last trainer: say both.
            who = holder if shared else f"{holder} (or a reader such as kotomamba convert)"
            raise UserError(f"{self.path}: the run directory is in use by {who}; "
                            f"wait for it to end (or stop it) before starting {purpose} here") from None
        if not shared:
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} since {stamp}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
