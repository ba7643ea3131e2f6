"""``kotomamba preprocess``: JSONL -> Megatron ``<prefix>_<key>_document.{bin,idx}``, in parallel.

Takes Megatron-LM ``tools/preprocess_data.py``'s flags (``--input --output-prefix --tokenizer-type
--tokenizer-model --json-keys --append-eod --workers``, and ``--dataset-impl mmap``), so the
predecessor's tokenize scripts run with the command name swapped; ``--input`` may name several
files (also ``.gz`` / ``.zst``), which are indexed in the order given.

Each line must be a JSON object whose ``--json-keys`` are strings. A bad line (invalid UTF-8,
invalid JSON, not an object, a missing key, a non-string value) stops the run with the file and
line number and leaves nothing at the prefix (``--on-bad-line error``, the default), or is left
out of every key's output and counted (``--on-bad-line skip``). Documents that tokenize to nothing
are skipped and counted in both modes.

Lines are read in chunks by the main process, tokenized by ``--workers`` processes with the
tokenizer's batch encoder, and written in input order, so the output does not depend on the number
of workers.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import multiprocessing
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from kotomamba.data.compression import open_decompressed
from kotomamba.data.indexed_dataset import IndexedDatasetWriter, optimal_dtype
from kotomamba.data.tokenizer import HUGGINGFACE_TYPES, SENTENCEPIECE_TYPES, Tokenizer, build_tokenizer
from kotomamba.errors import UserError

BAD_LINE_KINDS = ("invalid_utf8", "invalid_json", "missing_key", "non_string")
CHUNK_LINES = 2048
CHUNK_BYTES = 1 << 20
# A JSON \uXXXX escape of a UTF-16 surrogate: decodes to a str that is not valid Unicode text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_JSON = json.JSONDecoder()


@dataclass
class Chunk:
    """Consecutive lines of one input file; ``first_line`` is 1-based."""

    file: str
    first_line: int
    lines: list[bytes]


@dataclass
class ChunkResult:
    """Per key: the chunk's documents concatenated (``tokens``) and their ``lengths``."""

    tokens: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    bad: list[tuple[str, str, int, str]]  # (kind, file, line, message), in line order
    empty: int
    lines: int


@dataclass
class PreprocessSummary:
    outputs: dict[str, str]
    documents: dict[str, int]
    tokens: dict[str, int]
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_LINE_KINDS, 0))
    empty: int = 0
    seconds: float = 0.0


