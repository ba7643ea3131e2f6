"""A full disk (a real tmpfs, filled) stops a command with one message and loses nothing.

A checkpoint that finds no room ends the training job that way, and the stage resumes from its last complete
checkpoint once there is room, to the weights of a run that never stopped. Before, each rank printed DCP's
gathered failures (torch's writer reports a full disk as "unexpected pos"), then torchrun its own traceback and
table: some 250 lines, none of which said what to do. Tokenization and export that run out of room name what
they were writing and leave nothing behind, as does tokenizer training; before, a traceback (safetensors' own
error, for an export), or for the tokenizer a message that named no file. A
download that runs out of room stops at once (before, it was retried as a broken transfer) and resumes once there
is room.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from kotomamba.data.download import main as download
from kotomamba.train.integrity import checkpoint_defect
from kotomamba.train.run_dir import RunDir, read_latest
from test_data_download import CONTENT, server  # noqa: F401 (the loopback server fixture)
from train_helpers import (assert_same_weights, final_weights, make_corpus, needs_cpu_sharding, run_train, train_env,
                           write_config)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")

SHORT = {"train": {"steps": 4}, "eval": {"interval": 0, "final": False}, "checkpoint": {"interval": 2, "keep_last": 2}}


@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def launch(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``kotomamba launch`` of two ranks, as a job runs the stage."""
    return subprocess.run([sys.executable, "-m", "kotomamba", "launch", "--nproc-per-node", "2", "--", "train",
                           "--config", str(config), *overrides], env=train_env(), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
@needs_cpu_sharding
def test_a_checkpoint_without_room_stops_with_one_message_and_the_stage_resumes_once_there_is_room(tmp_path):
    reference = RunDir(tmp_path / "reference")
    run_train(write_config(tmp_path, reference.root, **SHORT), nproc=2)
    with tmpfs(tmp_path / "disk", "64m") as disk:
        run = RunDir(disk / "run")
        config = write_config(tmp_path, run.root, **SHORT)
        first = launch(config, "train.max_steps_this_job=2")
        kept = run.checkpoint(2)
        assert read_latest(run.checkpoints) == kept and not run.final.exists(), first.stderr[-3000:]
        size = sum(path.stat().st_size for path in kept.iterdir())
        # Half a checkpoint's room left: the write of step 4 runs out of it.
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - size // 2))

        full = launch(config)
        output = full.stdout + full.stderr
        assert full.returncode == 2, output[-3000:]
        said = [line for line in output.splitlines() if line.startswith("kotomamba train: error:")]
        assert len(said) == 1, output[-3000:]
        assert f"the checkpoint of step 4 did not fit in {run.checkpoints}" in said[0]
        assert "resumes from step_00000002, its last complete checkpoint" in said[0]
        assert "Traceback" not in output and "ChildFailedError" not in output, output[-3000:]
        assert read_latest(run.checkpoints) == kept and checkpoint_defect(kept) is None
        assert not run.checkpoint(4).exists()

        filler.unlink()
        resumed = launch(config)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed from step 2" in resumed.stdout + resumed.stderr
        assert not list(run.checkpoints.glob(".*.tmp"))
        assert_same_weights(final_weights(run.root), final_weights(reference.root))


def test_tokenization_without_room_names_the_file_and_leaves_nothing(tmp_path):
    tokenizer, _ = make_corpus(tmp_path)
    corpus = tmp_path / "corpus.jsonl"
    # About 400 KiB of uint16 tokens, for a 256 KiB filesystem.
    corpus.write_text("".join(f'{{"text": "{" ".join(f"w{(i + j) % 60}" for j in range(200))}"}}\n'
                              for i in range(1000)))
    with tmpfs(tmp_path / "disk", "256k") as disk:
        result = subprocess.run([sys.executable, "-m", "kotomamba", "preprocess", "--input", str(corpus),
                                 "--output-prefix", str(disk / "corpus"), "--tokenizer-type", "HuggingFaceTokenizer",
                                 "--tokenizer-model", tokenizer, "--append-eod", "--no-progress"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip() == (f"kotomamba preprocess: error: No space left on device writing "
                                         f"{disk / 'corpus_text_document.bin'}; make room there, then run it again")
        assert not list(disk.iterdir())


def test_tokenization_whose_second_index_finds_no_room_puts_no_output_in_place(tmp_path):
    """Two keys: both data files and the first index fit, the second index does not. Before, the first key's
    files were in place by then, beside the second's old ones (or none)."""
    tokenizer, _ = make_corpus(tmp_path)
    corpus = tmp_path / "corpus.jsonl"
    # 20,000 documents of 2 tokens a key: 80,000 bytes of data and 400,042 of index each, for a 720 KiB filesystem.
    corpus.write_text("".join(f'{{"text": "w{i % 60}", "title": "w{(i + 7) % 60}"}}\n' for i in range(20000)))
    with tmpfs(tmp_path / "disk", "720k") as disk:
        result = subprocess.run([sys.executable, "-m", "kotomamba", "preprocess", "--input", str(corpus),
                                 "--output-prefix", str(disk / "corpus"), "--tokenizer-type", "HuggingFaceTokenizer",
                                 "--tokenizer-model", tokenizer, "--append-eod", "--no-progress",
                                 "--json-keys", "text", "title"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip() == (f"kotomamba preprocess: error: No space left on device writing "
                                         f"{disk / 'corpus_title_document.idx'}; make room there, then run it again")
        assert not list(disk.iterdir())


def test_an_export_without_room_names_its_directory_and_leaves_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    run_train(write_config(tmp_path, run.root, **SHORT))
    with tmpfs(tmp_path / "disk", "1m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 16 * 1024))
        output = disk / "hf"
        result = subprocess.run([sys.executable, "-m", "kotomamba", "convert", "--checkpoint", str(run.root), "--to",
                                 "hf", "--output", str(output)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == (f"kotomamba convert: error: No space left on device "
                                                          f"writing {output}; make room there, then run it again")
        assert "Traceback" not in result.stderr
        assert [path.name for path in disk.iterdir()] == ["filler"]


def test_a_download_without_room_stops_at_once_and_resumes_once_there_is_room(server, tmp_path, capsys):  # noqa: F811
    server.files["/shard.jsonl"] = CONTENT
    with tmpfs(tmp_path / "disk", "64k") as disk:
        output = disk / "shard.jsonl"
        assert download([f"{server.url}/shard.jsonl", "--output", str(output)]) == 2
        error = capsys.readouterr().err
        assert f"no room for it in {disk / '.shard.jsonl.download'} (No space left on device" in error, error
        assert "make room there, then run again to resume from" in error
        assert server.ranges == [None] and not output.exists()
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        assert download([f"{server.url}/shard.jsonl", "--output", str(output)]) == 0
        assert server.ranges[1].startswith("bytes=") and int(server.ranges[1][6:-1]) > 0
        assert output.read_bytes() == CONTENT


def test_a_tokenizer_without_room_names_its_file_and_leaves_nothing(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rng = random.Random(0)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8))) for _ in range(2000)]
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choices(words, k=12))}) + "\n" for _ in range(3000)))
    with tmpfs(tmp_path / "disk", "64k") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 4096))
        output = disk / "tokenizer.model"

        def train(vocab: int) -> str:
            result = subprocess.run([sys.executable, "-m", "kotomamba", "train-tokenizer", "--input", str(corpus),
                                     "--vocab-size", str(vocab), "--output", str(output)], capture_output=True,
                                    text=True, timeout=300)
            assert result.returncode == 2, result.stderr[-3000:]
            return result.stderr.strip().splitlines()[-1]

        # An error that has nothing to do with room stays itself on a full disk.
        assert "is more pieces than SentencePiece can make of this text" in train(20000)
        assert train(400) == (f"kotomamba train-tokenizer: error: No space left on device writing "
                              f"{output / 'tokenizer.vocab'}; make room there, then run it again")
        assert [path.name for path in disk.iterdir()] == ["filler"]
