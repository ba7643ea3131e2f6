"""TensorBoard events and an offline wandb run next to metrics.jsonl; the wandb run id survives a resume."""
from __future__ import annotations

import pytest

from kotomamba.train.run_dir import resolve_checkpoint
from kotomamba.train.checkpoint_files import load_local
from train_helpers import run_train, write_config

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
pytest.importorskip("wandb", reason="the wandb extra is not installed")


def tracker_id(run_dir) -> str:
    state = {"train_state": {"tracker_id": ""}}
    load_local(state, resolve_checkpoint(run_dir))
    return state["train_state"]["tracker_id"]


@pytest.mark.slow
def test_tensorboard_and_offline_wandb_continue_across_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    config = write_config(tmp_path, run_dir, train={"max_steps_this_job": 3}, eval={"interval": 0},
                          logging={"interval": 1, "tensorboard": True,
                                   "wandb": {"mode": "offline", "project": "kotomamba-test"}})
    run_train(config)
    first_id = tracker_id(run_dir)
    assert first_id
    run_train(config, "train.max_steps_this_job=null")
    assert tracker_id(run_dir) == first_id
    # Both jobs logged into the same wandb run (one offline directory per job, same id).
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(path.name.endswith(f"-{first_id}") for path in offline)
    assert all(list(path.glob("*.wandb")) for path in offline)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    loss_steps = sorted({event.step for event in events.Scalars("loss")})
    assert loss_steps == list(range(1, 9)) and "grad_norm" in events.Tags()["scalars"]
    assert [event.step for event in events.Scalars("val_loss")] == [8]
