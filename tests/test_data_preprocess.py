"""`kotomamba preprocess`: Megatron's MMIDIDX layout byte for byte, parallel determinism, bad input."""
from __future__ import annotations

import gzip
import json
import struct
import warnings

import numpy as np
import pytest

from kotomamba.data.corpus import write_corpus
from kotomamba.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from kotomamba.data.preprocess import main as preprocess_main
from kotomamba.data.preprocess import preprocess
from kotomamba.data.tokenizer import build_tokenizer
from kotomamba.data.train_tokenizer import train_tokenizer
from kotomamba.errors import UserError


def read_mmidx(prefix):
    """An independent reader of Megatron's MMIDIDX layout (from the layout description, not our code)."""
    with open(f"{prefix}.idx", "rb") as handle:
        raw = handle.read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1
    offset = 9 + 8 + 1 + 8 + 8
    sizes = struct.unpack_from(f"<{n_seq}i", raw, offset)
    offset += 4 * n_seq
    pointers = struct.unpack_from(f"<{n_seq}q", raw, offset)
    offset += 8 * n_seq
    doc_idx = struct.unpack_from(f"<{n_doc}q", raw, offset)
    assert offset + 8 * n_doc == len(raw)
    fmt, width = {8: ("H", 2), 4: ("i", 4)}[code]
    with open(f"{prefix}.bin", "rb") as handle:
        data = handle.read()
    docs = [list(struct.unpack_from(f"<{size}{fmt}", data, pointer)) for size, pointer in zip(sizes, pointers)]
    assert sum(sizes) * width == len(data)
    return code, docs, list(doc_idx)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_corpus(path, max_bytes=200_000)
    return path


@pytest.fixture(scope="module")
def sp_model(corpus, tmp_path_factory):
    return str(train_tokenizer([corpus], 700, "unigram", tmp_path_factory.mktemp("tok") / "tok"))


def _texts(path):
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8")]


def test_preprocess_writes_megatron_layout(corpus, sp_model, tmp_path):
    prefix = tmp_path / "out" / "corpus"
    rc = preprocess_main(["--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer-type",
                          "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--json-keys", "text",
                          "--append-eod", "--workers", "1", "--dataset-impl", "mmap"])
    assert rc == 0
    code, docs, doc_idx = read_mmidx(f"{prefix}_text_document")
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    expected = [tok.encode(t) + [tok.eod] for t in _texts(corpus)]
    assert code == 8  # uint16: vocabulary of 700 < 65,500
    assert docs == expected
    assert doc_idx == list(range(len(expected) + 1))
    ours = IndexedDataset(f"{prefix}_text_document")
    assert len(ours) == len(expected) and ours.num_tokens == sum(map(len, expected))
    assert ours.get(3, 2, 4).tolist() == expected[3][2:6]


