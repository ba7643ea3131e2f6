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
GPU_RULES = ("train", "convert", "evaluate")  # what `launch.device: gpu` gives GPUs
# The most minutes a retry asks for unless `resources.<rule>.max_runtime` says otherwise: ABCI's on-demand
# limit (12 h); a request above a site's maximum is refused at submission instead of retried.
MAX_RETRY_RUNTIME = 720


def rule_resources(name):
    """Scheduler resources of one rule: the defaults above, overridden by config `resources.<rule>`.

    `runtime` (minutes) grows with each retry (attempt n gets n times the first, up to `max_runtime`,
    default MAX_RETRY_RUNTIME, never below the first), so a job that ran out of wall time is
    resubmitted with more. Training's stays: a stage longer than a job goes on in the same job, run
    again by its scheduler (requeue in place, kotomamba/train/requeue.py), and a retry after a failure
    resumes from the last checkpoint with the same wall time. Training asks for `launch.nodes` nodes;
    on more than one it is an `mpi` job for SLURM's executor (the shell runs once on the first node
    and `kotomamba launch` starts one srun task per node).

    GPUs: `gpus_per_node` is the one request every profile reads (SGE and ABCI submit.py turn it
    into their own resources); for SLURM's executor it also becomes `gres: gpu:N` (per node) unless
    the run config names its own `gres` or `gpu`. With `launch.device: gpu` training asks for
    `launch.nproc_per_node` per node, and convert/evaluate for one, so they run where a GPU-sized
    model fits; an explicit `resources.<rule>.gpus_per_node` wins.
    """
    resources = {**DEFAULT_RESOURCES[name], **config["resources"].get(name, {})}
    first_runtime = resources.pop("runtime")
    most = max(first_runtime, resources.pop("max_runtime", MAX_RETRY_RUNTIME))
    if name == "train":
        resources["runtime"] = first_runtime
    else:
        resources["runtime"] = lambda wildcards, attempt: min(first_runtime * attempt, most)
    launch = config["launch"]
    if name == "train":
        resources.setdefault("nodes", launch["nodes"])
        if launch["nodes"] > 1:
            resources.update(mpi="srun", tasks=launch["nodes"], tasks_per_gpu=0)
    if launch["device"] == "gpu" and name in GPU_RULES:
        resources.setdefault("gpus_per_node", launch["nproc_per_node"] if name == "train" else 1)
    if resources.get("gpus_per_node") and "gres" not in resources and "gpu" not in resources:
        resources["gres"] = f"gpu:{resources['gpus_per_node']}"
    return resources


def log_path(name):
    return f"{PATHS.root}/logs/{name}.log"


def tokenized_files(sources):
    return [f"{PATHS.tokenized_prefix(source)}.{ext}" for source in sources for ext in ("bin", "idx")]


def quoted(values, flag):
    return " ".join(f"{flag} {shlex.quote(value)}" for value in values)
