"""No process of a job outlives it: a child asks the kernel to kill it when its parent dies.

``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux) holds across ``exec``, so it is set in torchrun (by the
launcher, before exec) and in every worker (first thing): when the launcher dies, however it dies
(``kill -9`` of its process group included, which torchrun's workers, in sessions of their own,
would otherwise survive), torchrun is killed, and with it each worker. A parent that died before
the request was made is caught by checking it is still there afterwards.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
LAUNCHER_PID = "KOTOMAMBA_LAUNCHER_PID"


def die_with_parent(parent_pid: int | None) -> None:
    """Be killed (SIGKILL) when the parent dies; exit now if ``parent_pid`` is already gone. Linux only
    (elsewhere nothing is done: torchrun's own handling is all there is)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and not alive(parent_pid):
        os._exit(1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
