"""Issue 18 item 4: ``kotomamba status`` reads each stage's progress from its run directory, changing nothing,
while a job trains too: a finished stage, one stopped mid-way (and superseded once), one not started, and a
trainer caught holding the run lock."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kotomamba.train.restart_request import request_restart
from kotomamba.train.run_dir import RunDir
from kotomamba.train.run_lock import RunLock, held_by
from kotomamba.train.status import stage_status
from train_helpers import hooks_env, run_train, train_env, write_config

# 4 samples of 32 tokens per step
TOKENS_PER_STEP = 4 * 32
STAGE = {"train": {"steps": 8}, "checkpoint": {"interval": 4, "keep_last": 2}}
QUIET = {"interval": 0, "final": False}


def status(path: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "kotomamba", "status", str(path), *args], env=train_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def status_json(path: Path) -> dict[str, dict]:
    return {stage["name"]: stage for stage in json.loads(status(path, "--json").stdout)["stages"]}


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and modification time."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """``results/demo`` as the pipeline lays it out: ``pretrain`` finished; ``long-context`` (from pretrain)
    stopped at step 6 of 8 by its second job, after a first try with another learning rate was superseded;
    ``anneal`` (from long-context) not started, only its trainer config written."""
    root = tmp_path_factory.mktemp("status")
    stages = root / "results" / "demo" / "train"
    pretrain, long_context, anneal = stages / "pretrain", stages / "long-context", stages / "anneal"
    run_train(write_config(root, pretrain, **STAGE))
    tried = write_config(root, long_context, **STAGE, eval=QUIET, init={"from": str(pretrain)}, optim={"lr": 1.0e-3})
    run_train(tried, "train.max_steps_this_job=2")
    config = write_config(root, long_context, **STAGE, eval=QUIET, init={"from": str(pretrain)})
    run_train(config, "train.max_steps_this_job=3")
    run_train(config, "train.max_steps_this_job=3")
    anneal.mkdir()
    shutil.copy(write_config(root, anneal, train={"steps": 12}, init={"from": str(long_context)}),
                RunDir(anneal).stage_config)
    return stages.parent


@pytest.mark.slow
def test_every_stage_in_training_order_with_its_numbers(results):
    before = tree(results)
    stages = status_json(results)
    assert list(stages) == ["pretrain", "long-context", "anneal"]
    pretrain, long_context, anneal = stages.values()
    assert {k: pretrain[k] for k in ("state", "step", "total_steps", "tokens", "total_tokens", "checkpoint",
                                     "checkpoint_step", "jobs", "superseded", "seconds_left", "holder")} == {
        "state": "finished", "step": 8, "total_steps": 8, "tokens": 8 * TOKENS_PER_STEP,
        "total_tokens": 8 * TOKENS_PER_STEP, "checkpoint": "step_00000008", "checkpoint_step": 8, "jobs": 1,
        "superseded": 0, "seconds_left": 0.0, "holder": None}
    assert {k: long_context[k] for k in ("state", "step", "total_steps", "tokens", "checkpoint", "jobs",
                                         "superseded", "holder")} == {
        "state": "stopped", "step": 6, "total_steps": 8, "tokens": 6 * TOKENS_PER_STEP,
        "checkpoint": "step_00000006", "jobs": 2, "superseded": 1, "holder": None}
    assert long_context["tokens_per_s"] > 0 and long_context["seconds_left"] > 0
    assert {k: anneal[k] for k in ("state", "step", "total_steps", "tokens", "total_tokens", "checkpoint", "jobs",
                                   "tokens_per_s")} == {
        "state": "not started", "step": 0, "total_steps": 12, "tokens": 0, "total_tokens": 12 * TOKENS_PER_STEP,
        "checkpoint": None, "jobs": None, "tokens_per_s": None}
    text = status(results).stdout
    assert "pretrain: finished\n  step 8 of 8 (100.0%), tokens 1,024 of 1,024 (100.0%)" in text
    assert "long-context: stopped\n  step 6 of 8 (75.0%), tokens 768 of 1,024 (75.0%)" in text
    assert "checkpoint step_00000006; jobs 2" in text and "superseded generations: 1" in text
    assert "anneal: not started\n  step 0 of 12 (0.0%)" in text
    assert tree(results) == before  # read-only: not a byte nor a modification time changed


@pytest.mark.slow
def test_the_folder_of_the_runs_names_them_instead_of_reading_as_a_stage(results):
    done = subprocess.run([sys.executable, "-m", "kotomamba", "status", str(results.parent)], env=train_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"kotomamba status: error: {results.parent}: holds the pipeline runs demo, not one run: "
                           f"kotomamba status {results}\n")


@pytest.mark.slow
def test_one_stage_and_a_superseded_generation_read_alone(results):
    one = status_json(results / "train" / "long-context")
    assert list(one) == ["long-context"] and one["long-context"]["step"] == 6
    first_try = stage_status(results / "train" / "long-context" / "superseded" / "1")
    assert (first_try.state, first_try.step, first_try.checkpoint, first_try.jobs) == ("stopped", 2, "step_00000002", 1)


@pytest.mark.slow
def test_a_stage_the_runs_config_no_longer_names_is_said_to_be_left_over(results, tmp_path):
    """A stage renamed or removed in config.yaml leaves its directory: status names it as left over, from the run's
    own record of its config (config.resolved.yaml, rewritten whenever the config changes)."""
    run = shutil.copytree(results, tmp_path / "demo")
    (run / "config.resolved.yaml").write_text("run: demo\nstages:\n  - name: pretrain\n  - name: long-context\n")
    notes = {name: "\n".join(stage["notes"]) for name, stage in status_json(run).items()}
    assert "not a stage of this run's config" in notes["anneal"] and "pretrain, long-context" in notes["anneal"]
    assert "not a stage of this run's config" not in notes["pretrain"] + notes["long-context"]


def test_status_does_not_import_torch(results):
    """A login node's Python may take many seconds to import torch from a shared filesystem."""
    probe = ("import sys; from kotomamba.cli import main; main(['status', sys.argv[1]]); "
             "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", probe, str(results)], env=train_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "pretrain: finished" in result.stdout, result.stderr


