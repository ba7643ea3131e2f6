"""Tokenizers behind one interface: SentencePiece models and Hugging Face ``tokenizers``.

``build_tokenizer(tokenizer_type, tokenizer_model)`` takes Megatron-LM's ``--tokenizer-type`` names
(``SentencePieceTokenizer``, ``GPTSentencePieceTokenizer``, ``HuggingFaceTokenizer``,
``HFTokenizer``, ``PretrainedFromHF``) so the predecessor's scripts keep working.

Every tokenizer has ``encode(text) -> list[int]`` (no BOS/EOS added: documents are separated by
``eod`` at preprocessing time), ``encode_batch(texts, append_eod=False)`` (each document
followed by ``eod`` when asked), ``encode_arrays(texts, append_eod=False)`` (the same ids as one integer array per text, what
preprocessing concatenates), ``decode(ids) -> str``, ``vocab_size``
(including added tokens; the largest id is ``vocab_size - 1``), ``eod``, ``bos`` and ``pad``
(``None`` where the model has no such token).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from kotomamba.errors import UserError
from kotomamba.io import read_json

SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer")
HUGGINGFACE_TYPES = ("HuggingFaceTokenizer", "HFTokenizer", "PretrainedFromHF")
GPT2_TYPES = ("GPT2BPETokenizer",)
TOKENIZER_TYPES = SENTENCEPIECE_TYPES + HUGGINGFACE_TYPES + GPT2_TYPES
# GPT-2's end-of-text piece, an ordinary entry of its vocab.json (Megatron's GPT2BPETokenizer eod).
GPT2_EOD = "<|endoftext|>"

# Tried in order when a bare tokenizer.json does not say which token ends a document.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")


class Tokenizer:
    """The interface every tokenizer implements (see the module docstring)."""

    vocab_size: int
    eod: int
    bos: int | None
    pad: int | None

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str], append_eod: bool = False) -> list[list[int]]:
        raise NotImplementedError

    def encode_arrays(self, texts: Sequence[str], append_eod: bool = False) -> list[np.ndarray]:
        """``encode_batch`` as one 1-D integer array per text (int32 or wider)."""
        return [np.array(ids, dtype=np.int64) for ids in self.encode_batch(texts, append_eod)]

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model`` file; ``eod`` is the model's ``</s>`` (eos) id."""

    def __init__(self, model_file: str | os.PathLike):
        import sentencepiece

        path = Path(model_file)
        if path.is_dir():
            models = sorted(child.name for child in path.glob("*.model"))
            held = f"it holds {', '.join(models)}" if models else "it holds no .model file"
            raise UserError(f"{path}: a directory ({held}); --tokenizer-model takes the SentencePiece .model file")
        if not path.is_file():
            raise UserError(f"{path}: SentencePiece model file not found (--tokenizer-model)")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise UserError(f"{path}: not a SentencePiece model ({exc})") from exc
        self.vocab_size = self._sp.vocab_size()
        self.eod = _optional_id(self._sp.eos_id())
        if self.eod is None:
            raise UserError(f"{path}: SentencePiece model has no eos piece, so documents cannot be separated")
        self.bos = _optional_id(self._sp.bos_id())
        self.pad = _optional_id(self._sp.pad_id())

    def encode_batch(self, texts: Sequence[str], append_eod: bool = False) -> list[list[int]]:
        # num_threads=1: parallelism comes from preprocessing workers, one core each. add_eos
        # appends eod inside the C++ encoder, cheaper than extending every list in Python.
        return self._sp.encode(list(texts), add_eos=append_eod, num_threads=1)

    def encode_arrays(self, texts: Sequence[str], append_eod: bool = False) -> list[np.ndarray]:
        # int32 arrays straight from the C++ encoder: no Python int per token, so concatenating a
        # chunk costs ~1% of encoding it instead of ~10% for flattening lists (bench/RESULTS.md).
        return self._sp.encode_as_numpy(list(texts), add_eos=append_eod, num_threads=1)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


