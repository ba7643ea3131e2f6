"""Where each line of a pipeline corpus file came from: the user's source file and its line there.

``kotomamba download --output FILE`` concatenates several sources into one JSONL file; a problem
found later (a bad line in ``preprocess``, an empty corpus) must name the user's file and line, not
the copy's. ``<corpus>.origins.json`` lists the pieces in order, and the corpus it describes::

    {"corpus": {"size": 8412, "mtime_ns": 1718000000123456789},
     "pieces": [{"source": "data/a.jsonl.gz", "lines": 1200}, {"source": "data/b.jsonl", "lines": 7}]}

``lines`` counts the piece's lines as they appear in the corpus (a last line without a newline still
counts: the concatenation ends every piece with one). ``corpus`` is the corpus file's size and
modification time (``st_mtime_ns``) when the record was written: a corpus replaced or edited since (a
later download of another kind to the same path, the user's own copy or editor) no longer matches, and
its record is ignored, so its lines are named in the corpus itself rather than in sources that no longer
hold them. Reading them costs one ``stat``, not a pass over a corpus of gigabytes. What they miss: a
replacement of the same size and the same modification time to the nanosecond (``cp -p`` or ``rsync -t``
of such a file), which nothing short of a checksum would see. A record without ``corpus`` (written
before it was kept) or one that cannot be read matches no corpus.

The pipeline does not concatenate: it reads each shard of a source by itself and names it directly
(:mod:`kotomamba.data.shards`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from kotomamba.io import write_json

SUFFIX = ".origins.json"
BLOCK = 1 << 20


def origins_path(corpus: str | os.PathLike) -> Path:
    """The origins file that belongs to ``corpus``."""
    return Path(f"{corpus}{SUFFIX}")


def count_lines(path: str | os.PathLike) -> int:
    """Lines of ``path`` as the concatenation writes them (an unterminated last line counts)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def write_origins(corpus: str | os.PathLike, pieces: list[tuple[str, int]]) -> None:
    """Record ``[(source, lines), ...]`` for ``corpus`` as it is now (written after the corpus itself)."""
    write_json(origins_path(corpus), {"corpus": _stamp(corpus),
                                      "pieces": [{"source": s, "lines": n} for s, n in pieces]})


def remove_origins(corpus: str | os.PathLike) -> None:
    """Remove the record of ``corpus``, if any: for a writer of a corpus of no pieces (one source's file), so that
    no record of an earlier file is left beside it."""
    origins_path(corpus).unlink(missing_ok=True)


def sources_of(corpus: str | os.PathLike) -> list[str]:
    """The user's sources of ``corpus`` (``[str(corpus)]`` when no origins record matches it)."""
    pieces = _pieces(corpus)
    return [piece["source"] for piece in pieces] if pieces else [str(corpus)]


def locate(corpus: str | os.PathLike, line: int) -> str:
    """``"source:line"`` of line ``line`` (1-based) of ``corpus``, naming the copy too when it differs."""
    first = 1
    for piece in _pieces(corpus) or []:
        if line < first + piece["lines"]:
            return f"{piece['source']}:{line - first + 1} (line {line} of {corpus})"
        first += piece["lines"]
    return f"{corpus}:{line}"


def _stamp(corpus: str | os.PathLike) -> dict[str, int] | None:
    """What the record keeps of ``corpus`` to tell it from a file put there later (None: there is none)."""
    try:
        stat = os.stat(corpus)
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _pieces(corpus: str | os.PathLike) -> list[dict] | None:
    """The pieces of the record of ``corpus``; None without a record that matches the corpus as it is now."""
    try:
        record = json.loads(origins_path(corpus).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none, or not ours to read: it names no source
        return None
    stamp = _stamp(corpus)
    if stamp is None or not isinstance(record, dict) or record.get("corpus") != stamp:
        return None
    return record["pieces"]
