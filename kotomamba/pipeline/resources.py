"""The run config's ``resources.<rule>``, checked before any job runs.

Snakemake hands a rule's resources to the profile as they are: a misspelt name (``runtme``) is passed on
and read by nobody, a runtime of 0 or below becomes no wall time or a negative ``h_rt``, and a GPU request
smaller than the training's processes per node is found only on the node, after the job queued. So every
name must be one a profile or Snakemake reads, and the numbers must be what the schedulers take;
:func:`problems` says what is not, as ``(key path, message)`` pairs that
:func:`kotomamba.pipeline.config.validate` locates in the user's file.
"""
from __future__ import annotations

import difflib

from kotomamba.cluster_jobs import SITE_SETTINGS

# Read by rules/common.smk and Snakemake itself (runtime and max_runtime are minutes by then:
# config.runtime_minutes; Snakemake turns mem and disk, sizes such as "16GB", and the mebibyte forms into
# mem_mb and disk_mb), then the names snakemake-executor-plugin-slurm reads from a job's resources.
MINUTES = ("runtime", "max_runtime")
MEGABYTES = ("mem_mb", "disk_mb", "mem_mb_per_cpu", "mem_mib", "disk_mib")
SIZES = ("mem", "disk")
COUNTS = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "cpus_per_gpu": 1, "tasks": 1,
          "tasks_per_node": 1, "gpu": 0}  # whole numbers, at least this
SLURM_NAMES = ("slurm_account", "slurm_partition", "slurm_extra", "slurm_cluster", "cluster", "clusters", "gres",
               "gpu_model", "constraint", "qos", "mpi", "tasks_per_gpu")
KNOWN = MINUTES + MEGABYTES + SIZES + tuple(COUNTS) + SLURM_NAMES + SITE_SETTINGS


def _whole(value) -> int | None:
    """``value`` as a whole number (an int, or a string of digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    return None


def gres_gpus(gres: str) -> int | None:
    """GPUs per node of a SLURM ``gres`` (``gpu:8``, ``gpu:h100:8``, ``gpu:h100`` = 1), None without a gpu."""
    counts = []
    for item in str(gres).split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu":
            counts.append(int(parts[-1]) if len(parts) > 1 and parts[-1].isdecimal() else 1)
    return sum(counts) if counts else None


def _value_problem(key: str, value) -> str | None:
    if key in MINUTES and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        return f"{value!r} is not a positive number of minutes"
    if key in MEGABYTES and (_whole(value) is None or _whole(value) <= 0):
        return f"{value!r} is not a positive whole number of megabytes (16 GB: 16000)"
    if key in COUNTS and (_whole(value) is None or _whole(value) < COUNTS[key]):
        return f"{value!r} is not a whole number of at least {COUNTS[key]}"
    return None


def _rule_problems(rule: str, settings: dict, launch: dict) -> list:
    found = []
    for key, value in settings.items():
        path = ["resources", rule, key]
        if key not in KNOWN:
            near = difflib.get_close_matches(key, KNOWN, n=1)
            hint = f"; did you mean `{near[0]}`?" if near else " (docs/clusters.md lists the resources)"
            found.append((path, f"unknown resource `{key}`, which no profile reads{hint}"))
        elif (problem := _value_problem(key, value)) is not None:
            found.append((path, problem))
    if found:
        return found
    nodes = launch["nodes"] if rule == "train" else 1
    if "nodes" in settings and _whole(settings["nodes"]) != nodes:
        reason = "launch.nodes" if rule == "train" else "every rule but train runs on one node"
        found.append((["resources", rule, "nodes"], f"{settings['nodes']} nodes, but the job runs on {nodes} "
                      f"({reason}); set launch.nodes for training's node count"))
    if rule == "train" and launch["device"] == "gpu":
        for key, gpus in (("gres", gres_gpus(settings.get("gres", ""))), ("gpus_per_node", settings.get("gpus_per_node"))):
            if gpus is not None and key in settings and _whole(gpus) < launch["nproc_per_node"]:
                found.append((["resources", rule, key], f"{settings[key]!r} gives a node {gpus} GPU(s) for "
                              f"launch.nproc_per_node {launch['nproc_per_node']} processes, each of which needs "
                              "one (launch.device gpu)"))
    return found


def problems(config: dict) -> list:
    """What is wrong with ``config["resources"]`` (runtimes already in minutes), as (key path, message)."""
    return [problem for rule, settings in config["resources"].items()
            for problem in _rule_problems(rule, settings, config["launch"])]
