"""Issue 16 item 5 and issue 15 items 1 and 3 (trainer side): a stage's identity decides resume or start over,
earlier runs are kept as generations that convert can read, and a bad config changes nothing on disk."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kotomamba.train.run_dir import RunDir
from train_helpers import losses, run_train, train_env, write_config

SHORT = {"train": {"steps": 4}, "eval": {"interval": 0, "final": False}, "checkpoint": {"interval": 2}}


def respelled(config: Path, spelling: str, name: str) -> Path:
    """``config`` with its run_dir written another way (``spelling`` on the same directory)."""
    document = yaml.safe_load(config.read_text())
    document["run_dir"] = spelling
    out = config.with_name(name)
    out.write_text(yaml.safe_dump(document))
    return out


@pytest.mark.slow
def test_superseded_runs_are_kept_as_generations_and_convert_reads_them(tmp_path):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, **SHORT)
    run_train(config)
    first = losses(run.root)
    # The same directory spelled differently is the same stage: nothing to do.
    for spelling in (f"{tmp_path}/./run", f"{tmp_path}/run/"):
        result = run_train(respelled(config, spelling, "respelled.yaml"))
        assert "records this run as complete" in result.stdout and not run.superseded.exists()
    run_train(write_config(tmp_path, run.root, **SHORT, optim={"lr": 1.0e-3}))
    second = losses(run.root)
    assert second != first
    result = run_train(write_config(tmp_path, run.root, **SHORT, optim={"lr": 1.0e-3}), "--resume", "never")
    assert "starting over (--resume never)" in result.stdout
    # Two generations, the older not overwritten by the newer, each a run directory of its own.
    assert losses(run.superseded / "1") == first and losses(run.superseded / "2") == second
    assert json.loads((run.superseded / "2" / "superseded.json").read_text())["why"] == "--resume never"
    for generation in ("1", "2"):
        assert (run.superseded / generation / "model_config.json").is_file()
        converted = subprocess.run(
            [sys.executable, "-m", "kotomamba", "convert", "--checkpoint", str(run.superseded / generation),
             "--to", "mamba_ssm", "--output", str(tmp_path / f"export-{generation}")],
            env=train_env(), capture_output=True, text=True, timeout=300)
        assert converted.returncode == 0, converted.stderr[-2000:]


@pytest.mark.slow
def test_a_stage_starts_over_when_its_init_checkpoint_was_retrained(tmp_path):
    first, second = RunDir(tmp_path / "first"), RunDir(tmp_path / "second")
    run_train(write_config(tmp_path, first.root, **SHORT))
    stage_two = write_config(tmp_path, second.root, **{**SHORT, "train": {"steps": 2}},
                             init={"from": str(first.root)})
    run_train(stage_two)
    assert "records this run as complete" in run_train(stage_two).stdout
    # The first stage retrains (its config changed); the second's own config is the same, its input is not.
    run_train(write_config(tmp_path, first.root, **SHORT, optim={"lr": 1.0e-3}))
    result = run_train(stage_two)
    assert "starting over (the stage's identity changed" in result.stdout
    assert (second.superseded / "1" / "final.json").is_file()
    identity = json.loads(second.identity.read_text())
    assert identity["inputs"]["init"]["run"] == json.loads(first.final.read_text())["identity"]


@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    ("model.preset=mamba2-13m", "command-line override 'model.preset=mamba2-13m': model.preset: preset 'mamba2-13m' "
                                "is unknown"),
    ("init.from=nowhere/at/all", "command-line override 'init.from=nowhere/at/all': init.from: nowhere/at/all: no "
                                 "such directory"),
])
def test_a_bad_config_changes_nothing_in_the_run_directory(tmp_path, override, message):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, **SHORT)
    run_train(config)
    before = {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file()}
    result = run_train(config, override, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert not run.superseded.exists()
    assert {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file() and path != run.lock} == \
        {path: data for path, data in before.items() if path != run.lock}
