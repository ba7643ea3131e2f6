"""Two gloo processes under torchrun: FSDP2 training equals single-process training on the same global batch."""
from __future__ import annotations

import pytest
import torch

from train_helpers import final_weights, losses, needs_cpu_sharding, records, run_train, write_config



@pytest.mark.slow
@needs_cpu_sharding
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
    # The optimizer statistics describe the whole model, not rank 0's shard.
    one_stats, two_stats = ([{k: v for k, v in r.items() if k.startswith("optim/")} for r in records(run)
                             if "optim/decay/weight_norm" in r] for run in (single, sharded))
    assert one_stats and len(one_stats) == len(two_stats)
    for a_stats, b_stats in zip(one_stats, two_stats):
        assert b_stats == pytest.approx(a_stats, rel=1e-4)


@pytest.mark.slow
@needs_cpu_sharding
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


@pytest.mark.parametrize("version,supported", [("2.6.0+cu124", False), ("2.7.0", True), ("2.13.0+cpu", True)])
def test_sharded_cpu_runs_need_torch_2_7(version, supported):
    from kotomamba.errors import UserError
    from kotomamba.train.parallelize import check_sharding, cpu_sharding_supported

    assert cpu_sharding_supported(version) is supported
    check_sharding("cuda", 8, version)
    check_sharding("cpu", 1, version)
    if supported:
        check_sharding("cpu", 2, version)
    else:
        with pytest.raises(UserError, match=r"2 CPU processes needs torch >= 2.7.*nproc_per_node: 1"):
            check_sharding("cpu", 2, version)
