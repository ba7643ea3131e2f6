"""`kotomamba preprocess`: Megatron's MMIDIDX layout byte for byte, parallel determinism, bad input."""
from __future__ import annotations

import gzip
import json
import signal
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from kotomamba.data.corpus import write_corpus
from kotomamba.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from kotomamba.data.line_origins import write_origins
from kotomamba.data.preprocess import main as preprocess_main
from kotomamba.data.preprocess import preprocess
from kotomamba.data.sentences import split_sentences
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
    preprocess([str(corpus), str(corpus)], str(tmp_path / "one"), workers=0, **common)
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


def use_json_parser(monkeypatch, parser):
    """Parse in this process with orjson (skipped where it is not installed) or the standard library."""
    import kotomamba.data.preprocess as module

    if parser == "orjson":
        monkeypatch.setattr(module, "_fast_loads", pytest.importorskip("orjson").loads)
    else:
        monkeypatch.setattr(module, "_fast_loads", None)


# Workers 0 parse in this process with the parser asked for; workers 2 with whatever is installed.
WORKERS_AND_PARSERS = [(0, "orjson"), (0, "stdlib"), (2, "installed")]


@pytest.mark.parametrize("kind,line", BAD_LINES)
@pytest.mark.parametrize("workers,parser", WORKERS_AND_PARSERS)
def test_bad_line_is_an_error_naming_file_and_line(sp_model, tmp_path, capsys, monkeypatch, kind, line, workers,
                                                   parser):
    if parser != "installed":
        use_json_parser(monkeypatch, parser)
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"text": "good line"}\n{"text": "another"}\n' + line + b'\n{"text": "after"}\n')
    prefix = tmp_path / "out" / "bad"
    rc = preprocess_main(["--input", str(data), "--output-prefix", str(prefix), "--tokenizer-type",
                          "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--workers", str(workers)])
    assert rc == 2
    assert f"{data}:3:" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []  # no .bin/.idx, not even temporary ones


@pytest.mark.parametrize("parser", ["orjson", "stdlib"])
def test_skip_mode_indexes_good_lines_and_counts_each_kind(sp_model, tmp_path, capsys, monkeypatch, parser):
    use_json_parser(monkeypatch, parser)
    data = tmp_path / "mixed.jsonl"
    good = ["first good", "second good", "third good"]
    lines = [json.dumps({"text": good[0]}).encode()] + [line for _, line in BAD_LINES]
    lines += [b'{"text": ""}', json.dumps({"text": good[1]}).encode(), b"", json.dumps({"text": good[2]}).encode()]
    data.write_bytes(b"\n".join(lines) + b"\n")
    prefix = tmp_path / "skip"
    rc = preprocess_main(["--input", str(data), "--output-prefix", str(prefix), "--tokenizer-type",
                          "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--on-bad-line", "skip",
                          "--append-eod", "--no-progress", "--workers", "0"])
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


@pytest.mark.parametrize("split", [False, True])
def test_a_document_empty_under_one_key_is_dropped_from_every_key(sp_model, tmp_path, split):
    rows = [("hello there", "world"), ("good", ""), ("", "bye"), ("last one", "answer")]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in rows))
    summary = preprocess([str(data)], str(tmp_path / "qa"), "SentencePieceTokenizer", sp_model, json_keys=["q", "a"],
                         append_eod=True, workers=0, progress=False, split_sentences=split)
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    level = "sentence" if split else "document"
    assert summary.empty == 2 and summary.documents == {"q": 2, "a": 2}
    for column, key in enumerate(("q", "a")):
        _, docs, doc_idx = read_mmidx(tmp_path / f"qa_{key}_{level}")
        assert docs == [tok.encode(rows[i][column]) + [tok.eod] for i in (0, 3)]
        assert doc_idx == [0, 1, 2]


