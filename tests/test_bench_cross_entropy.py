"""bench/cross_entropy_throughput.py on CPU (small sizes): both losses run, agree, and are reported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_both_losses_are_timed_and_agree(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cross_entropy_throughput.py"), "--device", "cpu", "--d-model", "16,24",
         "--tokens", "300", "--vocab", "211", "--warmup", "1", "--steps", "2", "--json", "out.json"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [(r["d_model"], r["tokens"], r["vocab"], r["card"]) for r in rows] == [(16, 300, 211, "cpu"),
                                                                                   (24, 300, 211, "cpu")]
    for row in rows:
        assert row["reference"]["ms"] > 0 and row["kotomamba"]["ms"] > 0
        assert row["speedup"] == row["reference"]["ms"] / row["kotomamba"]["ms"]
        assert abs(row["reference"]["loss"] - row["kotomamba"]["loss"]) < 1e-2 * row["reference"]["loss"]
    assert done.stdout.count("speedup") == 2
