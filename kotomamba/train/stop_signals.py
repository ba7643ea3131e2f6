"""SIGTERM / SIGINT / SIGUSR1 / SIGUSR2 from the first instruction of a training job to its end.

Installed by ``kotomamba train`` before it imports torch or reads the config. Until the training
loop starts, nothing has been trained, so a stop signal ends the job at once with the requeue code
(75) and no checkpoint (:class:`StopBeforeTraining`), except inside :meth:`StopSignals.critical`
sections (the run directory being changed), which finish first. Once the loop runs
(:meth:`StopSignals.training`), a signal only sets :attr:`signum`; the step in progress finishes,
a checkpoint is written and the trainer exits 75.

SIGINT (Ctrl-C of the job's process group, Snakemake's included) is a stop signal like the others,
answered by this module's handler, not Python's ``KeyboardInterrupt``: Python installs that only in
a process that did not start with SIGINT ignored, and a job started from the background job of a
non-interactive shell (``snakemake ... &``) starts with it ignored (``exec`` keeps an ignored
signal ignored), so its trainer trained on through Ctrl-C.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

# SIGUSR2: Grid Engine's warning before SIGKILL for jobs submitted with `qsub -notify` (sge_conf(5)).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpointed (or nothing to save yet), requeue me


class StopBeforeTraining(BaseException):
    """A stop signal arrived before the first training step: requeue, nothing to save.

    A :class:`BaseException`, like ``KeyboardInterrupt``, because the handler raises it wherever the
    main thread happens to be: inside a library's ``except Exception`` (reading tokenizer.json,
    loading a checkpoint) it would otherwise turn into that library's error and the job's exit 75
    into a bad-input exit 2.
    """

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} before the first training step")
        self.signum = signum


class StopSignals:
    def __init__(self):
        self.signum: int | None = None
        self._defer = 0
        self._training = False
        # Once the job is stopping (or over), a signal is only recorded: a scheduler, Snakemake and the
        # launcher each pass one on, and one raised again would cut short the way out (its exit code
        # and the launcher's record) with a traceback.
        self._stopping = False
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._stop_before_training()

    def _stop_before_training(self) -> None:
        if self.signum is not None and not self._training and not self._defer and not self._stopping:
            self._stopping = True
            raise StopBeforeTraining(self.signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a signal must not cut short; a signal that arrived meanwhile stops the job after it."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
        self._stop_before_training()

    def training(self) -> None:
        """From now on a signal is a request the loop answers at the end of its step."""
        self._training = True

    def ended(self) -> None:
        """The command is over, however it ended: from now on a signal is only recorded."""
        self._stopping = True

    def started_training(self) -> bool:
        return self._training
