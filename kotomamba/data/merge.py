"""``kotomamba merge-datasets``: Megatron ``.bin/.idx`` datasets -> one, in the order given.

The pipeline tokenizes each shard of a source by its own job and merges the shards' datasets into
the source's one. The merge is byte for byte what one ``preprocess`` of the shards' lines in the same
order writes (``tests/test_data_shards.py``), so the trainer's sample index and blend do not depend on
how a source was cut. In the layout of :mod:`kotomamba.data.indexed_dataset`:

- ``.bin``: the inputs' ``.bin`` files concatenated;
- ``.idx``: the header with the summed sequence and document counts; ``sizes`` concatenated;
  ``pointers`` of input i shifted by the bytes of the inputs before it; ``document_indices`` of
  input i (without its leading 0, after the first input) shifted by the sequences before it.

Megatron-LM's ``tools/merge_datasets.py`` (``IndexedDatasetBuilder.add_index``) merges the same way.
The inputs are read through memory maps and written in order, so memory stays small whatever their
size. Every input of every key is checked before anything is written, and the outputs appear only
when all are complete (each ``.idx`` after its ``.bin``), every key's together.

With ``--summaries`` (the JSON ``preprocess --summary`` writes for each input), the counts are summed
and printed, and a merge without any document is refused naming the user's sources, which is where
the pipeline learns that a whole source is empty (one empty shard of many is fine).
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from kotomamba.data.indexed_dataset import HEADER, MAGIC, VERSION, IndexedDataset, data_file_path, dtype_code, \
    index_file_path
from kotomamba.data.preprocess import check_dataset_outputs, no_documents_message
from kotomamba.errors import UserError, report
from kotomamba.io import read_json

COPY_BLOCK = 16 << 20


def merge_datasets(prefixes: Sequence[str | os.PathLike], output_prefix: str | os.PathLike) -> tuple[int, int]:
    """Merge the datasets at ``prefixes`` (in order) into ``output_prefix``; returns (documents, tokens).

    Raises:
        UserError: no inputs, a missing or damaged input, or inputs of different token dtypes.
    """
    return merge_all({str(output_prefix): prefixes})[str(output_prefix)]


def merge_all(plan: dict[str, Sequence[str | os.PathLike]]) -> dict[str, tuple[int, int]]:
    """Merge, for each output prefix of ``plan``, the datasets it lists; returns {output prefix: (documents, tokens)}.

    Every input is opened and checked, and every output path, before anything is written; every output is
    written in full before any is moved into place, so that outputs made together (a run's keys) appear
    together or not at all.
    """
    merges = {output: _opened(prefixes) for output, prefixes in plan.items()}
    check_dataset_outputs(merges)
    written: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        for output, datasets in merges.items():
            written += _write_merged(datasets, Path(output))
        for tmp, final in written:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    return {output: (_documents(datasets), sum(ds.num_tokens for ds in datasets))
            for output, datasets in merges.items()}


def _documents(datasets: list[IndexedDataset]) -> int:
    return sum(len(ds.document_indices) - 1 for ds in datasets)


def _opened(prefixes: Sequence[str | os.PathLike]) -> list[IndexedDataset]:
    """The datasets to merge into one, checked: at least one, all there and whole, of one token type."""
    if not prefixes:
        raise UserError("no datasets to merge")
    datasets = [IndexedDataset(prefix) for prefix in prefixes]
    if len({str(ds.dtype) for ds in datasets}) > 1:
        named = ", ".join(f"{ds.prefix} ({ds.dtype})" for ds in datasets)
        raise UserError(f"cannot merge datasets of different token types: {named}")
    return datasets


def _write_merged(datasets: list[IndexedDataset], output: Path) -> list[tuple[Path, Path]]:
    """Write the merge of ``datasets`` under temporary names beside ``output``'s files and sync them; returns
    (temporary, final) for the .bin and the .idx, in that order (the .idx goes into place last). On an exception
    nothing of this output is left."""
    dtype = datasets[0].dtype
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_bin = output.with_name(f".{output.name}.bin.{os.getpid()}.tmp")
    tmp_idx = output.with_name(f".{output.name}.idx.{os.getpid()}.tmp")
    try:
        with open(tmp_bin, "wb") as writer:
            for ds in datasets:
                with open(data_file_path(ds.prefix), "rb") as reader:
                    shutil.copyfileobj(reader, writer, COPY_BLOCK)
            writer.flush()
            os.fsync(writer.fileno())
        with open(tmp_idx, "wb") as writer:
            sequences, documents = sum(map(len, datasets)), _documents(datasets)
            writer.write(HEADER.pack(MAGIC, VERSION, dtype_code(dtype), sequences, documents + 1))
            for ds in datasets:
                writer.write(ds.sizes.tobytes(order="C"))
            byte_offset = 0
            for ds in datasets:
                writer.write((ds.pointers + np.int64(byte_offset)).tobytes(order="C"))
                byte_offset += ds.num_tokens * dtype.itemsize
            writer.write(np.zeros(1, dtype=np.int64).tobytes())
            sequence_offset = 0
            for ds in datasets:
                writer.write((ds.document_indices[1:] + np.int64(sequence_offset)).tobytes(order="C"))
                sequence_offset += len(ds)
            writer.flush()
            os.fsync(writer.fileno())
    except BaseException:
        for path in (tmp_bin, tmp_idx):
            path.unlink(missing_ok=True)
        raise
    return [(tmp_bin, data_file_path(output)), (tmp_idx, index_file_path(output))]


def summed(summaries: Sequence[str | os.PathLike]) -> dict:
    """The counts of several ``preprocess --summary`` files added up (inputs listed in order)."""
    total = {"inputs": [], "lines": 0, "documents": 0, "empty": 0, "skipped": 0, "bytes": 0, "seconds": 0.0}
    for path in summaries:
        part = read_json(path, "summary JSON")
        try:
            total["inputs"] += part["inputs"]
            total["skipped"] += sum(part["skipped"].values())
            total["documents"] += max(part["documents"].values())  # every key keeps the same documents
            for key in ("lines", "empty", "bytes", "seconds"):
                total[key] += part[key]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise UserError(f"{path}: not the counts that `preprocess --summary` writes ({exc!r})") from None
    return total


def merge_shards(inputs: Sequence[str], output_prefix: str, json_keys: Sequence[str], level: str = "document",
                 summaries: Sequence[str] = ()) -> dict[str, tuple[int, int]]:
    """Merge ``<input>_<key>_<level>`` of every input into ``<output_prefix>_<key>_<level>`` for each key
    (the names ``preprocess`` gives); returns {key: (documents, tokens)}.

    Raises:
        UserError: as :func:`merge_datasets`; with ``summaries``, inputs without any document, naming
            the user's sources and what their lines held. Nothing is written then.
    """
    if summaries and len(summaries) != len(inputs):
        raise UserError(f"{len(summaries)} --summaries for {len(inputs)} inputs: give one per input")
    if summaries:
        total = summed(summaries)
        if not total["documents"]:
            raise UserError(no_documents_message(total["inputs"], total["lines"], total["empty"], total["skipped"]))
    merged = merge_all({f"{output_prefix}_{key}_{level}": [f"{prefix}_{key}_{level}" for prefix in inputs]
                        for key in json_keys})
    return dict(zip(json_keys, merged.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotomamba merge-datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help="output prefixes of `preprocess` runs, merged in this order")
    parser.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.{bin,idx}")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="the keys the inputs were tokenized with")
    parser.add_argument("--split-sentences", action="store_true", help="merge the _sentence outputs")
    parser.add_argument("--summaries", nargs="+", default=[],
                        help="each input's `preprocess --summary` JSON: counts summed, no documents at all refused")
    args = parser.parse_args(argv)
    try:
        merged = merge_shards(args.input, args.output_prefix, args.json_keys,
                              "sentence" if args.split_sentences else "document", args.summaries)
    except UserError as exc:
        return report("merge-datasets", exc)
    level = "sentence" if args.split_sentences else "document"
    for key, (documents, tokens) in merged.items():
        print(f"{args.output_prefix}_{key}_{level}.bin/.idx: {documents} documents, {tokens} tokens "
              f"from {len(args.input)} inputs")
    if args.summaries:
        total = summed(args.summaries)
        tokens = sum(tokens for _, tokens in merged.values())
        print(f"{total['lines']} lines, {total['bytes'] / 1e6:,.1f} MB of JSONL; skipped bad lines: {total['skipped']}; "
              f"skipped empty documents: {total['empty']}; {total['seconds']:,.1f} s in the tokenize jobs, "
              f"{tokens / max(total['seconds'], 1e-9):,.0f} tokens/s per job")
    return 0
