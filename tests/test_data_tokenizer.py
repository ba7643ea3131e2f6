"""Tokenizers: SentencePiece training with byte fallback, HF tokenizers, Megatron type names."""
from __future__ import annotations

import json
import os
import re

import pytest

from kotomamba.data.corpus import write_corpus
from kotomamba.data.tokenizer import HuggingFaceTokenizer, SentencePieceTokenizer, build_tokenizer
from kotomamba.data.train_tokenizer import main as train_tokenizer_main
from kotomamba.errors import UserError

JAPANESE = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
SAMPLES = ["def f(x):\n    return x  # 42", "Return the   canonical string.", JAPANESE, "emoji 🐍 and tab\tend"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_corpus(path, max_bytes=300_000)
    return path


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_train_tokenizer_round_trips_any_utf8(corpus, tmp_path, model_type):
    out = tmp_path / "tok"
    rc = train_tokenizer_main(["--input", str(corpus), "--vocab-size", "600", "--model-type", model_type,
                               "--output", str(out)])
    assert rc == 0
    tok = build_tokenizer("SentencePieceTokenizer", out / "tokenizer.model")
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == 600
    assert (tok.eod, tok.bos, tok.pad) == (2, 1, 3)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.eod not in ids
        assert tok.decode(ids) == text
    # Japanese never appeared in the training text: it must go through byte pieces.
    assert len(tok.encode(JAPANESE)) >= len(JAPANESE.encode("utf-8")) // 2
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]


def test_train_tokenizer_is_repeatable(corpus, tmp_path):
    for name in ("a", "b"):
        assert train_tokenizer_main(["--input", str(corpus), "--vocab-size", "400", "--output", str(tmp_path / name)]) == 0
    import sentencepiece

    # The files differ only in the temporary model_prefix SentencePiece records; the vocabularies must not.
    vocab = [[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.vocab_size())]
             for sp in (sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / n / "tokenizer.model")) for n in "ab")]
    assert vocab[0] == vocab[1]


