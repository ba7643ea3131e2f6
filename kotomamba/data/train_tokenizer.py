"""``kotomamba train-tokenizer``: train a SentencePiece model (unigram or BPE) with byte fallback.

Byte fallback maps any character outside the learned pieces to its UTF-8 bytes, so every UTF-8
text (Japanese included) encodes and decodes back to itself. The model is written as
``<output>/tokenizer.model`` (with ``tokenizer.vocab``), atomically as a directory. Inputs are
plain text (one sentence per line) or JSONL (the ``--json-keys`` fields of each object, the keys that
``kotomamba preprocess`` tokenizes; by name, or every input with ``--jsonl``), also ``.gz`` / ``.zst``,
read as streams. A bad JSONL line stops training with its file and line, or with ``--on-bad-line skip``
is left out and counted, as ``kotomamba preprocess`` decides and does.

Special ids follow Megatron/Llama SentencePiece conventions: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2
(the end-of-document token), and ``<pad>`` 3.
"""
from __future__ import annotations

import argparse
import io
import itertools
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence

from kotomamba.data.compression import open_decompressed, strip_compression_suffix
from kotomamba.data.jsonl_lines import (BAD_LINE_KINDS, ON_BAD_LINE, BadLine, bad_line_error, check_on_bad_line,
                                        line_texts, read_past_bom, skipped_counts, where)
from kotomamba.errors import UserError, report
from kotomamba.io import atomic_write, check_output

MODEL_NAME = "tokenizer"
# Ids every vocabulary holds whatever the text: byte fallback's 256 byte pieces and the 4 special tokens.
FIXED_PIECES = 256 + 4
# SentencePiece's errors: when the text has fewer distinct pieces than the vocabulary asked for.
_VOCAB_TOO_HIGH = re.compile(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)")
# ... and when it has more distinct characters (those that the character coverage keeps) than that.
_VOCAB_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)\.")


