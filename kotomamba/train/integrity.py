"""Checksums of a checkpoint's files, recorded in the checkpoint and checked before it is trusted.

``<checkpoint>/integrity.json`` = ``{"files": {relative path: {"bytes": int, "sha256": hex}}}`` over
every file DCP wrote (``.metadata`` and each rank's ``__R_I.distcp``). Rank 0 writes it after DCP's
save is complete and before the directory is renamed to ``step_N`` and named by ``latest``, so a
checkpoint that has a name also has its checksums. A flipped byte, a truncated or deleted shard, or
a deleted ``.metadata`` is then found before anything is loaded, and named.

A checkpoint written before checksums were recorded (no ``integrity.json``) is checked for what
DCP itself records: a readable ``.metadata`` and every storage file it names, as long as the data
it places there.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kotomamba.io import write_json
from kotomamba.manifest import sha256_file
from kotomamba.train.run_dir import DCP_METADATA, INTEGRITY


def _data_files(checkpoint_dir: Path) -> list[Path]:
    return sorted(p for p in checkpoint_dir.rglob("*") if p.is_file() and p.name != INTEGRITY)


def record_integrity(checkpoint_dir: Path) -> None:
    """Write ``integrity.json`` for the files now in ``checkpoint_dir`` (one process).

    One thread per file (up to 8; hashlib releases the GIL): a checkpoint has one shard file per rank, and
    this runs inside the save, so its time is the slowest file's, not the sum.
    """
    files = _data_files(checkpoint_dir)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:
        digests = list(pool.map(sha256_file, files))
    record = {str(p.relative_to(checkpoint_dir)): {"bytes": p.stat().st_size, "sha256": digest}
              for p, digest in zip(files, digests)}
    write_json(checkpoint_dir / INTEGRITY, {"files": record})


def integrity_digest(checkpoint_dir: Path) -> str | None:
    """The identity of the checkpoint's content: SHA-256 over its shards' recorded checksums (``None`` when
    it has no ``integrity.json``). DCP's ``.metadata`` is left out: it carries a fresh id for every save,
    so the same weights saved twice would otherwise look different."""
    record = checkpoint_dir / INTEGRITY
    if not record.is_file():
        return None
    files = json.loads(record.read_text())["files"]
    shards = {name: entry["sha256"] for name, entry in files.items() if Path(name).name != DCP_METADATA}
    return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()


def checkpoint_defect(checkpoint_dir: Path, hashed: bool = True) -> str | None:
    """Why ``checkpoint_dir`` cannot be trusted (naming the file), or ``None`` when it verifies. Without ``hashed``
    only what costs no reading of the data is checked (files there, of their recorded sizes): a look that a login
    node can afford over a checkpoint of tens of GB, which the start's full check may still refuse."""
    if not checkpoint_dir.is_dir():
        return f"{checkpoint_dir}: no such directory"
    record = checkpoint_dir / INTEGRITY
    if not record.is_file():
        return _dcp_defect(checkpoint_dir)
    try:
        files = json.loads(record.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{record}: unreadable checksum record ({exc})"
    for name, expected in sorted(files.items()):
        path = checkpoint_dir / name
        if not path.is_file():
            return f"{path}: missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{path}: {size} bytes, {expected['bytes']} recorded (truncated or rewritten)"
        if hashed and sha256_file(path) != expected["sha256"]:
            return f"{path}: SHA-256 differs from the one recorded when it was written (corrupted)"
    return None


def _dcp_defect(checkpoint_dir: Path) -> str | None:
    import torch.distributed.checkpoint as dcp

    metadata_file = checkpoint_dir / DCP_METADATA
    if not metadata_file.is_file():
        return f"{metadata_file}: missing (the save did not complete)"
    try:
        metadata = dcp.FileSystemReader(str(checkpoint_dir)).read_metadata()
    except Exception as exc:  # DCP raises assorted errors (EOFError, UnpicklingError ...) on a bad file
        return f"{metadata_file}: unreadable ({type(exc).__name__}: {exc})"
    ends: dict[str, int] = {}
    for item in (metadata.storage_data or {}).values():
        ends[item.relative_path] = max(ends.get(item.relative_path, 0), item.offset + item.length)
    for storage, end in sorted(ends.items()):
        path = checkpoint_dir / storage
        if not path.is_file():
            return f"{path}: missing (named by {metadata_file})"
        if path.stat().st_size < end:
            return f"{path}: {path.stat().st_size} bytes, {metadata_file} places data up to byte {end} (truncated)"
    return None
