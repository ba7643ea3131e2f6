"""bench/generate_throughput.py on CPU: each (round, implementation) a process of its own whose rows carry its
greedy tokens; the parent's medians, ratios and token agreement; ``--registers`` (our Mamba-2 and Mamba-1 decode
kernels compiled for sm_90a); the settings each kernel module owns; arguments it refuses."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import generate_throughput  # noqa: E402
import ptxas_report  # noqa: E402

import pytest  # noqa: E402

needs_knobs = pytest.mark.skipif(not ptxas_report.has_knobs(), reason=ptxas_report.NEEDS)  # the test extra admits 3.2


def run_bench(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "generate_throughput.py"), *args], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)


def test_ours_on_cpu_runs_in_a_process_per_round_and_agrees_with_itself(tmp_path):
    done = run_bench(tmp_path, "--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--impls",
                     "generate:ours,generate:ours=OUT_ROWS:4+MIX_TILE:256",
                     "--batch", "1", "3", "--prompt-len", "5", "--new-tokens", "6", "--rounds", "2", "--repeats", "1",
                     "--json", "out.json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    tiled = "generate:ours=OUT_ROWS:4+MIX_TILE:256"  # set in the child (on CPU it runs the twin)
    assert [(r["round"], r["impl"], r["batch"]) for r in result["rows"]] == [
        (0, "generate:ours", 1), (0, "generate:ours", 3), (0, tiled, 1), (0, tiled, 3),
        (1, tiled, 1), (1, tiled, 3), (1, "generate:ours", 1), (1, "generate:ours", 3)]
    # Timed, not judged: on a loaded CPU the prompt alone can take longer than the best whole call.
    assert all("tokens" not in r and r["total_s"] > 0 and math.isfinite(r["ms_per_token"]) for r in result["rows"])
    assert [(s["batch"], s["impl"], s["greedy_agreeing"]) for s in result["summary"]] == [
        (1, "generate:ours", 6), (1, tiled, 6), (3, "generate:ours", 6), (3, tiled, 6)]
    table = [line for line in done.stdout.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(table) == 4 and all("6 of 6" in line for line in table)
    assert sum("| ours=OUT_ROWS:4+MIX_TILE:256 |" in line for line in table) == 2


def test_summary_ratios_and_the_greedy_tokens_two_children_share():
    def row(impl, round_, ms, tokens):
        return {"impl": impl, "batch": 2, "round": round_, "ms_per_token": ms, "tokens_per_s": 100 / ms,
                "new_tokens": 4, "weight_bytes": 4.8e9, "tokens": tokens, "card": "NVIDIA H100 80GB HBM3"}

    same, parted = [[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 3, 4], [5, 6, 0, 8]]
    rows = [row("generate:mamba_ssm", 0, 2.0, same), row("generate:ours", 0, 1.0, same),
            row("generate:mamba_ssm", 1, 4.0, same), row("generate:ours", 1, 1.5, parted)]
    theirs, ours = generate_throughput.summarize(rows, ["generate:mamba_ssm", "generate:ours"], 4.8e12)
    assert theirs["ms_per_token"] == (3.0, 2.0, 4.0) and theirs["ratio"] == 1.0 and theirs["greedy_agreeing"] == 4
    assert ours["ms_per_token"] == (1.25, 1.0, 1.5) and ours["ratio"] == 3.0 / 1.25
    assert ours["greedy_agreeing"] == 2  # the second round's second row parts at its third token
    assert ours["floor_ms"] == 1.0
    # Without --bandwidth the floor is taken at the card's data-sheet peak (3.35 TB/s for an H100 SXM).
    assert generate_throughput.summarize(rows, ["generate:mamba_ssm", "generate:ours"], None)[1]["floor_ms"] == \
        pytest.approx(1e3 * 4.8e9 / 3.35e12)


@needs_knobs
def test_registers_per_launch_setting_and_batch(tmp_path):
    """Per setting and batch size, both Mamba-2 launches compile; the out launch keeps several trips over W in flight
    below 16 rows and on its tl.dot path from 16 (W's tiles staged in shared memory: more of it than at one stage,
    the setting whose loss on the tl.dot path once made batch-64 decoding slower than mamba-ssm's)."""
    done = run_bench(tmp_path, "--registers", "--preset", "tiny", "--batch", "1", "17",
                     "--impls", "generate:mamba_ssm,generate:ours,generate:ours=OUT_STAGES:1+DOT_STAGES:1")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines() if ", batch " in line]
    assert [(r[0], r[1]) for r in rows] == [
        (f"{impl}, batch {batch}", kernel) for impl in ("ours", "ours=OUT_STAGES:1+DOT_STAGES:1") for batch in (1, 17)
        for kernel in ("_mix_kernel", "_out_kernel")]
    for row in rows:
        assert row[2] == "4" and 0 < int(row[3]) <= 255 and int(row[6]) >= 1, row
    shared = {r[0]: float(r[5]) for r in rows if r[1] == "_out_kernel"}
    for batch in (1, 17):
        assert shared[f"ours, batch {batch}"] > shared[f"ours=OUT_STAGES:1+DOT_STAGES:1, batch {batch}"], shared


