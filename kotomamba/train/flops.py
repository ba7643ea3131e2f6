"""Exact FLOP counts of Mamba-1 / Mamba-2 language models, for TFLOP/s and MFU.

Conventions (one multiply-add = 2 FLOPs; "model FLOPs": activation recomputation is not counted):

- matmul: every ``nn.Linear`` ``in -> out`` costs ``2 * in * out`` per token (in_proj, x_proj,
  dt_proj, out_proj, the gated MLP's fc1/fc2, the LM head over the padded vocabulary).
- conv: the causal conv is depthwise: ``2 * channels * d_conv`` per token, not
  ``2 * channels**2 * d_conv`` (the predecessor counted it as dense: 3.6x too much at 2.8B).
- scan, Mamba-1 (selective scan, Gu & Dao 2023, Alg. 2): per token and (channel, state) pair
  ``exp(dt*A)`` 1 mul, ``(dt*u) * B`` 1 mul, ``h = dA*h + dBu`` 2, ``y += C*h`` 2, i.e. ``6 * E * N``,
  plus ``dt*u`` once per channel (``E``).
- scan, Mamba-2 (SSD, chunked algorithm of Dao & Gu 2024, Listing 1, as the Triton kernels run it):
  per chunk of ``q`` tokens (the last chunk may be shorter), ``G`` groups, ``H`` heads of ``P``
  channels, state ``N``: ``C B^T`` ``2 q^2 N G``; ``(L o CB) X`` ``2 q^2 P H``; chunk states
  ``B^T X`` ``2 q N P H``; state-to-output ``C h`` ``2 q N P H``; and per chunk the inter-chunk
  recurrence ``2 N P H``.
- elementwise work (norms, activations, gating, the ``D`` skip, softplus, residual adds) is not
  counted: it is memory-bound and below 1% of the total at every preset.
- backward = 2 x forward for every term (input and weight gradients of each contraction), so
  training = 3 x forward.

``six_n`` is the common ``6 N`` estimate with N = the parameters excluding the input embedding
(the LM head's weight is counted, tied or not), for comparison with the exact count.

The configuration is mamba-ssm's ``config.json`` dict (``MambaConfig.to_dict()``), with mamba-ssm's
defaults for missing ``ssm_cfg`` keys (``modules/mamba_simple.py``, ``modules/mamba2.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

MAMBA1_DEFAULTS = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "conv_bias": True, "bias": False}
MAMBA2_DEFAULTS = {
    "d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256,
    "d_ssm": None, "rmsnorm": True, "conv_bias": True, "bias": False, "D_has_hdim": False,
}


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs of one sequence, split by kind."""

    matmul: int
    conv: int
    scan: int

    @property
    def forward(self) -> int:
        return self.matmul + self.conv + self.scan

    @property
    def training(self) -> int:
        """Forward + backward (backward = 2 x forward)."""
        return 3 * self.forward

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.matmul + other.matmul, self.conv + other.conv, self.scan + other.scan)

    def times(self, n: int) -> FlopCount:
        return FlopCount(self.matmul * n, self.conv * n, self.scan * n)


def _as_dict(config: Any) -> Mapping:
    return config.to_dict() if hasattr(config, "to_dict") else config


def padded_vocab_size(config: Mapping) -> int:
    multiple = config.get("pad_vocab_size_multiple", 8) or 1
    return math.ceil(config["vocab_size"] / multiple) * multiple


def _ssm(config: Mapping) -> tuple[str, dict]:
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise ValueError(f"unknown ssm_cfg.layer {layer!r}")
    defaults = MAMBA1_DEFAULTS if layer == "Mamba1" else MAMBA2_DEFAULTS
    return layer, {**defaults, **ssm_cfg}


def _mamba1_dims(d_model: int, cfg: dict) -> tuple[int, int, int, int]:
    d_inner = cfg["expand"] * d_model
    dt_rank = math.ceil(d_model / 16) if cfg["dt_rank"] == "auto" else cfg["dt_rank"]
    return d_inner, cfg["d_state"], dt_rank, cfg["d_conv"]


def mamba1_flops(d_model: int, cfg: dict, seq_length: int) -> FlopCount:
    """Forward FLOPs of one Mamba-1 mixer over a sequence of ``seq_length`` tokens."""
    e, n, r, k = _mamba1_dims(d_model, cfg)
    matmul = 2 * (d_model * 2 * e + e * (r + 2 * n) + r * e + e * d_model)
    return FlopCount(matmul=matmul * seq_length, conv=2 * e * k * seq_length, scan=(6 * e * n + e) * seq_length)


def _mamba2_dims(d_model: int, cfg: dict) -> dict:
    d_inner = cfg["expand"] * d_model
    d_ssm = d_inner if cfg["d_ssm"] is None else cfg["d_ssm"]
    heads = d_ssm // cfg["headdim"]
    g, n = cfg["ngroups"], cfg["d_state"]
    return {
        "d_inner": d_inner, "d_ssm": d_ssm, "heads": heads, "groups": g, "state": n, "headdim": cfg["headdim"],
        "in_proj": 2 * d_inner + 2 * g * n + heads, "conv_dim": d_ssm + 2 * g * n,
    }


def ssd_scan_flops(seq_length: int, chunk_size: int, heads: int, headdim: int, state: int, groups: int) -> int:
    """Forward FLOPs of the chunked SSD algorithm over one sequence (see the module docstring)."""
    total = 0
    for start in range(0, seq_length, chunk_size):
        q = min(chunk_size, seq_length - start)
        total += 2 * q * q * state * groups + 2 * q * q * headdim * heads
        total += 2 * (2 * q * state * headdim * heads)
        total += 2 * state * headdim * heads
    return total


