"""Shards as the unit of work: each shard tokenized alone from its compressed file, then merged into the
byte-identical dataset one job over the concatenated shards writes; errors name the shard's own source."""
from __future__ import annotations

import gzip
import hashlib
import json
import threading

import numpy as np
import pytest
import zstandard

from kotomamba.data.corpus import write_corpus
from kotomamba.data.download import Source, download_file
from kotomamba.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from kotomamba.data.merge import main as merge_main
from kotomamba.data.merge import merge_datasets
from kotomamba.data.preprocess import main as preprocess_main
from kotomamba.data.preprocess import preprocess
from kotomamba.data.shards import source_shards
from kotomamba.data.train_tokenizer import train_tokenizer
from kotomamba.errors import UserError
from kotomamba.pipeline.config import RunPaths
from test_data_download import ShardServer

TOKENIZER = "SentencePieceTokenizer"


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> list[bytes]:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_corpus(path, max_bytes=150_000)
    return path.read_bytes().splitlines()


@pytest.fixture(scope="module")
def sp_model(lines, tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tok")
    (directory / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return str(train_tokenizer([directory / "corpus.jsonl"], 700, "unigram", directory / "tok"))


def write_shards(directory, lines) -> list:
    """Shards as published: gzip without a final newline, zstd, an empty file, one of empty texts, plain."""
    quarter = len(lines) // 4
    pieces = [lines[:quarter], lines[quarter : 2 * quarter], [], [b'{"text": ""}'] * 3, lines[2 * quarter :]]
    raw = [b"\n".join(pieces[0]), b"\n".join(pieces[1]) + b"\n", b"", b"\n".join(pieces[3]) + b"\n",
           b"\n".join(pieces[4]) + b"\n"]
    names = ["0.jsonl.gz", "1.jsonl.zst", "2.jsonl", "3.jsonl", "4.jsonl"]
    encoders = [gzip.compress, zstandard.ZstdCompressor().compress, bytes, bytes, bytes]
    paths = []
    for name, data, encode in zip(names, raw, encoders):
        (directory / name).write_bytes(encode(data))
        paths.append(directory / name)
    return paths


def files_of(prefix) -> tuple[bytes, bytes]:
    return open(f"{prefix}.bin", "rb").read(), open(f"{prefix}.idx", "rb").read()


def test_merged_shards_are_the_one_job_dataset_byte_for_byte(lines, sp_model, tmp_path):
    shards = write_shards(tmp_path, lines)
    prefixes, summaries = [], []
    for index, shard in enumerate(shards):
        prefix, summary = tmp_path / "shards" / f"{index:05d}", tmp_path / "shards" / f"{index:05d}.json"
        assert preprocess_main(["--input", str(shard), "--output-prefix", str(prefix), "--tokenizer-type", TOKENIZER,
                                "--tokenizer-model", sp_model, "--append-eod", "--workers", "1", "--allow-empty",
                                "--summary", str(summary), "--no-progress"]) == 0
        prefixes.append(str(prefix))
        summaries.append(str(summary))
    assert merge_main(["--input", *prefixes, "--summaries", *summaries, "--output-prefix", str(tmp_path / "merged")]) == 0

    # One job over the shards decompressed and concatenated, each ended by a newline (what the
    # corpus rule wrote before shards were the unit of work).
    joined = tmp_path / "joined.jsonl"
    with open(joined, "wb") as handle:
        for shard in shards:
            with open(shard, "rb") as raw:
                data = gzip.decompress(raw.read()) if shard.suffix == ".gz" else raw.read()
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data) if shard.suffix == ".zst" else data
            handle.write(data + (b"\n" if data and not data.endswith(b"\n") else b""))
    preprocess([str(joined)], str(tmp_path / "one"), TOKENIZER, sp_model, append_eod=True, workers=2,
               progress=False)
    assert files_of(tmp_path / "merged_text_document") == files_of(tmp_path / "one_text_document")

    merged = IndexedDataset(tmp_path / "merged_text_document")
    assert len(merged) == len(lines)
    counts = json.loads(open(summaries[3]).read())
    assert counts["lines"] == 3 and counts["empty"] == 3 and counts["documents"] == {"text": 0}


def test_merge_keeps_sentence_documents_and_refuses_mixed_token_types(tmp_path):
    with IndexedDatasetWriter(tmp_path / "a", np.uint16) as writer:
        writer.add_documents(np.arange(6), np.array([2, 1, 3]), np.array([2, 1]))
    with IndexedDatasetWriter(tmp_path / "b", np.uint16) as writer:
        writer.add_documents(np.arange(4), np.array([1, 3]), np.array([1, 1]))
    with IndexedDatasetWriter(tmp_path / "one", np.uint16) as writer:
        writer.add_documents(np.arange(6), np.array([2, 1, 3]), np.array([2, 1]))
        writer.add_documents(np.arange(4), np.array([1, 3]), np.array([1, 1]))
    assert merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "ab") == (4, 10)
    assert files_of(tmp_path / "ab") == files_of(tmp_path / "one")

    with IndexedDatasetWriter(tmp_path / "wide", np.int32) as writer:
        writer.add_document([70_000])
    with pytest.raises(UserError, match="different token types"):
        merge_datasets([tmp_path / "a", tmp_path / "wide"], tmp_path / "bad")
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".bad*"))