def test_megatron_core_reads_our_output(corpus, sp_model, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    prefix = tmp_path / "c"
    preprocess([str(corpus)], str(prefix), "SentencePieceTokenizer", sp_model, append_eod=True, progress=False)
    theirs = indexed_dataset.IndexedDataset(f"{prefix}_text_document")
    _, docs, doc_idx = read_mmidx(f"{prefix}_text_document")
    assert len(theirs) == len(docs)
    assert [theirs[i].tolist() for i in range(len(docs))] == docs
    assert theirs.document_indices.tolist() == doc_idx


def test_int32_tokens_above_65500(tmp_path):
    prefix = tmp_path / "wide"
    with IndexedDatasetWriter(prefix, np.int32) as writer:
        writer.add_document([70000, 1, 2])
        writer.add_document([5])
    code, docs, doc_idx = read_mmidx(prefix)
    assert (code, docs, doc_idx) == (4, [[70000, 1, 2], [5]], [0, 1, 2])


def test_workers_and_compressed_inputs_give_identical_output(corpus, sp_model, tmp_path):
    gz = tmp_path / "copy.jsonl.gz"
    gz.write_bytes(gzip.compress(corpus.read_bytes()))
    common = dict(tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp_model, append_eod=True, progress=False)
    preprocess([str(corpus), str(corpus)], str(tmp_path / "one"), workers=1, **common)
    summary = preprocess([str(corpus), str(gz)], str(tmp_path / "two"), workers=2, **common)
    for ext in ("bin", "idx"):
        assert (tmp_path / f"one_text_document.{ext}").read_bytes() == (tmp_path / f"two_text_document.{ext}").read_bytes()
    assert summary.documents["text"] == 2 * len(_texts(corpus))


def test_several_json_keys_and_hf_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(["hello world", "good bye"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.save(str(tmp_path / "tokenizer.json"))
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "hello", "a": "world"}\n{"q": "good", "a": "bye"}\n')
    preprocess([str(data)], str(tmp_path / "p"), "HFTokenizer", str(tmp_path / "tokenizer.json"),
               json_keys=["q", "a"], append_eod=True, progress=False)
    tok = build_tokenizer("HFTokenizer", tmp_path / "tokenizer.json")
    for key, words in (("q", ["hello", "good"]), ("a", ["world", "bye"])):
        _, docs, _ = read_mmidx(tmp_path / f"p_{key}_document")
        assert docs == [tok.encode(w) + [tok.eod] for w in words]


BAD_LINES = [
    ("invalid_json", b'{"text": "unterminated'),
    ("missing_key", b'{"body": "no text key"}'),
    ("non_string", b'{"text": ["a", "list"]}'),
    ("invalid_utf8", b'{"text": "caf\xe9"}'),
    ("invalid_utf8", b'{"text": "lone \\ud800 surrogate"}'),
    ("invalid_json", b'["an", "array"]'),
]


@pytest.mark.parametrize("kind,line", BAD_LINES)
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_line_is_an_error_naming_file_and_line(sp_model, tmp_path, capsys, kind, line, workers):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"text": "good line"}\n{"text": "another"}\n' + line + b'\n{"text": "after"}\n')
    prefix = tmp_path / "out" / "bad"
    rc = preprocess_main(["--input", str(data), "--output-prefix", str(prefix), "--tokenizer-type",
                          "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--workers", str(workers)])
    assert rc == 2
    assert f"{data}:3:" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []  # no .bin/.idx, not even temporary ones


def test_skip_mode_indexes_good_lines_and_counts_each_kind(sp_model, tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    good = ["first good", "second good", "third good"]
    lines = [json.dumps({"text": good[0]}).encode()] + [line for _, line in BAD_LINES]
    lines += [b'{"text": ""}', json.dumps({"text": good[1]}).encode(), b"", json.dumps({"text": good[2]}).encode()]
    data.write_bytes(b"\n".join(lines) + b"\n")
    prefix = tmp_path / "skip"
    rc = preprocess_main(["--input", str(data), "--output-prefix", str(prefix), "--tokenizer-type",
                          "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--on-bad-line", "skip",
                          "--append-eod", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "invalid_utf8 2, invalid_json 3, missing_key 1, non_string 1" in out  # the blank line is invalid JSON
    assert "skipped empty documents: 1" in out
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert read_mmidx(f"{prefix}_text_document")[1] == [tok.encode(t) + [tok.eod] for t in good]


def test_missing_input_is_a_user_error(sp_model, tmp_path):
    with pytest.raises(UserError, match="nothere.jsonl"):
        preprocess([str(tmp_path / "nothere.jsonl")], str(tmp_path / "x"), "SentencePieceTokenizer", sp_model)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_line_numbers_across_chunks_and_a_last_line_without_newline(sp_model, tmp_path, monkeypatch, newline):
    import kotomamba.data.preprocess as module

    monkeypatch.setattr(module, "CHUNK_BYTES", 100)
    lines = [json.dumps({"text": f"document number {i}"}).encode() for i in range(60)]
    data = tmp_path / "many.jsonl"
    data.write_bytes(newline.join(lines))  # no newline after the last line
    summary = preprocess([str(data)], str(tmp_path / "ok"), "SentencePieceTokenizer", sp_model, progress=False)
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert summary.lines == 60
    assert read_mmidx(tmp_path / "ok_text_document")[1] == [tok.encode(f"document number {i}") for i in range(60)]
    lines[45] = b'{"text": 45}'
    data.write_bytes(newline.join(lines))
    with pytest.raises(UserError, match=f"{data}:46: key 'text' is int"):
        preprocess([str(data)], str(tmp_path / "bad"), "SentencePieceTokenizer", sp_model, progress=False)
