"""Exported tokenizer files: AutoTokenizer (offline) encodes exactly as our training tokenizer did."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kotomamba.convert.tokenizer_files import write_hf_tokenizer
from kotomamba.data.tokenizer import build_tokenizer

_DOCS = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
_EXTRA = ["日本語の文章をトークン化します。東京は日本の首都です。", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ and ｶﾀｶﾅ",
          "emoji 😀🚀 and ünïcödé accents", "tabs\tand\nnewlines\n\nand   runs   of spaces  "]
SAMPLES = ["Hello world", "  leading and trailing spaces  ", "multiple   inner    spaces", "\u3000全角スペース",
           "a\n b\t c", "未知の文字: 鰻 鱧 龍 𠮷", "x" * 50, "MambaLM.from_pretrained(path) -> config.json"] + _EXTRA


def _corpus() -> list[str]:
    lines = [line for line in _DOCS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines + _EXTRA * 3


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sentencepiece_model(request, tmp_path_factory) -> Path:
    import sentencepiece

    prefix = tmp_path_factory.mktemp("spm") / f"sp_{request.param}"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_prefix=str(prefix), vocab_size=700, model_type=request.param,
        byte_fallback=True, character_coverage=0.9995, num_threads=1, minloglevel=2)
    return prefix.with_suffix(".model")


def test_autotokenizer_encodes_like_the_sentencepiece_training_tokenizer(sentencepiece_model, tmp_path):
    from transformers import AutoTokenizer

    ids = write_hf_tokenizer("SentencePieceTokenizer", str(sentencepiece_model), tmp_path)
    ours = build_tokenizer("SentencePieceTokenizer", str(sentencepiece_model))
    hf = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert hf.eos_token_id == ours.eod == ids.eos_token_id
    assert hf.pad_token_id == ids.pad_token_id == ours.eod  # the model has no pad piece: pad = eos
    assert hf.bos_token_id == ours.bos == ids.bos_token_id
    for text in SAMPLES + _corpus()[:40]:
        expected = ours.encode(text)
        assert hf.encode(text, add_special_tokens=False) == expected, text
        assert hf(text)["input_ids"] == expected, text  # no BOS/EOS added by default, as in training
        assert hf.decode(expected) == ours.decode(expected), text
    assert any(hf.convert_ids_to_tokens(i).startswith("<0x") for i in ours.encode("𠮷"))  # byte fallback
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tmp_path / "tokenizer.model").read_bytes() == sentencepiece_model.read_bytes()


def test_sentencepiece_pad_piece_is_used_when_the_model_has_one(tmp_path):
    import sentencepiece
    from transformers import AutoTokenizer

    prefix = tmp_path / "padded"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_prefix=str(prefix), vocab_size=400, byte_fallback=True,
        pad_id=3, num_threads=1, minloglevel=2)
    ids = write_hf_tokenizer("SentencePieceTokenizer", str(prefix) + ".model", tmp_path / "out")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    assert ids.pad_token_id == hf.pad_token_id == 3 and hf.pad_token == "<pad>"
    assert hf.eos_token_id == build_tokenizer("SentencePieceTokenizer", str(prefix) + ".model").eod


def test_huggingface_tokenizer_json_gets_eos_and_pad(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    ids = write_hf_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tokenizer.json"), tmp_path / "out")
    ours = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == ours.eod == ids.eos_token_id
    assert hf.pad_token_id == ours.eod
    for text in SAMPLES:
        assert hf.encode(text, add_special_tokens=False) == ours.encode(text), text


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_the_pipelines_own_tokenizer_converts_exactly(model_type, tmp_path):
    """kotomamba train-tokenizer's settings: identity normalisation, whitespace runs kept as pieces,
    digits split, pad piece 3."""
    from transformers import AutoTokenizer

    from kotomamba.data.train_tokenizer import train_tokenizer

    code = Path(__file__).read_text(encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in _corpus() + code.split("\n\n")))
    model = train_tokenizer([str(corpus)], 800, model_type, tmp_path / "tok")
    ids = write_hf_tokenizer("SentencePieceTokenizer", str(model), tmp_path / "hf")
    ours = build_tokenizer("SentencePieceTokenizer", str(model))
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert hf.eos_token_id == ours.eod and ids.pad_token_id == ours.pad == 3
    texts = SAMPLES + code.split("\n\n")[:30] + ["    indented = 12345 + 0.5\n\t\tx", " \n \n", "   "]
    # Spelled-out control pieces ("</s>") become special tokens in any HF tokenizer (module docstring).
    for text in [t for t in texts if not any(p in t for p in ("<s>", "</s>", "<pad>", "<unk>"))]:
        expected = ours.encode(text)
        assert hf.encode(text, add_special_tokens=False) == expected, text
        assert hf.decode(expected) == ours.decode(expected), text
