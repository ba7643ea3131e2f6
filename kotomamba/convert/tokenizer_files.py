"""Tokenizer files for an export: what ``transformers.AutoTokenizer`` loads offline.

A SentencePiece model (what the pipeline trains) becomes a ``tokenizers`` fast tokenizer built
here from the model's own protobuf (:func:`sentencepiece_backend`), following its normalizer spec
(character map, whitespace handling, dummy prefix) and byte fallback so it encodes as
``SentencePieceProcessor.encode`` does (transformers' converters differ between releases). The
files are ``tokenizer.json`` + ``tokenizer_config.json`` naming ``PreTrainedTokenizerFast`` (known to
transformers 4 and 5), eos = the SentencePiece eos (our end-of-document token), pad = the model's
pad piece or else eos; the ``.model`` is copied beside them as ``tokenizer.model``.

One difference remains, as with every Hugging Face tokenizer: text that spells a control token
(``"</s>"``) becomes that token, where SentencePiece encodes the characters.

A Hugging Face tokenizer (``tokenizer.json``, a directory or a hub name) is re-saved with the same
eos/pad choice.
"""
from __future__ import annotations

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


_NORMAL = 1  # ModelProto.SentencePiece.Type of an ordinary piece


def _read_proto(model_file: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise UserError(f"{model_file}: not a SentencePiece model ({exc})") from exc
    return proto


def _bpe_merges(proto) -> list[tuple[str, str]]:
    """Merges for ``tokenizers.models.BPE``: every split of a normal piece into two normal pieces,
    ranked by the merged piece's score (SentencePiece's BPE merges the best-scoring pair first)."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
    ranked = []
    for piece, (score, index) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, index, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def sentencepiece_backend(model_file: Path):
    """A ``tokenizers.Tokenizer`` that encodes like ``SentencePieceProcessor.encode(text)``.

    Model: Unigram (same pieces and scores) or BPE (merges from the scores), both with byte fallback
    as trained. Normaliser, in SentencePiece's order (``normalizer.cc``): the precompiled character
    map (e.g. NFKC; none for ``identity``), then when ``remove_extra_whitespaces`` the leading,
    trailing and repeated spaces go, then the dummy prefix space is added, then spaces become "▁".
    No pre-tokenizer: SentencePiece segments the whole normalised text at once.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE, Unigram

    proto = _read_proto(model_file)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type == _SPM_UNIGRAM:
        model = Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=spec.unk_id,
                        byte_fallback=spec.byte_fallback)
    elif spec.model_type == _SPM_BPE:
        model = BPE({p.piece: i for i, p in enumerate(proto.pieces)}, _bpe_merges(proto),
                    unk_token=proto.pieces[spec.unk_id].piece, fuse_unk=True, byte_fallback=spec.byte_fallback)
    else:
        raise UserError(f"{model_file}: SentencePiece model_type {spec.model_type} cannot be converted "
                        f"(only unigram and bpe)")
    tokenizer = Tokenizer(model)
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace("▁", " ")] + ([decoders.ByteFallback()] if spec.byte_fallback else []) + [decoders.Fuse()]
    if norm.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer, proto


def _fast_tokenizer_from_sentencepiece(model_file: Path):
    from transformers import PreTrainedTokenizerFast

    backend, proto = sentencepiece_backend(model_file)

    def piece(index: int) -> str | None:
        return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None

    spec = proto.trainer_spec
    eos = piece(spec.eos_id)
    if eos is None:
        raise UserError(f"{model_file}: SentencePiece model has no eos piece (needed as end of document)")
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
