"""kotomamba: pretrain Mamba-1 / Mamba-2 language models on your own data, reproducibly.

Sub-packages, one per pipeline stage, each usable alone: ``data`` (download, tokenizers, indexed
datasets), ``model`` (Mamba LM, generation), ``ops`` (kernels and their reference twins),
``train`` (FSDP2 trainer), ``convert`` (transformers / mamba-ssm export and import) and
``evaluate`` (perplexity, samples, lm-evaluation-harness bridge).
"""

__version__ = "0.1.0"
