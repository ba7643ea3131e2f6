"""Two gloo processes under torchrun: FSDP2 training equals single-process training on the same global batch."""
from __future__ import annotations

import pytest
import torch

from train_helpers import final_weights, losses, run_train, write_config


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_process(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run_train(write_config(tmp_path, single, eval={"interval": 0}))
    result = run_train(write_config(tmp_path, sharded, eval={"interval": 0}), nproc=2)
    one, two = losses(single), losses(sharded)
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
    a, b = final_weights(single), final_weights(sharded)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert "world_size" in (sharded / "manifest.json").read_text() and result.returncode == 0


@pytest.mark.slow
def test_two_process_resume_with_hybrid_shard_and_checkpointing(tmp_path):
    run_dir = tmp_path / "hsdp"
    config = write_config(tmp_path, run_dir, eval={"interval": 0}, train={"max_steps_this_job": 4},
                          parallel={"strategy": "HYBRID_SHARD", "hybrid_shard_size": 2,
                                    "activation_checkpointing": True})
    run_train(config, nproc=2)
    run_train(config, "train.max_steps_this_job=null", nproc=2)
    straight = tmp_path / "straight"
    run_train(write_config(tmp_path, straight, eval={"interval": 0},
                           parallel={"strategy": "HYBRID_SHARD", "hybrid_shard_size": 2,
                                     "activation_checkpointing": True}), nproc=2)
    assert losses(run_dir) == losses(straight)
