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
    """Scheduler resources of one rule: the defaults above, overridden by config `resources.<rule>`.

    `runtime` (minutes) grows with each retry (attempt n gets n times the first), so a job that ran
    out of wall time is resubmitted with more; training resumes from its last checkpoint. Training
    asks for `launch.nodes` nodes; on more than one it is an `mpi` job for SLURM's executor (the
    shell runs once on the first node and `kotomamba launch` starts one srun task per node).
    """
    resources = {**DEFAULT_RESOURCES[name], **config["resources"].get(name, {})}
    first_runtime = resources.pop("runtime")
    resources["runtime"] = lambda wildcards, attempt: first_runtime * attempt
    if name == "train":
        nodes = config["launch"]["nodes"]
        resources.setdefault("nodes", nodes)
        if nodes > 1:
            resources.update(mpi="srun", tasks=nodes, tasks_per_gpu=0)
    return resources


def log_path(name):
    return f"{PATHS.root}/logs/{name}.log"


def tokenized_files(sources):
    return [f"{PATHS.tokenized_prefix(source)}.{ext}" for source in sources for ext in ("bin", "idx")]


def quoted(values, flag):
    return " ".join(f"{flag} {shlex.quote(value)}" for value in values)
