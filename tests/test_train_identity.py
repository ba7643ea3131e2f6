"""Issue 15 item 1 (trainer side): a stage's identity covers its config and its inputs' contents, not the
settings that leave the result unchanged, nor how the run directory is spelled."""
from __future__ import annotations

import json

import pytest

from kotomamba.train.config import load_config
from kotomamba.train.identity import stage_identity
from train_helpers import write_config


@pytest.fixture
def config_file(tmp_path):
    return write_config(tmp_path, tmp_path / "run")


def digest(config_file, *overrides: str) -> str:
    return stage_identity(load_config(config_file, list(overrides)))["digest"]


def test_settings_that_do_not_change_the_result_keep_the_identity(tmp_path, config_file):
    base = digest(config_file)
    assert digest(config_file, f"run_dir={tmp_path}/./run") == base
    assert digest(config_file, f"run_dir={tmp_path}/elsewhere") == base  # a moved run is the same stage
    for override in ("logging.interval=5", "checkpoint.interval=1", "checkpoint.keep_last=9",
                     "train.max_steps_this_job=2", "train.wall_time_budget_s=100", "parallel.cuda_graph=false"):
        assert digest(config_file, override) == base, override
    assert digest(config_file, "optim.lr=0.1") != base


def test_a_copied_project_keeps_its_identity(tmp_path, config_file):
    """Inputs count by their contents: the same data and tokenizer at another path are the same stage."""
    import shutil

    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tmp_path.iterdir():
        if path.is_file():
            shutil.copy2(path, copy / path.name)
    moved = write_config(copy, copy / "run")
    assert digest(moved) == digest(config_file)


@pytest.mark.parametrize("change", ["corpus index", "corpus size", "tokenizer"])
def test_a_changed_input_changes_the_identity(tmp_path, config_file, change):
    before = digest(config_file)
    path = {"corpus index": tmp_path / "corpus_text_document.idx", "corpus size": tmp_path / "corpus_text_document.bin",
            "tokenizer": tmp_path / "tokenizer.json"}[change]
    if change == "tokenizer":
        document = json.loads(path.read_text())
        document["model"]["unk_token"] = "w1"
        path.write_text(json.dumps(document))
    else:
        with open(path, "ab") as handle:
            handle.write(b"\0\0")
    assert digest(config_file) != before
