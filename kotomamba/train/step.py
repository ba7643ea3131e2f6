"""One optimizer step, as ``kotomamba train`` runs it and bench/train_throughput.py times it.

A step draws ``accumulation`` micro-batches (``{"tokens": [b, L+1] int64, "seq_idx": [b, L] int32 or
absent}``, as the data loader yields them), runs each one's forward, loss and backward (eagerly, or
replayed from a CUDA graph: ``kotomamba.train.cuda_graph``), then decides on the global gradient norm:

- a finite loss with a non-finite norm under a loss scale (fp16) is an overflow: the step is skipped
  and the scale halved (``kotomamba.train.loss_scale``);
- a non-finite loss or norm otherwise is skipped and counted as non-finite;
- else the gradients are unscaled and clipped to ``grad_clip`` in one multiply (folded into a fused AdamW's
  own read of them: :func:`scale_for_step`), and the optimizer steps.

Each micro-batch's loss is multiplied by ``1 / accumulation`` before its backward and the gradients are
averaged over ranks (inside the backward by FSDP2, after the last micro-batch by ``kotomamba.train.grad_sync``
for replicas), so the gradient is the mean over the global batch whatever the world size.
The gradient norm is the L2 norm of every shard's gradients together (:func:`global_grad_norm`), the
clipping factor is ``torch.nn.utils.clip_grad_norm_``'s. Steps listed in ``train.skip_ranges`` draw
their micro-batches and change nothing (:meth:`TrainStep.skip`).

What a step did is returned (:class:`StepOutcome`); the counters it feeds live in
``kotomamba.train.train_state``. The step knows nothing of configs or checkpoints: it takes the model
(already wrapped by ``kotomamba.train.parallelize``), the optimizer, the ``GradientSync`` that
``parallelize.gradient_sync`` picks for the data-parallel kind, and a few settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist

from kotomamba.train.cuda_graph import GraphedMicroStep, micro_step
from kotomamba.train.grad_sync import GradientSync

# What a step did: the optimizer stepped, or why not.
DONE, OVERFLOW, NONFINITE, RANGE = "done", "overflow", "nonfinite", "range"


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor is its own)."""
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
    gradients' device, so that no value has to come to the host. One foreach launch, not one per
    parameter: a small model's step can be bound by the host's kernel launches."""
    grads = [_local(p.grad) for p in parameters if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)


def clip_factor(max_norm: float, total_norm: torch.Tensor) -> torch.Tensor:
    """``min(1, max_norm / total_norm)`` as ``torch.nn.utils.clip_grad_norm_`` computes it (a 0-d tensor on
    the norm's device, so no value has to come to the host)."""
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


def grad_factor(loss_scale: float, max_norm: float | None, total_norm: torch.Tensor) -> float | torch.Tensor:
    """What every gradient is multiplied by before the optimizer steps: ``1 / loss_scale`` (loss-scaled
    gradients, fp16), times :func:`clip_factor` when ``max_norm`` (None or 0: no clipping). ``total_norm`` is
    the global norm of the unscaled gradients (a 0-d tensor, equal on every rank, so every shard gets the
    same factor)."""
    return clip_factor(max_norm, total_norm) / loss_scale if max_norm else 1.0 / loss_scale


def takes_grad_scale(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` divides each gradient by the optimizer's ``grad_scale`` as it reads it:
    torch's fused Adam and AdamW (the attribute ``torch.amp.GradScaler`` sets for them)."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and bool(optimizer.defaults.get("fused"))


@torch.no_grad()
def scale_for_step(optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter],
                   factor: float | torch.Tensor) -> None:
    """Have the next ``optimizer.step()`` see every gradient times ``factor`` (:func:`grad_factor`). A fused
    Adam(W) is handed ``1 / factor`` as its ``grad_scale`` and divides as it reads each gradient, which saves
    a pass over all gradients; any other optimizer gets gradients multiplied in place (:func:`scale_grads_`)."""
    unchanged = isinstance(factor, float) and factor == 1.0
    if takes_grad_scale(optimizer):
        device = _local(parameters[0]).device
        optimizer.grad_scale = None if unchanged else torch.as_tensor(factor, dtype=torch.float32,
                                                                      device=device).reciprocal()
    elif not unchanged:
        scale_grads_(parameters, factor)


def perplexity(loss: float) -> float:
    """``exp(loss)`` (capped at ``exp(50)``), NaN for a non-finite loss."""
    return math.exp(min(loss, 50.0)) if math.isfinite(loss) else float("nan")


@dataclass
class StepOutcome:
    """``kind``: :data:`DONE`, :data:`OVERFLOW`, :data:`NONFINITE` or :data:`RANGE`; ``record``: the step's
    metrics (``loss``, ``ppl``, ``grad_norm``, on log steps the optimizer statistics; ``skipped`` for a range)."""

    kind: str
    record: dict = field(default_factory=dict)


class TrainStep:
    """One optimizer step over ``accumulation`` micro-batches (the module docstring has the rules).

    ``model``: a ``MambaLM`` wrapped by ``parallelize`` (its ``forward(tokens, labels=, seq_idx=)`` returns
    the mean loss). ``loss_scale``: a ``LossScale`` (fp16 with fp32 masters) or None. ``graphed``: replay
    each micro-step from a CUDA graph (``kotomamba.train.step_choice`` decides where that is safe).
    ``grad_sync``: called around the micro-batches (``kotomamba.train.grad_sync``; None: nothing to do, as
    for one process or FSDP2). ``stats_group``: the process group the optimizer statistics reduce over (the
    shard group; the replicas of HSDP hold the same values); None: every rank holds the whole model.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, accumulation: int,
                 grad_clip: float | None, loss_scale=None, graphed: bool = False,
                 grad_sync: GradientSync | None = None, stats_group=None):
        self.model, self.optimizer, self.accumulation = model, optimizer, accumulation
        self.grad_clip, self.loss_scale = grad_clip, loss_scale
        self.grad_sync = grad_sync if grad_sync is not None else GradientSync()
        self.stats_group = stats_group
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.graphed = GraphedMicroStep(model, self.params, 1.0 / accumulation) if graphed else None

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def skip(self, batches: Iterator[dict]) -> StepOutcome:
        """A step of ``train.skip_ranges``: its micro-batches are drawn (the data order stays that of a run
        without the range) and nothing else happens."""
        for _ in range(self.accumulation):
            next(batches)
        return StepOutcome(RANGE, {"skipped": "range"})

    def __call__(self, batches: Iterator[dict], log_stats: bool = False) -> StepOutcome:
        """Run one step on the next ``accumulation`` micro-batches of ``batches``. ``log_stats``: add the
        optimizer statistics (update/weight ratios, moment norms; a collective) to the record."""
        device = _local(self.params[0]).device
        world = dist.get_world_size()
        scale = self.loss_scale.scale if self.loss_scale is not None else 1.0
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        for micro in range(self.accumulation):
            self.grad_sync.begin_micro_step(micro == self.accumulation - 1)
            tokens, seq_idx = on_device(next(batches), device)
            if self.graphed is not None:
                loss = self.graphed(tokens, seq_idx)
            else:
                loss = micro_step(self.model, tokens, seq_idx, scale / self.accumulation)
            loss_sum += loss.float()
        self.grad_sync.finish()
        dist.all_reduce(loss_sum)
        norm = global_grad_norm(self.params) / scale
        # One transfer to the host per step for both values (the skip decisions below need them there).
        loss_value, grad_norm = torch.stack([loss_sum / (self.accumulation * world), norm]).tolist()
        record = {"loss": loss_value, "ppl": perplexity(loss_value), "grad_norm": grad_norm}
        if math.isfinite(loss_value) and not math.isfinite(grad_norm) and self.loss_scale is not None:
            self.loss_scale.update(False)
            self.zero_grad()
            return StepOutcome(OVERFLOW, record)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.zero_grad()
            return StepOutcome(NONFINITE, record)
        scale_for_step(self.optimizer, self.params, grad_factor(scale, self.grad_clip, norm))
        if self.loss_scale is not None:
            self.loss_scale.update(True)
        stats = OptimizerStats(self.optimizer, self.stats_group) if log_stats else None
        if stats is not None:
            stats.before_step()
        self.optimizer.step()
        self.zero_grad()
        if stats is not None:
            record.update(stats.after_step())
        return StepOutcome(DONE, record)

    def zero_grad(self) -> None:
        # Replicas' gradients are views into the all-reduce buckets: zero them there instead of dropping them.
        self.optimizer.zero_grad(set_to_none=not self.grad_sync.keeps_grads)


class OptimizerStats:
    """Update/weight ratios and Adam moment norms per parameter group, over every shard.

    Call :meth:`before_step` (snapshots the local shards) and :meth:`after_step` around
    ``optimizer.step()`` on log steps only; the sums of squares of all groups are reduced in one
    collective over the shard group, so the figures describe the whole model, not rank 0's shard.
    ``shard_group`` ``None``: every rank holds the whole model (one process, replicas), nothing to reduce.
    The sums stay on the device until one transfer at the end (a transfer per tensor waits for the
    device each time, and a model has hundreds of them), in float64 from foreach norms (a few launches
    for all tensors, no float64 copies); the snapshot is the only copy of the weights made.
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
            new = [_local(p).detach() for p in group["params"]]
            device = new[0].device
            states = [self.optimizer.state.get(p, {}) for p in group["params"]]
            moments = [[_local(state[k]) for state in states if k in state] for k in ("exp_avg", "exp_avg_sq")]
            # The snapshot becomes minus the update, in place (no second copy of the weights), in their dtype:
            # one rounding at most (none where a weight changes by less than half of itself, Sterbenz's lemma).
            torch._foreach_sub_(before, new)
            sums.append(torch.stack([_sum_of_squares(new, device), _sum_of_squares(before, device),
                                     *(_sum_of_squares(m, device) for m in moments)]))
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


def _sum_of_squares(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The sum of the squares of every element of ``tensors`` (on ``device``), float64 [] on ``device``."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64)).square().sum()


def on_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A micro-batch's tokens [b, L+1] and seq_idx [b, L] (or None) on ``device``."""
    tokens = batch["tokens"].to(device, non_blocking=True)
    seq_idx = batch.get("seq_idx")
    if seq_idx is not None:
        seq_idx = seq_idx.to(device, non_blocking=True)
    return tokens, seq_idx
