"""The run directory's layout: every name in it is defined here and only here.

    <run_dir>/run.lock                     the job's lock (run_lock.py): "host pid" of its holder
    <run_dir>/identity.json                what determines the run's result (identity.py)
    <run_dir>/config.resolved.yaml         the full validated config
    <run_dir>/model_config.json            MambaConfig.to_dict()
    <run_dir>/manifest.json                provenance (kotomamba.manifest)
    <run_dir>/metrics.jsonl                one JSON object per log / eval step
    <run_dir>/jobs.jsonl                   one JSON object per job that started training here (job_log.py)
    <run_dir>/final.json                   written last, when every step is done
    <run_dir>/checkpoints/step_XXXXXXXX/   a DCP directory plus integrity.json (integrity.py)
    <run_dir>/checkpoints/latest           text: the newest complete checkpoint's directory name
    <run_dir>/checkpoints/set_aside/       checkpoints that failed verification, kept for inspection
    <run_dir>/superseded/<n>/              earlier runs of this directory, generation n = 1, 2, ...
                                           (each a run directory of its own, plus superseded.json)
    <run_dir>/restart-requested            why the next --resume auto must start over (restart_request.py)
    <run_dir>/train.yaml                   a pipeline stage's trainer config, written before its first job
                                           (RunPaths.stage_config and .stage_final take their names from here)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kotomamba.errors import UserError

STEP_DIR = re.compile(r"^step_(\d{8})$")
LATEST = "latest"
INTEGRITY = "integrity.json"
# What DCP writes last into a checkpoint directory (its index of every shard): there, the write is complete.
DCP_METADATA = ".metadata"
SUPERSEDED_NOTE = "superseded.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(checkpoint: Path) -> int:
    """The step a checkpoint directory (``step_XXXXXXXX``) holds: ``step_dir_name``'s inverse."""
    return int(STEP_DIR.match(checkpoint.name).group(1))


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created by naming them)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def identity(self) -> Path:
        return self.root / "identity.json"

    @property
    def config(self) -> Path:
        return self.root / "config.resolved.yaml"

    def read_config(self) -> dict | None:
        """The run's ``config.resolved.yaml`` as a mapping, ``None`` when there is none; a file that cannot be
        read, is not YAML or not a mapping (empty, a list, cut short) is a ``UserError`` naming it: read as
        absent, it would hide the run's tokenizer and stages behind a misleading later message."""
        from kotomamba.io import read_yaml

        if not self.config.is_file():
            return None
        data = read_yaml(self.config, "run config record")
        if not isinstance(data, dict):
            raise UserError(f"{self.config}: not a run config record (expected a mapping, found "
                            f"{'an empty file' if data is None else type(data).__name__})")
        return data

    @property
    def model_config(self) -> Path:
        return self.root / "model_config.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs.jsonl"

    @property
    def stage_config(self) -> Path:
        return self.root / "train.yaml"

    @property
    def final(self) -> Path:
        return self.root / "final.json"

    @property
    def restart_request(self) -> Path:
        return self.root / "restart-requested"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST

    @property
    def set_aside(self) -> Path:
        return self.checkpoints / "set_aside"

    @property
    def superseded(self) -> Path:
        return self.root / "superseded"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_dir_name(step)

    def step_dirs(self) -> list[Path]:
        """Every ``checkpoints/step_*`` directory, newest step first (complete or not)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted((p for p in self.checkpoints.iterdir() if STEP_DIR.match(p.name) and p.is_dir()),
                      key=lambda p: p.name, reverse=True)

    def records(self) -> list[Path]:
        """What a run leaves that a later run must not mix with its own (moved together when superseded)."""
        return [self.checkpoints, self.metrics, self.jobs, self.final, self.config, self.manifest,
                self.model_config, self.identity, *sorted(self.root.glob(f"{self.metrics.name}.damaged*"))]


def run_dir_of(checkpoint_dir: Path) -> Path | None:
    """The run directory a ``checkpoints/step_N`` directory belongs to (``None`` for a bare checkpoint)."""
    return checkpoint_dir.parent.parent if checkpoint_dir.parent.name == "checkpoints" else None


def _pointer(checkpoints: Path) -> str | None:
    """The name ``checkpoints/latest`` holds, or ``None`` when there is no such file."""
    pointer = checkpoints / LATEST
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None


def read_latest(checkpoints: Path) -> Path | None:
    """The checkpoint named by ``checkpoints/latest``, or ``None`` when there is none."""
    name = _pointer(checkpoints)
    if name is None or not STEP_DIR.match(name) or not (checkpoints / name / DCP_METADATA).is_file():
        return None
    return checkpoints / name


def holds_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint directory (complete, or damaged with its ``integrity.json``)."""
    return (path / DCP_METADATA).is_file() or (path / INTEGRITY).is_file()


