"""How each optimizer step's gradients are made the same on every rank, and replicated data parallelism.

The trainer calls one :class:`GradientSync` around every step's micro-batches, whatever the strategy
(``parallelize.gradient_sync`` picks it): nothing for one process or FSDP2 (its reduce-scatter runs inside
the backward), the replica all-reduce on the last micro-batch for HSDP, and :class:`ReplicatedGradients`
for replicated runs: every rank holds the whole model; gradients are averaged by all-reduce.

For a model whose weights, gradients and optimizer state fit on one device (``parallelize.choose_data_parallel``
decides), sharding only adds collectives: FSDP2 all-gathers every block's weights in the forward and again
in the backward, and its hooks keep a micro-step from being captured as a CUDA graph. Replicated, a
micro-step is the single-device step (captured or eager) and the only communication is one all-reduce of
the gradients per optimizer step.

The gradients live in flat buckets (about ``BUCKET_BYTES`` each, in reverse parameter order, the order
the backward produces them): each parameter's ``.grad`` is a view into its bucket, set once here and
never dropped (the trainer zeroes gradients in place), so the backward accumulates straight into the
buffers that are all-reduced, as DistributedDataParallel's ``gradient_as_bucket_view`` does. The views
are attached at the first micro-batch, not before: torch's distributed state dict initialises AdamW's
state (a step over zero gradients, which it then sets to ``None``) only while no parameter has a
gradient, and a resumed job loads its checkpoint into that state before its first micro-batch.

When the all-reduce runs:

- eager micro-steps (``overlap=True``): on the last micro-step of an accumulation, a post-accumulate-grad
  hook on every parameter counts the bucket's gradients as they become final and launches the bucket's
  asynchronous all-reduce as soon as the last one has arrived, so the reduction of the later blocks'
  gradients runs while the backward computes the earlier blocks'. :meth:`finish` waits for them.
- CUDA-graphed micro-steps (``overlap=False``): no hook runs inside a replayed graph, and the captured
  step holds no collective, so :meth:`finish` all-reduces every bucket after the last micro-step. The
  all-reduce is not overlapped: one step pays for one reduction of the fp32 gradients (4 bytes per
  parameter) after its backward, which a model small enough to replicate recovers many times over in
  launch overhead the graph saves (docs/architecture.md).

Sums are divided by the world size after the reduction (gloo has no average), so the result is the
gradient of the mean loss over the global batch, as FSDP2's reduce-scatter gives it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

# DistributedDataParallel's default bucket size: large enough for the interconnect's bandwidth, small
# enough that the first buckets are ready while most of the backward is still to run.
BUCKET_BYTES = 25 * 2**20


class GradientSync:
    """What the trainer calls around one optimizer step's micro-batches. This base does nothing: one
    process has nothing to average, and FSDP2 reduce-scatters inside the backward."""

    keeps_grads = False
    """Whether gradients must be zeroed in place rather than set to ``None`` between steps."""

    def begin_micro_step(self, last: bool) -> None:
        """Called before each micro-batch's forward; ``last``: the accumulation's final micro-batch."""

    def finish(self) -> None:
        """Called after the last micro-batch's backward, before the gradient norm and the optimizer step:
        from then on every rank's ``.grad`` holds the gradient averaged over all ranks."""


class HybridShardGradients(GradientSync):
    """HSDP (FSDP2 on a 2-D mesh): all-reduce across the replicas only on the last micro-batch."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def begin_micro_step(self, last: bool) -> None:
        self.model.set_requires_all_reduce(last)


class ReplicatedGradients(GradientSync):
    """Gradients of a model replicated on every rank of ``group``, averaged in flat buckets (module docstring).

    ``params``: the trainable parameters, in the model's order; from the first micro-batch on, each has
    ``.grad`` as a view into a bucket of its dtype and device.
    """

    keeps_grads = True

    def __init__(self, params: list[torch.nn.Parameter], overlap: bool, group=None,
                 bucket_bytes: int = BUCKET_BYTES):
        self.group, self.overlap = group, overlap
        self.world = dist.get_world_size(group)
        self.buckets: list[list[torch.nn.Parameter]] = []
        open_buckets: dict[tuple, tuple[list, list]] = {}  # (dtype, device) -> (parameters, [bytes])
        for p in reversed(params):
            key = (p.dtype, p.device)
            if key not in open_buckets or open_buckets[key][1][0] >= bucket_bytes:
                open_buckets[key] = ([], [0])
                self.buckets.append(open_buckets[key][0])
            bucket, size = open_buckets[key]
            bucket.append(p)
            size[0] += p.numel() * p.element_size()
        self.flats: list[torch.Tensor] = []
        self.views: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.bucket_of: dict[torch.nn.Parameter, int] = {}
        for index, bucket in enumerate(self.buckets):
            flat = torch.zeros(sum(p.numel() for p in bucket), dtype=bucket[0].dtype, device=bucket[0].device)
            offset = 0
            for p in bucket:
                self.views.append((p, flat[offset:offset + p.numel()].view_as(p)))
                offset += p.numel()
                self.bucket_of[p] = index
            self.flats.append(flat)
        self.attached = False
        self.works: list = [None] * len(self.buckets)
        self.waiting = [len(bucket) for bucket in self.buckets]
        self.armed = False
        if overlap:
            for p in params:
                p.register_post_accumulate_grad_hook(self._ready)

    def begin_micro_step(self, last: bool) -> None:
        if not self.attached:
            for flat in self.flats:
                flat.zero_()
            for p, view in self.views:
                p.grad = view
            self.attached = True
        self.armed = self.overlap and last
        self.waiting = [len(bucket) for bucket in self.buckets]

    def _ready(self, param: torch.nn.Parameter) -> None:
        """Post-accumulate-grad hook: ``param.grad`` is final for this backward."""
        if not self.armed:
            return
        index = self.bucket_of[param]
        self.waiting[index] -= 1
        if self.waiting[index] == 0:
            self._launch(index)

    def _launch(self, index: int) -> None:
        self.works[index] = dist.all_reduce(self.flats[index], group=self.group, async_op=True)

    @torch.no_grad()
    def finish(self) -> None:
        # Buckets not launched yet: graphed steps, and buckets holding a parameter this backward did not reach.
        for index, work in enumerate(self.works):
            if work is None:
                self._launch(index)
        for work in self.works:
            work.wait()
        torch._foreach_mul_(self.flats, 1.0 / self.world)
        self.works = [None] * len(self.buckets)
        self.armed = False
