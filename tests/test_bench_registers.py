"""The op benchmarks' ``--registers`` on the CPU (bench/ptxas_report.py): our SSD kernels (bench/ssd_throughput.py),
our channel-last convolution (bench/conv_throughput.py) and the selective scan (bench/scan_throughput.py) compiled
for sm_90a, with what ptxas gives each launch and the counts of its machine code (no GPU needed); the timing modes
are checked on a GPU (bench/gpu_session.sh ssd, op conv, op scan)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("triton", reason="compiling the kernels needs the triton package (the test extra has it)")
sys.path.insert(0, str(ROOT / "bench"))
import ptxas_report  # noqa: E402

needs_knobs = pytest.mark.skipif(not ptxas_report.has_knobs(), reason=ptxas_report.NEEDS)  # the test extra admits 3.2

from kotomamba.ops.conv_triton import BWD_CONFIG, FWD_CONFIG  # noqa: E402
from kotomamba.ops.selective_scan_triton import SCAN_BWD_CONFIG, SCAN_FWD_CONFIG  # noqa: E402


def run(bench: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / bench), *argv], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


@needs_knobs
@pytest.mark.slow
def test_registers_are_reported_per_launch_of_each_variant():
    variants = ["32.64.4-s64.64.32.8", "32.64.4-s64.64.16.8.64.4.64.4.0.1.0.2", "mixer"]
    done = run("ssd_throughput.py", "--registers", "--shapes", "130m", "--seq", "256",
               "--impls", ",".join(["ssd:mamba_ssm"] + [f"ssd:ours={v}" for v in variants]))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if re.match(r"\| (32\.64\.4-s|mixer)", line)]
    launches = {v: [r[1] for r in rows if r[0] == f"| {v}"] for v in variants}
    # The step, one forward; the step again, the backward's state rerun, the sequential state-gradient launch,
    # then the block-parallel launch (in one pass, or in two launches with the second setting, or the mixer's
    # head-looping launches), then the step's gradients.
    assert launches[variants[0]] == ["_steps_kernel", "_ssd_fwd_kernel", "_steps_kernel", "_ssd_fwd_kernel",
                                     "_ssd_bwd_dstates_kernel", "_ssd_bwd_blocks_kernel", "_step_grads_kernel"]
    assert launches[variants[1]][-3:] == ["_ssd_bwd_blocks_kernel", "_ssd_bwd_blocks_kernel", "_step_grads_kernel"]
    assert launches["mixer"][-4:] == ["_ssd_bwd_dstates_kernel", "_ssd_bwd_dx_heads_kernel",
                                      "_ssd_bwd_dbc_heads_kernel", "_step_grads_kernel"]
    for row in rows:
        warps, registers, programs = int(row[2]), int(row[3]), int(row[6].rstrip(" |"))
        assert warps in (4, 8) and 0 < registers <= 255 and programs >= 1, row


def rows_of(stdout: str) -> list[list[str]]:
    return [line.strip("| ").split(" | ") for line in stdout.splitlines() if re.match(r"\| \d", line)]


@needs_knobs
@pytest.mark.slow
def test_registers_of_the_convolution_per_blocking():
    default = ".".join(map(str, FWD_CONFIG)) + "-" + ".".join(map(str, BWD_CONFIG))
    done = run("conv_throughput.py", "--registers", "--shapes", "130m", "--seq", "512", "--doc-len", "50",
               "--impls", "conv:causal_conv1d,conv:ours,conv:ours=16.64.2-8.64.1")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(done.stdout)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (default, "_fwd_kernel", str(FWD_CONFIG[2])), (default, "_bwd_kernel", str(BWD_CONFIG[2])),
        ("16.64.2-8.64.1", "_fwd_kernel", "2"), ("16.64.2-8.64.1", "_bwd_kernel", "1")]
    for row in rows:
        assert 0 < int(row[3]) <= 255 and int(row[6]) >= 1, row


@needs_knobs
@pytest.mark.slow
def test_registers_of_the_selective_scan_per_blocking():
    default = ".".join(map(str, SCAN_FWD_CONFIG)) + "-" + ".".join(map(str, SCAN_BWD_CONFIG))
    capped = "16.16.1.16-8.16.1.16.136"
    done = run("scan_throughput.py", "--registers", "--impls",
               f"scan:mamba_ssm,scan:ours={default},scan:ours=16.32.1.2-32.32.2.2,scan:ours={capped}")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(done.stdout)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (default, "_scan_fwd_kernel", str(SCAN_FWD_CONFIG[2])), (default, "_scan_bwd_kernel", str(SCAN_BWD_CONFIG[2])),
        ("16.32.1.2-32.32.2.2", "_scan_fwd_kernel", "1"), ("16.32.1.2-32.32.2.2", "_scan_bwd_kernel", "2"),
        (capped, "_scan_fwd_kernel", "1"), (capped, "_scan_bwd_kernel", "1")]
    for row in rows:
        assert 0 < int(row[3]) <= 255 and int(row[6]) >= 1, row
        shuffles, barriers, special = map(int, row[8].split(" / "))
        # Every kernel takes exp2 of the step; the backward sums over channels and states across lanes.
        assert int(row[7]) > shuffles + barriers + special and special > 0, row
        assert shuffles > 0 or row[1] == "_scan_fwd_kernel", row
    by_variant = {(r[0], r[1]): r for r in rows}
    # The fifth field caps the backward's registers, which the uncapped default exceeds; what does not fit spills.
    assert int(by_variant[default, "_scan_bwd_kernel"][3]) > 136 >= int(by_variant[capped, "_scan_bwd_kernel"][3])
    assert by_variant[capped, "_scan_bwd_kernel"][4] != "0/0"


@needs_knobs
@pytest.mark.slow
def test_the_gluon_backward_compiles_with_fewer_shuffles_barriers_and_instructions():
    """kotomamba/ops/selective_scan_gluon.py's layouts at its dispatched blocking: a position's column is a register
    and the walk's sums are finished once a group by a reduce-scatter of shuffles, so its code has under a quarter
    of the Triton kernel's shuffles (which finishes every position's sums by a butterfly) and fewer barriers per
    position (the Triton kernel's group is twice as long, 16 positions against 8, so its counts are halved), in
    less code than the Triton kernel's (code run once a block counts here as much as the walk's)."""
    pytest.importorskip("triton.experimental.gluon", reason="needs Triton's Gluon (triton.experimental.gluon)")
    from kotomamba.ops.selective_scan_triton import SCAN_BWD_GLUON_CONFIG, forward_config

    default = ".".join(map(str, SCAN_FWD_CONFIG)) + "-" + ".".join(map(str, SCAN_BWD_CONFIG))
    gluon = (".".join(map(str, forward_config(SCAN_BWD_GLUON_CONFIG))) + "-g"
             + ".".join(map(str, SCAN_BWD_GLUON_CONFIG)))
    done = run("scan_throughput.py", "--registers", "--impls", f"scan:ours={default},scan:ours={gluon}")
    assert done.returncode == 0, done.stderr[-3000:]
    backward = {r[0]: r for r in rows_of(done.stdout) if r[1] == "_scan_bwd_kernel"}
    ours, theirs = ([int(v) for v in backward[name][8].split(" / ")] for name in (gluon, default))
    assert SCAN_BWD_CONFIG[3] == 2 * SCAN_BWD_GLUON_CONFIG[3] == 16, (SCAN_BWD_CONFIG, SCAN_BWD_GLUON_CONFIG)
    assert 2 * 4 * ours[0] < theirs[0] and 2 * ours[1] < theirs[1], (ours, theirs)
    assert int(backward[gluon][7]) < int(backward[default][7]), (backward[gluon], backward[default])


def test_registers_need_one_of_our_implementations():
    done = run("ssd_throughput.py", "--registers", "--impls", "ssd:mamba_ssm")
    assert done.returncode == 2 and "needs at least one ssd:ours" in done.stderr
    done = run("conv_throughput.py", "--registers", "--impls", "conv:causal_conv1d")
    assert done.returncode == 2 and "needs at least one conv:ours" in done.stderr
    done = run("scan_throughput.py", "--registers", "--impls", "scan:mamba_ssm")
    assert done.returncode == 2 and "needs at least one scan:ours" in done.stderr