def test_split_sentences_writes_megatron_sentence_files(sp_model, tmp_path):
    texts = ["First sentence. Second one! A third?", "Only one here.", "日本語の文。二つ目の文。"]
    data = tmp_path / "s.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    prefix = tmp_path / "out" / "s"
    rc = preprocess_main(["--input", str(data), "--output-prefix", str(prefix), "--tokenizer-type",
                          "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--split-sentences",
                          "--append-eod", "--workers", "2", "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s_text_sentence.bin", "s_text_sentence.idx"]
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    expected, starts = [], [0]
    for text in texts:
        sentences = [tok.encode(s) for s in split_sentences(text)]
        sentences[-1].append(tok.eod)  # Megatron: the eod ends the document's last sentence
        expected += sentences
        starts.append(len(expected))
    _, sequences, doc_idx = read_mmidx(prefix.with_name("s_text_sentence"))
    assert sequences == expected and doc_idx == starts == [0, 3, 4, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    theirs = indexed_dataset.IndexedDataset(str(prefix.with_name("s_text_sentence")))
    assert theirs.document_indices.tolist() == starts
    assert [theirs[i].tolist() for i in range(len(expected))] == expected


def test_keep_newlines_keeps_the_whitespace_after_each_sentence(sp_model, tmp_path):
    text = "A first line.\nA second line.\n\nNext paragraph."
    data = tmp_path / "n.jsonl"
    data.write_text(json.dumps({"text": text}) + "\n")
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    for flag, sentences in ((True, ["A first line.\n", "A second line.\n\n", "Next paragraph."]),
                            (False, ["A first line.", "A second line.", "Next paragraph."])):
        preprocess([str(data)], str(tmp_path / f"n{flag}"), "SentencePieceTokenizer", sp_model, workers=0,
                   progress=False, split_sentences=True, keep_newlines=flag)
        assert read_mmidx(tmp_path / f"n{flag}_text_sentence")[1] == [tok.encode(s) for s in sentences]
    assert preprocess_main(["--input", str(data), "--output-prefix", str(tmp_path / "x"), "--tokenizer-type",
                            "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--keep-newlines"]) == 2


def test_partitions_keep_sequential_samples_and_log_interval(corpus, sp_model, tmp_path, capsys, monkeypatch):
    import kotomamba.data.preprocess as module

    monkeypatch.setattr(module, "CHUNK_BYTES", 20_000)  # several chunks, so several progress lines
    common = ["--input", str(corpus), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model,
              "--append-eod", "--no-progress"]
    assert preprocess_main(common + ["--output-prefix", str(tmp_path / "plain"), "--workers", "0"]) == 0
    capsys.readouterr()
    assert preprocess_main(common + ["--output-prefix", str(tmp_path / "megatron"), "--workers", "2",
                                     "--partitions", "2", "--keep-sequential-samples", "--log-interval", "100"]) == 0
    logged = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Processed ")]
    counts = [int(line.split()[1]) for line in logged]
    assert len(counts) >= 3 and counts == sorted(counts) and counts[-1] == len(_texts(corpus))
    assert all(b // 100 > a // 100 for a, b in zip(counts, counts[1:]))  # at most one line per 100 documents
    for ext in ("bin", "idx"):
        assert (tmp_path / f"plain_text_document.{ext}").read_bytes() == \
            (tmp_path / f"megatron_text_document.{ext}").read_bytes()
    assert preprocess_main(common + ["--output-prefix", str(tmp_path / "bad"), "--partitions", "0"]) == 2


def _gpt2_reference_encode(text, vocab, merges):
    """GPT-2's byte-level BPE written out from its published algorithm (openai/gpt-2 encoder.py):
    regex split, bytes mapped to printable characters, lowest-ranked merge first."""
    import regex

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    byte_to_char, extra = {}, 0
    for b in range(256):
        if b in printable:
            byte_to_char[b] = chr(b)
        else:
            byte_to_char[b] = chr(256 + extra)
            extra += 1
    ranks = {pair: i for i, pair in enumerate(merges)}
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    ids = []
    for piece in regex.findall(pattern, text):
        word = [byte_to_char[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            rank, i = min(pairs)
            if rank == len(ranks):
                break
            word[i : i + 2] = [word[i] + word[i + 1]]
        ids += [vocab[token] for token in word]
    return ids


def test_gpt2_bpe_from_vocab_and_merge_files(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    corpus = ["Hello world, hello GPT-2!", "It's 2024 and we've 3 cats.", "naïve café  spaces\n\tand tabs",
              "日本語も少し。"] * 20
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab_file, merge_file = trained.model.save(str(tmp_path))  # vocab.json, merges.txt as GPT-2 ships them
    vocab = json.loads(open(vocab_file, encoding="utf-8").read())
    merges = [tuple(line.split()) for line in open(merge_file, encoding="utf-8").read().splitlines()
              if line and not line.startswith("#version")]
    texts = ["Hello world, hello GPT-2!", "It's   2024\n\n  and we'll see <|endoftext|> café 日本", ""]
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file)
    assert tok.eod == vocab["<|endoftext|>"] and tok.vocab_size == len(vocab)
    for text in texts:
        assert tok.encode(text) == _gpt2_reference_encode(text, vocab, merges)
        assert tok.decode(tok.encode(text)) == text
    data = tmp_path / "g.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:2]))
    common = ["--input", str(data), "--tokenizer-type", "GPT2BPETokenizer", "--append-eod", "--workers", "2"]
    assert preprocess_main(common + ["--output-prefix", str(tmp_path / "g"), "--vocab-file", vocab_file,
                                     "--merge-file", merge_file]) == 0
    assert read_mmidx(tmp_path / "g_text_document")[1] == [_gpt2_reference_encode(t, vocab, merges) + [tok.eod]
                                                           for t in texts[:2]]
    capsys.readouterr()
    assert preprocess_main(common + ["--output-prefix", str(tmp_path / "h"), "--vocab-file", vocab_file]) == 2
    assert "needs --vocab-file and --merge-file" in capsys.readouterr().err


TRICKY_LINES = [
    b'\xef\xbb\xbf{"text": "after a byte order mark"}',
    b'{"text": "first", "text": "duplicate key, the last wins"}',
    b'{"text": "a NaN elsewhere", "n": NaN}',
    b'{"text": "a huge number elsewhere", "n": 123456789012345678901234567890}',
    b'{"text": "trailing vertical tab"}\x0b',
    b'  {"text": "leading spaces"}  ',
    b'{"text": "escapes \\u00e9 \\ud83d\\ude00 \\n \\" done"}',
    b'{"text": "raw tab\tinside"}',
    b'{"text": "nested", "meta": {"a": [1, 2, {"b": null}]}}',
]


@pytest.mark.parametrize("line", TRICKY_LINES)
def test_orjson_and_stdlib_give_the_same_output(sp_model, tmp_path, monkeypatch, line):
    data = tmp_path / "tricky.jsonl"
    data.write_bytes(b'{"text": "a good line"}\n' + line + b'\n{"text": "another good line"}\n')
    outcomes = []
    for parser in ("orjson", "stdlib"):
        use_json_parser(monkeypatch, parser)
        summary = preprocess([str(data)], str(tmp_path / parser), "SentencePieceTokenizer", sp_model, workers=0,
                             on_bad_line="skip", progress=False)
        outcomes.append((summary.skipped, summary.documents, read_mmidx(tmp_path / f"{parser}_text_document")))
    assert outcomes[0] == outcomes[1]


def test_a_bad_line_is_named_in_the_users_file(corpus, sp_model, tmp_path):
    """The pipeline's corpus is a concatenation: the error names the source file and its own line."""
    lines = corpus.read_text(encoding="utf-8").splitlines()[:5]
    joined = tmp_path / "joined.jsonl"
    joined.write_text("\n".join(lines[:3] + lines[3:] + ['{"text": 3}']) + "\n", encoding="utf-8")
    write_origins(joined, [("data/a.jsonl", 3), ("data/b.jsonl", 3)])
    with pytest.raises(UserError, match=r"^data/b.jsonl:3 \(line 6 of .*joined.jsonl\): "):
        preprocess([str(joined)], str(tmp_path / "out"), "SentencePieceTokenizer", sp_model, progress=False)


def test_a_bad_line_of_a_corpus_replaced_since_its_origins_is_named_in_the_corpus(corpus, sp_model, tmp_path):
    """The user wrote their own file over a concatenation: its record describes the file that was there before."""
    joined = tmp_path / "joined.jsonl"
    joined.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:6]), encoding="utf-8")
    write_origins(joined, [("data/a.jsonl", 3), ("data/b.jsonl", 3)])
    joined.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:4]) + '{"text": 3}\n',
                      encoding="utf-8")
    with pytest.raises(UserError, match=r"^\S*joined.jsonl:5: key 'text' is int"):
        preprocess([str(joined)], str(tmp_path / "out"), "SentencePieceTokenizer", sp_model, progress=False)


