"""Loading and saving MambaLM weights: our export and mamba-ssm directories (``config.json`` in
mamba-ssm's format + ``model.safetensors`` or ``pytorch_model.bin``) and transformers Mamba /
Mamba2 directories (``config.json`` with ``model_type`` + safetensors or bin, sharded or not).

Pickled weights are read only with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kotomamba.errors import UserError
from kotomamba.io import atomic_directory, current_umask, read_json, write_json
from kotomamba.model.config import MambaConfig

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"


def _load_one(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one weight file; a missing, truncated or corrupt one is a ``UserError`` naming it."""
    if not path.is_file():
        raise UserError(f"{path}: missing (named by the weight index)")
    try:
        if path.name.endswith(".safetensors"):
            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the weights: {exc.strerror or exc}") from exc
    except Exception as exc:  # safetensors' SafetensorError, pickle's and zipfile's assorted errors
        raise UserError(f"{path}: truncated or corrupt weight file ({type(exc).__name__}: {exc})") from exc


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of the directory's weight files (single or sharded with an index), on CPU."""
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        if (directory / name).is_file():
            return _load_one(directory / name)
        index = directory / f"{name}.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(f"{index}: field 'weight_map': missing or not an object")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_load_one(directory / shard))
            return state
    raise UserError(f"{directory}: no weights found (expected {SAFETENSORS_NAME} or {PICKLE_NAME}, "
                    "possibly sharded with an .index.json)")


def read_config(directory: Path) -> tuple[MambaConfig, bool]:
    """(config, is_transformers) of a model directory."""
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise UserError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    data = read_json(config_path)
    if isinstance(data, dict) and "model_type" in data:
        import transformers

        from kotomamba.model.hf_compat import from_hf_config

        if data["model_type"] not in ("mamba", "mamba2"):
            raise UserError(f"{config_path}: field 'model_type': expected 'mamba' or 'mamba2', "
                            f"got {data['model_type']!r}")
        try:
            hf_cfg = transformers.AutoConfig.from_pretrained(str(directory))
        except Exception as exc:  # its validation: ValueError, TypeError, huggingface_hub.StrictDataclassError
            reason = " ".join(str(exc).split())  # its message spans lines; ours is one
            raise UserError(f"{config_path}: not a valid transformers config ({reason})") from exc
        return from_hf_config(hf_cfg, source=str(config_path)), True
    return MambaConfig.from_dict(data, source=str(config_path)), False


def load_pretrained(cls, path: str | os.PathLike, device=None, dtype=None):
    """Build ``cls`` (MambaLM) from a model directory: config first, weights copied into a model
    allocated without initialisation. Missing, unexpected or mis-shaped keys raise UserError."""
    directory = Path(path)
    config, is_transformers = read_config(directory)
    state = load_weights(directory)
    if is_transformers:
        from kotomamba.model.hf_compat import state_dict_from_hf

        state = state_dict_from_hf(state, config)
    elif "lm_head.weight" not in state and config.tie_embeddings and "backbone.embedding.weight" in state:
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    model = cls(config, device="meta", dtype=dtype)
    model.to_empty(device=device if device is not None else "cpu")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{directory}: weights do not match the config: missing keys {missing[:5]}, "
                        f"unexpected keys {unexpected[:5]}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(f"{directory}: key '{key}': shape {tuple(state[key].shape)} in the weights, "
                            f"{tuple(tensor.shape)} from the config")
    model.load_state_dict(state)
    return model


def save_pretrained(model, path: str | os.PathLike) -> None:
    """Write ``config.json`` (mamba-ssm's format) and ``model.safetensors`` holding every key of the
    state dict (a tied LM head is stored as its own copy: safetensors refuses shared storage)."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_directory(path) as tmp:
        write_json(tmp / CONFIG_NAME, model.config.to_dict())
        save_safetensors(state, tmp / SAFETENSORS_NAME)


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """``state`` as a safetensors file of the mode the umask gives (safetensors itself writes 0600, which would
    leave an export's weights unreadable to the colleagues who may read the rest of it)."""
    save_file(state, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~current_umask())
