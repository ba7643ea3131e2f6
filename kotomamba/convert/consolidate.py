"""Read a sharded training checkpoint back as one full state dict, on one process.

The trainer writes ``torch.distributed.checkpoint`` (DCP) directories whose state dict is
``{"model": {mamba-ssm key: tensor}, "optim": ..., "scheduler": ..., "train_state": ...}``
(docs/architecture.md). DCP stores each tensor's global shape and its shards, so a plain
full-size tensor can be filled from any training world size without a process group
(``no_dist=True``); only the ``model.*`` entries are read, never the optimizer state.

Non-tensor entries of a DCP checkpoint are pickles, which DCP's default planner unpickles with
``weights_only=False``; ours unpickles them with ``weights_only=True`` and reads only what it needs.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, TensorStorageMetadata

from kotomamba.errors import UserError
from kotomamba.io import read_json
from kotomamba.train.dcp_local import load_local
from kotomamba.train.integrity import checkpoint_defect
from kotomamba.train.run_dir import INTEGRITY, RunDir, run_dir_of

MODEL_PREFIX = "model."
TRAIN_STATE_PREFIX = "train_state."


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


@dataclass(frozen=True)
class CheckpointLocation:
    """A DCP checkpoint directory and the run directory it belongs to (``None`` if it stands alone)."""

    checkpoint_dir: Path
    run_dir: Path | None


def resolve_checkpoint(path: str | Path) -> CheckpointLocation:
    """``RUN_DIR`` (uses ``checkpoints/latest``), ``RUN_DIR/checkpoints/step_N`` or a bare DCP directory."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint not found (expected a run directory or a checkpoint directory)")
    if (path / ".metadata").is_file() or (path / INTEGRITY).is_file():
        return CheckpointLocation(path, run_dir_of(path))
    latest = RunDir(path).latest
    if not latest.is_file():
        raise UserError(f"{path}: neither a DCP checkpoint (no .metadata) nor a run directory "
                        f"(no checkpoints/latest)")
    name = latest.read_text(encoding="utf-8").strip()
    checkpoint_dir = RunDir(path).checkpoints / name
    if not name or not checkpoint_dir.is_dir():
        raise UserError(f"{latest}: line 1: names {name!r}, which is not a checkpoint directory")
    return CheckpointLocation(checkpoint_dir, path)


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
        raise UserError(f"{checkpoint_dir / '.metadata'}: unreadable DCP metadata ({exc})") from exc


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


def read_model_config_dict(location: CheckpointLocation) -> dict:
    """``model_config.json`` (mamba-ssm's config.json) beside the checkpoint or in its run directory."""
    candidates = [RunDir(location.checkpoint_dir).model_config]
    if location.run_dir is not None:
        candidates.append(RunDir(location.run_dir).model_config)
    for file in candidates:
        if file.is_file():
            return read_json(file, "model config")
    raise UserError(f"{location.checkpoint_dir}: no model_config.json found (looked at "
                    f"{', '.join(str(c) for c in candidates)})")


def load_model_state_dict(checkpoint: str | Path):
    """``(MambaConfig, state dict)`` of a run directory (its latest checkpoint) or one checkpoint directory.

    Runs on one process: no training world size or process group is needed.
    """
    from kotomamba.model.config import MambaConfig

    location = verified(resolve_checkpoint(checkpoint))
    config = MambaConfig.from_dict(read_model_config_dict(location))
    return config, read_model_state_dict(location.checkpoint_dir)
