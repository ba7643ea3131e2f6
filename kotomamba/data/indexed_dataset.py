"""Megatron-LM's ``MMIDIDX`` indexed dataset: reader and writer, byte for byte.

Layout (Megatron-LM ``megatron/core/datasets/indexed_dataset.py``; also the design card):

``<prefix>.idx``::

    b"MMIDIDX\\x00\\x00"            9-byte magic
    <Q  version (1)
    <B  dtype code (1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f64, 7 f32, 8 u16)
    <Q  sequence count S
    <Q  document count D (= documents + 1)
    int32[S]  sequence lengths (tokens)
    int64[S]  byte offset of each sequence in the .bin
    int64[D]  document indices: sequence number where each document starts, then S

``<prefix>.bin``: the sequences' tokens concatenated, in the dtype above.

Without sentence splitting every document is one sequence, so ``document_indices`` is
``0, 1, ..., S``; with it (``preprocess --split-sentences``) every sentence is a sequence and
``document_indices`` marks where each document's sentences start.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from kotomamba.errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES: dict[int, type] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
HEADER = struct.Struct("<9sQBQQ")


def dtype_code(dtype) -> int:
    dtype = np.dtype(dtype)
    for code, candidate in DTYPE_CODES.items():
        if np.dtype(candidate) == dtype:
            return code
    raise ValueError(f"dtype {dtype} has no MMIDIDX code")


def optimal_dtype(vocab_size: int) -> type:
    """uint16 when every token id fits with room to spare (Megatron's 65,500 cut-off), else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def data_file_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.bin")


def index_file_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.idx")


class IndexedDataset:
    """Read ``<prefix>.bin`` / ``<prefix>.idx`` through memory maps.

    ``len(ds)`` is the number of sequences; ``ds[i]`` is sequence ``i`` as a 1-D array of the
    file's dtype; ``ds.get(i, offset, length)`` reads a slice without touching the rest.
    ``sizes`` (int32[S]), ``pointers`` (int64[S]) and ``document_indices`` (int64[D]) are views of
    the index.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)
        for path in (idx_path, bin_path):
            if not path.is_file():
                raise UserError(f"{path}: indexed dataset file not found (data prefix {self.prefix!r})")
        index = np.memmap(idx_path, dtype=np.uint8, mode="r")
        if len(index) < HEADER.size:
            raise UserError(f"{idx_path}: truncated index ({len(index)} bytes)")
        magic, version, code, n_seq, n_doc = HEADER.unpack(index[: HEADER.size].tobytes())
        if magic != MAGIC or version != VERSION:
            raise UserError(f"{idx_path}: not a Megatron MMIDIDX version-1 index (magic {magic!r}, version {version})")
        if code not in DTYPE_CODES:
            raise UserError(f"{idx_path}: unknown dtype code {code}")
        expected = HEADER.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
        if len(index) != expected:
            raise UserError(f"{idx_path}: index has {len(index)} bytes, header implies {expected}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        offset = HEADER.size
        self.sizes = np.frombuffer(index, dtype=np.int32, count=n_seq, offset=offset)
        offset += 4 * n_seq
        self.pointers = np.frombuffer(index, dtype=np.int64, count=n_seq, offset=offset)
        offset += 8 * n_seq
        self.document_indices = np.frombuffer(index, dtype=np.int64, count=n_doc, offset=offset)
        self._index = index
        n_tokens = os.path.getsize(bin_path) // self.dtype.itemsize
        if n_seq and int(self.pointers[-1]) // self.dtype.itemsize + int(self.sizes[-1]) != n_tokens:
            raise UserError(f"{bin_path}: size does not match {idx_path} (truncated or mismatched pair)")
        # An empty .bin cannot be memory-mapped; an empty dataset needs no map.
        self._bin = np.memmap(bin_path, dtype=self.dtype, mode="r") if n_tokens else np.empty(0, self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, idx: int) -> np.ndarray:
        return self.get(idx)

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``offset : offset + length`` of sequence ``idx`` (to its end when length is None)."""
        size = int(self.sizes[idx])
        if length is None:
            length = size - offset
        start = int(self.pointers[idx]) // self.dtype.itemsize + offset
        return self._bin[start : start + length]

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))


