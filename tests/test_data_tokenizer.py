"""Tokenizers: SentencePiece training with byte fallback, HF tokenizers, Megatron type names."""
from __future__ import annotations

import json

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
    assert train_tokenizer_main(["--input", str(bad), "--vocab-size", "100", "--output", str(tmp_path / "t")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
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


def test_gpt_sentencepiece_alias_and_unknown_type(corpus, tmp_path):
    out = tmp_path / "tok"
    train_tokenizer_main(["--input", str(corpus), "--vocab-size", "600", "--output", str(out)])
    assert isinstance(build_tokenizer("GPTSentencePieceTokenizer", out / "tokenizer.model"), SentencePieceTokenizer)
    with pytest.raises(UserError, match="GPT2BPETokenizer"):
        build_tokenizer("GPT2BPETokenizer", out / "tokenizer.model")
    with pytest.raises(UserError, match="not found"):
        build_tokenizer("SentencePieceTokenizer", tmp_path / "missing.model")
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
