"""A training stage's identity: everything that determines its result, as one digest.

    {"config": the resolved config less RESUMABLE_CHANGES, run_dir and the inputs' paths,
     "inputs": {"data": [{"idx_sha256", "bin_bytes"}, ...], "tokenizer": ..., "init": ...},
     "digest": SHA-256 of the two above as canonical JSON}

Recorded in ``identity.json`` when a run starts and in ``final.json`` when it ends. ``--resume
auto`` continues a run directory only when its recorded digest equals the current one; so a stage
whose predecessor retrained (the predecessor's ``final.json`` digest is part of ``init``), whose
corpus or tokenizer changed, or whose training settings changed starts over.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kotomamba.errors import UserError
from kotomamba.manifest import sha256_file
from kotomamba.train.config import TrainConfig
from kotomamba.train.run_dir import RunDir, run_dir_of

# Settings a resumed run may change without changing what it computes. ``parallel.cuda_graph`` only says
# how the same kernels are launched (replayed or one by one), and under ``auto`` the job's own world
# size decides it, which the identity does not hold either. ``parallel.data_parallel`` only says where
# the same gradient mean is computed (sharded or replicated; the checkpoint format is the same), and under
# ``auto`` the GPU's memory decides it. Activation checkpointing recomputes the same forward in the
# backward (the usual answer to running out of memory). ``eval`` only reads the model, from a data loader and
# a generator of its own, and its validation samples are a split of their own: the weights do not depend on it.
RESUMABLE_CHANGES = (("train", "max_steps_this_job"), ("train", "wall_time_budget_s"), ("logging",),
                     ("checkpoint", "interval"), ("checkpoint", "keep_last"), ("checkpoint", "async"), ("env",),
                     ("parallel", "cuda_graph"), ("parallel", "data_parallel"),
                     ("parallel", "activation_checkpointing"), ("parallel", "activation_checkpointing_interval"),
                     ("eval",))
# How FSDP shards: nothing to say for one process, which is not sharded.
UNSHARDED = (("parallel", "strategy"), ("parallel", "hybrid_shard_size"))
# Sharding strategies that compute the same numbers, as the one they are recorded as: SHARD_GRAD_OP keeps the
# gathered parameters from forward to backward where FULL_SHARD gathers them again (memory against time); the
# gradients' reduce-scatter is the same. HYBRID_SHARD's reduction over two mesh dimensions is not.
SAME_SHARDING = {"SHARD_GRAD_OP": "FULL_SHARD"}

# Weight files of a released (mamba-ssm / transformers) model directory.
_WEIGHT_FILES = ("config.json", "*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def _without(plain: dict, paths) -> dict:
    """``plain`` (a nested dict, changed in place) less the dotted ``paths``."""
    for path in paths:
        holder = plain
        for key in path[:-1]:
            holder = holder.get(key, {})
        holder.pop(path[-1], None)
    return plain


def comparable_config(config: TrainConfig, precision: str | None = None, world: int | None = None) -> dict:
    """The config as it bears on the result: no resumable settings, no run_dir, and no input paths (the
    inputs count by their contents, so a moved or copied project directory keeps its identity). ``precision``:
    the resolved one (``auto`` is what the device makes it); ``world`` 1: the sharding strategy is left out."""
    from kotomamba.data.gpt_dataset import parse_data_path

    plain = _same_sharding(_without(json.loads(json.dumps(config.to_dict())),
                                    RESUMABLE_CHANGES + (UNSHARDED if world == 1 else ())))
    plain.pop("run_dir", None)
    if precision is not None:
        plain["precision"] = precision
    data = plain["data"]
    data["data_path"] = [weight for weight, _ in parse_data_path(config.data.data_path)]
    for section, key in (("data", "tokenizer_model"), ("data", "cache_dir"), ("init", "from")):
        plain.get(section, {}).pop(key, None)
    return plain


def _tokenizer_identity(model: str | None) -> str | dict | None:
    """SHA-256 of a tokenizer file, of each file of a tokenizer directory, or the name given."""
    if not model:
        return None
    path = Path(model)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return model


def _init_identity(source: str | None) -> dict | None:
    """A previous run's final identity and its checkpoint's checksums, or a released model's file stamps."""
    from kotomamba.train.run_dir import resolve_checkpoint
    from kotomamba.train.integrity import integrity_digest

    if source is None:
        return None
    path = Path(source)
    checkpoint = resolve_checkpoint(path)
    if checkpoint is not None:
        found = {"checkpoint": integrity_digest(checkpoint)}
        run = run_dir_of(checkpoint)
        final = RunDir(run).final if run is not None else None
        if final is not None and final.is_file():
            found["run"] = json.loads(final.read_text()).get("identity")
        if found["checkpoint"] is None:  # written before checksums were recorded: its files' stamps
            found["files"] = _stamps(sorted(p for p in checkpoint.iterdir() if p.is_file()), checkpoint)
        return found
    files = sorted({p for pattern in _WEIGHT_FILES for p in path.glob(pattern)})
    if not files:
        raise UserError(f"init.from: {path}: no checkpoint and no model files (config.json, *.safetensors) there")
    return {"files": _stamps(files, path)}


