"""Open plain, gzip (``.gz``) or Zstandard (``.zst``) files as one binary stream, chosen by suffix."""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import BinaryIO

COMPRESSED_SUFFIXES = (".gz", ".zst")


def strip_compression_suffix(name: str) -> str:
    """``shard.jsonl.zst`` -> ``shard.jsonl``; other names unchanged."""
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_decompressed(path: str | os.PathLike, name: str | None = None) -> BinaryIO:
    """A buffered binary reader of ``path``'s decompressed content; ``name`` (default: the
    path's) says which compression by its suffix, for files kept under temporary names."""
    name = Path(path).name if name is None else name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")
