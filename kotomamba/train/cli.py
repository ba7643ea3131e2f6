"""``kotomamba train --config FILE [dotted.key=value ...] [--resume auto|never|DIR]``.

Works as a plain single process and under torchrun, srun, mpirun or PBS (see
``kotomamba.train.distributed``). Exit status: 0 done, 1 aborted (non-finite steps), 2 bad input (or no room
for a checkpoint), 75 checkpointed on a signal or the wall-time budget (requeue).
"""
from __future__ import annotations

import argparse
import sys

from kotomamba.errors import USER_ERROR_EXIT, ReportedByRankZero, UserError, report
from kotomamba.train.stop_signals import EXIT_REQUEUE, StopBeforeTraining, StopSignals


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kotomamba train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training YAML (sections of kotomamba.train.config)")
    parser.add_argument("--resume", default="auto",
                        help="auto: the run dir's latest checkpoint if any (default); never; or a checkpoint/run dir")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="override config fields")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # First, before torch is imported: a scheduler may stop the job at any moment of its start-up.
    stop = StopSignals()
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
        from kotomamba.train.config import load_config
        from kotomamba.train.trainer import Trainer

        config = load_config(args.config, args.overrides)
        trainer = Trainer(config, args.resume, stop)
        code = trainer.run()
    except ReportedByRankZero:
        return USER_ERROR_EXIT
    except UserError as exc:
        return report("train", exc)
    except StopBeforeTraining as exc:
        print(f"kotomamba train: {exc}; nothing to save, exit {EXIT_REQUEUE} (requeue)", file=sys.stderr)
        return EXIT_REQUEUE
    except Exception as exc:
        # Another rank stopped by the same signal makes this one's collectives fail: still a requeue.
        if stop.signum is None or stop.started_training():
            raise
        print(f"kotomamba train: stopped during start-up ({type(exc).__name__} after a stop signal); "
              f"nothing trained yet, exit {EXIT_REQUEUE} (requeue)", file=sys.stderr)
        return EXIT_REQUEUE
    finally:
        stop.ended()
    # The process group is left to ``kotomamba.cli.run``, which ends the process without destroying it: on
    # torch 2.6 a destroy while gloo's worker thread still frees the last collective's tensors deadlocks.
    return code
