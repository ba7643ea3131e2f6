"""The training state: its counting rules, and checkpoints written before it existed still resume.

Before ``kotomamba.train.train_state`` the trainer wrote its counters key by key; ``OLD_LAYOUT`` is that
entry exactly as it wrote it (``Trainer._state`` of 2026-12-01), and a checkpoint holding it must load
into a ``TrainState`` with every counter, the loss scale and the generators restored."""
from __future__ import annotations

import torch
import torch.distributed.checkpoint as dcp

from kotomamba.train.checkpoint import checkpoint_keys
from kotomamba.train.loss_scale import LossScale
from kotomamba.train.step import DONE, NONFINITE, OVERFLOW, RANGE
from kotomamba.train.train_state import TrainState, rng_state

CPU = torch.device("cpu")


def old_layout(rank: int = 0) -> dict:
    """``train_state`` as the trainer saved it before this module (an fp16 run, rank ``rank``)."""
    torch.manual_seed(1234)
    return {
        "step": 7, "consumed_samples": 112, "skipped_nonfinite": 2, "skipped_overflow": 3,
        "skipped_range": 1, "consecutive_nonfinite": 1, "tracker_id": "wandb-run-1", "world_size": 2,
        "loss_scale": {"scale": 1024.0, "good_steps": 5},
        "rng": {f"rank_{rank}": rng_state(CPU)},
    }


def test_new_checkpoints_keep_the_old_layout():
    state = TrainState(0, 2, CPU, LossScale()).state_dict()
    assert sorted(state) == sorted(old_layout())
    assert sorted(state["rng"]) == ["rank_0"] and sorted(state["loss_scale"]) == ["good_steps", "scale"]


def check_restored(state: TrainState) -> None:
    assert (state.step, state.consumed_samples, state.skipped_nonfinite, state.skipped_overflow, state.skipped_range,
            state.consecutive_nonfinite, state.tracker_id) == (7, 112, 2, 3, 1, 1, "wandb-run-1")
    assert (state.loss_scale.scale, state.loss_scale.good_steps) == (1024.0, 5)


def test_an_old_checkpoint_resumes_with_every_counter_and_the_generators(tmp_path):
    saved = old_layout()
    expected_draw = torch.rand(4)  # what the saved generator state draws next
    dcp.save({"train_state": saved}, checkpoint_id=str(tmp_path / "step_00000007"))

    torch.manual_seed(0)
    state = TrainState(0, 2, CPU, LossScale())
    template = {"train_state": state.load_template(checkpoint_keys(tmp_path / "step_00000007"))}
    assert "rng" in template["train_state"]
    dcp.load(template, checkpoint_id=str(tmp_path / "step_00000007"))
    state.load_state_dict(template["train_state"])
    check_restored(state)
    assert torch.equal(torch.rand(4), expected_draw)


def test_a_checkpoint_of_another_world_resumes_without_its_generators(tmp_path):
    dcp.save({"train_state": old_layout(rank=0)}, checkpoint_id=str(tmp_path / "ckpt"))
    state = TrainState(1, 2, CPU, LossScale())  # rank 1 finds no generators of its own
    template = {"train_state": state.load_template(checkpoint_keys(tmp_path / "ckpt"))}
    assert "rng" not in template["train_state"]
    dcp.load(template, checkpoint_id=str(tmp_path / "ckpt"))
    torch.manual_seed(5)
    expected_draw = torch.rand(4)
    torch.manual_seed(5)
    state.load_state_dict(template["train_state"])
    check_restored(state)
    assert torch.equal(torch.rand(4), expected_draw)  # the freshly seeded generator is kept


def test_an_old_entry_without_loss_scaling_and_tracker():
    old = dict(old_layout(), loss_scale={}, tracker_id="")
    state = TrainState(0, 1, CPU)
    state.load_state_dict(old)
    assert state.loss_scale is None and state.tracker_id is None and state.step == 7


def test_each_outcome_is_counted_and_a_good_step_ends_a_non_finite_streak():
    state = TrainState(0, 1, CPU)
    for kind in (NONFINITE, NONFINITE, RANGE, OVERFLOW, NONFINITE):
        state.advance(kind, 16)
    assert (state.step, state.consumed_samples) == (5, 80)
    assert (state.skipped_nonfinite, state.skipped_range, state.skipped_overflow) == (3, 1, 1)
    assert state.consecutive_nonfinite == 3  # range and overflow skips neither break nor extend a streak
    state.advance(DONE, 16)
    assert (state.step, state.consecutive_nonfinite, state.skipped_nonfinite) == (6, 0, 3)
