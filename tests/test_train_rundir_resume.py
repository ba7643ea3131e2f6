"""Issue 16 items 1, 2, 8, 9: a damaged run directory resumes from its newest checkpoint that verifies, says
what it set aside and why, and never restarts from step 1 while a verified checkpoint exists."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kotomamba.train.integrity import checkpoint_defect
from kotomamba.train.run_dir import RunDir
from train_helpers import assert_same_weights, final_weights, losses, records, run_train, train_env, write_config

SAVES = {"train": {"steps": 8}, "checkpoint": {"interval": 2, "keep_last": 0}, "eval": {"interval": 0}}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of 8 steps: (losses, final weights)."""
    root = tmp_path_factory.mktemp("straight")
    run_train(write_config(root, root / "run", **SAVES))
    return losses(root / "run"), final_weights(root / "run")


def interrupted(tmp_path, steps: int = 6):
    """A run stopped after ``steps`` of 8 (checkpoints every 2 steps), and its config."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, run_dir, **SAVES)
    run_train(config, f"train.max_steps_this_job={steps}")
    return RunDir(run_dir), config


def assert_resumed_exactly(run: RunDir, straight) -> None:
    assert [r["step"] for r in records(run.root) if "loss" in r] == list(range(1, 9))
    assert losses(run.root) == straight[0]
    assert_same_weights(final_weights(run.root), straight[1])
    assert not run.superseded.exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage,resumed,why", [
    ("latest empty", 6, "names '', not a checkpoint directory"),
    ("latest garbage", 6, "names 'x#9', not a checkpoint directory"),
    ("latest missing", 6, "latest: missing"),
    ("latest names a missing directory", 6, "names step_00000010, which does not exist"),
    (".metadata deleted", 4, "step_00000006/.metadata: missing"),
])
def test_a_damaged_pointer_or_checkpoint_resumes_the_newest_verified_one(tmp_path, straight, damage, resumed, why):
    run, config = interrupted(tmp_path)
    {"latest empty": lambda: run.latest.write_text(""),
     "latest garbage": lambda: run.latest.write_text("x#9\n"),
     "latest missing": lambda: run.latest.unlink(),
     "latest names a missing directory": lambda: run.latest.write_text("step_00000010\n"),
     ".metadata deleted": lambda: (run.checkpoint(6) / ".metadata").unlink()}[damage]()
    result = run_train(config)
    assert why in result.stdout
    assert f"resuming from {run.checkpoint(resumed)}" in result.stdout
    assert_resumed_exactly(run, straight)


def _shard(run: RunDir, step: int):
    return sorted(run.checkpoint(step).glob("*.distcp"))[0]


@pytest.mark.slow
@pytest.mark.parametrize("damage,why", [
    ("flip 64 bytes", "SHA-256 differs from the one recorded when it was written (corrupted)"),
    ("truncate", "recorded (truncated or rewritten)"),
    ("delete", "distcp: missing"),
])
def test_a_corrupted_shard_is_named_and_the_previous_checkpoint_resumed(tmp_path, straight, damage, why):
    run, config = interrupted(tmp_path)
    shard = _shard(run, 6)
    data = bytearray(shard.read_bytes())
    if damage == "flip 64 bytes":
        data[len(data) // 2: len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 64])
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 3]))
    else:
        shard.unlink()
    # convert refuses it, naming the file, instead of a DCP traceback
    convert = subprocess.run([sys.executable, "-m", "kotomamba", "convert", "--checkpoint", str(run.root), "--to",
                              "mamba_ssm", "--output", str(tmp_path / "export")], env=train_env(),
                             capture_output=True, text=True, timeout=300)
    assert convert.returncode == 2, convert.stderr[-2000:]
    assert f"{shard}: " in convert.stderr and why in convert.stderr and "Traceback" not in convert.stderr
    assert "step_00000004" in convert.stderr  # the run's other checkpoints are named
    result = run_train(config)
    assert f"set aside step_00000006 (into {run.set_aside}): {shard}: " in result.stdout and why in result.stdout
    # Kept for inspection, out of retention's way (a good checkpoint is never pruned to keep a bad one).
    assert (run.set_aside / "step_00000006" / "integrity.json").is_file()
    assert f"resuming from {run.checkpoint(4)}" in result.stdout
    # The damaged checkpoint was written again from the resumed run, and verifies: retention kept both.
    assert_resumed_exactly(run, straight)


@pytest.mark.slow
def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, straight):
    run, config = interrupted(tmp_path)
    with open(run.metrics, "a") as handle:
        handle.write('{"step": 7, "loss": 2.')
    result = run_train(config)
    assert "line 7: torn last record dropped" in result.stdout
    assert_resumed_exactly(run, straight)


@pytest.mark.slow
def test_a_corrupt_metrics_line_is_set_aside_and_does_not_block_the_resume(tmp_path, straight):
    """metrics.jsonl is a log: the run resumes from its verified checkpoint; the damaged file is kept beside."""
    run, config = interrupted(tmp_path)
    lines = run.metrics.read_text().splitlines(keepends=True)
    lost = json.loads(lines[2])["step"]
    damaged = "".join(lines[:2] + ["{not json\n"] + lines[3:])
    run.metrics.write_text(damaged)
    result = run_train(config)
    aside = run.metrics.with_name("metrics.jsonl.damaged")
    assert (f"warning: {run.metrics}: line 3: not a JSON record (Expecting property name enclosed in double "
            f"quotes): the damaged file is kept as {aside}") in result.stdout
    assert aside.read_text() == damaged
    steps = [r["step"] for r in records(run.root) if "loss" in r]
    assert steps == [step for step in range(1, 9) if step != lost]  # the damaged record's step, only, is missing
    assert losses(run.root) == {
        step: loss for step, loss in straight[0].items() if step != lost}
    assert_same_weights(final_weights(run.root), straight[1])
    # The damaged log is the run's: a start over keeps it with the rest of the run's records.
    result = run_train(config, "optim.lr=0.002", "train.max_steps_this_job=1")
    kept = run.superseded / "1" / aside.name
    assert "starting over" in result.stdout and kept.read_text() == damaged and not aside.exists()


@pytest.mark.slow
def test_a_finished_run_relaunched_does_nothing(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, run_dir, train={"steps": 4})
    run_train(config)
    before, final = run_dir.joinpath("metrics.jsonl").read_text(), run_dir.joinpath("final.json").read_text()
    result = run_train(config)
    assert "records this run as complete" in result.stdout
    assert run_dir.joinpath("metrics.jsonl").read_text() == before  # no second final val_loss
    assert run_dir.joinpath("final.json").read_text() == final
    assert [r["step"] for r in records(run_dir) if "val_loss" in r] == [4]
    assert json.loads(final)["identity"] == json.loads((run_dir / "identity.json").read_text())["digest"]


@pytest.mark.slow
def test_retention_keeps_verified_checkpoints_not_a_corrupted_one(tmp_path, straight):
    run, config = interrupted(tmp_path)
    shard = _shard(run, 6)
    shard.write_bytes(shard.read_bytes()[:100])
    # Saves at steps 5 and 8 with the two newest kept: a corrupted step 6 left among them would outlast both.
    run_train(config, "checkpoint.keep_last=2", "checkpoint.interval=5")
    assert [p.name for p in run.step_dirs()] == ["step_00000008", "step_00000005"]
    assert all(checkpoint_defect(p) is None for p in run.step_dirs())
    assert losses(run.root) == straight[0]