class Sentences:
    """What SentencePiece trains on: the non-empty lines of text files; of JSONL files (``*.jsonl`` /
    ``*.json``, or every file with ``jsonl``: the pipeline's shards keep the names their publishers gave
    them), the non-empty lines of each line's texts under ``json_keys``.

    A JSONL line is bad or not as tokenization decides (:func:`kotomamba.data.jsonl_lines.line_texts`):
    with ``on_bad_line="error"`` the first one stops training with its file and line (``names``: what to
    call each input, e.g. the URL a shard came from), with ``"skip"`` it is left out and counted in
    ``skipped``. SentencePiece's C++ loop, which iterates this, turns an exception of the iterator into a
    ``RuntimeError`` whose text holds its status code and the Python frame it came from, so the reader's
    exception (a :class:`UserError`, Ctrl-C) is also kept in ``error``, to be raised as it was. ``count``:
    the sentences given, so that a text without any is named as such.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], json_keys: Sequence[str] = ("text",),
                 jsonl: bool | None = None, on_bad_line: str = "error", names: Sequence[str] | None = None):
        check_on_bad_line(on_bad_line)
        if names is not None and len(names) != len(paths):
            raise UserError(f"--input-names names {len(names)} inputs, --input gives {len(paths)}")
        self.paths = [str(path) for path in paths]
        self.names = list(names) if names is not None else self.paths
        self.json_keys = tuple(json_keys)
        self.jsonl = jsonl
        self.on_bad_line = on_bad_line
        self.skipped = dict.fromkeys(BAD_LINE_KINDS, 0)
        self.error: BaseException | None = None
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        try:
            for path, name in zip(self.paths, self.names):
                for sentence in self._file(path, name):
                    self.count += 1
                    yield sentence
        except (Exception, KeyboardInterrupt) as exc:  # not GeneratorExit: SentencePiece closing it is no error
            self.error = exc
            raise

    def _file(self, path: str, name: str) -> Iterator[str]:
        is_json = self.jsonl or strip_compression_suffix(Path(path).name).endswith((".jsonl", ".json"))
        with open_decompressed(path) as handle:
            # What was read past a byte order mark and the rest of the line it starts: whole lines, then the file's.
            head = read_past_bom(handle)
            lines = itertools.chain(io.BytesIO(head + handle.readline()), handle)
            for number, raw in enumerate(lines, start=1):
                raw = raw.rstrip(b"\r\n")
                if is_json:
                    texts = line_texts(raw, self.json_keys)
                    if isinstance(texts, BadLine):
                        if self.on_bad_line == "error":
                            raise bad_line_error(path, number, name, texts.message)
                        self.skipped[texts.kind] += 1
                        continue
                else:
                    try:
                        texts = [raw.decode("utf-8")]
                    except UnicodeDecodeError as exc:
                        raise UserError(f"{where(path, number, name)}: invalid UTF-8 at byte {exc.start}") from None
                for text in texts:
                    for sentence in text.splitlines():
                        if sentence.strip():
                            yield sentence


def train_tokenizer(inputs: Sequence[str | os.PathLike] | Sentences, vocab_size: int, model_type: str,
                    output: str | os.PathLike, character_coverage: float = 0.9995,
                    input_sentence_size: int = 2_000_000, seed: int = 0) -> Path:
    """Train and write ``<output>/tokenizer.model`` (and its pieces' listing, ``tokenizer.vocab``); returns its
    path. ``inputs``: files (JSONL by their names, the ``text`` key) or :class:`Sentences` that say how to read
    them. ``output`` is a directory, made if missing; whatever else it holds (the corpus, say) stays as it is."""
    import sentencepiece

    check_settings(vocab_size, model_type, character_coverage, input_sentence_size)
    check_output(output, "--output", directory=True)
    sentences = inputs if isinstance(inputs, Sentences) else Sentences(inputs)
    for path in sentences.paths:
        if not Path(path).is_file():
            raise UserError(f"{path}: input file not found (--input)")
    sentencepiece.set_random_generator_seed(seed)  # sentence sampling is seeded, so training is repeatable
    # The model goes to a buffer, not a file prefix: SentencePiece records the prefix (here a temporary
    # directory's name) inside the model, which would make the same training give different bytes.
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
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
        if sentences.error is not None:
            raise sentences.error from None
        if not sentences.count:
            skipped = sum(sentences.skipped.values())
            raise UserError(f"{', '.join(sentences.names)}: no text to train on (no non-empty line"
                            f"{f', {skipped} bad lines skipped' if skipped else ''})") from None
        too_many, too_few = _VOCAB_TOO_HIGH.search(str(exc)), _VOCAB_TOO_LOW.search(str(exc))
        if too_many:
            raise UserError(f"--vocab-size {vocab_size} is more pieces than SentencePiece can make of this "
                            f"text (at most {too_many[1]}): ask for fewer (the pipeline's tokenizer.vocab_size) "
                            "or train on more text") from None
        if too_few:
            raise UserError(f"--vocab-size {vocab_size} is fewer pieces than the {too_few[1]} that this text's "
                            f"characters and the special tokens need (--character-coverage {character_coverage}): "
                            "ask for more (the pipeline's tokenizer.vocab_size)") from None
        raise UserError(f"SentencePiece training failed: {exc}") from exc
    # Each file whole or not there (atomic_write); the listing first and the model, which every later step reads,
    # last: a run stopped between the two leaves the earlier model beside the new listing, never a new model
    # beside an old listing.
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    output = Path(output)
    made = not output.exists()
    try:
        with atomic_write(output / f"{MODEL_NAME}.vocab", "w", encoding="utf-8") as vocab:
            for piece_id in range(processor.get_piece_size()):
                vocab.write(f"{processor.id_to_piece(piece_id)}\t{processor.get_score(piece_id):g}\n")
        with atomic_write(output / f"{MODEL_NAME}.model", "wb") as written:
            written.write(model.getvalue())
    except BaseException:
        if made:  # a directory this call made holds nothing of a tokenizer that was not written whole
            shutil.rmtree(output, ignore_errors=True)
        raise
    return output / f"{MODEL_NAME}.model"


def check_settings(vocab_size: int, model_type: str, character_coverage: float, input_sentence_size: int) -> None:
    """Refuse, before the inputs are read, what SentencePiece would refuse in its own words (the C++ check's text),
    or not at all (a negative sentence count is a ValueError of its settings' types)."""
    if model_type not in ("unigram", "bpe"):
        raise UserError(f"--model-type must be unigram or bpe, not {model_type!r}")
    if vocab_size <= FIXED_PIECES:
        raise UserError(f"--vocab-size {vocab_size} leaves no room for the text's pieces: byte fallback's 256 byte "
                        f"pieces and the 4 special tokens take {FIXED_PIECES} ids; ask for more (the pipeline's "
                        "tokenizer.vocab_size)")
    if not 0.98 <= character_coverage <= 1:
        raise UserError(f"--character-coverage must be from 0.98 to 1 (the share of the text's characters that get a "
                        f"piece of their own), not {character_coverage}")
    if input_sentence_size < 0 or 0 < input_sentence_size <= 100:
        raise UserError(f"--input-sentence-size must be 0 (every sentence) or more than 100, not {input_sentence_size}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotomamba train-tokenizer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="text or JSONL files (.gz/.zst too)")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    parser.add_argument("--output", required=True, help="directory to write tokenizer.model into")
    parser.add_argument("--json-keys", nargs="+", default=["text"],
                        help="fields of JSONL inputs to train on (those that are tokenized)")
    parser.add_argument("--jsonl", action="store_true", help="every input is JSONL, whatever its name")
    parser.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="error",
                        help="a bad JSONL line stops training (error) or is left out and counted (skip), as in "
                             "preprocess")
    parser.add_argument("--input-names", nargs="+", default=None,
                        help="what errors call each input, in --input's order (e.g. the URL a shard came from)")
    parser.add_argument("--character-coverage", type=float, default=0.9995)
    parser.add_argument("--input-sentence-size", type=int, default=2_000_000, help="sentences sampled for training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        sentences = Sentences(args.input, args.json_keys, args.jsonl, args.on_bad_line, args.input_names)
        model = train_tokenizer(sentences, args.vocab_size, args.model_type, args.output,
                                args.character_coverage, args.input_sentence_size, args.seed)
    except UserError as exc:
        return report("train-tokenizer", exc)
    if any(sentences.skipped.values()):
        print(f"skipped bad lines: {skipped_counts(sentences.skipped)}", file=sys.stderr)
    print(model)
    return 0
