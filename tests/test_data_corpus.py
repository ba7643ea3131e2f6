"""`kotomamba collect-corpus`: Python standard-library docstrings as deterministic, deduplicated JSONL."""
from __future__ import annotations

import json
import os

from kotomamba.data.corpus import SKIP_TOP_LEVEL, main, stdlib_module_names


def test_corpus_is_pure_sorted_deduplicated_and_repeatable(tmp_path, capsys):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["--output", str(first)]) == 0
    assert main(["--output", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    records = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"text", "source"} and r["text"].strip() for r in records)
    sources = [r["source"] for r in records]
    assert sources == sorted(sources) and len(set(sources)) == len(sources)
    assert len({r["text"] for r in records}) == len(records)
    assert 1_000_000 < first.stat().st_size < 10_000_000  # a few MB
    tops = {s.split(".")[0] for s in sources}
    assert {"json", "collections", "pathlib", "asyncio"} <= tops
    assert not tops & SKIP_TOP_LEVEL
    assert "json.dumps" in sources
    assert not any(".test." in s or s.startswith("test.") for s in sources)
    assert [p.name for p in tmp_path.iterdir()] and all(not p.name.startswith(".") for p in tmp_path.iterdir())


def test_max_bytes_keeps_a_diverse_subset(tmp_path):
    out = tmp_path / "small.jsonl"
    assert main(["--output", str(out), "--max-bytes", "100000"]) == 0
    assert 90_000 < out.stat().st_size <= 100_000
    sources = [json.loads(line)["source"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert sources == sorted(sources)
    assert len({s.split(".")[0] for s in sources}) > 30  # not just the modules starting with "a"


def test_module_list_skips_side_effects_and_tests():
    names = stdlib_module_names()
    assert "json" in names and "email.mime.text" in names
    for banned in ("antigravity", "this", "tkinter", "turtle", "idlelib", "unittest.test", "ctypes.test"):
        assert banned not in names
    assert not any(part == "__main__" for name in names for part in name.split("."))
    assert os.name != "posix" or "posixpath" in names
