"""Reading a checkpoint on one process: a sharded training checkpoint read back whole, located from a run
directory or a checkpoint directory, with its model config."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from kotomamba.errors import UserError
from kotomamba.train.checkpoint_files import read_model_state_dict, read_train_state, save_local
from kotomamba.train.run_dir import locate_checkpoint, read_model_config
from kotomamba.train.parallelize import cpu_sharding_supported


def _model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "backbone.embedding.weight": torch.randn(16, 8, generator=gen),
        "backbone.layers.0.mixer.A_log": torch.randn(6, 4, generator=gen),
        "backbone.layers.0.mixer.D": torch.randn(6, generator=gen).to(torch.bfloat16),
        "backbone.norm_f.weight": torch.ones(8),
    }


def _write_run(run_dir: Path, step: int, model: dict, train_state: dict) -> Path:
    checkpoint = run_dir / "checkpoints" / f"step_{step:08d}"
    optim = {"state": {"backbone.embedding.weight": {"exp_avg": torch.zeros(16, 8)}}}
    save_local({"model": model, "optim": optim, "train_state": train_state}, checkpoint)
    (run_dir / "checkpoints" / "latest").write_text(checkpoint.name + "\n")
    (run_dir / "model_config.json").write_text(json.dumps({"d_model": 8, "n_layer": 1, "vocab_size": 16}))
    return checkpoint


def test_reads_the_latest_checkpoint_of_a_run_without_optimizer_state(tmp_path):
    _write_run(tmp_path, 100, _model_state(0), {"step": 100})
    newest = _write_run(tmp_path, 200, _model_state(1), {"step": 200})
    location = locate_checkpoint(tmp_path)
    assert location.checkpoint_dir == newest and location.run_dir == tmp_path
    state = read_model_state_dict(location.checkpoint_dir)
    expected = _model_state(1)
    assert sorted(state) == sorted(expected)
    for key, tensor in expected.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key
    config = read_model_config(location.checkpoint_dir)
    assert (config.d_model, config.n_layer) == (8, 1)


def test_one_checkpoint_directory_of_a_run(tmp_path):
    first = _write_run(tmp_path, 100, _model_state(0), {"step": 100})
    _write_run(tmp_path, 200, _model_state(1), {"step": 200})
    location = locate_checkpoint(first)
    assert location.run_dir == tmp_path
    assert torch.equal(read_model_state_dict(first)["backbone.embedding.weight"],
                       _model_state(0)["backbone.embedding.weight"])


def test_train_state_scalars_are_read_and_unsafe_pickles_skipped(tmp_path):
    train_state = {"step": 300, "consumed_samples": 4800, "tokens": 4800 * 2048, "lr": 1.5e-4,
                   "global_norm": torch.tensor(0.25), "rng_cpu": torch.get_rng_state(),
                   "numpy_rng": np.random.RandomState(0).get_state()}
    checkpoint = _write_run(tmp_path, 300, _model_state(), train_state)
    found = read_train_state(checkpoint)
    assert found == {"step": 300, "consumed_samples": 4800, "tokens": 4800 * 2048, "lr": 1.5e-4,
                     "global_norm": 0.25}


def test_missing_or_broken_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        locate_checkpoint(tmp_path / "nope")
    with pytest.raises(UserError, match="checkpoints/latest"):
        locate_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000500\n")
    with pytest.raises(UserError, match="latest: line 1"):
        locate_checkpoint(tmp_path)
    lone = tmp_path / "lone"
    save_local({"optim": {"x": torch.zeros(2)}}, lone)
    with pytest.raises(UserError, match="no 'model' entries"):
        read_model_state_dict(lone)
    with pytest.raises(UserError, match="no model_config.json"):
        read_model_config(locate_checkpoint(lone).checkpoint_dir)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _save_sharded(rank: int, world: int, port: int, checkpoint: str, full: dict):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    sharded = {key: distribute_tensor(tensor, mesh, [Shard(0)]) for key, tensor in full.items()}
    dcp.save({"model": sharded}, checkpoint_id=checkpoint)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not cpu_sharding_supported(), reason="sharded CPU checkpoints need torch >= 2.7")
def test_reads_a_checkpoint_sharded_over_two_ranks_on_one_process(tmp_path):
    import torch.multiprocessing as mp

    full = _model_state(3)
    checkpoint = tmp_path / "step_00000010"
    mp.spawn(_save_sharded, args=(2, _free_port(), str(checkpoint), full), nprocs=2, join=True)
    assert len(list(checkpoint.glob("*.distcp"))) == 2
    state = read_model_state_dict(checkpoint)
    for key, tensor in full.items():
        assert torch.equal(state[key], tensor), key
