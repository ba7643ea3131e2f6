"""Training metrics: gradient norm and optimizer statistics over all shards, and where they go.

Every log step writes one JSON object to ``<run_dir>/metrics.jsonl`` (appended, flushed) and a line
to the console (a tqdm progress bar when stderr is a terminal); trackers (wandb, TensorBoard) get
the same dict. Only rank 0 writes.
"""
from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from kotomamba.io import atomic_write
from kotomamba.train.banner import duration
from kotomamba.train.metrics_file import read_metrics
from kotomamba.train.run_dir import RunDir


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def global_grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm of all gradients of all shards (a 0-d fp32 tensor, equal on every rank).

    DTensor gradients reduce their per-shard norms over the mesh (HSDP: only over the shard dim,
    the replicas hold the same values), so the result is the norm of the full gradient.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=None)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.float()


@torch.no_grad()
def scale_grads_(parameters: list[torch.nn.Parameter], factor: float | torch.Tensor) -> None:
    """Multiply every gradient (each rank's local shard) by ``factor``: a float, or a 0-d tensor on the
    gradients' device, so that no value has to come to the host. One foreach launch, not one per parameter:
    a step can be bound by the host's kernel launches (bench/RESULTS.md profiles one)."""
    grads = [_local(p.grad) for p in parameters if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)


def clip_factor(max_norm: float, total_norm: torch.Tensor) -> torch.Tensor:
    """``min(1, max_norm / total_norm)`` as ``torch.nn.utils.clip_grad_norm_`` computes it (a 0-d tensor on
    the norm's device, so no value has to come to the host)."""
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


@torch.no_grad()
def clip_(parameters: list[torch.nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale all gradients by :func:`clip_factor`, as ``torch.nn.utils.clip_grad_norm_`` does.

    ``total_norm`` is the global norm as a 0-d tensor (:func:`global_grad_norm`), equal on every rank, so every
    shard is scaled by the same factor.
    """
    scale_grads_(parameters, clip_factor(max_norm, total_norm))


@torch.no_grad()
def unscale_and_clip_(parameters: list[torch.nn.Parameter], loss_scale: float, max_norm: float | None,
                      total_norm: torch.Tensor) -> None:
    """Divide loss-scaled gradients by ``loss_scale`` and clip them to ``max_norm`` (None or 0: no clipping)
    in one multiply. ``total_norm`` is the global norm of the unscaled gradients (a 0-d tensor)."""
    factor = clip_factor(max_norm, total_norm) / loss_scale if max_norm else 1.0 / loss_scale
    scale_grads_(parameters, factor)


class OptimizerStats:
    """Update/weight ratios and Adam moment norms per parameter group, over every shard.

    Call :meth:`before_step` (snapshots the local shards) and :meth:`after_step` around
    ``optimizer.step()`` on log steps only; the sums of squares of all groups are reduced in one
    collective over the shard group, so the figures describe the whole model, not rank 0's shard.
    ``shard_group`` ``None``: every rank holds the whole model (one process, replicas), nothing to reduce.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, shard_group):
        self.optimizer = optimizer
        self.group = shard_group
        self._before: list[list[torch.Tensor]] | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        self._before = [[_local(p).detach().clone() for p in g["params"]] for g in self.optimizer.param_groups]

    @torch.no_grad()
    def after_step(self) -> dict[str, float]:
        assert self._before is not None, "before_step() was not called"
        sums = []
        for group, before in zip(self.optimizer.param_groups, self._before):
            weight = update = m1 = m2 = torch.zeros((), dtype=torch.float64)
            for p, old in zip(group["params"], before):
                new = _local(p).detach()
                weight = weight + new.double().square().sum().cpu()
                update = update + (new.double() - old.double()).square().sum().cpu()
                state = self.optimizer.state.get(p, {})
                if "exp_avg" in state:
                    m1 = m1 + _local(state["exp_avg"]).double().square().sum().cpu()
                    m2 = m2 + _local(state["exp_avg_sq"]).double().square().sum().cpu()
            sums.append(torch.stack([weight, update, m1, m2]))
        self._before = None
        total = torch.stack(sums)
        if self.group is not None:
            device = "cuda" if dist.get_backend(self.group) == "nccl" else "cpu"
            total = total.to(device)
            dist.all_reduce(total, group=self.group)
        stats = {}
        for group, (weight, update, m1, m2) in zip(self.optimizer.param_groups, total.cpu().tolist()):
            name = group.get("group", "params")
            stats[f"optim/{name}/weight_norm"] = math.sqrt(weight)
            stats[f"optim/{name}/update_norm"] = math.sqrt(update)
            stats[f"optim/{name}/update_weight_ratio"] = math.sqrt(update) / math.sqrt(weight) if weight else 0.0
            stats[f"optim/{name}/exp_avg_norm"] = math.sqrt(m1)
            stats[f"optim/{name}/exp_avg_sq_norm"] = math.sqrt(m2)
        return stats


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory since the last call (GiB), or the process's peak RSS on CPU."""
    if device.type == "cuda":
        stats = {
            "memory/max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "memory/max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
        torch.cuda.reset_peak_memory_stats(device)
        return stats
    return {"memory/max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class MetricsSink:
    """Rank 0's outputs: ``metrics.jsonl``, the console and the trackers."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, trackers: list):
        path = RunDir(run_dir).metrics
        if path.exists():
            # A resumed run repeats the steps after its checkpoint: drop the records it will write again.
            kept = [json.dumps(record, sort_keys=True) + "\n" for record in read_metrics(path)
                    if record["step"] <= start_step]
            with atomic_write(path) as handle:
                handle.writelines(kept)
        self.file = open(path, "a")
        self.trackers = trackers
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()
        for tracker in self.trackers:
            tracker.log(record)
        line = _console_line(record)
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for tracker in self.trackers:
            tracker.close()
        self.file.close()


def _console_line(record: dict) -> str:
    keys = ("loss", "val_loss", "grad_norm", "lr", "tokens_per_s", "tflops", "mfu", "skipped_nonfinite")
    parts = [f"step {record['step']}"]
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    if record.get("eta_s") is not None:
        parts.append(f"eta {duration(record['eta_s'])}")
    return " | ".join(parts)
