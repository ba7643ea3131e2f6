"""Reading a run's ``metrics.jsonl`` (written by metrics.py's ``MetricsSink``) without importing torch, so that
``kotomamba status`` stays quick on a login node."""
from __future__ import annotations

import json
from pathlib import Path

from kotomamba.errors import UserError


def read_metrics(path: Path, note_torn: bool = True) -> list[dict]:
    """The records of a ``metrics.jsonl``. A torn last line (what a full disk or a kill mid-write leaves, and
    what a reader sees while a job is writing it) is dropped, with a note unless ``note_torn`` is false; a bad
    line before the last is a ``UserError`` naming the file and line."""
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
            raise UserError(f"{path}: line {number}: not a JSON record ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise UserError(f"{path}: line {number}: a record needs an integer 'step'")
        records.append(record)
    return records
