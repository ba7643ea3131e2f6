"""bench/ssd_throughput.py on the CPU: ``--registers`` compiles our SSD kernels for sm_90a and reports
what ptxas gives each launch of one forward+backward (no GPU needed); the timing mode is checked on a
GPU (bench/gpu_session.sh ssd)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "ssd_throughput.py"

pytest.importorskip("triton", reason="compiling the kernels needs the triton package (the test extra has it)")


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *argv], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_registers_are_reported_per_launch_of_each_variant():
    variants = ["32.64.4-s64.64.32.8", "32.64.4-s64.64.16.8.64.4.64.4.0.1.0.2"]
    done = run("--registers", "--shapes", "130m", "--seq", "256",
               "--impls", ",".join(["ssd:mamba_ssm"] + [f"ssd:ours={v}" for v in variants]))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if re.match(r"\| 32\.64\.4-s", line)]
    launches = {v: [r[1] for r in rows if r[0] == f"| {v}"] for v in variants}
    # One forward, the backward's state rerun, the sequential state-gradient launch, then the block-parallel
    # launch: in one pass, or in two launches with the last setting.
    assert launches[variants[0]] == ["_ssd_fwd_kernel", "_ssd_fwd_kernel", "_ssd_bwd_dstates_kernel",
                                     "_ssd_bwd_blocks_kernel"]
    assert launches[variants[1]][-2:] == ["_ssd_bwd_blocks_kernel", "_ssd_bwd_blocks_kernel"]
    for row in rows:
        warps, registers, programs = int(row[2]), int(row[3]), int(row[6].rstrip(" |"))
        assert warps in (4, 8) and 0 < registers <= 255 and programs >= 1, row


def test_registers_need_one_of_our_variants():
    done = run("--registers", "--impls", "ssd:mamba_ssm")
    assert done.returncode == 2 and "needs at least one ssd:ours=VARIANT" in done.stderr
