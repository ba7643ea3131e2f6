"""Open plain, gzip (``.gz``) or Zstandard (``.zst``) files as one binary stream, chosen by suffix.

A compressed stream checks that its data is whole: a file cut short or corrupt is a UserError naming the file,
raised by the read that reaches the damage, so whatever reads through :func:`open_decompressed` (preprocess,
the tokenizer trainer, download) reports it instead of a traceback, or, for a Zstandard file cut between two
blocks, instead of a silently shorter file.
"""
from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path
from typing import BinaryIO

from kotomamba.errors import UserError

COMPRESSED_SUFFIXES = (".gz", ".zst")
# Compressed bytes handed to the Zstandard decompressor at a time: its output for them is held whole, so this
# bounds what one read holds (a JSONL shard's ratio is about 5).
ZSTD_FEED = 1 << 16


def strip_compression_suffix(name: str) -> str:
    """``shard.jsonl.zst`` -> ``shard.jsonl``; other names unchanged."""
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_decompressed(path: str | os.PathLike, name: str | None = None, shown_as: str | None = None) -> BinaryIO:
    """A buffered binary reader of ``path``'s decompressed content; ``name`` (default: the path's) says which
    compression by its suffix, for files kept under temporary names; ``shown_as`` (default: the path) is what the
    error of damaged data names: the file as the user knows it (a download's URL rather than its ``.part``)."""
    name = Path(path).name if name is None else name
    shown = str(path) if shown_as is None else shown_as
    if name.endswith(".gz"):
        return _checked(gzip.open(path, "rb"), shown, "gzip", (EOFError, gzip.BadGzipFile, zlib.error))
    if name.endswith(".zst"):
        import zstandard

        return _checked(_ZstdFrames(open(path, "rb")), shown, "zstd", (EOFError, zstandard.ZstdError))
    return open(path, "rb")


def _checked(stream: BinaryIO, shown: str, kind: str, errors: tuple[type[Exception], ...]) -> BinaryIO:
    return io.BufferedReader(_Damage(stream, shown, kind, errors))


class _Damage(io.RawIOBase):
    """``stream`` whose ``errors`` (what its decompressor raises for damaged data) become a UserError naming
    the file: ``<file>: truncated or corrupt <kind> data (<the decompressor's words>)``."""

    def __init__(self, stream: BinaryIO, shown: str, kind: str, errors: tuple[type[Exception], ...]):
        super().__init__()
        self._stream, self._shown, self._kind, self._errors = stream, shown, kind, errors

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self._stream.readinto(buffer)
        except self._errors as exc:
            raise UserError(f"{self._shown}: truncated or corrupt {self._kind} data ({exc})") from exc

    def close(self) -> None:
        self._stream.close()
        super().close()


class _ZstdFrames(io.RawIOBase):
    """The content of a Zstandard file, frame after frame, as the ``zstd`` tool reads it; input that ends inside
    a frame is an EOFError.

    ``zstandard``'s ``stream_reader`` returns what it has when its input runs out, so a file cut between two
    blocks would read as a shorter file without a word; a ``decompressobj`` says whether its frame ended.
    """

    def __init__(self, raw: BinaryIO):
        import zstandard

        super().__init__()
        self._raw = raw
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = None  # the frame being read, once its first byte came
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data = self._raw.read(ZSTD_FEED)
            if not data:
                if self._frame is not None:
                    raise EOFError("the file ends inside a frame")
                return 0
            self._out = memoryview(self._feed(data))
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        self._out = self._out[size:]
        return size

    def _feed(self, data: bytes) -> bytes:
        """Decompress ``data``, starting a new frame wherever one ends."""
        out = []
        while data:
            if self._frame is None:
                self._frame = self._decompressor.decompressobj()
            out.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            data, self._frame = self._frame.unused_data, None
        return b"".join(out)

    def close(self) -> None:
        self._raw.close()
        super().close()
