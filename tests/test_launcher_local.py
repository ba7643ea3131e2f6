"""`kotomamba launch` on this machine: real processes, real torchrun, real signals.

The payload is a small Python module written into the test's temporary directory and launched
with `-- -m payload`: it reports its rank environment, can join a gloo process group, wait for a
signal, and exit with a chosen code per rank.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

PAYLOAD = textwrap.dedent(
    '''
    """Test payload: behaviour chosen by environment variables, results written to OUT_DIR."""
    import json, os, signal, sys, time

    rank = int(os.environ.get("RANK", "0"))
    out = os.environ["OUT_DIR"]
    received = []
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda s, f: received.append(s))
    record = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                       "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    record["argv"] = sys.argv[1:]
    if os.environ.get("ALL_REDUCE"):
        import torch, torch.distributed as dist
        dist.init_process_group("gloo")
        total = torch.tensor([rank + 1.0])
        dist.all_reduce(total)
        record["sum"] = total.item()
        dist.destroy_process_group()
    open(os.path.join(out, f"ready-{rank}"), "w").close()
    if os.environ.get("WAIT_SIGNAL"):
        deadline = time.time() + 60
        while not received and time.time() < deadline:
            time.sleep(0.05)
        record["signal"] = received[0] if received else None
    time.sleep(float(os.environ.get(f"SLEEP_{rank}", "0")))
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as handle:
        json.dump(record, handle)
    sys.exit(int(os.environ.get(f"EXIT_{rank}", "0")))
    '''
)


@pytest.fixture
def payload_env(tmp_path):
    (tmp_path / "payload.py").write_text(PAYLOAD)
    out = tmp_path / "out"
    out.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SLURM_", "PBS_", "SGE_", "PE_")) and key not in ("JOB_ID",)}
    env.update(OMP_NUM_THREADS="1", OUT_DIR=str(out),
               PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    return env, out


def launch(nproc: int, env: dict, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "kotomamba", "launch", "--nproc-per-node", str(nproc), *extra,
               "--", "-m", "payload", "--flag", "value"]
    return subprocess.Popen(command, env=env, **popen)


def records(out: Path) -> dict[int, dict]:
    return {int(path.stem.split("-")[1]): json.loads(path.read_text()) for path in out.glob("rank-*.json")}


@pytest.mark.parametrize("code", [0, 3, 75])
def test_one_process_exits_with_the_subcommands_code(payload_env, code):
    env, out = payload_env
    assert launch(1, {**env, "EXIT_0": str(code)}).wait(timeout=60) == code
    assert records(out)[0]["argv"] == ["--flag", "value"]
    assert records(out)[0]["RANK"] is None  # a plain process: no torchrun around it


@pytest.mark.slow
def test_two_workers_form_a_process_group(payload_env):
    env, out = payload_env
    assert launch(2, {**env, "ALL_REDUCE": "1"}).wait(timeout=120) == 0
    seen = records(out)
    assert sorted(seen) == [0, 1]
    assert {seen[rank]["WORLD_SIZE"] for rank in seen} == {"2"}
    assert [seen[rank]["sum"] for rank in (0, 1)] == [3.0, 3.0]
    assert seen[1]["argv"] == ["--flag", "value"]


@pytest.mark.parametrize("nproc, budget, each", [(2, "4", "2"), (2, "2", "1"), (3, "2", "1"), (1, "3", "3"),
                                                  (2, None, str(max(1, len(os.sched_getaffinity(0)) // 2))),
                                                  (1, None, None)])
def test_the_nodes_cpu_budget_is_shared_among_its_ranks(payload_env, nproc, budget, each):
    """OMP_NUM_THREADS as Snakemake sets it (the rule's threads: the CPUs reserved for the job; MKL's too) is
    the node's budget: each rank gets its share, so a rank runs as many threads on one node as on several (its CPU
    results depend on that number) and the ranks do not oversubscribe the node."""
    env, out = payload_env
    env = {k: v for k, v in env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if budget is not None:  # else: the CPUs the launcher may run on (one process: the defaults), MKL's unset
        env.update(OMP_NUM_THREADS=budget, MKL_NUM_THREADS=budget)
    assert launch(nproc, env).wait(timeout=120) == 0
    mkl = each if budget is not None else None
    assert [(r["OMP_NUM_THREADS"], r["MKL_NUM_THREADS"]) for r in records(out).values()] == [(each, mkl)] * nproc


def test_requeue_code_75_comes_through_after_every_rank_finished(payload_env):
    env, out = payload_env
    # rank 0 asks for a requeue at once; rank 1 is still saving for a second: torchrun must not kill it
    code = launch(2, {**env, "EXIT_0": "75", "EXIT_1": "75", "SLEEP_1": "1.5"}).wait(timeout=120)
    assert code == 75
    assert sorted(records(out)) == [0, 1]


@pytest.mark.slow
def test_a_failing_worker_wins_over_torchruns_code(payload_env):
    env, out = payload_env
    assert launch(2, {**env, "EXIT_1": "3"}).wait(timeout=120) == 3


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_signals_reach_the_workers_which_exit_75(payload_env, signum):
    env, out = payload_env
    process = launch(2, {**env, "WAIT_SIGNAL": "1", "EXIT_0": "75", "EXIT_1": "75"})
    deadline = time.time() + 90
    while not all((out / f"ready-{rank}").exists() for rank in (0, 1)):
        assert time.time() < deadline and process.poll() is None, "workers did not start"
        time.sleep(0.1)
    process.send_signal(signum)
    assert process.wait(timeout=60) == 75
    seen = records(out)
    assert [seen[rank]["signal"] for rank in (0, 1)] == [int(signum), int(signum)]


def test_more_nodes_than_a_machine_is_a_clear_error(payload_env):
    env, _ = payload_env
    process = launch(1, env, "--nnodes", "2", stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "--nnodes 2 needs a SLURM, Grid Engine or PBS allocation" in stderr


def test_nothing_to_run_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "kotomamba", "launch", "--nproc-per-node", "2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "give a subcommand after `--`" in result.stderr
