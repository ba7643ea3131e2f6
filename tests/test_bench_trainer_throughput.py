"""bench/trainer_throughput.py runs ``kotomamba train`` per variant and reads the throughput it logs; on
CPU (a tiny preset) its plumbing is checked before it spends GPU time, and each row carries the step
the trainer said it chose."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "trainer_throughput.py"


def test_variants_alternate_and_report_the_chosen_step(tmp_path):
    (tmp_path / "entry.md").write_text("")
    command = [sys.executable, str(BENCH), "--preset", "tiny", "--micro-batch", "2", "--seq", "64", "--steps", "4",
               "--skip", "2", "--log-interval", "1", "--vocab", "64", "--doc-tokens", "20", "--rounds", "2",
               "--variants", "default;parallel.cuda_graph=false data.reset_at_eod=false", "--scratch", "work",
               "--json", "out.json", "--markdown", "entry.md"]
    done = subprocess.run(command, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["variant"] for r in out["runs"]] == ["default", "parallel.cuda_graph=false data.reset_at_eod=false",
                                                   "parallel.cuda_graph=false data.reset_at_eod=false", "default"]
    default, eager = out["rows"]
    assert default["step"] == "eager (parallel.cuda_graph: auto; not graphed: no CUDA GPU)"
    assert eager["step"] == "eager (parallel.cuda_graph: false)"
    assert default["processes"] == 2 and default["min"] <= default["tokens_per_s"] <= default["max"]
    assert all(len(r["windows"]) == 2 for r in out["runs"])  # steps 3 and 4: the first two left out
    runs = sorted(p for p in (tmp_path / "work").glob("run-*") if p.is_dir())  # each beside its run-*.yaml
    assert len(runs) == 4 and all((r / "metrics.jsonl").is_file() and not (r / "checkpoints").exists() for r in runs)
    entry = (tmp_path / "entry.md").read_text()
    assert entry.startswith("`python bench/trainer_throughput.py --preset tiny") and "| default | eager" in entry


def test_another_tree_runs_each_variant_with_its_own_library(tmp_path):
    """``--tree old=DIR``: the rows ``VARIANT @ old`` come from DIR's kotomamba (here a copy whose step
    choice words its reason differently), the others from this checkout, also when the bench starts in
    the checkout (where ``python -m kotomamba`` would find the checkout's package before PYTHONPATH's)."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ROOT / "kotomamba", old / "kotomamba", ignore=shutil.ignore_patterns("__pycache__"))
    choice = old / "kotomamba" / "train" / "step_choice.py"
    assert '"no CUDA GPU"' in choice.read_text()
    choice.write_text(choice.read_text().replace('"no CUDA GPU"', '"no CUDA GPU in the old tree"'))
    command = [sys.executable, str(BENCH), "--preset", "tiny", "--micro-batch", "2", "--seq", "64", "--steps", "3",
               "--skip", "2", "--log-interval", "1", "--vocab", "64", "--doc-tokens", "20", "--variants", "default",
               "--tree", f"old={old}", "--scratch", str(tmp_path / "work"), "--json", str(tmp_path / "out.json")]
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads((tmp_path / "out.json").read_text())["rows"]}
    assert rows["default"]["step"] == "eager (parallel.cuda_graph: auto; not graphed: no CUDA GPU)"
    assert rows["default @ old"]["step"] == "eager (parallel.cuda_graph: auto; not graphed: no CUDA GPU in the old tree)"
    bad = subprocess.run([sys.executable, str(BENCH), "--tree", f"old={tmp_path / 'nowhere'}"], cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expected NAME=DIR with DIR/kotomamba/__init__.py" in bad.stderr
