"""Files and directories written atomically get the modes the user's umask gives, not tempfile's 0600/0700.

Shared project directories on clusters rely on the umask (0002 for a group-writable project, 0027 for a
group-readable one) to let colleagues read corpus files, checkpoints' ``latest`` and JSON records.
"""
from __future__ import annotations

import os
import stat

import pytest

from kotomamba.data.corpus import write_corpus
from kotomamba.io import atomic_directory, atomic_write, current_umask, write_json


@pytest.fixture(params=[0o002, 0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_is_the_process_umask(umask):
    assert current_umask() == umask


def test_atomic_files_and_directories_follow_the_umask(umask, tmp_path):
    write_json(tmp_path / "final.json", {"step": 1})
    with atomic_write(tmp_path / "checkpoints" / "latest") as handle:
        handle.write("step_00000001\n")
    with atomic_directory(tmp_path / "export") as directory:
        (directory / "config.json").write_text("{}")
    assert _mode(tmp_path / "final.json") == 0o666 & ~umask
    assert _mode(tmp_path / "checkpoints" / "latest") == 0o666 & ~umask
    assert _mode(tmp_path / "export") == 0o777 & ~umask


def test_corpus_file_is_readable_by_the_group(tmp_path):
    previous = os.umask(0o027)
    try:
        write_corpus(tmp_path / "corpus.jsonl", max_bytes=2000)
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "corpus.jsonl") == 0o640


def test_replaced_file_takes_the_umask_mode_too(umask, tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")
    target.chmod(0o600)
    write_json(target, {"new": True})
    assert _mode(target) == 0o666 & ~umask


def test_exported_weights_take_the_umask_mode_as_the_rest_of_the_export(umask, tmp_path):
    from kotomamba.convert.export import write_mamba_ssm
    from kotomamba.convert.run_info import RunInfo
    from kotomamba.model import MambaLM, preset

    model = MambaLM(preset("tiny", vocab_size=64, n_layer=1, d_model=16))
    write_mamba_ssm(model.config, model.state_dict(), tmp_path / "export", None, RunInfo(checkpoint="test"))
    model.save_pretrained(tmp_path / "saved")
    files = [*(tmp_path / "export").iterdir(), *(tmp_path / "saved").iterdir()]
    assert {path.name: _mode(path) for path in files} == {path.name: 0o666 & ~umask for path in files}