def _same_sharding(plain: dict) -> dict:
    """``plain`` (a config as a nested dict, changed in place) with its strategy as :data:`SAME_SHARDING` records it."""
    parallel = plain.get("parallel", {})
    if parallel.get("strategy") in SAME_SHARDING:
        parallel["strategy"] = SAME_SHARDING[parallel["strategy"]]
    return plain


def _stamps(files: list[Path], root: Path) -> dict:
    # Sizes and modification times: released weights are large and never rewritten in place.
    return {str(p.relative_to(root)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def stage_identity(config: TrainConfig, precision: str | None = None, world: int | None = None) -> dict:
    """The identity of the run ``config`` describes (reads every input's checksum; rank 0 only); ``precision``
    and ``world`` as :func:`comparable_config` takes them."""
    from kotomamba.data.gpt_dataset import parse_data_path

    data = [{"idx_sha256": sha256_file(f"{prefix}.idx"), "bin_bytes": Path(f"{prefix}.bin").stat().st_size}
            for _, prefix in parse_data_path(config.data.data_path)]
    body = {"config": comparable_config(config, precision, world),
            "inputs": {"data": data, "tokenizer": _tokenizer_identity(config.data.tokenizer_model),
                       "init": _init_identity(config.init.from_)}}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {**body, "digest": digest}


def _flat(plain, prefix: str = "") -> dict:
    if not isinstance(plain, dict):
        return {prefix: plain}
    flat = {}
    for key, value in plain.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return flat


def _config_changes(recorded: dict, current: dict, config: TrainConfig | None) -> list[str]:
    """Each setting that differs, as "key old -> new"; ``recorded`` is taken as this version would record it
    (settings since found resumable, and the sharding strategy where ``current`` has none, left out; a strategy
    as :data:`SAME_SHARDING` records it; a recorded ``auto`` precision is what it resolves to here when this
    config says ``auto`` too)."""
    recorded = _same_sharding(_without(json.loads(json.dumps(recorded)), RESUMABLE_CHANGES))
    old, new = _flat(recorded), _flat(current)
    for key in (".".join(path) for path in UNSHARDED):
        if key not in new:
            old.pop(key, None)
    if old.get("precision") == "auto" and config is not None and config.precision == "auto":
        old["precision"] = new.get("precision")
    missing = "(not set)"
    return [f"{key} {old.get(key, missing)} -> {new.get(key, missing)}"
            for key in sorted(old.keys() | new.keys()) if old.get(key, missing) != new.get(key, missing)]


def _record(run: RunDir) -> dict | None:
    """``run``'s ``identity.json``; None where there is none. ValueError or OSError where it cannot be read."""
    try:
        recorded = json.loads(run.identity.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("digest"), str):
        raise ValueError("no \"digest\"")
    return recorded


def unreadable_record(run: RunDir) -> str | None:
    """Why ``run``'s ``identity.json`` cannot be read (what :func:`identity_changes` refuses); None where it can be,
    or there is none."""
    try:
        _record(run)
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def identity_changes(run: RunDir, current: dict, config: TrainConfig | None = None) -> list[str] | None:
    """What differs between the identity ``run`` recorded and ``current`` (this job's :func:`stage_identity`):
    ``[]`` the same stage, else one line per changed setting or input; ``None`` when the run recorded none (a
    run directory written before identities were). An ``identity.json`` that cannot be read is an error naming
    it, unless ``final.json`` records this very identity: it is never taken for a changed stage."""
    try:
        recorded = _record(run)
    except (OSError, ValueError) as exc:
        try:
            finished = json.loads(run.final.read_text()).get("identity")
        except (OSError, ValueError, AttributeError):
            finished = None
        if finished == current["digest"]:
            return []
        raise UserError(f"{run.identity}: cannot be read ({exc}); it records what this run's checkpoints were "
                        "trained with. Restore it, or pass --resume never to start over (the run is kept in "
                        f"{run.superseded})") from None
    if recorded is None:
        return None
    if recorded["digest"] == current["digest"]:
        return []
    changes = []
    if isinstance(recorded.get("config"), dict):
        changes += _config_changes(recorded["config"], current["config"], config)
    elif "config" in current:
        changes.append("the config (recorded without its settings)")
    inputs = recorded.get("inputs") if isinstance(recorded.get("inputs"), dict) else {}
    for name, what in (("data", "the data's contents"), ("tokenizer", "the tokenizer"),
                       ("init", "init.from's checkpoint or its run")):
        if inputs.get(name) != current["inputs"].get(name):
            changes.append(f"{what} changed")
    return changes


def predecessor_run(init_from: str) -> RunDir:
    """The run an ``init.from`` of a run directory of ours, or of one of its checkpoints, names."""
    source = Path(init_from)
    return RunDir(run_dir_of(source) or source)


def changed_start(run: RunDir, init_from: str) -> str | None:
    """Why the start ``run`` recorded (its ``identity.json``) is no longer the result of the run it is
    initialised from (``init_from``: a run directory of ours or one of its checkpoints): "is being trained
    again" (it has no result now, and started over), "has a new result"; ``None`` when it is the same (also when
    it has no result now but still holds the checkpoint it ended with, which its next job resumes), or when ``run`` recorded no run's result to
    compare (it has not started, or it started from a released model or a bare checkpoint).
    Reads two small files: cheap enough for ``kotomamba status``."""
    try:
        recorded = json.loads(run.identity.read_text())["inputs"]["init"]
        recorded_run, recorded_weights = recorded["run"], recorded.get("checkpoint")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if recorded_run is None:
        return None
    # A named checkpoint is compared by its run's identity only: the run's final weights are its last checkpoint's.
    predecessor = predecessor_run(init_from)
    names_checkpoint = predecessor.root != Path(init_from)
    try:
        final = json.loads(predecessor.final.read_text())
    except FileNotFoundError:
        # No result now. Where the checkpoint this stage started from is still the newest there (its final.json
        # removed, or the job that wrote it cut short), its next job resumes to that very result; else it started
        # over.
        from kotomamba.train.integrity import integrity_digest
        from kotomamba.train.run_dir import resolve_checkpoint

        newest = resolve_checkpoint(predecessor.root)
        if newest is not None and recorded_weights is not None and integrity_digest(newest) == recorded_weights:
            return None
        return "is being trained again"
    except (OSError, ValueError):
        return None
    if final.get("identity") != recorded_run or (
            not names_checkpoint and recorded_weights and final.get("weights") != recorded_weights):
        return "has a new result"
    return None
