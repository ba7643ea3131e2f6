"""bench/train_throughput.py runs on CPU (``--device cpu``, kotomamba's step on the reference ops), so
its plumbing (alternating rounds, per-implementation results, JSON, the multi-process path) is
checked here before it spends GPU time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import needs_cpu_sharding

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "train_throughput.py"
ARGS = ["--device", "cpu", "--presets", "tiny,tiny", "--micro-batch", "2,1", "--seq", "64", "--warmup", "1",
        "--steps", "2", "--impls", "kotomamba"]


def run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def check_rows(path: Path, gpus: int) -> None:
    rows = json.loads(path.read_text())
    assert [(r["preset"], r["micro_batch"], r["gpus"], r["card"]) for r in rows] == [
        ("tiny", 2, gpus, "cpu"), ("tiny", 1, gpus, "cpu")]
    for row in rows:
        result = row["kotomamba"]
        assert result["impl"] == "kotomamba" and result["first_steps_s"] > 0
        assert 0 < result["step_ms_min"] <= result["step_ms"] <= result["step_ms_max"]
        assert result["tokens_per_s_per_gpu"] == pytest.approx(row["micro_batch"] * 64 / result["step_ms"] * 1e3)


@pytest.mark.parametrize("rounds", [1, 2])
def test_one_process_writes_a_row_per_preset(tmp_path, rounds):
    (tmp_path / "RESULTS.md").write_text("# earlier entries\n")
    done = run([sys.executable, str(BENCH), *ARGS, "--rounds", str(rounds), "--json", "out.json",
                "--markdown", "RESULTS.md"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_rows(tmp_path / "out.json", 1)
    assert "| tiny | 1 | 2 | kotomamba |" in done.stdout
    entry = (tmp_path / "RESULTS.md").read_text()
    assert entry.startswith("# earlier entries\n\n### ") and ": 1 x cpu" in entry and "torch " in entry
    assert f"`python bench/train_throughput.py {' '.join(ARGS)} --rounds {rounds}" in entry
    assert entry.count("| tiny | 1 |") == 2


def test_one_process_runs_beside_another_on_the_same_host(tmp_path):
    """Single-GPU runs on different GPUs of one host start together: each needs a rendezvous port of its own."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MASTER_PORT", None)
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        runs.append(subprocess.Popen([sys.executable, str(BENCH), *ARGS, "--json", "out.json"], cwd=tmp_path / name,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for name, started in zip(("a", "b"), runs):
        _, stderr = started.communicate(timeout=600)
        assert started.returncode == 0, stderr[-3000:]
        check_rows(tmp_path / name / "out.json", 1)


def test_packed_documents_time_the_step_with_seq_idx(tmp_path):
    """``--doc-tokens``: kotomamba's step on batches with document resets (issue 20 item 3's comparison)."""
    done = run([sys.executable, str(BENCH), *ARGS, "--doc-tokens", "16", "--json", "out.json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_rows(tmp_path / "out.json", 1)
    done = run([sys.executable, str(BENCH), "--device", "cpu", "--impls", "reference", "--doc-tokens", "16"], tmp_path)
    assert done.returncode == 2 and "leave the reference out" in done.stderr


def test_the_reference_on_cpu_is_refused_with_the_reason(tmp_path):
    done = run([sys.executable, str(BENCH), "--device", "cpu", "--impls", "reference,kotomamba"], tmp_path)
    assert done.returncode == 2 and "needs mamba-ssm's CUDA kernels" in done.stderr


@pytest.mark.slow
@needs_cpu_sharding
def test_two_processes_shard_profile_and_report_their_scaling_against_one(tmp_path):
    done = run([sys.executable, str(BENCH), *ARGS, "--json", "one.json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    done = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(BENCH),
                *ARGS, "--rounds", "2", "--strategy", "SHARD_GRAD_OP", "--profile", "--json", "out.json",
                "--single-gpu-json", "one.json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_rows(tmp_path / "out.json", 2)
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "out.json"))
    for single, sharded in zip(one, two):
        expected = sharded["kotomamba"]["tokens_per_s_per_gpu"] / single["kotomamba"]["tokens_per_s_per_gpu"]
        assert sharded["kotomamba"]["scaling"] == pytest.approx(expected)
    assert "of 1 GPU]" in done.stdout
    # Every rank profiles (the profiled steps hold collectives: rank 0 alone would wait forever), one prints.
    assert done.stdout.count("--- profile: kotomamba (2 steps) ---") == 2
    assert done.stdout.count("per step: wall ") == 2 and "Self CPU time total" in done.stdout


def test_isolate_times_each_round_in_a_process_of_its_own(tmp_path):
    done = run([sys.executable, str(BENCH), *ARGS, "--rounds", "2", "--isolate", "--json", "out.json",
                "--markdown", "RESULTS.md"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_rows(tmp_path / "out.json", 1)
    for row in json.loads((tmp_path / "out.json").read_text()):
        result = row["kotomamba"]
        assert row["isolated_rounds"] == 2 and result["processes"] == 2 and result["failed_processes"] == 0
        assert result["tokens_per_s_min"] <= result["tokens_per_s_per_gpu"] <= result["tokens_per_s_max"]
    assert "over 2 processes]" in done.stdout and ": 1 x cpu" in (tmp_path / "RESULTS.md").read_text()
    # Each process printed its own table to stderr, the combined one went to stdout.
    assert done.stderr.count("| tiny | 1 | 2 | kotomamba |") == 2


def test_isolate_refuses_torchrun_inputs(tmp_path):
    done = run([sys.executable, str(BENCH), *ARGS, "--isolate", "--single-gpu-json", "x.json"], tmp_path)
    assert done.returncode == 2 and "--isolate times one GPU" in done.stderr


def test_the_kernel_table_sums_launches_by_name_per_step_most_time_first():
    sys.path.insert(0, str(BENCH.parent))
    from train_throughput import kernel_table

    launches = [("gemm", 300.0), ("norm", 50.0), ("gemm", 500.0), ("norm", 70.0), ("scan", 80.0)]
    lines = kernel_table(launches, steps=2, rows=2).splitlines()
    assert lines[2:] == ["| `gemm` | 0.40 | 1 | 400.0 | 80.0% |", "| `norm` | 0.06 | 1 | 60.0 | 12.0% |"]
