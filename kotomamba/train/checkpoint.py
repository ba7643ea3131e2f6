"""Sharded, atomic checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout (``docs/architecture.md``)::

    <run_dir>/checkpoints/step_00000100/   a DCP directory: "model", "optim", "scheduler", "train_state"
    <run_dir>/checkpoints/latest           text: the newest complete checkpoint's directory name

Every rank writes its own shards into ``.step_XXXXXXXX.tmp``; only when DCP's metadata is written
(DCP's final collective, after every rank's data) does rank 0 record the files' checksums
(``integrity.json``, integrity.py), rename the directory to ``step_XXXXXXXX`` and then replace
``latest`` atomically, so a kill at any moment leaves ``latest`` naming a complete checkpoint.
Half-written ``.tmp`` directories are removed at the next start. A write that finds no room (a full filesystem or
quota) ends the job with one message instead of every rank's traceback. Retention keeps the newest
``keep_last`` checkpoints and never the one just written.

With ``async_save`` the state is staged to CPU memory and written by a background thread over a
separate gloo group (so its collectives never interleave with training's); the rename and the
``latest`` update happen once the write is complete, checked every step and before the next save.
The tensors already in CPU memory are copied here first (:func:`snapshot`): torch 2.6's staging moves
tensors to the CPU with ``.to("cpu")``, which leaves those in place, so the background thread would
write weights that the next steps are changing.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import Future
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from kotomamba.errors import ReportedByRankZero, UserError, out_of_space
from kotomamba.io import atomic_write
from kotomamba.train.integrity import record_integrity
from kotomamba.train.run_dir import STEP_DIR, RunDir, read_latest, step_dir_name


def snapshot(state):
    """``state`` (nested dicts, lists and tuples) with every tensor in CPU memory copied, the rest as it is
    (DCP's staging copies tensors on a device to CPU memory itself)."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone() if state.device.type == "cpu" else state
    if isinstance(state, dict):
        return {key: snapshot(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(value) for value in state)
    return state


def local_bytes(state) -> int:
    """The bytes of the tensors in ``state`` (nested dicts, lists and tuples) that this rank holds: a DTensor's
    local shard."""
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    if isinstance(state, dict):
        return sum(local_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(local_bytes(value) for value in state)
    return 0


class CheckpointManager:
    """Owns saving, finalising, pruning and loading the run's checkpoints (collective calls)."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int, use_async: bool):
        self.run = RunDir(run_dir)
        self.dir = self.run.checkpoints
        self.keep_last = keep_last
        self.use_async = use_async
        self.rank = dist.get_rank()
        self._pending: tuple[Future, int, int] | None = None
        # A checkpoint retention leaves for this job: the one ``--resume DIR`` rolled back to.
        self.protected: str | None = None
        self._async_group = dist.new_group(backend="gloo") if use_async else None
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".step_*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()

    def latest(self) -> Path | None:
        return read_latest(self.dir)

    def save(self, step: int, state: dict) -> None:
        """Write ``state`` as the checkpoint of ``step`` (blocking unless async)."""
        self.wait()
        tmp = self.dir / f".{step_dir_name(step)}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        if self.use_async:
            future = dcp.async_save(snapshot(state), checkpoint_id=str(tmp), process_group=self._async_group)
            self._pending = (future, step, local_bytes(state))
            return
        try:
            dcp.save(state, checkpoint_id=str(tmp))
        except BaseException as exc:  # DCP's CheckpointException, every rank's failures gathered, is a BaseException
            self._write_failed(step, exc, local_bytes(state))
        dist.barrier()
        self._finalise(step)
        dist.barrier()

    def poll(self) -> None:
        """Finalise a finished async save without blocking (rank 0 renames; others just forget it)."""
        if self._pending is not None and self._pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Block until a pending async save is written and finalised."""
        if self._pending is None:
            return
        future, step, state_bytes = self._pending
        self._pending = None
        try:
            future.result()
        except BaseException as exc:
            self._write_failed(step, exc, state_bytes)
        self._finalise(step)

    def _write_failed(self, step: int, exc: BaseException, state_bytes: int) -> None:
        """After this rank's write of ``step`` (``state_bytes`` of it on this rank) failed with ``exc``: a write that
        found no room (:func:`kotomamba.errors.out_of_space`; torch's writer drops the errno, and says only that it
        wrote less, while the filesystem is full) becomes one message, printed by rank 0 (a UserError, exit 2), of
        where, how much is free and what the run resumes from; anything else is raised as it came. Every rank
        decides from the same filesystem, left as the write left it (the partial write is removed at the next
        start)."""
        full = out_of_space(exc, where=self.dir)
        if full is None:
            raise exc
        free = shutil.disk_usage(self.dir).free
        latest = self.latest()
        resumes = f"{latest.name}, its last complete checkpoint" if latest else "its start (no checkpoint yet)"
        ranks = "" if dist.get_world_size() == 1 else f" on each of {dist.get_world_size()} ranks"
        message = (f"the checkpoint of step {step} did not fit in {self.dir}: {free / 2**20:,.1f} MiB free on its "
                   f"filesystem, {state_bytes / 2**20:,.1f} MiB to write{ranks} "
                   f"({full.strerror}). Make room, then run the stage "
                   f"again: it resumes from {resumes} (the partial .{step_dir_name(step)}.tmp goes then; a stage "
                   f"keeps its newest checkpoint.keep_last checkpoints and writes the next before the oldest goes)")
        raise (UserError if self.rank == 0 else ReportedByRankZero)(message) from None

    def _finalise(self, step: int) -> None:
        if self.rank != 0:
            return
        tmp = self.dir / f".{step_dir_name(step)}.tmp"
        final = self.dir / step_dir_name(step)
        record_integrity(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        with atomic_write(self.run.latest) as handle:
            handle.write(final.name + "\n")
        self._prune(keep=final.name)

    def _prune(self, keep: str) -> None:
        """Remove all but the newest ``keep_last`` checkpoints; ``keep`` (the one just written and checksummed)
        always stays, so the newest verified checkpoint is never removed; so does ``protected``."""
        if self.keep_last <= 0:
            return
        complete = sorted(p.name for p in self.dir.iterdir() if STEP_DIR.match(p.name))
        for name in complete[: max(0, len(complete) - self.keep_last)]:
            if name not in (keep, self.protected):
                shutil.rmtree(self.dir / name, ignore_errors=True)

    @staticmethod
    def load(path: Path, state: dict) -> None:
        """Load ``state`` (tensors in place, other values replaced) from checkpoint ``path``."""
        dcp.load(state, checkpoint_id=str(path))


def checkpoint_keys(path: Path) -> dict[str, tuple[int, ...] | None]:
    """Every flattened key of a checkpoint with its global tensor shape (``None`` for objects)."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    shapes = {}
    for key, item in metadata.state_dict_metadata.items():
        shapes[key] = tuple(item.size) if hasattr(item, "size") else None
    return shapes
