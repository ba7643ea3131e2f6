"""What the Snakemake workflow needs from the library: config validation and artifact paths."""
from kotomamba.pipeline.config import RunPaths, deep_merge, stage_train_config, validate

__all__ = ["RunPaths", "deep_merge", "stage_train_config", "validate"]