@pytest.mark.slow
def test_steps_logged_past_the_checkpoint_and_a_restart_request_are_noted(results, tmp_path):
    run = RunDir(shutil.copytree(results / "train" / "long-context", tmp_path / "long-context"))
    with open(run.metrics, "a") as handle:  # a job killed after logging step 7, before its next checkpoint
        handle.write(json.dumps({"step": 7, "loss": 4.0, "tokens_per_s": 1000.0}) + "\n")
    request_restart(run.root, "forced by snakemake --forcerun")
    stage = stage_status(run.root)
    assert (stage.state, stage.step, stage.checkpoint) == ("stopped", 6, "step_00000006")
    assert stage.notes == ["logged up to step 7; the next job resumes from step 6",
                           "restart requested: the next job starts over (forced by snakemake --forcerun)"]


@pytest.mark.slow
def test_a_checkpoint_the_next_start_sets_aside_is_not_reported_as_resumable(results, tmp_path):
    """Truncated shards keep their integrity.json; the next job's start finds them by its own check."""
    run = RunDir(shutil.copytree(results / "train" / "long-context", tmp_path / "long-context"))
    assert [c.name for c in run.step_dirs()] == ["step_00000006", "step_00000004"]
    newest = run.step_dirs()[0] / "__0_0.distcp"
    os.truncate(newest, 1000)
    stage = stage_status(run.root)
    assert (stage.state, stage.step, stage.checkpoint) == ("stopped", 4, "step_00000004")
    assert any(note.startswith("the next job's start: set aside step_00000006") and f"{newest}: 1000 bytes" in note
               for note in stage.notes), stage.notes
    os.truncate(run.step_dirs()[1] / "__0_0.distcp", 1000)
    stage = stage_status(run.root)
    assert (stage.state, stage.step, stage.checkpoint) == ("stopped", 0, None)
    assert "no checkpoint verifies: the next job starts over at step 1" in "\n".join(stage.notes)
    assert "checkpoint none yet" in status(run.root).stdout


def test_status_reads_no_checkpoint_data(results, tmp_path, monkeypatch):
    """A login node's look: the sizes integrity.json records, not the checksums of tens of GB."""
    run = RunDir(shutil.copytree(results / "train" / "long-context", tmp_path / "long-context"))
    monkeypatch.setattr("kotomamba.train.integrity.sha256_file", lambda path: pytest.fail(f"read {path}"))
    assert stage_status(run.root).checkpoint == "step_00000006"


@pytest.mark.slow
def test_an_unreadable_identity_record_is_named(results, tmp_path):
    run = RunDir(shutil.copytree(results / "train" / "long-context", tmp_path / "long-context"))
    run.identity.write_text("")
    stage = stage_status(run.root)
    assert stage.checkpoint == "step_00000006"
    assert (f"{run.identity}: the identity record is unreadable (empty or not the JSON train wrote): the next job "
            "refuses to resume step_00000006") in "\n".join(stage.notes)
    assert "the identity record is unreadable" in status(run.root).stdout
    finished = RunDir(shutil.copytree(results / "train" / "pretrain", tmp_path / "pretrain"))
    finished.identity.write_text("")
    assert "refuses to resume step_00000008 (unless its final.json records the identity the job is started with)" \
        in "\n".join(stage_status(finished.root).notes)


