"""Errors a user can fix themselves: bad input files, bad configuration, missing settings, a full disk."""
from __future__ import annotations

import errno
import os
import re
import shutil

# The errors of a write that found no room: the filesystem is full, or the user's (or group's) quota is.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Writers that report a failed write in errors of their own: Rust's io::Error (safetensors, tokenizers) keeps the
# code in its text; torch's zip writer (torch.save, DCP's shards) only says that it wrote less than it asked.
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed")
# Less free than this (bytes a user may still write) and a filesystem is taken as full: a write stops at the
# last block that fits.
FULL_BELOW = 2**20


# The exit status of a ``kotomamba`` subcommand that stopped on a UserError.
USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem with the user's input; the message names the file, line and field.

    ``kotomamba`` subcommands print it (no traceback) and exit with :data:`USER_ERROR_EXIT`.
    """


def report(command: str, error: BaseException) -> int:
    """Print ``error`` as a ``kotomamba`` subcommand's one-line error (``kotomamba COMMAND: error: ...``, on stderr,
    no traceback) and return :data:`USER_ERROR_EXIT`, the status the subcommand exits with."""
    import sys

    print(f"kotomamba {command}: error: {error}", file=sys.stderr)
    return USER_ERROR_EXIT


class ReportedByRankZero(UserError):
    """Rank 0's error, shared with every other rank of a job: only rank 0 prints it (all exit 2)."""


def out_of_space(exc: BaseException | None, where: str | os.PathLike | None = None) -> OSError | None:
    """An OSError (:data:`OUT_OF_SPACE`) for what says that a write found no room, or None. Searched: ``exc``, its
    causes and contexts, and the failures of every rank that a ``torch.distributed.checkpoint`` CheckpointException
    gathers (``failures``: rank -> (exception, traceback summary)). Found: an OSError of such an errno, a Rust
    writer's error with such a code, or, given the directory ``where`` the write went, a torch writer's short
    write while that filesystem is full."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in OUT_OF_SPACE:
            return current
        text = str(current)
        code = RUST_OS_ERROR.search(text)
        if code is not None and int(code.group(1)) in OUT_OF_SPACE:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        if where is not None and any(short in text for short in TORCH_SHORT_WRITE) and filesystem_full(where):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        pending += [current.__cause__, current.__context__]
        failures = getattr(current, "failures", None)
        if isinstance(failures, dict):
            pending += [failure[0] if isinstance(failure, tuple) else failure for failure in failures.values()]
    return None


def filesystem_full(path: str | os.PathLike) -> bool:
    """Whether the filesystem of ``path`` has less than :data:`FULL_BELOW` left for this user."""
    return shutil.disk_usage(path).free < FULL_BELOW
