"""Bad input found while the run is being built (the data split, the resumed position, the initial weights) is
refused before the run directory changes: the earlier run is neither superseded nor rewritten, and the
corrected command resumes it."""
from __future__ import annotations

import pytest

from kotomamba.train.run_dir import RunDir
from train_helpers import run_train, write_config

RUN = {"train": {"steps": 4}, "eval": {"interval": 2, "steps": 1, "final": False}, "checkpoint": {"interval": 1}}


def snapshot(run: RunDir) -> dict:
    """The run directory's files (less the lock's text and the sample-index cache)."""
    return {path: path.read_bytes() for path in run.root.rglob("*")
            if path.is_file() and path != run.lock and "index_cache" not in path.parts}


@pytest.mark.slow
def test_input_errors_found_while_building_leave_the_run_as_it_was(tmp_path):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, **RUN)
    run_train(config, "train.max_steps_this_job=3")
    before = snapshot(run)
    for args, message in (
            (["data.split=100,0,0"], "the valid split"),  # a changed identity whose data cannot be built
            (["train.steps=2", "--resume", str(run.checkpoint(3))], "past the end of this run"),
            (["model.d_model=64", "--resume", str(run.checkpoint(3))], "model.d_model: 32 there, 64 configured"),
    ):
        result = run_train(config, *args, check=False)
        assert result.returncode == 2, result.stderr[-3000:]
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "starting over" not in result.stdout
        assert not run.superseded.exists() and snapshot(run) == before
    # The corrected command resumes the steps already trained.
    result = run_train(config)
    assert f"resuming from {run.checkpoint(3)}" in result.stdout and run.final.is_file()


def test_a_split_shorter_than_one_sample_is_refused_for_training_and_warned_of_for_validation(tmp_path):
    """At seq_length 1024 the tiny corpus's 10% (20 documents, under 500 tokens) fills less than one sample, whose
    every sample would be those documents repeated: as the valid split, the log says so once; as the train split,
    the run is refused before the run directory changes."""
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, data={"seq_length": 1024}, train={"steps": 1},
                          schedule={"warmup_steps": 0}, eval={"interval": 0, "steps": 1, "final": True},
                          checkpoint={"interval": 1})
    prefix = tmp_path / "corpus_text_document"
    result = run_train(config)
    assert [line for line in result.stdout.splitlines() if "warning" in line] == [
        f"kotomamba train: warning: {prefix}: the valid split holds 454 tokens (20 documents), fewer than one sample "
        "of seq_length + 1 = 1025: every sample repeats the same documents, so val_loss says little; give the valid "
        "split a larger share by data.split ('90,10,0') or a shorter data.seq_length"]
    before = snapshot(run)
    result = run_train(config, "data.split=10,90,0", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"kotomamba train: error: {prefix}: the train split holds 489 tokens (20 documents), fewer than one sample of "
        "seq_length + 1 = 1025: every sample would repeat the same documents; add documents, or give the train split "
        "a larger share by data.split ('10,90,0') or a shorter data.seq_length"], result.stderr[-3000:]
    assert not run.superseded.exists() and snapshot(run) == before


def test_a_run_directory_that_cannot_be_written_is_named_in_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run directory's parent should be\n")
    result = run_train(write_config(tmp_path, blocker / "run", **RUN), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"kotomamba train: error: {blocker / 'run'}: cannot create the run directory (Not a directory)"]


def test_a_lock_that_cannot_be_taken_names_the_directory(tmp_path):
    import errno
    from unittest import mock

    from kotomamba.errors import UserError
    from kotomamba.train.run_lock import RunLock

    with mock.patch("os.open", side_effect=OSError(errno.EROFS, "Read-only file system")):
        with pytest.raises(UserError, match=f"{tmp_path}: cannot take the run directory's lock run.lock "
                                            r"\(Read-only file system\)"):
            RunLock(tmp_path / "run.lock").acquire()
