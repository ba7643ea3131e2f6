"""Where the data tools write: an output directory replaces only its own earlier output, and an output path
that cannot be written is refused, naming it, before the work (kotomamba.io)."""
from __future__ import annotations

import os
import signal

import pytest

from kotomamba.errors import UserError
from kotomamba.io import atomic_directory, check_output


def _write(directory, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)


def _tree(directory) -> dict[str, str]:
    return {str(path.relative_to(directory)): path.read_text() for path in sorted(directory.rglob("*")) if path.is_file()}


def test_a_directory_holding_what_the_output_does_not_is_left_as_it_was(tmp_path):
    user = tmp_path / "mydata"
    _write(user, {"corpus.jsonl": "{}\n", "notes.txt": "mine", "tokenizer.model": "old"})
    with pytest.raises(UserError, match=r"^.*mydata/: not replaced, it holds what this output does not "
                                        r"\(corpus.jsonl, notes.txt\)"):
        with atomic_directory(f"{user}/") as tmp:
            _write(tmp, {"tokenizer.model": "new"})
    assert _tree(user) == {"corpus.jsonl": "{}\n", "notes.txt": "mine", "tokenizer.model": "old"}
    assert sorted(os.listdir(tmp_path)) == ["mydata"]  # nothing temporary left


def test_a_rerun_replaces_its_own_earlier_output_but_not_what_was_added_below_it(tmp_path):
    out = tmp_path / "export"
    for version in ("1", "2"):
        with atomic_directory(out) as tmp:
            _write(tmp, {"config.json": version, "checkpoints/0/model.pt": version})
    assert _tree(out) == {"config.json": "2", "checkpoints/0/model.pt": "2"}
    _write(out, {"checkpoints/0/my-notes.txt": "mine"})
    with pytest.raises(UserError, match=r"\(checkpoints/0/my-notes.txt\)"):
        with atomic_directory(out) as tmp:
            _write(tmp, {"config.json": "3", "checkpoints/0/model.pt": "3"})
    assert _tree(out)["config.json"] == "2" and sorted(os.listdir(tmp_path)) == ["export"]


def test_a_rerun_stopped_by_ctrl_c_while_its_entries_move_in_is_whole_never_mixed(tmp_path, monkeypatch):
    """Ctrl-C between two of the renames that put a rerun's entries in place: no new config.json beside old weights."""
    out = tmp_path / "export"
    files = ("config.json", "model.safetensors", "tokenizer.model")
    with atomic_directory(out) as tmp:
        _write(tmp, dict.fromkeys(files, "1"))
    replace, calls = os.replace, []

    def replace_then_ctrl_c(source, target):
        replace(source, target)
        calls.append(target)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out) as tmp:
            _write(tmp, dict.fromkeys(files, "2"))
    monkeypatch.undo()
    assert len(calls) == 2 * len(files) and _tree(out) == dict.fromkeys(files, "2")
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_the_working_directory_is_an_output_like_any_other(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"corpus.jsonl": "{}\n"})
    with pytest.raises(UserError, match=r"^\.: not replaced, it holds what this output does not \(corpus.jsonl\)"):
        with atomic_directory(".") as tmp:
            _write(tmp, {"tokenizer.model": "0"})
    os.remove("corpus.jsonl")
    for version in ("1", "2"):
        with atomic_directory(".") as tmp:
            _write(tmp, {"tokenizer.model": version})
    assert _tree(tmp_path) == {"tokenizer.model": "2"} and os.getcwd() == str(tmp_path)


def test_an_output_path_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "good.jsonl").write_text("{}\n")
    refused = {
        (f"{tmp_path}/good.jsonl/sub/x", False): f"good.jsonl/sub/x (--out): cannot be written: {tmp_path}/good.jsonl "
                                                 "is a file, not a directory",
        (f"{tmp_path}/good.jsonl", True): "good.jsonl (--out): is a file, not a directory",
        (str(tmp_path), False): f"{tmp_path} (--out): is a directory, not a file",
    }
    for (path, directory), message in refused.items():
        with pytest.raises(UserError) as error:
            check_output(path, "--out", directory)
        assert str(error.value).endswith(message)
    check_output(tmp_path / "new" / "deeper" / "x.json", "--out")
    with pytest.raises(UserError, match="good.jsonl: is a file, not a directory"):
        with atomic_directory(tmp_path / "good.jsonl"):
            pytest.fail("checked before the work")
    assert (tmp_path / "good.jsonl").read_text() == "{}\n"