def test_a_source_without_documents_is_refused_by_the_merge_naming_every_shard(sp_model, tmp_path, capsys):
    prefixes, summaries = [], []
    for index, text in enumerate(['{"text": ""}\n', '{"text": ""}\n{"text": 3}\n']):
        (tmp_path / f"{index}.jsonl").write_text(text)
        prefixes.append(str(tmp_path / f"s{index}"))
        summaries.append(str(tmp_path / f"s{index}.json"))
        assert preprocess_main(["--input", str(tmp_path / f"{index}.jsonl"), "--input-name", f"https://x.org/{index}",
                                "--output-prefix", prefixes[-1], "--tokenizer-type", TOKENIZER, "--tokenizer-model",
                                sp_model, "--append-eod", "--on-bad-line", "skip", "--allow-empty", "--summary",
                                summaries[-1], "--no-progress"]) == 0
    assert merge_main(["--input", *prefixes, "--summaries", *summaries, "--output-prefix", str(tmp_path / "m")]) == 2
    said = capsys.readouterr().err
    assert ("https://x.org/0, https://x.org/1: no documents to tokenize (3 lines: 2 with empty text, "
            "1 bad lines skipped)") in said
    assert not list(tmp_path.glob("m_*"))


def test_a_bad_line_names_the_url_and_the_shards_own_line(sp_model, tmp_path, lines):
    shard = tmp_path / "00003.jsonl.zst"
    shard.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines[:4] + [b"{oops"] + lines[4:9]) + b"\n"))
    url = "https://data.example.org/pile/03.jsonl.zst"
    with pytest.raises(UserError, match=rf"^{url}:5 \({shard}\): invalid JSON"):
        preprocess([str(shard)], str(tmp_path / "out"), TOKENIZER, sp_model, input_names=[url], progress=False)


