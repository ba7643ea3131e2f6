"""Writers for the three directory formats a state dict can be exported to.

- ``hf``: transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM``: ``config.json`` with every
  field written (``use_diff=False``), ``model.safetensors`` in transformers' key names (a tied LM
  head is left out, as transformers' own ``save_pretrained`` does), tokenizer files,
  ``generation_config.json`` (the evaluation's sampling settings, else our defaults) and ``README.md``.
- ``mamba_ssm``: ``config.json`` (mamba-ssm's ``MambaConfig`` fields) and ``pytorch_model.bin``
  (the only weights file ``MambaLMHeadModel.from_pretrained`` reads; a plain tensor dict that
  loads under ``torch.load(weights_only=True)``) plus the same tensors as ``model.safetensors`` for
  loaders that avoid pickles; tokenizer files when a tokenizer is known; ``README.md``.
- ``kotomamba``: an initial checkpoint in the trainer's layout (``model_config.json``,
  ``checkpoints/step_00000000`` as DCP with only ``"model"``, ``checkpoints/latest``, tokenizer files
  when a tokenizer is known), usable as ``init.from`` for continual pretraining.

Every writer fills a temporary directory that replaces ``output`` only when complete.
Name and config mapping to transformers is ``kotomamba.model.hf_compat``'s, never repeated here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kotomamba.convert.model_card import model_card
from kotomamba.convert.run_info import RunInfo
from kotomamba.convert.tokenizer_files import SpecialTokenIds, write_hf_tokenizer
from kotomamba.io import atomic_directory, read_json, write_json
from kotomamba.model.pretrained import save_safetensors


def _cpu_copies(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no storage (safetensors and a clean pickle need that)."""
    return {key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in state.items()}


def _generation_config(tokens: SpecialTokenIds, evaluation: dict[str, Any] | None):
    """Sampling as the evaluation's samples were drawn (``kotomamba evaluate``'s ``sampling``), so
    ``model.generate`` reproduces what the card shows; without one, our CLI's defaults: plain sampling
    at temperature 1 (no top-k, no top-p filter)."""
    from transformers import GenerationConfig

    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
                **{k: v for k, v in ((evaluation or {}).get("sampling") or {}).items()
                   if k in ("temperature", "top_k", "top_p", "repetition_penalty")}}
    ids = {"bos_token_id": tokens.bos_token_id, "eos_token_id": tokens.eos_token_id,
           "pad_token_id": tokens.pad_token_id}
    if sampling["temperature"] == 0 or sampling["top_k"] == 1:  # greedy, as `kotomamba generate` reads it
        return GenerationConfig(do_sample=False, repetition_penalty=sampling["repetition_penalty"], **ids)
    return GenerationConfig(do_sample=True, **sampling, **ids)


def write_hf(config, state: dict[str, torch.Tensor], output: str | Path, tokenizer: tuple[str, str],
             info: RunInfo, evaluation: dict[str, Any] | None = None) -> None:
    """A transformers directory; ``tokenizer`` is the (type, model) pair the run trained with."""
    from kotomamba.model.hf_compat import state_dict_to_hf, to_hf_config

    with atomic_directory(output) as tmp:
        tokens = write_hf_tokenizer(tokenizer[0], tokenizer[1], tmp)
        hf_config = to_hf_config(config, bos_token_id=tokens.bos_token_id, eos_token_id=tokens.eos_token_id,
                                 pad_token_id=tokens.pad_token_id)
        hf_config.architectures = ["Mamba2ForCausalLM" if config.layer == "Mamba2" else "MambaForCausalLM"]
        hf_config.dtype = state["backbone.embedding.weight"].dtype
        hf_config.to_json_file(str(tmp / "config.json"), use_diff=False)
        hf_state = _cpu_copies(state_dict_to_hf(state, config))
        if config.tie_embeddings:
            hf_state.pop("lm_head.weight")
        save_safetensors(hf_state, tmp / "model.safetensors")
        _generation_config(tokens, evaluation).save_pretrained(str(tmp))
        (tmp / "README.md").write_text(model_card("hf", config.to_dict(), info, evaluation), encoding="utf-8")


def write_mamba_ssm(config, state: dict[str, torch.Tensor], output: str | Path, tokenizer: tuple[str, str] | None,
                    info: RunInfo, evaluation: dict[str, Any] | None = None) -> None:
    """A mamba-ssm directory (``MambaLMHeadModel.from_pretrained``), with tokenizer files if known."""
    with atomic_directory(output) as tmp:
        write_json(tmp / "config.json", config.to_dict())
        weights = _cpu_copies(state)
        torch.save(weights, tmp / "pytorch_model.bin")
        save_safetensors(weights, tmp / "model.safetensors")
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer[0], tokenizer[1], tmp)
        (tmp / "README.md").write_text(model_card("mamba_ssm", config.to_dict(), info, evaluation),
                                       encoding="utf-8")


def write_kotomamba_checkpoint(config, state: dict[str, torch.Tensor], output: str | Path,
                               tokenizer: tuple[str, str] | None = None) -> None:
    """An initial kotomamba checkpoint (trainer layout, model weights only) for ``init.from``, with the
    source's tokenizer files when one is known (``convert`` finds them there again)."""
    from kotomamba.train.checkpoint_files import save_local
    from kotomamba.train.integrity import record_integrity
    from kotomamba.train.run_dir import RunDir

    with atomic_directory(output) as tmp:
        run = RunDir(tmp)
        write_json(run.model_config, config.to_dict())
        checkpoint = run.checkpoint(0)
        save_local({"model": _cpu_copies(state)}, checkpoint)
        record_integrity(checkpoint)
        run.latest.write_text(checkpoint.name + "\n", encoding="utf-8")
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer[0], tokenizer[1], tmp)


def read_evaluation(path: str | Path | None) -> dict[str, Any] | None:
    """``kotomamba evaluate``'s JSON, for the model card."""
    if path is None:
        return None
    return read_json(path, "evaluation JSON")
