"""The ``kotomamba`` command: one subcommand per pipeline stage.

Each subcommand lives in the module that does the work and exposes ``main(argv) -> int``; this
file only dispatches, importing lazily so ``kotomamba --help`` does not pay for torch.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys
import threading
import traceback

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "download": ("kotomamba.data.download", "fetch corpus shards (http/https/file, sha256, resume, .gz/.zst)"),
    "fetch-input": ("kotomamba.data.remote_inputs", "fetch a tokenizer or model from a URL or hub id org/name@revision"),
    "collect-corpus": ("kotomamba.data.corpus", "write the embedded default corpus (Python stdlib docstrings) as JSONL"),
    "train-tokenizer": ("kotomamba.data.train_tokenizer", "train a SentencePiece tokenizer (unigram or BPE, byte fallback)"),
    "preprocess": ("kotomamba.data.preprocess", "tokenize JSONL into Megatron .bin/.idx (preprocess_data.py flags)"),
    "merge-datasets": ("kotomamba.data.merge", "merge Megatron .bin/.idx datasets in order (a source's shards -> one)"),
    "train": ("kotomamba.train.cli", "pretrain or continue a Mamba model (FSDP2; torchrun/srun/mpirun/PBS)"),
    "launch": ("kotomamba.train.launcher", "start `train` on every node/GPU of a local run or a SLURM/SGE/PBS allocation"),
    "submissions": ("kotomamba.pipeline.submissions", "show the sbatch/qsub line of every job a cluster profile would submit"),
    "status": ("kotomamba.train.status", "each training stage's step, tokens, checkpoint, jobs and time left"),
    "convert": ("kotomamba.convert.cli", "export a checkpoint to transformers / mamba-ssm, or import one"),
    "generate": ("kotomamba.model.generation", "sample text from a model directory"),
    "evaluate": ("kotomamba.evaluate.cli", "validation perplexity, samples and lm-eval tasks to JSON"),
}

# Subcommands that answer SIGTERM themselves: the trainer checkpoints (kotomamba.train.stop_signals), the launcher
# passes it on to its workers.
OWN_SIGTERM = frozenset({"train", "launch"})


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or Snakemake's stop), raised where the main thread is, as Ctrl-C raises
    ``KeyboardInterrupt``: a command ends the same way, removing the temporary files of what it was writing,
    where Python's default for SIGTERM ends the process at once and leaves them behind."""


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: kotomamba <subcommand> [options]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in SUBCOMMANDS.items()]
    lines += ["", "Run `kotomamba <subcommand> --help` for a subcommand's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from kotomamba import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"kotomamba: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        with contextlib.nullcontext() if name in OWN_SIGTERM else _sigterm_as_interrupt():
            return int(module.main(rest) or 0)
    except OSError as exc:
        from kotomamba.errors import USER_ERROR_EXIT, out_of_space

        full = out_of_space(exc)
        if full is None:
            raise
        writing = f" writing {full.filename}" if full.filename else ""
        print(f"kotomamba {name}: error: {full.strerror}{writing}; make room there, then run it again",
              file=sys.stderr)
        return USER_ERROR_EXIT


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs, SIGTERM raises :class:`Terminated`; unless the process was started with SIGTERM
    ignored or handled (``nohup``-like parents, a caller's own handler), which stays as it was."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminated(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run(argv: list[str] | None = None) -> None:
    """The program (the console script and ``python -m kotomamba``): :func:`main`, then exit with its code.

    A process that started torch.distributed ends without interpreter finalization, however :func:`main`
    ended (a return, an error, Ctrl-C), once its exit handlers have run and its output is flushed: a
    gloo worker thread can still be releasing the tensors of the last collective, and a thread that asks
    for the GIL while the interpreter finalizes aborts the process (``terminate called without an active
    exception``, exit -6) or, if the process group is destroyed then (or before, while that thread waits
    for the GIL: seen on torch 2.6), deadlocks it. Either would lose the exit code the scheduler and the
    launcher read (2 bad input, 75 requeue).
    """
    try:
        code = main(argv)
    except BaseException as exc:
        if not _process_group_started():
            if isinstance(exc, Terminated):
                _end_by_sigterm(argv)
            if isinstance(exc, KeyboardInterrupt):
                # Python then ends the process by SIGINT, as the shell and Snakemake expect of Ctrl-C; the
                # hook says so in one line instead of the traceback of wherever the signal landed.
                sys.excepthook = _interrupted_hook(argv)
            raise
        code = _exit_code(exc, argv)
    if not _process_group_started():
        sys.exit(code)
    atexit._run_exitfuncs()  # what a normal exit would run: loggers' flush, trackers, pools
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _process_group_started() -> bool:
    distributed = sys.modules.get("kotomamba.train.distributed")
    return distributed is not None and distributed.process_group_started()


def _exit_code(exc: BaseException, argv: list[str] | None) -> int:
    """The code Python would have exited with, its message printed: 130 for Ctrl-C (the shell's, said in one
    line)."""
    if isinstance(exc, SystemExit):
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    if isinstance(exc, Terminated):
        _say_interrupted(argv, "terminated")
        return 128 + signal.SIGTERM
    if isinstance(exc, KeyboardInterrupt):
        _say_interrupted(argv)
        return 130
    traceback.print_exception(exc)
    return 1


def _say_interrupted(argv: list[str] | None, how: str = "interrupted") -> None:
    """``kotomamba SUBCOMMAND: interrupted`` (or ``how``), the subcommand as the user typed it."""
    command = " ".join(["kotomamba", *(sys.argv[1:] if argv is None else argv)[:1]])
    print(f"{command}: {how}", file=sys.stderr)


def _end_by_sigterm(argv: list[str] | None) -> None:
    """Say so in one line, then end by SIGTERM, as the process would have without our handler (its parent reads
    the signal), once the exit handlers have run and the output is flushed."""
    _say_interrupted(argv, "terminated")
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGTERM)


def _interrupted_hook(argv: list[str] | None):
    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            _say_interrupted(argv)
        else:
            sys.__excepthook__(kind, value, tb)
    return hook
