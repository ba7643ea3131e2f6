"""Compressed inputs cut short or corrupt: a one-line error naming the file, from the reader and the commands."""
from __future__ import annotations

import gzip
import io
import subprocess
import sys

import pytest
import zstandard

from kotomamba.data.compression import open_decompressed
from kotomamba.data.corpus import write_corpus
from kotomamba.data.train_tokenizer import train_tokenizer
from kotomamba.errors import UserError

CONTENT = b"".join(b'{"text": "document %d of a shard"}\n' % i for i in range(4000))


def zstd_blocks(data: bytes, blocks: int = 4) -> tuple[bytes, list[int]]:
    """``data`` as one Zstandard frame of ``blocks`` blocks, and the offset where each block ends."""
    buffer = io.BytesIO()
    writer = zstandard.ZstdCompressor().stream_writer(buffer, closefd=False)
    ends = []
    for index in range(blocks):
        writer.write(data[index * len(data) // blocks: (index + 1) * len(data) // blocks])
        writer.flush(zstandard.FLUSH_BLOCK)
        ends.append(len(buffer.getvalue()))
    writer.flush(zstandard.FLUSH_FRAME)
    return buffer.getvalue(), ends


def read(path) -> bytes:
    with open_decompressed(path) as handle:
        return handle.read()


@pytest.mark.parametrize("where", ["block", "mid-block"])
def test_a_cut_zstd_file_is_an_error_naming_it(tmp_path, where):
    data, ends = zstd_blocks(CONTENT)
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(data[: ends[1] if where == "block" else (ends[1] + ends[2]) // 2])
    with pytest.raises(UserError, match=rf"^{cut}: truncated or corrupt zstd data \(the file ends inside a frame\)$"):
        read(cut)


def test_zstd_frames_one_after_another_read_whole(tmp_path):
    """What ``zstd`` itself reads (``cat a.zst b.zst``): every frame, and an empty file as empty."""
    data, _ = zstd_blocks(CONTENT)
    (tmp_path / "two.jsonl.zst").write_bytes(data + zstandard.ZstdCompressor().compress(b'{"text": "last"}\n'))
    assert read(tmp_path / "two.jsonl.zst") == CONTENT + b'{"text": "last"}\n'
    (tmp_path / "empty.jsonl.zst").write_bytes(b"")
    assert read(tmp_path / "empty.jsonl.zst") == b""


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_corrupt_and_truncated_files_name_themselves(tmp_path, kind):
    compress, suffix = (zstandard.ZstdCompressor().compress, "zst") if kind == "zstd" else (gzip.compress, "gz")
    truncated, garbage = tmp_path / f"trunc.jsonl.{suffix}", tmp_path / f"garbage.jsonl.{suffix}"
    truncated.write_bytes(compress(CONTENT)[:-20])
    garbage.write_bytes(b"not compressed at all\n")
    for path in (truncated, garbage):
        with pytest.raises(UserError, match=rf"^{path}: truncated or corrupt {kind} data \(.+\)$"):
            read(path)
    with open_decompressed(truncated, shown_as="https://example.org/trunc.jsonl") as handle:
        with pytest.raises(UserError, match=r"^https://example.org/trunc.jsonl: truncated or corrupt"):
            handle.read()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_corpus(corpus, max_bytes=100_000)
    return str(train_tokenizer([corpus], 500, "unigram", tmp_path_factory.mktemp("tok") / "tok"))


def kotomamba(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kotomamba", *args], capture_output=True, text=True, timeout=300)


def test_preprocess_refuses_a_cut_file_in_one_line(tmp_path, tokenizer):
    data, ends = zstd_blocks(CONTENT)
    (tmp_path / "cut.jsonl.zst").write_bytes(data[: ends[1]])
    (tmp_path / "trunc.jsonl.gz").write_bytes(gzip.compress(CONTENT)[:-20])
    for name, kind in (("cut.jsonl.zst", "zstd"), ("trunc.jsonl.gz", "gzip")):
        result = kotomamba("preprocess", "--input", str(tmp_path / name), "--output-prefix", str(tmp_path / "out"),
                           "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer,
                           "--workers", "0", "--no-progress")
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        expected = f"kotomamba preprocess: error: {tmp_path / name}: truncated or corrupt {kind} data ("
        assert line.startswith(expected), line
        assert not list(tmp_path.glob("out*"))