def is_run_or_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a kotomamba checkpoint directory or a run directory with ``checkpoints/latest``."""
    return holds_checkpoint(path) or RunDir(path).latest.is_file()


@dataclass(frozen=True)
class CheckpointLocation:
    """A DCP checkpoint directory and the run directory it belongs to (``None`` if it stands alone)."""

    checkpoint_dir: Path
    run_dir: Path | None


def locate_checkpoint(path: str | os.PathLike) -> CheckpointLocation:
    """A run directory (its ``checkpoints/latest``), a ``checkpoints`` directory or one checkpoint directory ->
    the checkpoint, or a ``UserError`` saying what is missing. A directory with ``integrity.json`` but no DCP
    ``.metadata`` is a checkpoint too: a damaged one, whose reading names the defect."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint not found (expected a run directory or a checkpoint directory)")
    if holds_checkpoint(path):
        return CheckpointLocation(path, run_dir_of(path))
    for checkpoints in (RunDir(path).checkpoints, path):
        name = _pointer(checkpoints)
        if name is None:
            continue
        if not STEP_DIR.match(name) or not (checkpoints / name).is_dir():
            raise UserError(f"{checkpoints / LATEST}: line 1: names {name!r}, which is not a checkpoint directory")
        return CheckpointLocation(checkpoints / name, run_dir_of(checkpoints / name))
    raise UserError(f"{path}: neither a DCP checkpoint (no .metadata) nor a run directory (no checkpoints/latest)")


def resolve_checkpoint(path: str | os.PathLike) -> Path | None:
    """The complete checkpoint (its DCP ``.metadata`` written) that :func:`locate_checkpoint` finds at ``path``,
    or ``None``."""
    try:
        found = locate_checkpoint(path).checkpoint_dir
    except UserError:
        return None
    return found if (found / DCP_METADATA).is_file() else None


def model_config_file(directory: str | os.PathLike) -> Path:
    """The ``model_config.json`` that describes a run directory or a checkpoint directory: the directory's own
    (a run, or a checkpoint standing alone), else that of the run the checkpoint belongs to."""
    directory = Path(directory)
    candidates = [RunDir(directory).model_config]
    run = run_dir_of(directory)
    if run is not None:
        candidates.append(RunDir(run).model_config)
    for file in candidates:
        if file.is_file():
            return file
    raise UserError(f"{directory}: no model_config.json found (looked at {', '.join(str(c) for c in candidates)})")


def read_model_config(directory: str | os.PathLike):
    """The ``MambaConfig`` of :func:`model_config_file` (errors name the file and field)."""
    from kotomamba.io import read_json
    from kotomamba.model.config import MambaConfig

    file = model_config_file(directory)
    return MambaConfig.from_dict(read_json(file, "model config"), source=str(file))


def init_source_kind(path: Path) -> str:
    """``"kotomamba"`` (a run or checkpoint directory) or ``"pretrained"`` (mamba-ssm / transformers)."""
    if resolve_checkpoint(path) is not None:
        return "kotomamba"
    if (path / "config.json").is_file():
        return "pretrained"
    raise UserError(
        f"init.from: {path} is neither a kotomamba run / checkpoint directory (with checkpoints/latest) "
        "nor a mamba-ssm / transformers model directory (with config.json)"
    )
