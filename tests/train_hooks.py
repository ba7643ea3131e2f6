"""``python -m train_hooks HOOK kotomamba-args...``: run ``kotomamba`` with one test condition injected.

Used by the trainer tests (in the spawned training processes, so the real trainer runs):

- ``late-rank-1``: rank 1 arrives two seconds after rank 0 at every step that follows the process
  group's creation (the restart race of issue 16 item 4);
- ``sigterm-while-building``: each process signals itself SIGTERM while its data indices are built;
- ``sigterm-while-building-and-sigint-at-exit``: the same, and SIGINT again from an exit handler (a second
  stop signal, passed on by Snakemake or the launcher, that comes when the command has ended);
- ``fake-clock``: the wall-time budget's clock advances one second each time it is read, however
  fast the machine is;
- ``pause``: after step ``$PAUSE_AT_STEP`` (its log, eval and checkpoint done) rank 0 creates
  ``$PAUSE_DIR/paused`` and waits, holding the run lock, until ``$PAUSE_DIR/go`` exists (a job caught
  mid-training, at a step a test knows).
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
import time


def _late_rank_1() -> None:
    from kotomamba.train import trainer

    original = trainer.init_distributed

    def late(*args, **kwargs):
        original(*args, **kwargs)
        if os.environ.get("RANK") == "1":
            time.sleep(2.0)

    trainer.init_distributed = late


def _sigterm_while_building() -> None:
    from kotomamba.train import trainer

    original = trainer.Trainer._build_data

    def build(self):
        os.kill(os.getpid(), signal.SIGTERM)
        original(self)

    trainer.Trainer._build_data = build


def _sigterm_while_building_and_sigint_at_exit() -> None:
    import atexit

    _sigterm_while_building()
    atexit.register(os.kill, os.getpid(), signal.SIGINT)


def _fake_clock() -> None:
    from kotomamba.train import trainer

    ticks = itertools.count()
    trainer.budget_clock = lambda: float(next(ticks))


def _pause() -> None:
    from pathlib import Path

    from kotomamba.train import trainer

    original = trainer.Trainer._should_stop
    at, where = int(os.environ["PAUSE_AT_STEP"]), Path(os.environ["PAUSE_DIR"])

    def should_stop(self, max_step_seconds):
        if self.state.step == at and self.rank == 0:
            (where / "paused").touch()
            while not (where / "go").exists():
                time.sleep(0.1)
        return original(self, max_step_seconds)

    trainer.Trainer._should_stop = should_stop


HOOKS = {"late-rank-1": _late_rank_1, "sigterm-while-building": _sigterm_while_building,
         "sigterm-while-building-and-sigint-at-exit": _sigterm_while_building_and_sigint_at_exit,
         "fake-clock": _fake_clock, "pause": _pause}

if __name__ == "__main__":
    HOOKS[sys.argv[1]]()
    from kotomamba import cli
    from kotomamba.train.parent_death import LAUNCHER_PID

    if LAUNCHER_PID in os.environ:  # run in `kotomamba launch`'s worker process, which ends it after its record
        sys.exit(cli.main(sys.argv[2:]))
    cli.run(sys.argv[2:])  # the console script's way out (its process group left to the end of the process)
