"""``kotomamba preprocess``: JSONL -> Megatron ``<prefix>_<key>_document.{bin,idx}``, in parallel.

Takes Megatron-LM ``tools/preprocess_data.py``'s flags, so the predecessor's tokenize scripts run
with the command name swapped: ``--input --output-prefix --tokenizer-type --tokenizer-model
--vocab-file --merge-file --json-keys --append-eod --workers --split-sentences --keep-newlines
--partitions --keep-sequential-samples --log-interval --dataset-impl mmap``. ``--input`` may name
several files (also ``.gz`` / ``.zst``), which are indexed in the order given. Where we differ:

- ``--split-sentences`` uses our own rule-based splitter (``kotomamba.data.sentences``), not
  NLTK Punkt, so sentence boundaries differ in places; outputs are named as Megatron names them,
  ``<prefix>_<key>_sentence.{bin,idx}``, one sequence per sentence, the eod (``--append-eod``)
  at the end of each document's last sentence.
- ``--partitions N`` is accepted and mapped onto the workers: the input is always read as one
  ordered stream tokenized by ``--workers`` processes. The output equals Megatron's merged output
  with ``--keep-sequential-samples`` (contiguous partitions); without it Megatron deals lines to
  partitions round-robin and its document order differs from ours.
- ``--log-interval N`` prints a progress line every N lines (documents); without it a progress bar
  is drawn on a terminal.

For the pipeline's per-shard jobs (``rules/tokenize.smk``): ``--input-name`` says what errors call an
input (the URL a downloaded shard came from), ``--allow-empty`` writes an empty dataset for a shard
without documents, and ``--summary FILE`` writes the counts that ``kotomamba merge-datasets`` adds up
when it merges a source's shards (:mod:`kotomamba.data.merge`).

Each line must be a JSON object whose ``--json-keys`` are strings. A bad line (invalid UTF-8,
invalid JSON, not an object, a missing key, a non-string value) stops the run with the file and
line number and leaves nothing at the prefix (``--on-bad-line error``, the default), or is left
out of every key's output and counted (``--on-bad-line skip``). A line whose document is empty
under any of the keys (no tokens besides the eod) is left out of every key's output and counted
once as an empty document, in both modes, so the outputs of several keys stay document for
document in step.

The main process reads blocks of raw lines and writes results, in input order, while
``--workers`` processes parse and tokenize them with the tokenizer's batch encoder (``--workers
0`` does everything in the main process), so the output does not depend on the number of
workers. JSON is parsed with ``orjson`` when it is installed (``pip install kotomamba[fast]``);
a chunk with any line it rejects is parsed again line by line with the standard library, which
decides and names the problem, so both give the same output and the same errors.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import itertools
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from kotomamba.data.compression import open_decompressed
from kotomamba.data.indexed_dataset import IndexedDatasetWriter, data_file_path, index_file_path, optimal_dtype
from kotomamba.data.jsonl_lines import (BAD_LINE_KINDS, ON_BAD_LINE, SURROGATE_ESCAPE, BadLine,
                                        bad_line_error, check_on_bad_line, line_texts, read_past_bom,
                                        skipped_counts)
from kotomamba.data.line_origins import sources_of
from kotomamba.data.sentences import split_sentences
from kotomamba.data.tokenizer import GPT2_TYPES, TOKENIZER_TYPES, Tokenizer, build_tokenizer
from kotomamba.errors import UserError, report
from kotomamba.io import check_output, write_json

try:
    from orjson import loads as _fast_loads
except ImportError:
    _fast_loads = None

CHUNK_BYTES = 1 << 20


class TokenizerSpec(NamedTuple):
    """What ``build_tokenizer`` needs, sent to each worker process."""

    tokenizer_type: str
    tokenizer_model: str | None = None
    vocab_file: str | None = None
    merge_file: str | None = None

    def build(self) -> Tokenizer:
        return build_tokenizer(self.tokenizer_type, self.tokenizer_model, self.vocab_file, self.merge_file)


class EncodeOptions(NamedTuple):
    json_keys: tuple[str, ...]
    append_eod: bool
    split_sentences: bool = False
    keep_newlines: bool = False


@dataclass
class Chunk:
    """Consecutive lines of one input file joined by b"\\n" (no newline after the last);
    ``first_line`` is 1-based."""

    file: str
    first_line: int
    data: bytes


@dataclass
class ChunkResult:
    """Per key: the chunk's kept documents' tokens concatenated (``tokens``), tokens per sequence
    (``lengths``) and, with sentence splitting, sequences per document (``sequences``)."""

    tokens: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    sequences: dict[str, np.ndarray | None]
    bad: list[tuple[str, str, int, str]]  # (kind, file, line, message), in line order
    empty: int
    lines: int
    bytes: int


@dataclass
class PreprocessSummary:
    outputs: dict[str, str]
    documents: dict[str, int]
    tokens: dict[str, int]
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_LINE_KINDS, 0))
    empty: int = 0
    seconds: float = 0.0
    bytes: int = 0  # of JSONL read (decompressed)
    inputs: list[str] = field(default_factory=list)  # as errors name them


class _Encoder:
    """Turns chunks of raw lines into token arrays; one per worker process."""

    def __init__(self, tokenizer: Tokenizer, options: EncodeOptions):
        self.tokenizer = tokenizer
        self.options = options
        self.dtype = optimal_dtype(tokenizer.vocab_size)
        self._eod = np.array([tokenizer.eod], dtype=self.dtype)
        self._fast_loads = _fast_loads

    def encode(self, chunk: Chunk) -> ChunkResult:
        keys = self.options.json_keys
        bad: list[tuple[str, str, int, str]] = []
        lines = chunk.data.split(b"\n")
        if b"\r" in chunk.data:
            lines = [line.rstrip(b"\r") for line in lines]
        texts = self._parse_all(lines)
        if texts is None:
            texts = {key: [] for key in keys}
            # One regex pass over the chunk; lines are checked one by one only if it matches.
            maybe_surrogates = SURROGATE_ESCAPE.search(chunk.data) is not None
            for number, raw in enumerate(lines, start=chunk.first_line):
                problem = self._parse(raw, texts, maybe_surrogates)
                if problem is not None:
                    bad.append((problem.kind, chunk.file, number, problem.message))
        if self.options.split_sentences:
            tokens, lengths, sequences, empty = self._sentences(texts)
        else:
            tokens, lengths, empty = self._documents(texts)
            sequences = dict.fromkeys(keys)
        return ChunkResult(tokens, lengths, sequences, bad, empty, len(lines), len(chunk.data) + 1)

    def _documents(self, texts: dict[str, list[str]]):
        """One sequence per document; a document empty under any key is dropped from all keys."""
        count = len(next(iter(texts.values())))
        arrays = {key: self.tokenizer.encode_arrays(values, self.options.append_eod) if values else []
                  for key, values in texts.items()}
        lengths = {key: np.fromiter(map(len, docs), dtype=np.int64, count=count) for key, docs in arrays.items()}
        keep = np.ones(count, dtype=bool)
        for key_lengths in lengths.values():
            keep &= key_lengths > self.options.append_eod  # some text token besides the eod
        kept = int(keep.sum())
        tokens = {}
        for key, docs in arrays.items():
            if kept < count:
                docs = list(itertools.compress(docs, keep))
                lengths[key] = lengths[key][keep]
            tokens[key] = self._concatenate(docs)
        return tokens, lengths, count - kept

    def _sentences(self, texts: dict[str, list[str]]):
        """One sequence per sentence with at least one token; the eod ends each document's last one."""
        per_key = {key: self._sentence_arrays(values) for key, values in texts.items()}
        keep = [all(docs) for docs in zip(*per_key.values())]
        tokens, lengths, sequences = {}, {}, {}
        for key, documents in per_key.items():
            pieces, sizes, counts = [], [], []
            for sentences in itertools.compress(documents, keep):
                pieces += sentences
                sizes += map(len, sentences)
                counts.append(len(sentences))
                if self.options.append_eod:
                    pieces.append(self._eod)
                    sizes[-1] += 1
            tokens[key] = self._concatenate(pieces)
            lengths[key] = np.array(sizes, dtype=np.int64)
            sequences[key] = np.array(counts, dtype=np.int64)
        return tokens, lengths, sequences, len(keep) - sum(keep)

    def _sentence_arrays(self, values: list[str]) -> list[list[np.ndarray]]:
        """Per document: the token arrays of its sentences that have tokens."""
        sentences = [split_sentences(value, self.options.keep_newlines) for value in values]
        flat = [sentence for document in sentences for sentence in document]
        arrays = iter(self.tokenizer.encode_arrays(flat) if flat else [])
        return [[a for a in itertools.islice(arrays, len(document)) if len(a)] for document in sentences]

    def _concatenate(self, arrays: list[np.ndarray]) -> np.ndarray:
        if not arrays:
            return np.zeros(0, dtype=self.dtype)
        # unsafe: int32 -> uint16 is exact here, every id is below the vocabulary size (< 65,500).
        return np.concatenate(arrays, dtype=self.dtype, casting="unsafe")

    def _parse_all(self, lines: list[bytes]) -> dict[str, list[str]] | None:
        """Every line's texts per key, or None when any line is not a JSON object with string
        values under every key (then ``_parse`` goes line by line and names the problem).

        The common case at C speed: no Python code per line, as ``_parse`` needs (~5% of a run).
        orjson accepts a subset of what the standard library accepts (it rejects invalid UTF-8,
        lone surrogates, NaN, trailing control characters) and decodes strings the same way, so
        whatever it accepts here the standard library would accept with the same texts.
        """
        if self._fast_loads is None:
            return None
        try:
            objects = list(map(self._fast_loads, lines))
            # A list or string raises TypeError on a str index, a dict without the key KeyError.
            columns = {key: [obj[key] for obj in objects] for key in self.options.json_keys}
        except (ValueError, KeyError, TypeError):
            return None
        if any(set(map(type, values)) - {str} for values in columns.values()):
            return None
        return columns

    def _parse(self, raw: bytes, texts: dict[str, list[str]], maybe_surrogates: bool) -> BadLine | None:
        """Append this line's texts to ``texts``, or return what is wrong with it.

        Always the standard library, with or without orjson, so the verdicts and messages are the same.
        """
        values = line_texts(raw, self.options.json_keys, maybe_surrogates)
        if isinstance(values, BadLine):
            return values
        for key, value in zip(self.options.json_keys, values):
            texts[key].append(value)
        return None


