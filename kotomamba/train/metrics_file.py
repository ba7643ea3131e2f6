"""Reading a run's ``metrics.jsonl`` (written by metrics.py's ``MetricsSink``) without importing torch, so that
``kotomamba status`` stays quick on a login node."""
from __future__ import annotations

import json
from pathlib import Path

from kotomamba.errors import UserError


def read_metrics(path: Path, note_torn: bool = True, damaged: list[str] | None = None) -> list[dict]:
    """The records of a ``metrics.jsonl``. A torn last line (what a full disk or a kill mid-write leaves, and
    what a reader sees while a job is writing it) is dropped, with a note unless ``note_torn`` is false; a bad
    line before the last is a ``UserError`` naming the file and line, or, given a ``damaged`` list, skipped
    with why appended there."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                if note_torn:
                    print(f"kotomamba train: {path}: line {number}: torn last record dropped ({exc.msg})",
                          flush=True)
                continue
            problem = f"{path}: line {number}: not a JSON record ({exc.msg})"
        else:
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
                continue
            problem = f"{path}: line {number}: a record needs an integer 'step'"
        if damaged is None:
            raise UserError(problem)
        damaged.append(problem)
    return records
