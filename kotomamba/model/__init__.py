"""kotomamba.model: config and presets, Mamba-1 / Mamba-2 mixers, blocks and the LM.

The LM's names are loaded on first use (PEP 562), so reading a config (``kotomamba.model.config``,
e.g. the pipeline's check before any job runs) does not import torch.
"""
from kotomamba.model.config import MambaConfig, preset

__all__ = ["Block", "InferenceCache", "MambaConfig", "MambaLM", "preset"]


def __getattr__(name: str):
    if name in ("Block", "InferenceCache", "MambaLM"):
        from kotomamba.model import lm

        return getattr(lm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
