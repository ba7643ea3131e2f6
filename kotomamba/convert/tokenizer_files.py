"""Tokenizer files for an export: what ``transformers.AutoTokenizer`` loads offline.

A SentencePiece model (what the pipeline trains) becomes a ``tokenizers`` fast tokenizer built
from the model's own protobuf with transformers' ``SpmConverter.build_tokenizer_from_spm_proto``,
which follows the model's normalizer spec (NFKC charsmap, whitespace handling, dummy prefix) and
byte fallback so it encodes as ``SentencePieceProcessor.encode`` does. The files are
``tokenizer.json`` + ``tokenizer_config.json`` naming ``PreTrainedTokenizerFast`` (known to
transformers 4 and 5), eos = the SentencePiece eos (our end-of-document token), pad = the model's
pad piece or else eos; the ``.model`` is copied beside them as ``tokenizer.model``.

One difference remains, as with every Hugging Face tokenizer: text that spells a control token
(``"</s>"``) becomes that token, where SentencePiece encodes the characters.

A Hugging Face tokenizer (``tokenizer.json``, a directory or a hub name) is re-saved with the same
eos/pad choice.
"""
from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from kotomamba.errors import UserError

_SPM_UNIGRAM, _SPM_BPE = 1, 2  # sentencepiece_model.proto TrainerSpec.ModelType


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids the model config and generation config record."""

    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int


def _fast_tokenizer_from_sentencepiece(model_file: Path):
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    build = getattr(SpmConverter, "build_tokenizer_from_spm_proto", None)
    if build is None:
        import transformers

        raise UserError(f"transformers {transformers.__version__} cannot convert a SentencePiece model "
                        f"(SpmConverter.build_tokenizer_from_spm_proto is missing): upgrade transformers")
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise UserError(f"{model_file}: not a SentencePiece model ({exc})") from exc
    model_type = proto.trainer_spec.model_type
    if model_type == _SPM_UNIGRAM:
        vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    elif model_type == _SPM_BPE:
        vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    else:
        raise UserError(f"{model_file}: SentencePiece model_type {model_type} cannot be converted "
                        f"(only unigram and bpe)")
    # legacy=True: prefix "▁" to every chunk between special tokens, as SentencePiece does to its input.
    # Older transformers 5.x releases have no `legacy` switch (their one behaviour is checked by the
    # encode-parity tests in tests/test_convert_tokenizer.py).
    legacy = {"legacy": True} if "legacy" in inspect.signature(build).parameters else {}
    backend = build(proto, vocab, **legacy)

    def piece(index: int) -> str | None:
        return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None

    spec = proto.trainer_spec
    if piece(spec.eos_id) is None:
        raise UserError(f"{model_file}: SentencePiece model has no eos piece (needed as end of document)")
    eos = piece(spec.eos_id)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token=piece(spec.bos_id),
                                   unk_token=piece(spec.unk_id), pad_token=piece(spec.pad_id) or eos)


def _fast_tokenizer_from_huggingface(name: str, eod: int, pad: int | None):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(name)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path)) if path.is_file() else AutoTokenizer.from_pretrained(name)
    eos = hf.convert_ids_to_tokens(eod)
    hf.eos_token = eos
    hf.pad_token = hf.convert_ids_to_tokens(pad) if pad is not None else eos
    return hf


def write_hf_tokenizer(tokenizer_type: str, tokenizer_model: str, output_dir: str | Path) -> SpecialTokenIds:
    """Write tokenizer files for ``AutoTokenizer.from_pretrained(output_dir)``; return the special ids.

    ``tokenizer_type`` / ``tokenizer_model`` are Megatron's pair as ``kotomamba.data.build_tokenizer``
    takes them; its ``eod`` becomes the eos token.
    """
    from kotomamba.data.tokenizer import SENTENCEPIECE_TYPES, build_tokenizer

    ours = build_tokenizer(tokenizer_type, tokenizer_model)
    output_dir = Path(output_dir)
    if tokenizer_type in SENTENCEPIECE_TYPES:
        hf = _fast_tokenizer_from_sentencepiece(Path(tokenizer_model))
    else:
        hf = _fast_tokenizer_from_huggingface(str(tokenizer_model), ours.eod, ours.pad)
    if hf.eos_token_id != ours.eod:
        raise UserError(f"{tokenizer_model}: converted tokenizer's eos id {hf.eos_token_id} differs from the "
                        f"end-of-document id {ours.eod} used in training")
    hf.save_pretrained(str(output_dir))
    if tokenizer_type in SENTENCEPIECE_TYPES:
        shutil.copyfile(tokenizer_model, output_dir / "tokenizer.model")
    config_file = output_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the class name every transformers version knows
    config.pop("backend", None)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return SpecialTokenIds(bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
                           pad_token_id=hf.pad_token_id)
