"""kotomamba.model: config and presets, Mamba-1 / Mamba-2 mixers, blocks and the LM."""
from kotomamba.model.config import MambaConfig, preset
from kotomamba.model.lm import Block, InferenceCache, MambaLM

__all__ = ["Block", "InferenceCache", "MambaConfig", "MambaLM", "preset"]