class HuggingFaceTokenizer(Tokenizer):
    """A Hugging Face fast tokenizer: a ``tokenizer.json`` file, a directory, or a hub name.

    A file is loaded with ``tokenizers`` directly; a directory or hub name goes through
    ``transformers.AutoTokenizer`` (which reads ``tokenizer_config.json`` for the special tokens)
    and then uses its Rust backend. ``eod`` is the eos token.
    """

    def __init__(self, name_or_path: str | os.PathLike):
        name = str(name_or_path)
        path = Path(name)
        if path.is_file():
            self._tok, self.eod, self.bos, self.pad = _load_tokenizer_json(path)
        else:
            self._tok, self.eod, self.bos, self.pad = _load_pretrained(name)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: Sequence[str], append_eod: bool = False) -> list[list[int]]:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        if append_eod:
            return [e.ids + [self.eod] for e in encodings]
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class GPT2BPETokenizer(HuggingFaceTokenizer):
    """GPT-2's byte-level BPE from its ``vocab.json`` and ``merges.txt`` (Megatron's ``GPT2BPETokenizer``).

    Built with ``tokenizers``: byte-level pre-tokenization with GPT-2's split pattern and no
    prefix space, the merges in file order. ``eod`` is ``<|endoftext|>``; as in Megatron it is an
    ordinary vocabulary entry, so the literal text "<|endoftext|>" in a document is split into
    pieces, never read as the end of a document. ``vocab_size`` is the size of vocab.json.
    """

    def __init__(self, vocab_file: str | os.PathLike, merge_file: str | os.PathLike):
        import tokenizers
        from tokenizers import decoders, models, pre_tokenizers

        for path, flag in ((vocab_file, "--vocab-file"), (merge_file, "--merge-file")):
            if not Path(path).is_file():
                raise UserError(f"{path}: GPT-2 BPE file not found ({flag})")
        try:
            bpe = models.BPE.from_file(str(vocab_file), str(merge_file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise UserError(f"{vocab_file}, {merge_file}: not a GPT-2 vocab.json / merges.txt pair ({exc})") from exc
        self._tok = tokenizers.Tokenizer(bpe)
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tok.decoder = decoders.ByteLevel()
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eod = self._tok.token_to_id(GPT2_EOD)
        if self.eod is None:
            raise UserError(f"{vocab_file}: no {GPT2_EOD!r} entry, so documents cannot be separated")
        self.bos = self.pad = None


def _optional_id(token_id: int) -> int | None:
    return None if token_id is None or token_id < 0 else int(token_id)


def _load_tokenizer_json(path: Path):
    import tokenizers

    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise UserError(f"{path}: not a Hugging Face tokenizer.json ({exc})") from exc
    config = _special_tokens_beside(path.parent)
    eod = _token_id(tok, config.get("eos_token")) if config else None
    if eod is None:
        eod = next((tok.token_to_id(t) for t in _EOS_CANDIDATES if tok.token_to_id(t) is not None), None)
    if eod is None:
        raise UserError(f"{path}: cannot find an end-of-document token (tried {', '.join(_EOS_CANDIDATES)})")
    return tok, eod, _token_id(tok, config.get("bos_token")), _token_id(tok, config.get("pad_token"))


# The JSON files of a tokenizer directory that transformers' AutoTokenizer reads.
_TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _special_tokens_beside(directory: Path) -> dict:
    """Special tokens declared in tokenizer_config.json / special_tokens_map.json next to a tokenizer.json."""
    found: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = directory / name
        if file.is_file():
            data = read_json(file, f"Hugging Face {name}")
            if not isinstance(data, dict):
                raise UserError(f"{file}: expected a JSON object, got {type(data).__name__}")
            found.update({k: v for k, v in data.items() if k.endswith("_token") and v})
    return found


def _token_id(tok, token) -> int | None:
    if isinstance(token, dict):  # AddedToken serialised as {"content": ...}
        token = token.get("content")
    return tok.token_to_id(token) if isinstance(token, str) else None


def _load_pretrained(name: str):
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # OSError, ValueError, or AttributeError/TypeError on a tokenizer_config.json of the wrong shape
        if Path(name).is_dir():  # a damaged file is named with its line, not only the directory
            for file in (Path(name) / base for base in _TOKENIZER_JSON_FILES):
                if file.is_file():
                    read_json(file, f"Hugging Face {file.name}")
        reason = " ".join(str(exc).split())  # transformers' message spans lines; ours is one
        raise UserError(f"{name}: cannot load a Hugging Face tokenizer (not a tokenizer.json, a directory "
                        f"with one, or a reachable hub name): {reason}") from exc
    if not getattr(hf, "is_fast", False):
        raise UserError(f"{name}: only fast (tokenizers-backed) Hugging Face tokenizers are supported")
    if hf.eos_token_id is None:
        raise UserError(f"{name}: tokenizer has no eos token, so documents cannot be separated")
    return hf.backend_tokenizer, hf.eos_token_id, hf.bos_token_id, hf.pad_token_id


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | os.PathLike | None = None,
                    vocab_file: str | os.PathLike | None = None,
                    merge_file: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer named by Megatron's ``--tokenizer-type`` with ``--tokenizer-model`` (or, for
    ``GPT2BPETokenizer``, ``--vocab-file`` and ``--merge-file``)."""
    if tokenizer_type in GPT2_TYPES:
        if vocab_file is None or merge_file is None:
            raise UserError(f"--tokenizer-type {tokenizer_type} needs --vocab-file and --merge-file")
        return GPT2BPETokenizer(vocab_file, merge_file)
    if tokenizer_model is None:
        raise UserError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
    if tokenizer_type in SENTENCEPIECE_TYPES:
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type in HUGGINGFACE_TYPES:
        return HuggingFaceTokenizer(tokenizer_model)
    known = ", ".join(TOKENIZER_TYPES)
    raise UserError(f"--tokenizer-type {tokenizer_type!r} is not supported; use one of {known}")


def check_fits(tokenizer: Tokenizer, vocab_size: int, tokenizer_name: str, model_name: str) -> None:
    """Refuse a tokenizer with more ids than the model's ``vocab_size`` (another model's tokenizer): its larger
    ids have no row in the embedding (an index error mid-generation) and no logit to be sampled from, and an
    export would name special tokens the model cannot produce. Fewer ids are fine, as the trainer allows."""
    if tokenizer.vocab_size > vocab_size:
        raise UserError(f"{tokenizer_name}: a tokenizer of {tokenizer.vocab_size} ids, more than the {vocab_size} "
                        f"of the model {model_name}: not the tokenizer it was trained with")
