"""kotomamba.data: download, tokenizers, preprocessing to Megatron .bin/.idx, GPT-style datasets.

The contracts other stages use (docs/architecture.md, "Data") are importable from here; they load
lazily so that ``kotomamba preprocess`` workers do not pay for torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_tokenizer": "kotomamba.data.tokenizer",
    "Tokenizer": "kotomamba.data.tokenizer",
    "IndexedDataset": "kotomamba.data.indexed_dataset",
    "IndexedDatasetWriter": "kotomamba.data.indexed_dataset",
    "build_gpt_datasets": "kotomamba.data.gpt_dataset",
    "GPTDataset": "kotomamba.data.gpt_dataset",
    "BlendedDataset": "kotomamba.data.gpt_dataset",
    "MicroBatchSampler": "kotomamba.data.sampler",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kotomamba.data' has no attribute {name!r}")
