"""A checkpoint's files read and written by this process alone: DCP without collectives, a sharded
training checkpoint's weights read back whole, its ``train_state`` scalars, its verification.

The trainer writes ``torch.distributed.checkpoint`` (DCP) directories whose state dict is
``{"model": {mamba-ssm key: tensor}, "optim": ..., "scheduler": ..., "train_state": ...}``
(``kotomamba.train.run_dir`` has where they live, ``kotomamba.train.train_state`` what ``train_state``
holds). DCP stores each tensor's global shape and its shards, so a plain full-size tensor can be filled
from any training world size without a process group; only the ``model.*`` entries are read, never the
optimizer state. Converting, initialising a stage from another run's checkpoint and the tests read whole
checkpoints on one process, sometimes inside a process group (each rank reads the full weights of the
previous stage): ``no_dist=True`` makes DCP skip its collectives there. torch >= 2.7 takes it on
``dcp.load`` / ``dcp.save``; torch 2.6 only on the older ``load_state_dict`` / ``save_state_dict``
(deprecated later, same behaviour).

Non-tensor entries of a DCP checkpoint are pickles, which DCP's default planner unpickles with
``weights_only=False``; ours unpickles them with ``weights_only=True`` and reads only what it needs.
"""
from __future__ import annotations

import contextlib
import inspect
import pickle
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, TensorStorageMetadata

from kotomamba.errors import UserError
from kotomamba.train.integrity import checkpoint_defect
from kotomamba.train.run_dir import DCP_METADATA, CheckpointLocation, RunDir, locate_checkpoint, read_model_config

MODEL_PREFIX = "model."
TRAIN_STATE_PREFIX = "train_state."

_FLAG_ON_NEW_API = "no_dist" in inspect.signature(dcp.load).parameters


@contextlib.contextmanager
def _one_process() -> Iterator[None]:
    """DCP warns that it assumes a single process when none is up: that is what ``no_dist`` asks for
    (and torch 2.6 warns that its older calls are deprecated); a user's log need not say either."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def load_local(state_dict: dict[str, Any], path: str | Path, planner=None) -> None:
    """Fill ``state_dict`` (nested dicts of preallocated tensors) in place from the DCP checkpoint ``path``."""
    reader = dcp.FileSystemReader(str(path))
    with _one_process():
        if _FLAG_ON_NEW_API:
            dcp.load(state_dict, storage_reader=reader, planner=planner, no_dist=True)
        else:
            dcp.load_state_dict(state_dict, storage_reader=reader, planner=planner, no_dist=True)


def save_local(state_dict: dict[str, Any], path: str | Path) -> None:
    """Write ``state_dict`` as a complete DCP checkpoint at ``path`` (one process writes everything)."""
    writer = dcp.FileSystemWriter(str(path))
    with _one_process():
        if _FLAG_ON_NEW_API:
            dcp.save(state_dict, storage_writer=writer, no_dist=True)
        else:
            dcp.save_state_dict(state_dict, storage_writer=writer, no_dist=True)


class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner over a flat state dict, unpickling non-tensor items with ``weights_only=True``.

    Tensors are read in place into the caller's tensors; unpickled items are collected in ``objects``
    (the planner works on its own copy of the state dict's mapping).
    """

    def __init__(self):
        super().__init__(flatten_state_dict=False)
        self.objects: dict[str, Any] = {}

    def load_bytes(self, read_item, value) -> None:
        self.objects[read_item.dest_index.fqn] = torch.load(value, weights_only=True)


def verified(location: CheckpointLocation) -> CheckpointLocation:
    """``location`` if its files match the checksums recorded when it was written, else a ``UserError``
    naming the file (and the run's other checkpoints to convert instead)."""
    defect = checkpoint_defect(location.checkpoint_dir)
    if defect is None:
        return location
    others = ""
    if location.run_dir is not None:
        names = [p.name for p in RunDir(location.run_dir).step_dirs() if p != location.checkpoint_dir]
        others = f"; the run's other checkpoints: {', '.join(names)}" if names else ""
    raise UserError(f"checkpoint {location.checkpoint_dir} cannot be read: {defect}{others}")


def _metadata(checkpoint_dir: Path) -> Metadata:
    try:
        return FileSystemReader(str(checkpoint_dir)).read_metadata()
    except Exception as exc:  # DCP raises assorted errors on an unreadable .metadata
        raise UserError(f"{checkpoint_dir / DCP_METADATA}: unreadable DCP metadata ({exc})") from exc


def _load_flat(checkpoint_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Fill ``state`` (flat DCP keys -> preallocated tensors or placeholders) from the checkpoint."""
    try:
        return _load_unchecked(checkpoint_dir, state)
    except (CheckpointException, EOFError, OSError, RuntimeError, pickle.UnpicklingError) as exc:
        # A checkpoint without recorded checksums (older runs) can still be damaged: name it, not DCP's stack.
        raise UserError(f"checkpoint {checkpoint_dir} cannot be read: {type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}") from exc


def _load_unchecked(checkpoint_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    planner = _WeightsOnlyLoadPlanner()
    load_local(state, checkpoint_dir, planner)
    return {**state, **planner.objects}


def read_model_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every ``model.*`` tensor of a DCP checkpoint, full size, on CPU, in its stored dtype."""
    checkpoint_dir = Path(checkpoint_dir)
    metadata = _metadata(checkpoint_dir)
    state = {
        fqn: torch.empty(meta.size, dtype=meta.properties.dtype)
        for fqn, meta in metadata.state_dict_metadata.items()
        if fqn.startswith(MODEL_PREFIX) and isinstance(meta, TensorStorageMetadata)
    }
    if not state:
        raise UserError(f"{checkpoint_dir}: DCP checkpoint has no 'model' entries "
                        f"(keys start with {sorted(metadata.state_dict_metadata)[:3]})")
    _load_flat(checkpoint_dir, state)
    return {fqn[len(MODEL_PREFIX):]: tensor for fqn, tensor in state.items()}


def read_train_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The ``train_state`` entries that are plain data (step, consumed samples, tokens, ...).

    Tensors of one element become Python numbers; entries that are not loadable with
    ``weights_only=True`` (e.g. a NumPy RNG state) are left out. Keys lose the ``train_state.`` prefix.
    """
    checkpoint_dir = Path(checkpoint_dir)
    found: dict[str, Any] = {}
    for fqn, meta in _metadata(checkpoint_dir).state_dict_metadata.items():
        if not fqn.startswith(TRAIN_STATE_PREFIX):
            continue
        if isinstance(meta, TensorStorageMetadata):
            if torch.Size(meta.size).numel() != 1:
                continue
            value = _load_flat(checkpoint_dir, {fqn: torch.empty(meta.size, dtype=meta.properties.dtype)})[fqn]
            found[fqn[len(TRAIN_STATE_PREFIX):]] = value.item()
        elif isinstance(meta, BytesStorageMetadata):
            try:
                value = _load_unchecked(checkpoint_dir, {fqn: None})[fqn]
            except (CheckpointException, pickle.UnpicklingError):  # DCP wraps the reader's error
                continue
            if isinstance(value, (int, float, str, bool)):
                found[fqn[len(TRAIN_STATE_PREFIX):]] = value
    return found


def load_model_state_dict(checkpoint: str | Path):
    """``(MambaConfig, state dict)`` of a run directory (its latest checkpoint) or one checkpoint directory.

    Runs on one process: no training world size or process group is needed.
    """
    location = verified(locate_checkpoint(checkpoint))
    return read_model_config(location.checkpoint_dir), read_model_state_dict(location.checkpoint_dir)
