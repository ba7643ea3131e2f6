"""Issue 16 items 4, 7 and 9 with two processes: the start is decided once (a late rank cannot diverge), a stop
signal during start-up exits 75, and every rank's RNG is seeded."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kotomamba.train.checkpoint import checkpoint_keys
from kotomamba.train.checkpoint_files import load_local
from kotomamba.train.run_dir import RunDir
from kotomamba.train.run_lock import RunLock
from train_helpers import hooks_env, losses, needs_cpu_sharding, run_hooked, run_train, write_config

SHORT = {"train": {"steps": 4}, "eval": {"interval": 0, "final": False}, "checkpoint": {"interval": 2}}


@pytest.mark.slow
@needs_cpu_sharding
def test_a_late_rank_follows_rank_0s_restart_decision(tmp_path):
    run = RunDir(tmp_path / "run")
    run_train(write_config(tmp_path, run.root, **SHORT), nproc=2)
    first = losses(run.root)
    # Rank 1 comes two seconds late: before, rank 0 had moved checkpoints/ away when rank 1 read latest, and the
    # ranks waited in different collectives until the process group's timeout (the subprocess timeout here).
    result = run_hooked("late-rank-1", write_config(tmp_path, run.root, **SHORT, optim={"lr": 1.0e-3}), nproc=2,
                        timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(run.superseded / "1") == first and sorted(losses(run.root)) == [1, 2, 3, 4]
    assert json.loads(run.final.read_text())["step"] == 4


def _rng(checkpoint, rank: int) -> torch.Tensor:
    key = f"train_state.rng.rank_{rank}"
    state = {"train_state": {"rng": {f"rank_{rank}": torch.empty(checkpoint_keys(checkpoint)[key], dtype=torch.uint8)}}}
    load_local(state, checkpoint)
    return state["train_state"]["rng"][f"rank_{rank}"]


@pytest.mark.slow
@needs_cpu_sharding
def test_every_ranks_generator_is_seeded(tmp_path):
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    for run in (a, b):
        run_train(write_config(tmp_path, run.root, **SHORT), nproc=2)
    for rank in (0, 1):
        assert torch.equal(_rng(a.checkpoint(4), rank), _rng(b.checkpoint(4), rank)), rank


@pytest.mark.slow
def test_sigterm_while_building_exits_75_with_nothing_written(tmp_path):
    run = RunDir(tmp_path / "run")
    result = run_hooked("sigterm-while-building", write_config(tmp_path, run.root, **SHORT))
    assert result.returncode == 75, result.stderr[-3000:]
    assert "stopped by SIGTERM before the first training step" in result.stderr
    assert not run.step_dirs() and not run.final.exists()


@pytest.mark.slow
def test_a_second_stop_signal_after_the_command_ended_changes_nothing(tmp_path):
    """Snakemake, the launcher and the scheduler each pass a stop signal on: one that came as the command was
    ending raised again, outside the command, and printed a traceback (under the launcher: exit 1, not 75)."""
    run = RunDir(tmp_path / "run")
    result = run_hooked("sigterm-while-building-and-sigint-at-exit", write_config(tmp_path, run.root, **SHORT))
    assert result.returncode == 75, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "stopped by SIGTERM before the first training step" in result.stderr


@pytest.mark.slow
@needs_cpu_sharding
def test_sigterm_while_building_under_the_launcher_exits_75(tmp_path):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, **SHORT)
    result = subprocess.run([sys.executable, "-m", "kotomamba", "launch", "--nproc-per-node", "2", "--", "-m",
                             "train_hooks", "sigterm-while-building", "train", "--config", str(config)],
                            env=hooks_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 75, result.stderr[-3000:]
    assert not run.step_dirs()


@pytest.mark.slow
@needs_cpu_sharding
def test_two_ranks_refused_by_a_lock_then_resume_past_a_corrupted_shard_of_rank_1(tmp_path):
    saves = {"train": {"steps": 8}, "eval": {"interval": 0}, "checkpoint": {"interval": 2, "keep_last": 0}}
    straight, run = tmp_path / "straight", RunDir(tmp_path / "run")
    run_train(write_config(tmp_path, straight, **saves), nproc=2)
    config = write_config(tmp_path, run.root, **saves)
    run_train(config, "train.max_steps_this_job=6", nproc=2)
    with RunLock(run.lock).acquire():
        refused = run_train(config, nproc=2, check=False)
    assert refused.returncode != 0 and refused.stderr.count("the run directory is in use by") == 1  # rank 0 says it
    shard = run.checkpoint(6) / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-10])
    result = run_train(config, nproc=2)
    assert f"set aside step_00000006 (into {run.set_aside}): {shard}: " in result.stdout
    assert losses(run.root) == losses(straight)