def test_an_empty_corpus_is_an_error_that_leaves_nothing(sp_model, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": ""}\n', encoding="utf-8")
    write_origins(empty, [("data/empty.jsonl", 2)])
    with pytest.raises(UserError, match=r"^data/empty.jsonl: no documents to tokenize \(2 lines: 2 with empty text"):
        preprocess([str(empty)], str(tmp_path / "out"), "SentencePieceTokenizer", sp_model, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "empty.jsonl.origins.json"]


def test_a_byte_order_mark_is_no_part_of_the_first_line(sp_model, tmp_path):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    summary = preprocess([str(data)], str(tmp_path / "bom"), "SentencePieceTokenizer", sp_model, progress=False)
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert read_mmidx(tmp_path / "bom_text_document")[1] == [tok.encode("first"), tok.encode("second")]
    assert summary.skipped["invalid_json"] == 0


BOM_CASES = [  # (the file's data, the texts read, the bad lines skipped)
    (b"\xef\xbb\xbf", [], {}),  # a mark and nothing else: no line at all
    (b"\xef\xbb", [], {"invalid_utf8": 1}),  # part of a mark is part of line 1
    (b"7", [], {"invalid_json": 1}),
    (b'\xef\xbb\xbf{"text": "a"}', ["a"], {}),
    (b'\xef\xbb\xbf\xef\xbb\xbf{"text": "a"}\n', [], {"invalid_json": 1}),  # one mark is taken, not two
    (b'7\n8\n{"text": "a"}\n9\n{"text": "b"}\n', ["a", "b"], {"invalid_json": 3}),  # lines in the first bytes
]


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("data, texts, skipped", BOM_CASES)
def test_tokenization_and_tokenizer_training_read_a_byte_order_mark_alike(sp_model, tmp_path, suffix, data, texts,
                                                                          skipped):
    """What both take as a file's lines at its start (kotomamba.data.jsonl_lines.read_past_bom), also in files
    shorter than a mark, and in compressed ones."""
    from kotomamba.data.train_tokenizer import Sentences

    path = tmp_path / f"start.jsonl{suffix}"
    path.write_bytes(gzip.compress(data) if suffix else data)
    summary = preprocess([str(path)], str(tmp_path / "out"), "SentencePieceTokenizer", sp_model, workers=0,
                         on_bad_line="skip", progress=False, allow_empty=True)
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert [tok.decode(d) for d in read_mmidx(tmp_path / "out_text_document")[1]] == texts
    sentences = Sentences([path], on_bad_line="skip")
    assert list(sentences) == texts
    for counts in (summary.skipped, sentences.skipped):
        assert {kind: n for kind, n in counts.items() if n} == skipped


def test_a_json_message_that_ends_in_at_says_it_once(sp_model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"text": "unterminated\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: invalid JSON \(Unterminated string starting at column 10\)"):
        preprocess([str(data)], str(tmp_path / "out"), "SentencePieceTokenizer", sp_model, progress=False)


@pytest.mark.parametrize("flag", ["--output-prefix", "--summary"])
def test_an_output_that_cannot_be_written_is_named_before_anything_is(corpus, sp_model, tmp_path, capsys, flag):
    paths = {"--output-prefix": str(tmp_path / "out" / "s"), "--summary": str(tmp_path / "s.json"),
             flag: f"{corpus}/sub/x"}
    assert preprocess_main(["--input", str(corpus), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                            sp_model, "--no-progress", *[item for pair in paths.items() for item in pair]]) == 2
    shown = f"{corpus}/sub/x_text_document.bin" if flag == "--output-prefix" else f"{corpus}/sub/x"
    assert capsys.readouterr().err == (f"kotomamba preprocess: error: {shown} ({flag}): cannot be written: {corpus} "
                                       "is a file, not a directory\n")
    assert not (tmp_path / "out").exists()


def test_sigterm_removes_the_temporary_files_as_ctrl_c_does(corpus, sp_model, tmp_path):
    """A scheduler's or Snakemake's stop: the process ends by SIGTERM, in one line, leaving nothing at the prefix."""
    big = tmp_path / "big.jsonl"
    big.write_bytes(corpus.read_bytes() * 40)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "kotomamba", "preprocess", "--input", str(big), "--output-prefix",
                                str(out / "x"), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                                sp_model, "--workers", "1", "--no-progress"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(path.stat().st_size for path in out.glob(".x_text_document.bin.*.tmp")):
            assert process.poll() is None and time.monotonic() < deadline, "never wrote"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "kotomamba preprocess: terminated" and "Traceback" not in stderr, stderr
    assert list(out.iterdir()) == []