class _Encoder:
    """Turns chunks of raw lines into token arrays; one per worker process."""

    def __init__(self, tokenizer: Tokenizer, json_keys: Sequence[str], append_eod: bool, dtype):
        self.tokenizer = tokenizer
        self.json_keys = list(json_keys)
        self.append_eod = append_eod
        self.dtype = dtype

    def encode(self, chunk: Chunk) -> ChunkResult:
        texts: dict[str, list[str]] = {key: [] for key in self.json_keys}
        bad: list[tuple[str, str, int, str]] = []
        # One regex pass over the chunk; lines are checked one by one only if it matches.
        maybe_surrogates = _SURROGATE_ESCAPE.search(b"\n".join(chunk.lines)) is not None
        for number, raw in enumerate(chunk.lines, start=chunk.first_line):
            problem = self._parse(raw, texts, maybe_surrogates)
            if problem is not None:
                bad.append((problem[0], chunk.file, number, problem[1]))
        tokens, lengths, empty = {}, {}, 0
        for key, values in texts.items():
            ids = self.tokenizer.encode_batch(values, self.append_eod) if values else []
            ids = [doc for doc in ids if len(doc) > self.append_eod]  # drop documents with no text tokens
            empty += len(values) - len(ids)
            lengths[key] = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            tokens[key] = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lengths[key].sum()))
        return ChunkResult(tokens, lengths, bad, empty, len(chunk.lines))

    def _parse(self, raw: bytes, texts: dict[str, list[str]], maybe_surrogates: bool) -> tuple[str, str] | None:
        """Append this line's texts to ``texts``, or return (kind, message) of what is wrong with it."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return "invalid_utf8", f"invalid UTF-8 at byte {exc.start} of the line"
        try:
            # raw_decode skips json.loads' Python-level wrappers (a measurable share of the time).
            obj, end = _JSON.raw_decode(line, len(line) - len(line.lstrip()) if line[:1].isspace() else 0)
            if end != len(line) and line[end:].strip():
                raise json.JSONDecodeError("Extra data", line, end)
        except json.JSONDecodeError as exc:
            return "invalid_json", f"invalid JSON ({exc.msg} at column {exc.colno})"
        if not isinstance(obj, dict):
            return "invalid_json", f"expected a JSON object, got {type(obj).__name__}"
        values = []
        for key in self.json_keys:
            if key not in obj:
                return "missing_key", f"missing key {key!r}"
            value = obj[key]
            if not isinstance(value, str):
                return "non_string", f"key {key!r} is {type(value).__name__}, not a string"
            values.append(value)
        if maybe_surrogates and _SURROGATE_ESCAPE.search(raw):
            for key, value in zip(self.json_keys, values):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return "invalid_utf8", f"key {key!r} holds an unpaired UTF-16 surrogate escape"
        for key, value in zip(self.json_keys, values):
            texts[key].append(value)
        return None


_worker_encoder: _Encoder | None = None


def _init_worker(tokenizer_type: str, tokenizer_model: str, json_keys: Sequence[str], append_eod: bool) -> None:
    global _worker_encoder
    tokenizer = build_tokenizer(tokenizer_type, tokenizer_model)
    _worker_encoder = _Encoder(tokenizer, json_keys, append_eod, optimal_dtype(tokenizer.vocab_size))


def _encode_in_worker(chunk: Chunk) -> ChunkResult:
    return _worker_encoder.encode(chunk)


def read_chunks(paths: Sequence[str]) -> Iterator[Chunk]:
    """Every line of every input, in order, in chunks of at most CHUNK_LINES lines / ~CHUNK_BYTES bytes.

    Reads blocks and splits them in C rather than iterating the file line by line (a few percent
    of the whole run on one worker).
    """
    for path in paths:
        first, rest = 1, b""
        with open_decompressed(path) as handle:
            while block := handle.read(CHUNK_BYTES):
                block = rest + block
                cut = block.rfind(b"\n")
                if cut < 0:
                    rest = block
                    continue
                rest = block[cut + 1 :]
                for chunk in _split_lines(str(path), first, block[:cut]):
                    yield chunk
                    first += len(chunk.lines)
        if rest:
            yield from _split_lines(str(path), first, rest)


def _split_lines(path: str, first: int, text: bytes) -> Iterator[Chunk]:
    lines = text.split(b"\n")
    if b"\r" in text:
        lines = [line.rstrip(b"\r") for line in lines]
    for start in range(0, len(lines), CHUNK_LINES):
        yield Chunk(path, first + start, lines[start : start + CHUNK_LINES])


def _ordered_parallel(chunks: Iterator[Chunk], workers: int, initargs: tuple) -> Iterator[ChunkResult]:
    """Encode chunks on ``workers`` processes, yielding results in input order, a bounded number in flight."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def preprocess(inputs: Sequence[str], output_prefix: str, tokenizer_type: str, tokenizer_model: str,
               json_keys: Sequence[str] = ("text",), append_eod: bool = False, workers: int = 1,
               on_bad_line: str = "error", progress: bool = True) -> PreprocessSummary:
    """Tokenize ``inputs`` into ``<output_prefix>_<key>_document.{bin,idx}`` for each key.

    Raises:
        UserError: a missing input, an unusable tokenizer, or (with ``on_bad_line="error"``) the
            first bad line, named by file and line number; no output is left at the prefix.
    """
    if on_bad_line not in ("error", "skip"):
        raise UserError(f"--on-bad-line must be 'error' or 'skip', not {on_bad_line!r}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    for path in inputs:
        if not Path(path).is_file():
            raise UserError(f"{path}: input file not found (--input)")
    tokenizer = build_tokenizer(tokenizer_type, str(tokenizer_model))
    dtype = optimal_dtype(tokenizer.vocab_size)
    outputs = {key: f"{output_prefix}_{key}_document" for key in json_keys}
    summary = PreprocessSummary(outputs, dict.fromkeys(json_keys, 0), dict.fromkeys(json_keys, 0))
    start = time.perf_counter()
    chunks = read_chunks(inputs)
    if workers == 1:
        encoder = _Encoder(tokenizer, json_keys, append_eod, dtype)
        results = map(encoder.encode, chunks)
    else:
        results = _ordered_parallel(chunks, workers, (tokenizer_type, str(tokenizer_model), list(json_keys), append_eod))
    writers = {key: IndexedDatasetWriter(prefix, dtype) for key, prefix in outputs.items()}
    bar = _progress_bar(progress)
    try:
        for result in results:
            if result.bad and on_bad_line == "error":
                kind, file, line, message = result.bad[0]
                raise UserError(f"{file}:{line}: {message} (--on-bad-line skip leaves such lines out)")
            for kind, *_ in result.bad:
                summary.skipped[kind] += 1
            summary.empty += result.empty
            for key, writer in writers.items():
                writer.add_documents(result.tokens[key], result.lengths[key])
            summary.lines += result.lines
            if bar is not None:
                bar.update(result.lines)
    except BaseException:
        if hasattr(results, "close"):
            results.close()  # stops the worker pool now rather than at garbage collection
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    for key, writer in writers.items():
        writer.finalize()
        summary.documents[key] = writer.num_documents
        summary.tokens[key] = writer.num_tokens
    summary.seconds = time.perf_counter() - start
    return summary


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: draw only on a terminal, so Snakemake logs stay readable.
    return tqdm(unit=" lines", desc="preprocess", file=sys.stderr, disable=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kotomamba preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="JSONL file(s), plain, .gz or .zst")
    parser.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.{bin,idx}")
    parser.add_argument("--tokenizer-type", required=True, choices=SENTENCEPIECE_TYPES + HUGGINGFACE_TYPES)
    parser.add_argument("--tokenizer-model", required=True, help=".model file, tokenizer.json, directory or hub name")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys to index, one output per key")
    parser.add_argument("--append-eod", action="store_true", help="end every document with the tokenizer's eod id")
    parser.add_argument("--workers", type=int, default=1, help="tokenizing processes")
    parser.add_argument("--on-bad-line", choices=("error", "skip"), default="error")
    parser.add_argument("--dataset-impl", choices=("mmap",), default="mmap", help="Megatron's; only mmap exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = preprocess(args.input, args.output_prefix, args.tokenizer_type, args.tokenizer_model,
                             args.json_keys, args.append_eod, args.workers, args.on_bad_line,
                             progress=not args.no_progress)
    except UserError as exc:
        print(f"kotomamba preprocess: error: {exc}", file=sys.stderr)
        return 2
    for key, prefix in summary.outputs.items():
        print(f"{prefix}.bin/.idx: {summary.documents[key]} documents, {summary.tokens[key]} tokens")
    skipped = ", ".join(f"{kind} {n}" for kind, n in summary.skipped.items())
    total_tokens = sum(summary.tokens.values())
    print(f"{summary.lines} lines; skipped bad lines: {skipped}; skipped empty documents: {summary.empty}; "
          f"{total_tokens / max(summary.seconds, 1e-9):,.0f} tokens/s")
    return 0