def test_train_tokenizer_reports_bad_jsonl(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    assert train_tokenizer_main(["--input", str(bad), "--vocab-size", "300", "--output", str(tmp_path / "t")]) == 2
    # The line's own error, as the reader raised it: not SentencePiece's wrapping of it (its status code
    # and the Python frame it came from).
    assert capsys.readouterr().err == (f"kotomamba train-tokenizer: error: {bad}:2: key 'text' is int, not a string "
                                       "(--on-bad-line skip leaves such lines out)\n")
    assert not (tmp_path / "t").exists()


def _train_hf_bpe(texts):
    """A small real byte-level BPE tokenizer trained by the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="module")
def hf_tokenizer_json(corpus, tmp_path_factory):
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    _train_hf_bpe(texts).save(str(path))
    return path


@pytest.mark.parametrize("type_name", ["HuggingFaceTokenizer", "HFTokenizer", "PretrainedFromHF"])
def test_huggingface_tokenizer_file(hf_tokenizer_json, type_name):
    tok = build_tokenizer(type_name, hf_tokenizer_json)
    assert isinstance(tok, HuggingFaceTokenizer)
    assert tok.vocab_size == 400
    assert tok.eod == 0  # <|endoftext|> found without any config beside the file
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text


def test_huggingface_tokenizer_directory_reads_special_tokens(hf_tokenizer_json, tmp_path):
    directory = tmp_path / "hfdir"
    directory.mkdir()
    (directory / "tokenizer.json").write_bytes(hf_tokenizer_json.read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<pad>"}))
    tok = build_tokenizer("HuggingFaceTokenizer", directory)
    assert (tok.eod, tok.pad) == (0, 1)
    assert tok.decode(tok.encode(JAPANESE)) == JAPANESE


@pytest.mark.parametrize("config, named", [('{"eos_token": "<|endoftext|>",\n', "line 2: invalid Hugging Face tokenizer_config.json"),
                                           ('["<|endoftext|>"]', "expected a JSON object, got list")])
def test_a_broken_tokenizer_config_beside_a_tokenizer_json_is_named(hf_tokenizer_json, tmp_path, config, named):
    # It was json.load'ed bare: a JSONDecodeError / AttributeError traceback that named no file.
    directory = tmp_path / "hfdir"
    directory.mkdir()
    (directory / "tokenizer.json").write_bytes(hf_tokenizer_json.read_bytes())
    (directory / "tokenizer_config.json").write_text(config)
    with pytest.raises(UserError) as caught:
        build_tokenizer("HuggingFaceTokenizer", directory / "tokenizer.json")
    assert str(caught.value).startswith(f"{directory / 'tokenizer_config.json'}: {named}"), caught.value


@pytest.mark.parametrize("broken", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
def test_a_broken_file_of_a_tokenizer_directory_is_named_with_its_line(hf_tokenizer_json, tmp_path, broken):
    # Loaded through transformers, it was "hfdir: cannot load ...: Expecting value: line 2 column 1", naming
    # the directory and not which of its files.
    directory = tmp_path / "hfdir"
    directory.mkdir()
    (directory / "tokenizer.json").write_bytes(hf_tokenizer_json.read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    (directory / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    (directory / broken).write_text('{"eos_token":\n')
    with pytest.raises(UserError) as caught:
        build_tokenizer("HuggingFaceTokenizer", directory)
    assert str(caught.value).startswith(f"{directory / broken}: line 2: invalid Hugging Face {broken}"), caught.value


@pytest.mark.parametrize("config", ['{"eos_token": "</s>"}', '["</s>"]'])
def test_a_directory_without_a_tokenizer_is_one_line_naming_it(tmp_path, config):
    # transformers' own message spans five lines; a list config was an AttributeError traceback.
    directory = tmp_path / "hfdir"
    directory.mkdir()
    (directory / "tokenizer_config.json").write_text(config)
    with pytest.raises(UserError) as caught:
        build_tokenizer("HuggingFaceTokenizer", directory)
    assert str(caught.value).startswith(f"{directory}: cannot load a Hugging Face tokenizer") and "\n" not in str(
        caught.value)


def test_gpt_sentencepiece_alias_and_unknown_type(corpus, tmp_path):
    out = tmp_path / "tok"
    train_tokenizer_main(["--input", str(corpus), "--vocab-size", "600", "--output", str(out)])
    assert isinstance(build_tokenizer("GPTSentencePieceTokenizer", out / "tokenizer.model"), SentencePieceTokenizer)
    with pytest.raises(UserError, match="GPT2BPETokenizer"):
        build_tokenizer("GPT2BPETokenizer", out / "tokenizer.model")
    with pytest.raises(UserError, match="not found"):
        build_tokenizer("SentencePieceTokenizer", tmp_path / "missing.model")
    # The directory train-tokenizer wrote: named as one, with the model file it holds (it was "file not found").
    with pytest.raises(UserError, match=re.escape(f"{out}: a directory (it holds tokenizer.model); --tokenizer-model "
                                                  "takes the SentencePiece .model file")):
        build_tokenizer("SentencePieceTokenizer", out)
    with pytest.raises(UserError, match="not supported"):
        build_tokenizer("BertWordPieceLowerCase", out / "tokenizer.model")


@pytest.mark.parametrize("append_eod", [False, True])
def test_encode_arrays_equals_encode_batch(corpus, hf_tokenizer_json, tmp_path, append_eod):
    out = tmp_path / "tok"
    train_tokenizer_main(["--input", str(corpus), "--vocab-size", "600", "--output", str(out)])
    texts = SAMPLES + ["", " "]
    for tok in (build_tokenizer("SentencePieceTokenizer", out / "tokenizer.model"),
                build_tokenizer("HFTokenizer", hf_tokenizer_json)):
        arrays = tok.encode_arrays(texts, append_eod)
        assert [a.tolist() for a in arrays] == tok.encode_batch(texts, append_eod)
        assert all(a.ndim == 1 and a.dtype.kind == "i" and a.dtype.itemsize >= 4 for a in arrays)


# One bad line of each kind that tokenization names (kotomamba.data.jsonl_lines), as raw bytes.
BAD_LINES = {
    "invalid_json": b'{"text": "cut short',
    "not_an_object": b'["text"]',
    "missing_key": b'{"body": "no text"}',
    "non_string": b'{"text": 3}',
    "invalid_utf8": b'{"text": "caf\xe9"}',
    "surrogate": b'{"text": "half a pair \\ud83d"}',
}


def _with_bad_lines(corpus, path, bad: list[bytes]):
    """``corpus``'s first 200 lines with ``bad`` put after line 100."""
    lines = corpus.read_bytes().splitlines()[:200]
    path.write_bytes(b"\n".join(lines[:100] + bad + lines[100:]) + b"\n")
    return path


@pytest.mark.parametrize("kind", BAD_LINES)
def test_train_tokenizer_names_a_bad_line_as_preprocess_does(corpus, tmp_path, capsys, kind):
    from kotomamba.data.preprocess import main as preprocess_main

    tokenizer = tmp_path / "tok"
    assert train_tokenizer_main(["--input", str(corpus), "--vocab-size", "600", "--output", str(tokenizer)]) == 0
    bad = _with_bad_lines(corpus, tmp_path / "bad.jsonl", [BAD_LINES[kind]])
    capsys.readouterr()
    assert train_tokenizer_main(["--input", str(bad), "--vocab-size", "600", "--output", str(tmp_path / "t")]) == 2
    trainer_error = capsys.readouterr().err
    assert preprocess_main(["--input", str(bad), "--output-prefix", str(tmp_path / "p"), "--workers", "0",
                            "--tokenizer-type", "SentencePieceTokenizer", "--no-progress",
                            "--tokenizer-model", str(tokenizer / "tokenizer.model")]) == 2
    preprocess_error = capsys.readouterr().err
    assert trainer_error.startswith(f"kotomamba train-tokenizer: error: {bad}:101: ")
    assert trainer_error.split(": error: ")[1] == preprocess_error.split(": error: ")[1]
    assert not (tmp_path / "t").exists()


def test_train_tokenizer_skips_the_bad_lines_that_preprocess_skips(corpus, tmp_path, capsys):
    from kotomamba.data.preprocess import main as preprocess_main

    clean = _with_bad_lines(corpus, tmp_path / "clean.jsonl", [])
    bad = _with_bad_lines(corpus, tmp_path / "bad.jsonl", list(BAD_LINES.values()))
    assert train_tokenizer_main(["--input", str(clean), "--vocab-size", "600", "--output", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert train_tokenizer_main(["--input", str(bad), "--vocab-size", "600", "--output", str(tmp_path / "b"),
                                 "--on-bad-line", "skip"]) == 0
    skipped = "skipped bad lines: invalid_utf8 2, invalid_json 2, missing_key 1, non_string 1"
    assert skipped in capsys.readouterr().err
    # Left out, not read as text: the same model as without them.
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (tmp_path / "b" / "tokenizer.model").read_bytes()
    assert preprocess_main(["--input", str(bad), "--output-prefix", str(tmp_path / "p"), "--workers", "0",
                            "--tokenizer-type", "SentencePieceTokenizer", "--no-progress", "--on-bad-line", "skip",
                            "--tokenizer-model", str(tmp_path / "a" / "tokenizer.model")]) == 0
    assert skipped in capsys.readouterr().out


def test_train_tokenizer_reads_every_key_that_is_tokenized(corpus, tmp_path):
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()[:200]]
    pairs = [{"title": texts[i], "body": texts[i + 1]} for i in range(0, len(texts) - 1, 2)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    # The same sentences in the same order, as plain text: one per line.
    sentences = [line for pair in pairs for key in ("title", "body") for line in pair[key].splitlines() if line.strip()]
    (tmp_path / "pairs.txt").write_text("".join(line + "\n" for line in sentences))
    assert train_tokenizer_main(["--input", str(tmp_path / "pairs.jsonl"), "--json-keys", "title", "body",
                                 "--vocab-size", "600", "--output", str(tmp_path / "a")]) == 0
    assert train_tokenizer_main(["--input", str(tmp_path / "pairs.txt"),
                                 "--vocab-size", "600", "--output", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (tmp_path / "b" / "tokenizer.model").read_bytes()


def test_a_vocabulary_the_text_cannot_fill_or_hold_says_which_size_it_may_be(tmp_path, capsys):
    (tmp_path / "small.jsonl").write_text('{"text": "the cat sat on the mat"}\n' * 20)
    expected = {
        5000: r"--vocab-size 5000 is more pieces than SentencePiece can make of this text \(at most \d+\): ask for "
              r"fewer \(the pipeline's tokenizer.vocab_size\) or train on more text",
        262: r"--vocab-size 262 is fewer pieces than the \d+ that this text's characters and the special tokens need "
             r"\(--character-coverage 0.9995\): ask for more \(the pipeline's tokenizer.vocab_size\)",
    }
    for size, message in expected.items():
        assert train_tokenizer_main(["--input", str(tmp_path / "small.jsonl"), "--vocab-size", str(size),
                                     "--output", str(tmp_path / "t")]) == 2
        error = capsys.readouterr().err
        assert re.fullmatch(f"kotomamba train-tokenizer: error: {message}\n", error), error
        assert not (tmp_path / "t").exists()


def test_a_line_without_a_key_names_the_keys_it_has():
    from kotomamba.data.jsonl_lines import BadLine, line_texts

    assert line_texts(b'{"body": "x", "id": 3}', ["text"]) == \
        BadLine("missing_key", "missing key 'text' (the line's keys: 'body', 'id')")
    many = json.dumps({f"k{i}": i for i in range(7)}).encode()
    assert line_texts(many, ["text"]).message == \
        "missing key 'text' (the line's keys: 'k0', 'k1', 'k2', 'k3', 'k4', ...)"
    assert line_texts(b"{}", ["text"]).message == "missing key 'text' (the line's keys: none)"
    assert line_texts(b'{"text": "a", "title": "b"}', ["title", "text"]) == ["b", "a"]


@pytest.mark.parametrize("flag, value, message", [
    ("--vocab-size", "0", "--vocab-size 0 leaves no room for the text's pieces: byte fallback's 256 byte pieces and "
                          "the 4 special tokens take 260 ids"),
    ("--character-coverage", "2", "--character-coverage must be from 0.98 to 1 (the share of the text's characters "
                                  "that get a piece of their own), not 2.0"),
    ("--input-sentence-size", "-1", "--input-sentence-size must be 0 (every sentence) or more than 100, not -1"),
])
def test_settings_sentencepiece_refuses_are_named_before_the_text_is_read(tmp_path, capsys, monkeypatch, flag, value,
                                                                          message):
    monkeypatch.setattr("kotomamba.data.train_tokenizer.Sentences.__iter__", lambda self: pytest.fail("read"))
    (tmp_path / "a.jsonl").write_text('{"text": "the cat"}\n')
    settings = {"--vocab-size": "300", flag: value}
    assert train_tokenizer_main(["--input", str(tmp_path / "a.jsonl"), "--output", str(tmp_path / "t"),
                                 *[item for pair in settings.items() for item in pair]]) == 2
    assert capsys.readouterr().err.startswith(f"kotomamba train-tokenizer: error: {message}")


def test_an_input_without_text_is_named(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert train_tokenizer_main(["--input", str(tmp_path / "empty.jsonl"), str(tmp_path / "blank.txt"),
                                 "--vocab-size", "300", "--output", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err == (f"kotomamba train-tokenizer: error: {tmp_path}/empty.jsonl, {tmp_path}/blank.txt: "
                                       "no text to train on (no non-empty line)\n")


def test_the_readers_own_error_reaches_the_user_as_it_was_raised(tmp_path, capsys, monkeypatch):
    """As a corrupt archive's: SentencePiece's loop wraps what its iterator raises in its INTERNAL status text."""
    def corrupt(path):
        raise UserError(f"{path}: not a gzip archive (corrupt or truncated)")

    monkeypatch.setattr("kotomamba.data.train_tokenizer.open_decompressed", corrupt)
    (tmp_path / "a.jsonl.gz").write_bytes(b"not gzip")
    assert train_tokenizer_main(["--input", str(tmp_path / "a.jsonl.gz"), "--vocab-size", "300",
                                 "--output", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err == (f"kotomamba train-tokenizer: error: {tmp_path}/a.jsonl.gz: not a gzip archive "
                                       "(corrupt or truncated)\n")


def test_a_byte_order_mark_is_no_part_of_the_first_line(tmp_path):
    from kotomamba.data.train_tokenizer import Sentences

    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbffirst\n")
    assert list(Sentences([tmp_path / "bom.jsonl", tmp_path / "bom.txt"])) == ["first", "second", "first"]


def test_the_tokenizer_is_written_into_a_directory_beside_what_the_user_keeps_there(corpus, tmp_path, monkeypatch):
    """--output names the directory to write tokenizer.model into: the user's own files there stay, a rerun replaces
    the tokenizer's two files and nothing else, and ``.`` is a directory like any other."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.jsonl").write_bytes(corpus.read_bytes())
    (tmp_path / "notes.txt").write_text("mine")
    for _ in range(2):
        assert train_tokenizer_main(["--input", "corpus.jsonl", "--vocab-size", "400", "--output", "."]) == 0
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl", "notes.txt", "tokenizer.model", "tokenizer.vocab"]
    assert (tmp_path / "corpus.jsonl").read_bytes() == corpus.read_bytes()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_output_that_is_a_file_is_refused_before_training(corpus, tmp_path, capsys, monkeypatch):
    (tmp_path / "taken").write_text("mine")
    monkeypatch.setattr("kotomamba.data.train_tokenizer.Sentences.__iter__", lambda self: pytest.fail("trained"))
    assert train_tokenizer_main(["--input", str(corpus), "--vocab-size", "400", "--output", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err == (f"kotomamba train-tokenizer: error: {tmp_path}/taken (--output): is a file, not a "
                                       "directory\n")
    assert (tmp_path / "taken").read_text() == "mine"
