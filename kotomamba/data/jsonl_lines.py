"""What a line of a JSONL corpus must be, and what is wrong with one that is not.

A line is a JSON object whose every key of ``json_keys`` holds a string that is valid Unicode text.
Tokenizer training (:mod:`kotomamba.data.train_tokenizer`) and tokenization
(:mod:`kotomamba.data.preprocess`) read the same corpus and decide the same way which lines are bad,
with the same kinds and messages, so ``--on-bad-line skip`` leaves the same lines out of both. Both take
a file's UTF-8 byte order mark (``utf-8-sig``, as some Windows editors save) as no part of its first line
(:func:`read_past_bom`).
"""
from __future__ import annotations

import codecs
import json
import re
from typing import BinaryIO, NamedTuple, Sequence

from kotomamba.data.line_origins import locate
from kotomamba.errors import UserError

BAD_LINE_KINDS = ("invalid_utf8", "invalid_json", "missing_key", "non_string")
ON_BAD_LINE = ("error", "skip")
# A JSON \uXXXX escape of a UTF-16 surrogate: decodes to a str that is not valid Unicode text.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_JSON = json.JSONDecoder()
UTF8_BOM = codecs.BOM_UTF8


class BadLine(NamedTuple):
    kind: str  # one of BAD_LINE_KINDS
    message: str


def read_past_bom(handle: BinaryIO) -> bytes:
    """Consume a UTF-8 byte order mark at the start of ``handle`` (a buffered binary reader at the start of a file's
    data, plain or decompressed, as :func:`kotomamba.data.compression.open_decompressed` opens it); returns what
    it read that is no byte order mark, to be taken as the start of line 1: ``b""`` after one, else the data's
    first three bytes (fewer in a shorter file; a file that starts with part of one only keeps it).
    """
    # A buffered reader returns fewer bytes than asked only at the end of the data, however its stream
    # (a decompressor) cuts them: the mark is seen whole or not at all.
    return handle.read(len(UTF8_BOM)).removeprefix(UTF8_BOM)


def line_texts(raw: bytes, json_keys: Sequence[str], maybe_surrogates: bool = True) -> list[str] | BadLine:
    """The texts of line ``raw`` (without its newline) under each of ``json_keys``, or what is wrong with it.

    ``maybe_surrogates=False`` skips the search for surrogate escapes where the caller found none in a
    larger block that holds the line.
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine("invalid_utf8", f"invalid UTF-8 at byte {exc.start} of the line")
    try:
        # raw_decode skips json.loads' Python-level wrappers (a measurable share of tokenization's time).
        obj, end = _JSON.raw_decode(line, len(line) - len(line.lstrip()) if line[:1].isspace() else 0)
        if end != len(line) and line[end:].strip():
            raise json.JSONDecodeError("Extra data", line, end)
    except json.JSONDecodeError as exc:
        # Some of json's messages end in "at" ("Unterminated string starting at"): said once.
        return BadLine("invalid_json", f"invalid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})")
    if not isinstance(obj, dict):
        return BadLine("invalid_json", f"expected a JSON object, got {type(obj).__name__}")
    values = []
    for key in json_keys:
        if key not in obj:
            keys = ", ".join(map(repr, list(obj)[:5])) + (", ..." if len(obj) > 5 else "")
            return BadLine("missing_key", f"missing key {key!r} (the line's keys: {keys or 'none'})")
        value = obj[key]
        if not isinstance(value, str):
            return BadLine("non_string", f"key {key!r} is {type(value).__name__}, not a string")
        values.append(value)
    if maybe_surrogates and SURROGATE_ESCAPE.search(raw):
        for key, value in zip(json_keys, values):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return BadLine("invalid_utf8", f"key {key!r} holds an unpaired UTF-16 surrogate escape")
    return values


def where(file: str, line: int, name: str) -> str:
    """``"source:line"`` of a line of ``file``; a download is named by where it came from (``name``), its
    copy after."""
    return locate(file, line) if name == file else f"{name}:{line} ({file})"


def check_on_bad_line(on_bad_line: str) -> None:
    """What to do with a bad line: ``"error"`` (stop at the first) or ``"skip"`` (leave it out, count it)."""
    if on_bad_line not in ON_BAD_LINE:
        raise UserError(f"--on-bad-line must be 'error' or 'skip', not {on_bad_line!r}")


def bad_line_error(file: str, line: int, name: str, message: str) -> UserError:
    """The error that stops a run at a bad line (``--on-bad-line error``; ``message``: its ``BadLine``'s), named as
    :func:`where` names it."""
    return UserError(f"{where(file, line, name)}: {message} (--on-bad-line skip leaves such lines out)")


def skipped_counts(skipped: dict[str, int]) -> str:
    """``skipped`` (lines per kind of :data:`BAD_LINE_KINDS`) as the logs print it."""
    return ", ".join(f"{kind} {n}" for kind, n in skipped.items())
