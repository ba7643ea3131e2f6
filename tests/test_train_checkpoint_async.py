"""An async checkpoint holds the state of the step it was asked for, whatever the training changes while
its files are written (kotomamba/train/checkpoint.py). The write is held back until the next step's
update has happened, so a checkpoint that kept a reference to the live weights instead of a copy reads the
update: on torch 2.6, whose staging leaves tensors already in CPU memory in place, it did."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from kotomamba.train.checkpoint import CheckpointManager


@pytest.fixture
def one_process(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_an_async_checkpoint_holds_its_steps_weights_while_the_next_steps_change_them(tmp_path, monkeypatch,
                                                                                        one_process):
    released = threading.Event()
    write_data = dcp.FileSystemWriter.write_data

    def held_back(self, plan, planner):
        assert released.wait(timeout=120), "the test never released the write"
        return write_data(self, plan, planner)

    monkeypatch.setattr(dcp.FileSystemWriter, "write_data", held_back)
    weights = torch.arange(4096, dtype=torch.float32)
    moments = [torch.ones(64)]
    manager = CheckpointManager(tmp_path / "run", keep_last=0, use_async=True)
    manager.save(7, {"model": {"w": weights}, "optim": {"moments": moments}, "train_state": {"step": 7}})
    weights.add_(1.0)  # the next steps, while the save is pending
    moments[0].mul_(3.0)
    released.set()
    manager.wait()
    loaded = {"model": {"w": torch.zeros(4096)}, "optim": {"moments": [torch.zeros(64)]}, "train_state": {"step": 0}}
    CheckpointManager.load(tmp_path / "run" / "checkpoints" / "step_00000007", loaded)
    assert torch.equal(loaded["model"]["w"], torch.arange(4096, dtype=torch.float32))
    assert torch.equal(loaded["optim"]["moments"][0], torch.ones(64))
    assert loaded["train_state"]["step"] == 7
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000007"
