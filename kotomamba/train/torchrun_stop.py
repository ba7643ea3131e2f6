"""torchrun told to stop, or its workers stopped on a user's error: their own lines in the log, not torchrun's
traceback.

A scheduler ending a job (``scancel``, a time limit, ``qdel``) signals every process of it, so
torchrun's elastic agent gets the SIGTERM the launcher also passes to the workers. The agent passes
it on, waits for the workers, then raises ``SignalException`` out of ``torch.distributed.run.main``
(torch/distributed/elastic/multiprocessing/api.py, ``_terminate_process_handler``), and Python
prints that exception's traceback although the workers checkpointed and exited cleanly.

``python -m kotomamba.train.torchrun_stop ARGS`` is ``python -m torch.distributed.run ARGS`` that
ends such a stop without the traceback, with the exit status the uncaught exception gave (1), so
what the launcher decides from it is unchanged. The launcher, which knows the signal, the run and
the node's exit code, ends the log with :func:`stop_line`.

Likewise when every worker that failed stopped on a UserError (exit ``USER_ERROR_EXIT``: a bad input, or no room
for a checkpoint): rank 0 has printed the error, and torchrun's ``ChildFailedError`` (its traceback and a table
of the ranks) would bury it. Any other failure keeps torchrun's report, which names each rank's exit code or
signal.
"""
from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kotomamba.train.run_dir import RunDir

# The module the launcher runs torchrun as.
TORCHRUN_MODULE = __name__
# Python's exit status for an uncaught exception: torchrun's own when a signal stopped it or a worker failed.
SIGNALLED_EXIT = 1


def stop_line(signum: int, code: int, run: RunDir | None) -> str:
    """The launcher's last line when ``signum`` stopped a command and the node exits ``code``: the
    signal, the newest complete checkpoint of ``run`` (a ``train`` command's run directory: what the
    next job resumes from), the exit code."""
    from kotomamba.train.run_dir import step_of
    from kotomamba.train.status import complete_checkpoint

    said = f"kotomamba launch: stopped by {signal.Signals(signum).name}"
    if run is not None:
        checkpoint = complete_checkpoint(run)
        said += (f" after checkpoint at step {step_of(checkpoint)}" if checkpoint is not None
                 else "; no complete checkpoint yet")
    return f"{said}; exit {code}"


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from kotomamba.errors import USER_ERROR_EXIT

    try:
        torchrun()
    except SignalException:
        return SIGNALLED_EXIT
    except ChildFailedError as exc:
        if not exc.failures or any(f.exitcode != USER_ERROR_EXIT for f in exc.failures.values()):
            raise
        return SIGNALLED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