def test_shards_of_each_kind_of_source_and_their_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("b.jsonl.zst", "a.jsonl.gz"):
        (tmp_path / "data" / name).write_bytes(b"")
    digest = "ab" * 32
    config = {"run": "r", "tokenize": {"json_keys": ["text"]}, "corpus": {"sources": [
        {"name": "web", "urls": ["https://x.org/00.jsonl.zst", "http://x.org/01.json.gz", "https://x.org/02"],
         "sha256": [digest, digest, digest]},
        {"name": "mine", "urls": ["data/*.jsonl.*", f"file://{tmp_path}/data/a.jsonl.gz"]},
        {"name": "pydoc", "builtin": "python-docstrings"},
    ]}}
    paths = RunPaths(config)
    web = paths.shards("web")
    assert [(s.id, s.is_download, s.sha256, s.compression) for s in web] == [
        ("00000", True, digest, ".zst"), ("00001", True, digest, ".gz"), ("00002", True, digest, "")]
    assert paths.corpus_files("web") == ["results/r/corpus/web/00000.jsonl.zst", "results/r/corpus/web/00001.jsonl.gz",
                                         "results/r/corpus/web/00002.jsonl"]
    assert [s.location for s in paths.shards("mine")] == ["data/a.jsonl.gz", "data/b.jsonl.zst",
                                                          f"file://{tmp_path}/data/a.jsonl.gz"]
    assert paths.corpus_files("mine") == ["data/a.jsonl.gz", "data/b.jsonl.zst", f"{tmp_path}/data/a.jsonl.gz"]
    assert paths.corpus_artifacts("mine") == []  # read where the user keeps them, never copied
    assert paths.corpus_files("pydoc") == paths.corpus_artifacts("pydoc") == ["results/r/corpus/pydoc.jsonl"]
    assert paths.shard_datasets("web", "00001") == ["results/r/tokenized/web/00001_text_document.bin",
                                                    "results/r/tokenized/web/00001_text_document.idx"]
    assert source_shards(config["corpus"]["sources"][2])[0].location == "builtin corpus python-docstrings"


def test_a_shard_is_downloaded_as_published_and_a_killed_transfer_resumes(tmp_path):
    data = zstandard.ZstdCompressor().compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(50_000)))
    half = len(data) // 2
    server = ShardServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        server.files["/s.jsonl.zst"] = data
        output = tmp_path / "corpus" / "00000.jsonl.zst"
        output.parent.mkdir()
        (output.parent / ".00000.jsonl.zst.part").write_bytes(data[:half])  # what a killed job left
        download_file(Source(f"{server.url}/s.jsonl.zst", hashlib.sha256(data).hexdigest()), output,
                      log=lambda _: None)
        assert output.read_bytes() == data and server.ranges == [f"bytes={half}-"]
        assert sorted(p.name for p in output.parent.iterdir()) == ["00000.jsonl.zst"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_key_missing_from_one_input_is_named_before_any_key_is_written(tmp_path, capsys):
    for prefix, keys in (("a", ("text", "title")), ("b", ("text",))):
        for key in keys:
            with IndexedDatasetWriter(tmp_path / f"{prefix}_{key}_document", np.uint16) as writer:
                writer.add_document([1, 2])
    assert merge_main(["--input", str(tmp_path / "a"), str(tmp_path / "b"), "--json-keys", "text", "title",
                       "--output-prefix", str(tmp_path / "out")]) == 2
    assert f"{tmp_path}/b_title_document.idx: indexed dataset file not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*out*"))


@pytest.mark.parametrize("content, message", [(None, "cannot read the summary JSON: No such file or directory"),
                                              ('{"inputs": [\n', "line 2: invalid summary JSON: Expecting value"),
                                              ("[]", "not the counts that `preprocess --summary` writes")])
def test_a_summary_that_cannot_be_read_is_named(tmp_path, capsys, content, message):
    with IndexedDatasetWriter(tmp_path / "a_text_document", np.uint16) as writer:
        writer.add_document([1, 2])
    if content is not None:
        (tmp_path / "a.json").write_text(content)
    assert merge_main(["--input", str(tmp_path / "a"), "--summaries", str(tmp_path / "a.json"),
                       "--output-prefix", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"kotomamba merge-datasets: error: {tmp_path}/a.json: {message}")


def test_an_output_prefix_below_a_file_is_named_before_the_merge(tmp_path, capsys):
    with IndexedDatasetWriter(tmp_path / "a_text_document", np.uint16) as writer:
        writer.add_document([1, 2])
    (tmp_path / "file").write_text("")
    assert merge_main(["--input", str(tmp_path / "a"), "--output-prefix", str(tmp_path / "file" / "x")]) == 2
    assert capsys.readouterr().err == (f"kotomamba merge-datasets: error: {tmp_path}/file/x_text_document.bin "
                                       f"(--output-prefix): cannot be written: {tmp_path}/file is a file, not a "
                                       "directory\n")
