"""The one mapping between our config / state dict and transformers' Mamba and Mamba2 models.

transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` use the same parameter names as
mamba-ssm except the embedding (``backbone.embeddings.weight``), and have no vocabulary padding:
their ``vocab_size`` is our ``padded_vocab_size``. Fields mamba-ssm does not record (norm epsilon,
activation) are written with the values the architecture uses.
"""
from __future__ import annotations

from typing import Any

import torch
import transformers

from kotomamba.errors import UserError
from kotomamba.model.config import NORM_EPS, MambaConfig

_OUR_EMBEDDING = "backbone.embedding.weight"
_HF_EMBEDDING = "backbone.embeddings.weight"


def to_hf_config(cfg: MambaConfig, bos_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> transformers.PretrainedConfig:
    """transformers ``MambaConfig`` (Mamba-1) or ``Mamba2Config`` (Mamba-2) for ``cfg``."""
    opts = cfg.mixer_options()
    common: dict[str, Any] = dict(
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.d_model,
        state_size=opts["d_state"],
        num_hidden_layers=cfg.n_layer,
        layer_norm_epsilon=NORM_EPS,
        expand=opts["expand"],
        conv_kernel=opts["d_conv"],
        use_bias=opts["bias"],
        use_conv_bias=opts["conv_bias"],
        hidden_act="silu",
        initializer_range=0.02,
        residual_in_fp32=cfg.residual_in_fp32,
        time_step_min=opts["dt_min"],
        time_step_max=opts["dt_max"],
        time_step_floor=opts["dt_init_floor"],
        # Only about initialisation, but transformers 5 applies it to *loaded* out_proj weights too
        # (divides them by sqrt(n_layer) in `_init_weights` after loading): never set it on weights.
        rescale_prenorm_residual=False,
        use_cache=True,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    if cfg.layer == "Mamba1":
        return transformers.MambaConfig(
            **common,
            time_step_rank=opts["dt_rank"],
            time_step_scale=opts["dt_scale"],
            time_step_init_scheme=opts["dt_init"],
            use_mambapy=False,
        )
    d_inner = opts["expand"] * cfg.d_model
    return transformers.Mamba2Config(
        **common,
        num_heads=d_inner // opts["headdim"],
        head_dim=opts["headdim"],
        n_groups=opts["ngroups"],
        time_step_rank="auto",
        time_step_limit=tuple(opts["dt_limit"]),
        chunk_size=opts["chunk_size"],
    )


def from_hf_config(hf_cfg: transformers.PretrainedConfig, source: str = "transformers config") -> MambaConfig:
    """Our MambaConfig for a transformers Mamba / Mamba2 config (vocabulary taken as already padded)."""
    model_type = getattr(hf_cfg, "model_type", None)
    if model_type not in ("mamba", "mamba2"):
        raise UserError(f"{source}: field 'model_type': expected 'mamba' or 'mamba2', got {model_type!r}")
    if hf_cfg.hidden_act != "silu":
        raise UserError(f"{source}: field 'hidden_act': only 'silu' is supported, got {hf_cfg.hidden_act!r}")
    ssm_cfg: dict[str, Any] = {
        "layer": "Mamba1" if model_type == "mamba" else "Mamba2",
        "d_state": hf_cfg.state_size,
        "d_conv": hf_cfg.conv_kernel,
        "expand": hf_cfg.expand,
        "dt_min": hf_cfg.time_step_min,
        "dt_max": hf_cfg.time_step_max,
        "dt_init_floor": hf_cfg.time_step_floor,
        "conv_bias": hf_cfg.use_conv_bias,
        "bias": hf_cfg.use_bias,
    }
    if model_type == "mamba":
        ssm_cfg.update(dt_rank=hf_cfg.time_step_rank, dt_scale=hf_cfg.time_step_scale,
                       dt_init=hf_cfg.time_step_init_scheme)
    else:
        if hf_cfg.num_heads * hf_cfg.head_dim != hf_cfg.expand * hf_cfg.hidden_size:
            raise UserError(f"{source}: field 'num_heads': num_heads * head_dim != expand * hidden_size")
        ssm_cfg.update(headdim=hf_cfg.head_dim, ngroups=hf_cfg.n_groups, chunk_size=hf_cfg.chunk_size,
                       dt_limit=tuple(float(v) for v in hf_cfg.time_step_limit))
    return MambaConfig.from_dict(
        {
            "d_model": hf_cfg.hidden_size,
            "d_intermediate": 0,
            "n_layer": hf_cfg.num_hidden_layers,
            "vocab_size": hf_cfg.vocab_size,
            "ssm_cfg": ssm_cfg,
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": True,
            "residual_in_fp32": hf_cfg.residual_in_fp32,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": 1,
            "tie_embeddings": bool(hf_cfg.tie_word_embeddings),
        },
        source=source,
    )


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: MambaConfig) -> dict[str, torch.Tensor]:
    """mamba-ssm names -> transformers names (same tensors; ``lm_head.weight`` kept, tied or not)."""
    out = {(_HF_EMBEDDING if k == _OUR_EMBEDDING else k): v for k, v in sd.items()}
    if "lm_head.weight" not in out and cfg.tie_embeddings:
        out["lm_head.weight"] = out[_HF_EMBEDDING]
    return out


def state_dict_from_hf(sd: dict[str, torch.Tensor], cfg: MambaConfig) -> dict[str, torch.Tensor]:
    """transformers names -> mamba-ssm names; a tied model's missing ``lm_head.weight`` is the embedding."""
    out = {(_OUR_EMBEDDING if k in (_HF_EMBEDDING, _OUR_EMBEDDING) else k): v for k, v in sd.items()}
    if "lm_head.weight" not in out:
        if not cfg.tie_embeddings:
            raise UserError("transformers state dict: key 'lm_head.weight' is missing and embeddings are not tied")
        out["lm_head.weight"] = out[_OUR_EMBEDDING]
    return out
