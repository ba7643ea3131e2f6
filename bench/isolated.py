"""Time each implementation in a fresh process of its own, over rounds: what one implementation
allocated, compiled or left running must not change another's figure (bench/RESULTS.md saw a
reference run 15% slower beside ours than alone). Used by the op benchmarks' parents; each child is
the same script with ``--child IMPL`` and prints one JSON object per line."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys


def run_children(script: str, argv: list[str], impls: list[str], rounds: int) -> list[dict]:
    """``python script *argv --child IMPL`` once per round and implementation, the order reversed every
    other round so that drift over the run lands on every implementation alike. Returns every JSON
    line the children printed, each with its ``round``; a child that fails is reported on stdout and
    contributes what it printed before failing."""
    rows = []
    for round_ in range(rounds):
        for impl in impls if round_ % 2 == 0 else impls[::-1]:
            done = subprocess.run([sys.executable, script, *argv, "--child", impl], capture_output=True, text=True)
            if done.returncode:
                print(f"{impl} round {round_}: exit {done.returncode}\n{done.stderr[-2000:]}", flush=True)
            for line in done.stdout.splitlines():
                if line.startswith("{"):
                    rows.append({**json.loads(line), "round": round_})
                    print(line, flush=True)
    return rows


def median_range(rows: list[dict], key: str) -> tuple[float, float, float] | None:
    """(median, min, max) of ``key`` over ``rows``; None when there are none."""
    values = [row[key] for row in rows]
    return (statistics.median(values), min(values), max(values)) if values else None