class IndexedDatasetWriter:
    """Write ``<prefix>.bin`` / ``<prefix>.idx`` atomically, one document at a time.

    Both files are written under temporary names beside the final ones and moved into place by
    ``finalize()`` (``seal()``, then ``commit()``: the .idx last, so a reader never sees an index without
    its data);
    ``abort()`` (or leaving a ``with`` block by an exception) removes them and leaves the prefix as
    it was. A document is one sequence, or several (its sentences) when added with
    ``sequences_per_document``.
    """

    def __init__(self, prefix: str | os.PathLike, dtype):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_bin = self.prefix.with_name(f".{self.prefix.name}.bin.{os.getpid()}.tmp")
        self._tmp_idx = self.prefix.with_name(f".{self.prefix.name}.idx.{os.getpid()}.tmp")
        self._bin = open(self._tmp_bin, "wb")
        self._sizes: list[np.ndarray] = []
        self._documents: list[np.ndarray] = []  # sequences per document, one array per call
        self.num_documents = 0
        self.num_tokens = 0

    def add_document(self, tokens) -> None:
        """Append one document (a 1-D sequence of token ids) as one sequence."""
        self.add_documents(np.asarray(tokens), np.array([len(tokens)], dtype=np.int64))

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray,
                      sequences_per_document: np.ndarray | None = None) -> None:
        """Append several documents at once: ``tokens`` concatenated, ``lengths`` per sequence.

        ``sequences_per_document`` (int[documents], summing to ``len(lengths)``) groups the
        sequences into documents; without it every sequence is a document.
        """
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < np.iinfo(self.dtype).min or tokens.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids outside {self.dtype} range in {self.prefix}")
        if int(np.sum(lengths)) != tokens.size:
            raise ValueError("document lengths do not add up to the number of tokens")
        try:
            self._bin.write(tokens.astype(self.dtype, copy=False).tobytes(order="C"))
        except OSError as exc:  # a write's error names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(data_file_path(self.prefix))) from exc
        if sequences_per_document is None:
            sequences_per_document = np.ones(len(lengths), dtype=np.int64)
        elif int(np.sum(sequences_per_document)) != len(lengths):
            raise ValueError("sequences per document do not add up to the number of sequences")
        self._sizes.append(np.asarray(lengths, dtype=np.int32))
        self._documents.append(np.asarray(sequences_per_document, dtype=np.int64))
        self.num_documents += len(sequences_per_document)
        self.num_tokens += tokens.size

    def finalize(self) -> None:
        """:meth:`seal`, then :meth:`commit`."""
        self.seal()
        self.commit()

    def seal(self) -> None:
        """Write the rest of the data and the index to the temporary files and sync both: all that can fail
        for want of room fails here, naming the file, before anything is in place (so several writers that
        make one output seal all, then commit all)."""
        try:
            self._bin.flush()
            os.fsync(self._bin.fileno())
            self._bin.close()
        except OSError as exc:  # a flush's error names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(data_file_path(self.prefix))) from exc
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        per_document = np.concatenate(self._documents) if self._documents else np.zeros(0, dtype=np.int64)
        document_indices = np.zeros(len(per_document) + 1, dtype=np.int64)
        np.cumsum(per_document, out=document_indices[1:])
        try:
            with open(self._tmp_idx, "wb") as handle:
                handle.write(HEADER.pack(MAGIC, VERSION, dtype_code(self.dtype), len(sizes), len(document_indices)))
                handle.write(sizes.tobytes(order="C"))
                handle.write(pointers.tobytes(order="C"))
                handle.write(document_indices.tobytes(order="C"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(index_file_path(self.prefix))) from exc

    def commit(self) -> None:
        """Move the sealed files into place, the .idx last."""
        os.replace(self._tmp_bin, data_file_path(self.prefix))
        os.replace(self._tmp_idx, index_file_path(self.prefix))

    def abort(self) -> None:
        try:
            self._bin.close()  # flushes what is buffered: on a full disk that fails too
        finally:
            for path in (self._tmp_bin, self._tmp_idx):
                if path.exists():
                    path.unlink()

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
