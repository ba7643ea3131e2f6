"""What may change between the jobs of one run, and what a start-over says: settings that cannot change the
trained weights (evaluation, activation checkpointing, a precision that resolves the same, the sharding
strategy of one unsharded process) resume, bit for bit the uninterrupted run's weights; a changed setting
is named with both values; an unreadable identity.json is an error naming it, never a start from step 1."""
from __future__ import annotations

import json

import pytest

from kotomamba.errors import UserError
from kotomamba.train.config import load_config
from kotomamba.train.identity import identity_changes, stage_identity
from kotomamba.train.run_dir import RunDir
from train_helpers import assert_same_weights, final_weights, run_train, write_config

RUN = {"train": {"steps": 4}, "eval": {"interval": 2, "steps": 1, "final": True}, "checkpoint": {"interval": 2}}
UNCHANGED_RESULT = ("eval.interval=1", "eval.steps=2", "eval.final=false", "parallel.activation_checkpointing=true",
                    "precision=fp32", "parallel.strategy=SHARD_GRAD_OP")


@pytest.mark.slow
def test_settings_that_cannot_change_the_weights_resume_bit_for_bit(tmp_path):
    straight, resumed = RunDir(tmp_path / "straight"), RunDir(tmp_path / "resumed")
    run_train(write_config(tmp_path, straight.root, **RUN))
    config = write_config(tmp_path, resumed.root, **RUN)
    run_train(config, "train.max_steps_this_job=2")
    result = run_train(config, *UNCHANGED_RESULT)
    assert f"resuming from {resumed.checkpoint(2)}" in result.stdout and "starting over" not in result.stdout
    assert_same_weights(final_weights(resumed.root), final_weights(straight.root))
    # A setting that does change the result starts over, and says which and how.
    result = run_train(config, "optim.lr=0.002")
    assert "starting over (the stage's identity changed: optim.lr 0.003 -> 0.002)" in result.stdout, result.stdout


@pytest.mark.slow
def test_two_processes_switched_between_full_shard_and_shard_grad_op_resume_bit_for_bit(tmp_path):
    """The two differ only in when the gathered parameters are freed (what a user short of memory changes): two
    processes switched mid-stage resume, and end with the weights of the run that kept FULL_SHARD throughout.
    A strategy that reduces otherwise (HYBRID_SHARD) still starts over."""
    straight, resumed = RunDir(tmp_path / "straight"), RunDir(tmp_path / "resumed")
    sharded = {**RUN, "parallel": {"data_parallel": "fsdp"}}
    run_train(write_config(tmp_path, straight.root, **sharded), nproc=2)
    config = write_config(tmp_path, resumed.root, **sharded)
    run_train(config, "train.max_steps_this_job=2", "parallel.strategy=SHARD_GRAD_OP", nproc=2)
    result = run_train(config, nproc=2)
    assert f"resuming from {resumed.checkpoint(2)}" in result.stdout and "starting over" not in result.stdout, (
        result.stdout)
    assert_same_weights(final_weights(resumed.root), final_weights(straight.root))
    result = run_train(config, "parallel.strategy=HYBRID_SHARD", nproc=2)
    assert "parallel.strategy FULL_SHARD -> HYBRID_SHARD" in result.stdout, result.stdout


@pytest.fixture
def recorded(tmp_path):
    """A run directory whose identity.json records the config's identity, and that identity."""
    config = load_config(write_config(tmp_path, tmp_path / "run"), [])
    run, identity = RunDir(tmp_path / "run"), stage_identity(config, "fp32", 1)
    run.root.mkdir()
    run.identity.write_text(json.dumps(identity))
    return run, config, identity


def test_a_recorded_identity_of_older_settings_is_compared_as_recorded_now(recorded):
    run, config, identity = recorded
    older = json.loads(run.identity.read_text())
    older["config"].update({"precision": "auto", "eval": {"interval": 9}})  # as recorded before: raw, with eval
    older["config"]["parallel"]["strategy"] = "FULL_SHARD"
    older["digest"] = "0" * 64
    run.identity.write_text(json.dumps(older))
    assert identity_changes(run, identity, config) == []


def test_an_unreadable_identity_is_an_error_naming_it(recorded):
    run, config, identity = recorded
    run.identity.write_text("")
    with pytest.raises(UserError, match="identity.json: cannot be read"):
        identity_changes(run, identity, config)
    # final.json records the identity: that is enough to know the run is this stage's.
    run.final.write_text(json.dumps({"identity": identity["digest"]}))
    assert identity_changes(run, identity, config) == []
    other = stage_identity(load_config(run.root.parent / "run.yaml", ["optim.lr=0.1"]), "fp32", 1)
    with pytest.raises(UserError, match="identity.json"):
        identity_changes(run, other, config)
