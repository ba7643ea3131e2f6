"""Model configuration: mamba-ssm's ``MambaConfig`` (``models/config_mamba.py``) and named presets.

``to_dict()`` is exactly the ``config.json`` that mamba-ssm's ``MambaLMHeadModel.save_pretrained``
writes, so released checkpoints and our exports share one file format.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kotomamba.errors import UserError

MAMBA1_SSM_KEYS = frozenset(
    {"layer", "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
     "dt_init_floor", "conv_bias", "bias", "use_fast_path"}
)
MAMBA2_SSM_KEYS = frozenset(
    {"layer", "d_state", "d_conv", "conv_init", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
     "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias",
     "conv_bias", "chunk_size", "use_mem_eff_path"}
)
# Options mamba-ssm accepts whose non-default values this implementation does not build.
_UNSUPPORTED_MAMBA2 = {"d_ssm": None, "D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False}


# The sizes every mamba-ssm config.json records (MambaConfig.from_dict refuses a mapping without them).
REQUIRED_FIELDS = ("d_model", "n_layer", "vocab_size")
NORM_EPS = 1e-5  # mamba-ssm's norm_epsilon default; its config.json does not record it

@dataclass
class MambaConfig:
    """Architecture of a Mamba-1 / Mamba-2 language model (field names and defaults of mamba-ssm).

    ``ssm_cfg`` holds the mixer's keyword arguments: ``layer`` ("Mamba1", the default, or "Mamba2"),
    ``d_state``, ``d_conv``, ``expand``, and for Mamba-2 ``headdim``, ``ngroups``, ``chunk_size`` ...
    Unset keys take mamba-ssm's defaults (see :meth:`mixer_options`).
    """

    d_model: int = 2560
    d_intermediate: int = 0
    n_layer: int = 64
    vocab_size: int = 50277
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        self.validate()

    @property
    def layer(self) -> str:
        """"Mamba1" or "Mamba2"."""
        return self.ssm_cfg.get("layer", "Mamba1")

    @property
    def resets_at_documents(self) -> bool:
        """Whether the mixers can reset their state where ``seq_idx`` (the document number) changes: Mamba-2's
        scan takes ``seq_idx``; Mamba-1's (mamba-ssm's and ours) has no such input."""
        return self.layer == "Mamba2"

    @property
    def padded_vocab_size(self) -> int:
        """vocab_size rounded up to a multiple of pad_vocab_size_multiple (the embedding's rows)."""
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def mixer_options(self) -> dict[str, Any]:
        """All mixer options with mamba-ssm's defaults filled in (``layer`` removed)."""
        opts = {k: v for k, v in self.ssm_cfg.items() if k != "layer"}
        if self.layer == "Mamba1":
            defaults = dict(d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                            dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False)
        else:
            defaults = dict(d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, ngroups=1,
                            A_init_range=(1, 16), dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4,
                            dt_limit=(0.0, float("inf")), bias=False, conv_bias=True, chunk_size=256)
        defaults.update(opts)
        defaults.pop("use_fast_path", None)
        defaults.pop("use_mem_eff_path", None)
        for key in _UNSUPPORTED_MAMBA2:
            defaults.pop(key, None)
        return defaults

    def validate(self, source: str = "model config") -> None:
        """Raise UserError naming the offending field when this config cannot be built."""
        def bad(fieldname: str, message: str) -> UserError:
            return UserError(f"{source}: field '{fieldname}': {message}")

        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, f"must be a positive integer, got {value!r}")
        if not isinstance(self.ssm_cfg, dict):
            raise bad("ssm_cfg", f"must be a mapping, got {type(self.ssm_cfg).__name__}")
        if self.layer not in ("Mamba1", "Mamba2"):
            raise bad("ssm_cfg.layer", f"must be 'Mamba1' or 'Mamba2', got {self.layer!r}")
        allowed = MAMBA1_SSM_KEYS if self.layer == "Mamba1" else MAMBA2_SSM_KEYS
        unknown = sorted(set(self.ssm_cfg) - allowed)
        if unknown:
            raise bad(f"ssm_cfg.{unknown[0]}", f"not an option of a {self.layer} layer "
                      f"(known: {', '.join(sorted(allowed))})")
        if self.layer == "Mamba2":
            for key, supported in _UNSUPPORTED_MAMBA2.items():
                if self.ssm_cfg.get(key, supported) != supported:
                    raise bad(f"ssm_cfg.{key}", f"only {supported!r} is supported, got {self.ssm_cfg[key]!r}")
            opts = self.mixer_options()
            d_inner = opts["expand"] * self.d_model
            if d_inner % opts["headdim"]:
                raise bad("ssm_cfg.headdim", f"expand * d_model = {d_inner} is not a multiple of {opts['headdim']}")
            if (d_inner // opts["headdim"]) % opts["ngroups"]:
                raise bad("ssm_cfg.ngroups", f"{d_inner // opts['headdim']} heads do not split into "
                          f"{opts['ngroups']} groups")
        if self.d_intermediate != 0:
            raise bad("d_intermediate", "MLP blocks (d_intermediate > 0) are not supported; use 0")
        if self.attn_layer_idx:
            raise bad("attn_layer_idx", "attention layers are not supported; use []")
        if not self.rms_norm:
            raise bad("rms_norm", "only RMSNorm models (true) are supported")

    def to_dict(self) -> dict[str, Any]:
        """mamba-ssm's config.json content (every field, ssm_cfg as given)."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> "MambaConfig":
        """Read a mamba-ssm config.json mapping; unknown fields and missing sizes raise UserError naming ``source``.

        The sizes (:data:`REQUIRED_FIELDS`) are in every config mamba-ssm writes; their defaults are a 2.8b
        model's, so taking them for a config that lacks them would build the wrong model (tens of GB) and
        then blame the weights.
        """
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{source}: field '{unknown[0]}': not a MambaConfig field "
                            f"(known: {', '.join(sorted(names))})")
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            raise UserError(f"{source}: missing field{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(repr(name) for name in missing)} (a mamba-ssm config.json names the "
                            f"model's {', '.join(REQUIRED_FIELDS)})")
        try:
            cfg = cls.__new__(cls)
            for f in dataclasses.fields(cls):
                if f.name in data:
                    value = copy.deepcopy(data[f.name])
                elif f.default_factory is not dataclasses.MISSING:
                    value = f.default_factory()
                else:
                    value = f.default
                setattr(cfg, f.name, value)
            cfg.validate(source)
        except TypeError as exc:
            raise UserError(f"{source}: {exc}") from exc
        return cfg


# Released sizes (state-spaces on the Hugging Face hub): name -> (d_model, n_layer).
_MAMBA1_SIZES = {"130m": (768, 24), "370m": (1024, 48), "790m": (1536, 48), "1.4b": (2048, 48),
                 "2.8b": (2560, 64)}
_MAMBA2_SIZES = {"130m": (768, 24), "370m": (1024, 48), "780m": (1536, 48), "1.3b": (2048, 48),
                 "2.7b": (2560, 64)}
# The tiny test model's mixer, per layer type: small enough for CPU tests in seconds.
_TINY_SSM = {"Mamba1": {"layer": "Mamba1", "d_state": 8, "d_conv": 4, "expand": 2},
             "Mamba2": {"layer": "Mamba2", "d_state": 16, "d_conv": 4, "expand": 2, "headdim": 16,
                        "ngroups": 1, "chunk_size": 16}}


def _presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {
        "tiny": dict(d_model=64, n_layer=2, vocab_size=512, ssm_cfg=_TINY_SSM["Mamba2"],
                     pad_vocab_size_multiple=8),
    }
    for name, (d_model, n_layer) in _MAMBA1_SIZES.items():
        presets[f"mamba-{name}"] = dict(
            d_model=d_model, n_layer=n_layer, vocab_size=50277, pad_vocab_size_multiple=8,
            ssm_cfg={"layer": "Mamba1", "d_state": 16, "d_conv": 4, "expand": 2},
        )
    for name, (d_model, n_layer) in _MAMBA2_SIZES.items():
        # The released Mamba-2 config.json files pad the vocabulary to a multiple of 16 (50288 rows).
        presets[f"mamba2-{name}"] = dict(
            d_model=d_model, n_layer=n_layer, vocab_size=50277, pad_vocab_size_multiple=16,
            ssm_cfg={"layer": "Mamba2", "d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64,
                     "ngroups": 1, "chunk_size": 256},
        )
    return presets


PRESETS: dict[str, dict[str, Any]] = _presets()


def preset(name: str, **overrides: Any) -> MambaConfig:
    """A named configuration (``tiny``, ``mamba-130m`` ... ``mamba-2.8b``, ``mamba2-130m`` ...
    ``mamba2-2.7b``) with fields overridden.

    ``ssm_cfg`` overrides are merged into the preset's mixer options. If they change the layer
    type, they start from that type's defaults instead (for ``tiny``: its small mixer of that type),
    so ``preset("tiny", ssm_cfg={"layer": "Mamba1"})`` is the tiny Mamba-1 model.
    """
    if name not in PRESETS:
        raise UserError(f"model preset '{name}' is unknown (known: {', '.join(PRESETS)})")
    fields = copy.deepcopy(PRESETS[name])
    ssm_override = overrides.pop("ssm_cfg", None)
    if ssm_override:
        layer = ssm_override.get("layer", fields["ssm_cfg"]["layer"])
        if layer != fields["ssm_cfg"]["layer"]:
            fields["ssm_cfg"] = copy.deepcopy(_TINY_SSM.get(layer, {})) if name == "tiny" else {}
        fields["ssm_cfg"].update(ssm_override)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(MambaConfig)})
    if unknown:
        raise UserError(f"model preset '{name}': field '{unknown[0]}': not a MambaConfig field")
    fields.update(overrides)
    return MambaConfig(**fields)


def configured(keys: dict, vocab_size: int | None = None) -> MambaConfig:
    """The model a config's ``model`` section names: ``preset`` (default ``tiny``) with its other keys as
    overrides, and ``vocab_size`` (if given) where the section sets none (or null)."""
    fields = dict(keys)
    name = fields.pop("preset", "tiny")
    vocab = fields.pop("vocab_size", None)
    vocab = vocab if vocab is not None else vocab_size
    return preset(name, **fields) if vocab is None else preset(name, vocab_size=vocab, **fields)
