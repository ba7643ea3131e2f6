"""Errors a user can fix themselves: bad input files, bad configuration, missing settings, a full disk."""
from __future__ import annotations

import errno
import os
import shutil

# The errors of a write that found no room: the filesystem is full, or the user's (or group's) quota is.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Less free than this (bytes a user may still write) and a filesystem is taken as full, whatever a failed write
# said: a write stops at the last block that fits.
FULL_BELOW = 2**20


# The exit status of a ``kotomamba`` subcommand that stopped on a UserError.
USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem with the user's input; the message names the file, line and field.

    ``kotomamba`` subcommands print it (no traceback) and exit with :data:`USER_ERROR_EXIT`.
    """


class ReportedByRankZero(UserError):
    """Rank 0's error, shared with every other rank of a job: only rank 0 prints it (all exit 2)."""


def out_of_space(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc`` that says a write found no room (:data:`OUT_OF_SPACE`), or None: ``exc`` itself,
    its causes and contexts, and the failures of every rank that a ``torch.distributed.checkpoint``
    CheckpointException gathers (``failures``: rank -> (exception, traceback summary))."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in OUT_OF_SPACE:
            return current
        pending += [current.__cause__, current.__context__]
        failures = getattr(current, "failures", None)
        if isinstance(failures, dict):
            pending += [failure[0] if isinstance(failure, tuple) else failure for failure in failures.values()]
    return None


def filesystem_full(path: str | os.PathLike) -> bool:
    """Whether the filesystem of ``path`` has less than :data:`FULL_BELOW` left for this user."""
    return shutil.disk_usage(path).free < FULL_BELOW