@pytest.mark.slow
def test_a_trainer_holding_the_lock_is_read_while_it_trains(tmp_path):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, **STAGE, eval=QUIET)
    run_train(config, "train.max_steps_this_job=2")
    env = hooks_env() | {"PAUSE_AT_STEP": "4", "PAUSE_DIR": str(tmp_path)}
    trainer = subprocess.Popen([sys.executable, "-m", "train_hooks", "pause", "train", "--config", str(config)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "paused").exists():
            assert trainer.poll() is None and time.monotonic() < deadline, "the trainer did not reach step 4"
            time.sleep(0.1)
        # The trainer is mid-write of step 5's record: a torn last line.
        intact = run.metrics.read_bytes()
        with open(run.metrics, "ab") as handle:
            handle.write(b'{"grad_norm": 1.0, "loss": 4.')
        before = tree(run.root)
        stage = status_json(run.root)["run"]
        assert tree(run.root) == before
        assert {k: stage[k] for k in ("state", "step", "total_steps", "tokens", "checkpoint", "jobs")} == {
            "state": "running", "step": 4, "total_steps": 8, "tokens": 4 * TOKENS_PER_STEP,
            "checkpoint": "step_00000004", "jobs": 2}
        assert f"pid {trainer.pid}" in stage["holder"]
        with open(run.metrics, "r+b") as handle:
            handle.truncate(len(intact))
        (tmp_path / "go").touch()
        assert trainer.wait(timeout=300) == 0  # the status reads did not disturb it
    finally:
        if trainer.poll() is None:
            trainer.kill()
    finished = stage_status(run.root)
    assert (finished.state, finished.step, finished.checkpoint, finished.jobs) == ("finished", 8, "step_00000008", 2)


def test_the_probe_sees_a_trainer_not_a_reader(tmp_path):
    path = tmp_path / "run.lock"
    assert held_by(path) is None
    with RunLock(path).acquire():
        assert f"pid {os.getpid()}" in held_by(path)
    with RunLock(path).acquire(shared=True, purpose="a conversion"):
        assert held_by(path) is None
    RunLock(path).acquire().release()  # no probe left a lock behind


@pytest.mark.slow
def test_a_stage_trained_from_a_result_that_changed_is_outdated(tmp_path):
    """The predecessor forced to train again (no result while it does), then given new settings: the stage
    after it reads as outdated, not finished; a stopped one says its next job starts over."""
    stages = tmp_path / "results" / "demo" / "train"
    pretrain, long_context, anneal = stages / "pretrain", stages / "long-context", stages / "anneal"
    run_train(write_config(tmp_path, pretrain, **STAGE, eval=QUIET))
    run_train(write_config(tmp_path, long_context, **STAGE, eval=QUIET, init={"from": str(pretrain)}))
    run_train(write_config(tmp_path, anneal, **STAGE, eval=QUIET, init={"from": str(long_context)}),
              "train.max_steps_this_job=4")
    assert [(s["state"], s["notes"]) for s in status_json(stages.parent).values()] == [
        ("finished", []), ("finished", []), ("stopped", [])]
    # Without its final.json but with the checkpoint it ended with, pretrain's next job resumes to the same result:
    # nothing after it trains again.
    final = (pretrain / "final.json").read_bytes()
    (pretrain / "final.json").unlink()
    stage = status_json(stages.parent)
    assert [(s["state"], s["notes"]) for s in stage.values()][1:] == [("finished", []), ("stopped", [])]
    (pretrain / "final.json").write_bytes(final)

    request_restart(pretrain, "forced by snakemake --forcerun")
    run_train(write_config(tmp_path, pretrain, **STAGE, eval=QUIET), "train.max_steps_this_job=2")
    stage = status_json(stages.parent)
    assert (stage["pretrain"]["state"], stage["pretrain"]["step"]) == ("stopped", 2)
    assert (stage["long-context"]["state"], stage["long-context"]["notes"]) == ("outdated", [
        "trained from an earlier result of pretrain, which is being trained again: the pipeline trains this stage "
        "again"])
    assert (stage["anneal"]["state"], stage["anneal"]["notes"]) == ("stopped", [])  # long-context's result is there
    assert "long-context: outdated\n  step 8 of 8" in status(stages.parent).stdout

    run_train(write_config(tmp_path, pretrain, **STAGE, eval=QUIET, optim={"lr": 1.0e-3}))
    stage = status_json(stages.parent)
    assert stage["pretrain"]["state"] == "finished"
    assert stage["long-context"]["notes"] == [
        "trained from an earlier result of pretrain, which has a new result: the pipeline trains this stage again"]
    run_train(write_config(tmp_path, long_context, **STAGE, eval=QUIET, init={"from": str(pretrain)}))
    stage = status_json(stages.parent)
    assert (stage["long-context"]["state"], stage["long-context"]["notes"]) == ("finished", [])
    assert (stage["anneal"]["state"], stage["anneal"]["notes"]) == ("stopped", [
        "started from an earlier result of long-context, which has a new result: its next job starts over"])
