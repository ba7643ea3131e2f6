"""``kotomamba train-tokenizer``: train a SentencePiece model (unigram or BPE) with byte fallback.

Byte fallback maps any character outside the learned pieces to its UTF-8 bytes, so every UTF-8
text (Japanese included) encodes and decodes back to itself. The model is written as
``<output>/tokenizer.model`` (with ``tokenizer.vocab``), atomically as a directory. Inputs are
plain text (one sentence per line) or JSONL (the ``--json-key`` field of each object; by name, or
every input with ``--jsonl``), also ``.gz`` / ``.zst``, read as streams.

Special ids follow Megatron/Llama SentencePiece conventions: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2
(the end-of-document token), and ``<pad>`` 3.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from kotomamba.data.compression import open_decompressed, strip_compression_suffix
from kotomamba.errors import UserError
from kotomamba.io import atomic_directory

MODEL_NAME = "tokenizer"


def iter_sentences(paths: Sequence[str | os.PathLike], json_key: str = "text",
                   jsonl: bool | None = None) -> Iterator[str]:
    """Lines of text files, or the ``json_key`` field of JSONL files (``*.jsonl`` / ``*.json``, or
    every file with ``jsonl``: the pipeline's shards keep the names their publishers gave them)."""
    for path in paths:
        is_json = jsonl or strip_compression_suffix(Path(path).name).endswith((".jsonl", ".json"))
        with open_decompressed(path) as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(f"{path}:{number}: invalid UTF-8 at byte {exc.start}") from None
                if not is_json:
                    if line.strip():
                        yield line.rstrip("\r\n")
                    continue
                try:
                    value = json.loads(line)[json_key]
                except (json.JSONDecodeError, TypeError, KeyError) as exc:
                    raise UserError(f"{path}:{number}: expected a JSON object with a string {json_key!r} ({exc})") from None
                if not isinstance(value, str):
                    raise UserError(f"{path}:{number}: field {json_key!r} is {type(value).__name__}, not a string")
                for sentence in value.splitlines():
                    if sentence.strip():
                        yield sentence


def train_tokenizer(inputs: Sequence[str | os.PathLike], vocab_size: int, model_type: str, output: str | os.PathLike,
                    json_key: str = "text", character_coverage: float = 0.9995,
                    input_sentence_size: int = 2_000_000, seed: int = 0, jsonl: bool | None = None) -> Path:
    """Train and write ``<output>/tokenizer.model``; returns its path."""
    import sentencepiece

    if model_type not in ("unigram", "bpe"):
        raise UserError(f"--model-type must be unigram or bpe, not {model_type!r}")
    for path in inputs:
        if not Path(path).is_file():
            raise UserError(f"{path}: input file not found (--input)")
    sentencepiece.set_random_generator_seed(seed)  # sentence sampling is seeded, so training is repeatable
    # The model goes to a buffer, not a file prefix: SentencePiece records the prefix (here a temporary
    # directory's name) inside the model, which would make the same training give different bytes.
    model = io.BytesIO()
    with atomic_directory(output) as tmp:
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter_sentences(inputs, json_key, jsonl),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                character_coverage=character_coverage,
                unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                # Keep digits and whitespace runs as the text has them (code and numbers round-trip).
                split_digits=True,
                remove_extra_whitespaces=False,
                normalization_rule_name="identity",
                allow_whitespace_only_pieces=True,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as exc:
            raise UserError(f"SentencePiece training failed: {exc}") from exc
        (tmp / f"{MODEL_NAME}.model").write_bytes(model.getvalue())
        processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
        with open(tmp / f"{MODEL_NAME}.vocab", "w", encoding="utf-8") as vocab:
            for piece_id in range(processor.get_piece_size()):
                vocab.write(f"{processor.id_to_piece(piece_id)}\t{processor.get_score(piece_id):g}\n")
    return Path(output) / f"{MODEL_NAME}.model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotomamba train-tokenizer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="text or JSONL files (.gz/.zst too)")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    parser.add_argument("--output", required=True, help="directory to write tokenizer.model into")
    parser.add_argument("--json-key", default="text", help="field of JSONL inputs to train on")
    parser.add_argument("--jsonl", action="store_true", help="every input is JSONL, whatever its name")
    parser.add_argument("--character-coverage", type=float, default=0.9995)
    parser.add_argument("--input-sentence-size", type=int, default=2_000_000, help="sentences sampled for training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        model = train_tokenizer(args.input, args.vocab_size, args.model_type, args.output, args.json_key,
                                args.character_coverage, args.input_sentence_size, args.seed, args.jsonl)
    except UserError as exc:
        print(f"kotomamba train-tokenizer: error: {exc}", file=sys.stderr)
        return 2
    print(model)
    return 0