_worker_encoder: _Encoder | None = None


def _init_worker(spec: TokenizerSpec, options: EncodeOptions) -> None:
    global _worker_encoder
    _worker_encoder = _Encoder(spec.build(), options)


def _encode_in_worker(chunk: Chunk) -> ChunkResult:
    return _worker_encoder.encode(chunk)


def read_chunks(paths: Sequence[str]) -> Iterator[Chunk]:
    """Every line of every input, in order, in chunks of whole lines of about CHUNK_BYTES; a byte order mark
    at an input's start is no part of its line 1.

    The main process only cuts blocks at a newline and counts them (both in C); splitting into
    lines happens in the workers.
    """
    for path in paths:
        with open_decompressed(path) as handle:
            first, rest = 1, read_past_bom(handle)
            while block := handle.read(CHUNK_BYTES):
                block = rest + block
                cut = block.rfind(b"\n")
                if cut < 0:
                    rest = block
                    continue
                rest = block[cut + 1 :]
                yield Chunk(str(path), first, block[:cut])
                first += block.count(b"\n", 0, cut) + 1
        if rest:
            yield Chunk(str(path), first, rest)


def _ordered_parallel(chunks: Iterator[Chunk], workers: int, initargs: tuple) -> Iterator[ChunkResult]:
    """Encode chunks on ``workers`` processes, yielding results in input order, a bounded number in flight.

    A ``ProcessPoolExecutor`` rather than ``multiprocessing.Pool``: closing this generator early (a bad
    line, Ctrl-C) cancels what has not started and waits for the few chunks in flight, where
    ``Pool.terminate`` can deadlock on the task queue's lock; a worker that dies raises
    ``BrokenProcessPool`` instead of leaving ``get()`` waiting forever.
    """
    context = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                      initargs=initargs)
    try:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(executor.submit(_encode_in_worker, chunk))
            if len(pending) >= 2 * workers + 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def preprocess(inputs: Sequence[str], output_prefix: str, tokenizer_type: str, tokenizer_model: str | None = None,
               json_keys: Sequence[str] = ("text",), append_eod: bool = False, workers: int = 1,
               on_bad_line: str = "error", progress: bool = True, *, vocab_file: str | None = None,
               merge_file: str | None = None, split_sentences: bool = False, keep_newlines: bool = False,
               log_interval: int | None = None, input_names: Sequence[str] | None = None,
               allow_empty: bool = False) -> PreprocessSummary:
    """Tokenize ``inputs`` into ``<output_prefix>_<key>_document.{bin,idx}`` for each key
    (``_sentence`` with ``split_sentences``).

    ``input_names`` (one per input) is what errors call each input, with its own line numbers: the
    URL a downloaded shard came from, say; by default the path, or the user's files that an origins
    record beside it names (:mod:`kotomamba.data.line_origins`). ``allow_empty`` writes an empty
    dataset instead of refusing one (a shard may be empty; the merge of a source's shards checks
    the whole).

    Raises:
        UserError: a missing input, an unusable tokenizer, no documents (without ``allow_empty``),
            or (with ``on_bad_line="error"``) the first bad line, named by file and line number;
            no output is left at the prefix.
    """
    check_on_bad_line(on_bad_line)
    if workers < 0:
        raise UserError(f"--workers must be at least 0, got {workers}")
    if log_interval is not None and log_interval < 1:
        raise UserError(f"--log-interval must be at least 1, got {log_interval}")
    if not json_keys or len(set(json_keys)) != len(json_keys):
        raise UserError(f"--json-keys must name at least one key, each once (got {' '.join(json_keys)!r})")
    for path in inputs:
        if not Path(path).is_file():
            raise UserError(f"{path}: input file not found (--input)")
    if input_names is not None and len(input_names) != len(inputs):
        raise UserError(f"{len(input_names)} --input-name values for {len(inputs)} inputs: give one per input")
    names = dict(zip(map(str, inputs), input_names or map(str, inputs)))
    level = "sentence" if split_sentences else "document"
    outputs = {key: f"{output_prefix}_{key}_{level}" for key in json_keys}
    check_dataset_outputs(outputs.values())
    spec = TokenizerSpec(tokenizer_type, None if tokenizer_model is None else str(tokenizer_model),
                         None if vocab_file is None else str(vocab_file),
                         None if merge_file is None else str(merge_file))
    tokenizer = spec.build()
    options = EncodeOptions(tuple(json_keys), append_eod, split_sentences, keep_newlines)
    dtype = optimal_dtype(tokenizer.vocab_size)
    summary = PreprocessSummary(outputs, dict.fromkeys(json_keys, 0), dict.fromkeys(json_keys, 0),
                                inputs=[source for path, name in names.items() for source in _sources(path, name)])
    start = time.perf_counter()
    chunks = read_chunks(inputs)
    if workers == 0:
        results = map(_Encoder(tokenizer, options).encode, chunks)
    else:
        results = _ordered_parallel(chunks, workers, (spec, options))
    writers = {key: IndexedDatasetWriter(prefix, dtype) for key, prefix in outputs.items()}
    bar = _progress_bar(progress and log_interval is None)
    read_bytes, next_log = 0, log_interval
    try:
        for result in results:
            if result.bad and on_bad_line == "error":
                kind, file, line, message = result.bad[0]
                raise bad_line_error(file, line, names[file], message)
            for kind, *_ in result.bad:
                summary.skipped[kind] += 1
            summary.empty += result.empty
            for key, writer in writers.items():
                writer.add_documents(result.tokens[key], result.lengths[key], result.sequences[key])
            summary.lines += result.lines
            read_bytes += result.bytes
            if bar is not None:
                bar.update(result.lines)
            if next_log is not None and summary.lines >= next_log:
                elapsed = max(time.perf_counter() - start, 1e-9)
                print(f"Processed {summary.lines} documents ({summary.lines / elapsed:,.1f} docs/s, "
                      f"{read_bytes / elapsed / 1e6:,.2f} MB/s).", file=sys.stderr, flush=True)
                next_log = (summary.lines // log_interval + 1) * log_interval
        if not allow_empty and not any(writer.num_documents for writer in writers.values()):
            raise UserError(no_documents_message(summary.inputs, summary.lines, summary.empty,
                                                 sum(summary.skipped.values())))
        # Every output sealed before any is in place: one that finds no room (for its index) leaves all as
        # they were, not some of them new.
        for writer in writers.values():
            writer.seal()
        for writer in writers.values():
            writer.commit()
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
        summary.documents[key] = writer.num_documents
        summary.tokens[key] = writer.num_tokens
    summary.seconds = time.perf_counter() - start
    summary.bytes = read_bytes
    return summary


def check_dataset_outputs(prefixes: Iterable[str]) -> None:
    """Refuse, before any work, dataset outputs (``<prefix>.bin`` / ``.idx``) that cannot be written."""
    for prefix in prefixes:
        for path in (data_file_path(prefix), index_file_path(prefix)):
            check_output(path, "--output-prefix")


def _sources(path: str, name: str) -> list[str]:
    """The user's sources of one input: its given name, or those its origins record names."""
    return sources_of(path) if name == path else [name]


def no_documents_message(sources: Sequence[str], lines: int, empty: int, skipped: int) -> str:
    return (f"{', '.join(sources)}: no documents to tokenize ({lines} lines: {empty} with empty text, "
            f"{skipped} bad lines skipped)")


def write_summary(summary: PreprocessSummary, path: str) -> None:
    """The counts of a run as JSON (what ``kotomamba merge-datasets --summaries`` sums)::

        {"inputs": [...], "lines": int, "empty": int, "skipped": {kind: int}, "documents": {key: int},
         "tokens": {key: int}, "bytes": int, "seconds": float}
    """
    write_json(path, {"inputs": summary.inputs, "lines": summary.lines, "empty": summary.empty,
                      "skipped": summary.skipped, "documents": summary.documents, "tokens": summary.tokens,
                      "bytes": summary.bytes, "seconds": summary.seconds})


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: draw only on a terminal, so Snakemake logs stay readable.
    return tqdm(unit=" lines", desc="preprocess", file=sys.stderr, disable=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kotomamba preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="JSONL file(s), plain, .gz or .zst")
    parser.add_argument("--input-name", nargs="+",
                        help="what errors call each input (e.g. the URL a download came from); default its path")
    parser.add_argument("--output-prefix", required=True,
                        help="writes <prefix>_<key>_document.{bin,idx} (_sentence with --split-sentences)")
    parser.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    parser.add_argument("--tokenizer-model", help=".model file, tokenizer.json, directory or hub name")
    parser.add_argument("--vocab-file", help="GPT2BPETokenizer: GPT-2's vocab.json")
    parser.add_argument("--merge-file", help="GPT2BPETokenizer: GPT-2's merges.txt")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys to index, one output per key")
    parser.add_argument("--append-eod", action="store_true", help="end every document with the tokenizer's eod id")
    parser.add_argument("--split-sentences", action="store_true",
                        help="one sequence per sentence (our rule-based splitter, not NLTK Punkt)")
    parser.add_argument("--keep-newlines", action="store_true",
                        help="with --split-sentences: keep the whitespace after each sentence at its end")
    parser.add_argument("--workers", type=int, default=1, help="tokenizing processes (0: in the main process)")
    parser.add_argument("--partitions", type=int, default=1,
                        help="Megatron's; accepted and mapped onto --workers (one ordered stream)")
    parser.add_argument("--keep-sequential-samples", action="store_true",
                        help="Megatron's; documents always keep their input order here")
    parser.add_argument("--log-interval", type=int, help="print a progress line every N documents (instead of a bar)")
    parser.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="error")
    parser.add_argument("--dataset-impl", choices=("mmap",), default="mmap", help="Megatron's; only mmap exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--allow-empty", action="store_true",
                        help="write an empty dataset rather than refuse input without documents (one shard of many)")
    parser.add_argument("--summary", help="also write the counts (lines, documents, tokens, bad lines) as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.partitions < 1:
            raise UserError(f"--partitions must be at least 1, got {args.partitions}")
        if args.keep_newlines and not args.split_sentences:
            raise UserError("--keep-newlines only applies with --split-sentences")
        if args.tokenizer_type not in GPT2_TYPES and (args.vocab_file or args.merge_file):
            raise UserError(f"--vocab-file / --merge-file are for GPT2BPETokenizer, not {args.tokenizer_type}")
        if args.summary:
            check_output(args.summary, "--summary")
        summary = preprocess(args.input, args.output_prefix, args.tokenizer_type, args.tokenizer_model,
                             args.json_keys, args.append_eod, args.workers, args.on_bad_line,
                             progress=not args.no_progress, vocab_file=args.vocab_file, merge_file=args.merge_file,
                             split_sentences=args.split_sentences, keep_newlines=args.keep_newlines,
                             log_interval=args.log_interval, input_names=args.input_name,
                             allow_empty=args.allow_empty)
        if args.summary:
            write_summary(summary, args.summary)
    except UserError as exc:
        return report("preprocess", exc)
    for key, prefix in summary.outputs.items():
        print(f"{prefix}.bin/.idx: {summary.documents[key]} documents, {summary.tokens[key]} tokens")
    skipped = skipped_counts(summary.skipped)
    total_tokens = sum(summary.tokens.values())
    print(f"{summary.lines} lines; skipped bad lines: {skipped}; skipped empty documents: {summary.empty}; "
          f"{total_tokens / max(summary.seconds, 1e-9):,.0f} tokens/s")
    return 0