def mamba2_flops(d_model: int, cfg: dict, seq_length: int) -> FlopCount:
    """Forward FLOPs of one Mamba-2 mixer over a sequence of ``seq_length`` tokens."""
    d = _mamba2_dims(d_model, cfg)
    matmul = 2 * (d_model * d["in_proj"] + d["d_inner"] * d_model)
    scan = ssd_scan_flops(seq_length, cfg["chunk_size"], d["heads"], d["headdim"], d["state"], d["groups"])
    return FlopCount(matmul=matmul * seq_length, conv=2 * d["conv_dim"] * cfg["d_conv"] * seq_length, scan=scan)


def mlp_hidden(d_model: int, d_intermediate: int) -> int:
    """mamba-ssm's ``GatedMLP`` rounds the hidden size up to a multiple of 128 (``modules/mlp.py``)."""
    return (d_intermediate + 127) // 128 * 128


def model_flops(config: Any, seq_length: int) -> FlopCount:
    """Forward FLOPs of the whole LM (mixers, gated MLPs, LM head) over one sequence."""
    config = _as_dict(config)
    if config.get("attn_layer_idx"):
        raise ValueError("FLOP counting of hybrid attention layers is not implemented")
    d_model, n_layer = config["d_model"], config["n_layer"]
    layer, cfg = _ssm(config)
    mixer = (mamba1_flops if layer == "Mamba1" else mamba2_flops)(d_model, cfg, seq_length)
    total = mixer.times(n_layer)
    if config.get("d_intermediate", 0):
        hidden = mlp_hidden(d_model, config["d_intermediate"])
        total = total + FlopCount(2 * (d_model * 2 * hidden + hidden * d_model) * seq_length, 0, 0).times(n_layer)
    head = 2 * d_model * padded_vocab_size(config) * seq_length
    return total + FlopCount(head, 0, 0)


def training_flops_per_token(config: Any, seq_length: int) -> float:
    """Forward + backward FLOPs per token at this sequence length."""
    return model_flops(config, seq_length).training / seq_length


def param_count(config: Any, include_embedding: bool = True) -> int:
    """Parameters of ``MambaLMHeadModel(config)``, counting a tied embedding / LM head once.

    ``include_embedding=False`` leaves out the input embedding but keeps the LM head's weight (the
    ``N`` of :func:`six_n`).
    """
    config = _as_dict(config)
    d_model, n_layer = config["d_model"], config["n_layer"]
    vocab = padded_vocab_size(config)
    norm = d_model if config.get("rms_norm", True) else 2 * d_model
    layer, cfg = _ssm(config)
    bias = cfg["bias"]
    if layer == "Mamba1":
        e, n, r, k = _mamba1_dims(d_model, cfg)
        mixer = d_model * 2 * e + (2 * e if bias else 0)
        mixer += e * k + (e if cfg["conv_bias"] else 0)
        mixer += e * (r + 2 * n) + r * e + e
        mixer += e * n + e
        mixer += e * d_model + (d_model if bias else 0)
    else:
        d = _mamba2_dims(d_model, cfg)
        mixer = d_model * d["in_proj"] + (d["in_proj"] if bias else 0)
        mixer += d["conv_dim"] * cfg["d_conv"] + (d["conv_dim"] if cfg["conv_bias"] else 0)
        mixer += 2 * d["heads"] + (d["d_ssm"] if cfg["D_has_hdim"] else d["heads"])
        mixer += d["d_ssm"] if cfg["rmsnorm"] else 0
        mixer += d["d_inner"] * d_model + (d_model if bias else 0)
    block = norm + mixer
    if config.get("d_intermediate", 0):
        hidden = mlp_hidden(d_model, config["d_intermediate"])
        block += norm + d_model * 2 * hidden + hidden * d_model
    head = vocab * d_model
    embedding = vocab * d_model
    tied = config.get("tie_embeddings", True)
    total = n_layer * block + norm + head
    if include_embedding and not tied:
        total += embedding
    return total


def six_n(config: Any) -> int:
    """The ``6 N`` training-FLOPs-per-token estimate (N excludes the input embedding)."""
    return 6 * param_count(config, include_embedding=False)


# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets, FLOP/s, by device-name fragment.
_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("A10", 125e12),
    ("V100", 125e12),
)


# Peak memory bandwidths from the same data sheets, bytes/s, by device-name fragment (the first match counts):
# the floors of the op benchmarks (bench/isolated.py), which read what the card's memory can move.
_PEAK_BANDWIDTH = (
    ("GH200 144G HBM3e", 4.9e12),
    ("GH200", 4.0e12),  # the 96 GB HBM3 module ("GH200 480GB")
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 864e9),
)


def _by_name(table: tuple[tuple[str, float], ...], device_name: str) -> float | None:
    """The value of the first fragment of ``table`` that ``device_name`` contains; ``None`` if none does."""
    return next((value for fragment, value in table if fragment in device_name), None)


def peak_bandwidth(device_name: str) -> float | None:
    """Peak memory bandwidth of a GPU, bytes/s; ``None`` when unknown."""
    return _by_name(_PEAK_BANDWIDTH, device_name)


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak dense FLOP/s of a GPU for bf16 / fp16 training; ``None`` when unknown (CPU, fp32)."""
    if precision not in ("bf16", "fp16"):
        return None
    return _by_name(_PEAK_FLOPS, device_name)
