"""Where each line of a pipeline corpus file came from: the user's source file and its line there.

``kotomamba download --output FILE`` concatenates several sources into one JSONL file; a problem
found later (a bad line in ``preprocess``, an empty corpus) must name the user's file and line, not
the copy's. ``<corpus>.origins.json`` lists the pieces in order::

    {"pieces": [{"source": "data/a.jsonl.gz", "lines": 1200}, {"source": "data/b.jsonl", "lines": 7}]}

``lines`` counts the piece's lines as they appear in the corpus (a last line without a newline still
counts: the concatenation ends every piece with one). The pipeline does not concatenate: it reads
each shard of a source by itself and names it directly (:mod:`kotomamba.data.shards`).
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
    """Record ``[(source, lines), ...]`` for ``corpus`` (written before the corpus itself)."""
    write_json(origins_path(corpus), {"pieces": [{"source": s, "lines": n} for s, n in pieces]})


def sources_of(corpus: str | os.PathLike) -> list[str]:
    """The user's sources of ``corpus`` (``[str(corpus)]`` when it has no origins file)."""
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


def _pieces(corpus: str | os.PathLike) -> list[dict] | None:
    path = origins_path(corpus)
    if not path.is_file():
        return None
    return json.loads(path.read_text())["pieces"]
