"""`kotomamba collect-corpus`: Python standard-library docstrings as deterministic, deduplicated JSONL."""
from __future__ import annotations

import json
import os
import re

import pytest

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


def test_a_budget_smaller_than_any_document_says_so(tmp_path, capsys):
    for budget in ("0", "-5"):
        with pytest.raises(SystemExit) as exit_:
            main(["--output", str(tmp_path / "c.jsonl"), "--max-bytes", budget])
        assert exit_.value.code == 2
        assert f"argument --max-bytes: must be at least 1, not {budget}" in capsys.readouterr().err
    assert main(["--output", str(tmp_path / "c.jsonl"), "--max-bytes", "10"]) == 2
    assert re.fullmatch(r"kotomamba collect-corpus: error: --max-bytes 10 is less than any document takes \(the "
                        r"smallest: \d+ bytes of JSONL\): ask for more\n", capsys.readouterr().err)
    assert not (tmp_path / "c.jsonl").exists()


def test_an_output_that_is_a_directory_is_named_before_the_docstrings_are_collected(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kotomamba.data.corpus.build_corpus", lambda max_bytes: pytest.fail("collected"))
    assert main(["--output", str(tmp_path), "--max-bytes", "1000"]) == 2
    assert capsys.readouterr().err == f"kotomamba collect-corpus: error: {tmp_path} (--output): is a directory, not a file\n"
