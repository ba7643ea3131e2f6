# Helpers shared by the rules: per-rule resources from config, log paths, quoting.

import shlex

from kotomamba.pipeline.config import data_path, stage_index, stage_sources, stage_train_config

DEFAULT_RESOURCES = {
    "corpus": {"runtime": 30, "mem_mb": 2000},
    "tokenizer": {"runtime": 60, "mem_mb": 4000},
    "tokenize": {"runtime": 60, "mem_mb": 4000},
    "train": {"runtime": 60, "mem_mb": 8000},
    "convert": {"runtime": 30, "mem_mb": 8000},
    "evaluate": {"runtime": 60, "mem_mb": 8000},
    "report": {"runtime": 10, "mem_mb": 1000},
}


def rule_resources(name):
    """Scheduler resources of one rule: the defaults above, overridden by config `resources.<rule>`."""
    return {**DEFAULT_RESOURCES[name], **config["resources"].get(name, {})}


def log_path(name):
    return f"{PATHS.root}/logs/{name}.log"


def tokenized_files(sources):
    return [f"{PATHS.tokenized_prefix(source)}.{ext}" for source in sources for ext in ("bin", "idx")]


def quoted(values, flag):
    return " ".join(f"{flag} {shlex.quote(value)}" for value in values)