@needs_knobs
def test_registers_of_the_mamba1_launches_for_a_mamba1_preset(tmp_path):
    """A Mamba-1 preset compiles the conv and scan launches, with settings of their module beside Mamba-2's (which a
    Mamba-1 step does not read), without spills."""
    done = run_bench(tmp_path, "--registers", "--preset", "mamba-130m", "--batch", "1", "64",
                     "--impls", "generate:ours,generate:ours=CONV_CHANNELS:64+SCAN_TILE:2048+OUT_ROWS:8")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines() if ", batch " in line]
    assert [(r[0], r[1]) for r in rows] == [
        (f"{impl}, batch {batch}", kernel) for impl in ("ours", "ours=CONV_CHANNELS:64+SCAN_TILE:2048+OUT_ROWS:8")
        for batch in (1, 64) for kernel in ("_conv_kernel", "_scan_kernel")]
    for row in rows:
        assert row[2] == "4" and 0 < int(row[3]) <= 255 and row[4] == "0/0" and int(row[6]) >= 1, row


def test_settings_go_to_the_module_that_owns_them():
    from kotomamba.ops import mamba1_decode_triton, mamba2_decode_triton

    defaults = generate_throughput.setting_defaults()
    try:
        generate_throughput.apply_settings("CONV_CHANNELS:8+OUT_STAGES:2+MIX_TILE:64")
        assert mamba1_decode_triton.CONV_CHANNELS == 8 and mamba2_decode_triton.MIX_TILE == 64
        assert mamba2_decode_triton.OUT_STAGES == 2
    finally:
        for (module, name), value in defaults.items():
            setattr(module, name, value)


def test_refuses_what_it_cannot_measure(tmp_path):
    for args, message in ((["--impls", "generate:vllm"], "unknown generate:vllm"),
                          (["--impls", "generate:ours=OUT_ROWS:4+WARPS:8"], "unknown generate:ours=OUT_ROWS:4+WARPS:8"),
                          (["--impls", "generate:ours=OUT_ROWS:x"], "unknown generate:ours=OUT_ROWS:x"),
                          (["--new-tokens", "1"], "--new-tokens must be >= 2"),
                          (["--registers", "--impls", "generate:mamba_ssm"], "at least one generate:ours"),
                          (["--impls", "generate:ours=CONV_CHANNELS:4+SCAN_WARPS:8"],
                           "unknown generate:ours=CONV_CHANNELS:4+SCAN_WARPS:8"),
                          (["--device", "cpu"], "only generate:ours"),
                          (["--device", "cpu", "--impls", "generate:ours", "--profile"], "without --profile")):
        done = run_bench(tmp_path, *args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr[-2000:])
