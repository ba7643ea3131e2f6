"""One micro-batch's forward, loss and backward captured once as a CUDA graph and replayed.

A small model's step on a fast GPU waits on the host: every block launches dozens of kernels (the
Mamba-2 mixer's backward alone is a chain of Triton launches), and Python issues them more slowly
than the GPU runs them (bench/RESULTS.md profiles how busy that leaves the card). Replaying a
captured graph issues the whole micro-step in one launch. The rest of the step (``kotomamba.train.step``:
the gradient norm, the skip decisions, clipping, the optimizer) stays eager and unchanged.

Rules the capture relies on (PyTorch, "CUDA Graphs" in the CUDA semantics notes): the same shapes
every call (the trainer's micro-batches are), inputs copied into static buffers, no host
synchronisation inside the step (the chunked cross-entropy keeps its token count on the device),
Triton autotuning done before the capture (the eager warm-up calls do it), and gradients at
addresses that stay the same from one replay to the next. Two graphs, as autograd treats a ``.grad``
that is None and one that is not: the first micro-batch of a step (every ``.grad`` None) is captured
writing the gradients into memory of its own, handed back as the ``.grad`` after each replay; the
later micro-batches of an accumulation (``.grad`` set) are captured adding into them in place. So a
step of one micro-batch reads and writes each gradient once, as the eager step does, where a graph
that always adds would also zero every gradient between steps and read it again in the backward (a
launch per parameter each, and the gradients' memory moved twice more). Where the gradients must
stay where they are (the all-reduce buckets of ``kotomamba.train.grad_sync``), they are never None
and the adding graph runs every micro-batch. No collective inside: FSDP's collectives and hooks are
not captured, so several processes graph their micro-steps only when each replicates the whole model
and all-reduces the gradients after the last one (``kotomamba.train.grad_sync``).
"""
from __future__ import annotations

import torch


def micro_step(model: torch.nn.Module, tokens: torch.Tensor, seq_idx: torch.Tensor | None,
               multiplier: float) -> torch.Tensor:
    """One micro-batch, eagerly: ``loss = model(tokens[:, :-1], labels=tokens[:, 1:], seq_idx=seq_idx)``, then
    ``(loss * multiplier).backward()``. Returns the loss, detached. What :class:`GraphedMicroStep` captures."""
    loss = model(tokens[:, :-1], labels=tokens[:, 1:], seq_idx=seq_idx)
    (loss * multiplier).backward()
    return loss.detach()


class GraphedMicroStep:
    """:func:`micro_step`, into the parameters' ``.grad`` (written where every ``.grad`` is None, else added
    to), from CUDA graphs (the module docstring says why two).

    The first ``warmup`` calls run eagerly (and autotune the kernels); each kind of call after them is
    captured the first time it comes and replayed from then on. tokens [b, L+1] int64, seq_idx [b, L]
    int32 or None, with the shapes of the first call. Returns the micro-batch's loss, a 0-d float32
    tensor that a later call may overwrite.
    """

    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter], multiplier: float,
                 warmup: int = 2):
        self.model, self.params, self.multiplier, self.warmup = model, params, multiplier, warmup
        self.calls = 0
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}  # "write" and "add"
        self.losses: dict[str, torch.Tensor] = {}
        self.grads: list[torch.Tensor | None] = []  # what the "write" graph fills, one per parameter
        self.added_into: list[torch.Tensor] = []  # what the "add" graph adds into, one per parameter
        self.static: dict[str, torch.Tensor | None] = {}

    def _capture(self, kind: str) -> None:
        if kind == "add":
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.added_into = [p.grad for p in self.params]
        # Blocks the warm-up left cached in the ordinary pool go back before the first graph takes its own;
        # the second shares it (the two never run at once, and what one leaves for later is held here).
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        pool = next(iter(self.graphs.values())).pool() if self.graphs else None
        with torch.cuda.graph(graph, pool=pool):
            self.losses[kind] = micro_step(self.model, self.static["tokens"], self.static["seq_idx"],
                                           self.multiplier)
        self.graphs[kind] = graph
        if kind == "write":
            self.grads = [p.grad for p in self.params]

    def __call__(self, tokens: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.warmup:
            # On a side stream, as PyTorch's recipe for capturing autograd asks: what the first backward
            # sets up then belongs to a stream other than the one the capture will record.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = micro_step(self.model, tokens, seq_idx, self.multiplier)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if not self.static:
            self.static = {"tokens": tokens.clone(), "seq_idx": None if seq_idx is None else seq_idx.clone()}
        static_tokens, static_seq_idx = self.static["tokens"], self.static["seq_idx"]
        if tokens.shape != static_tokens.shape or (seq_idx is None) != (static_seq_idx is None):
            raise ValueError(f"a CUDA-graphed step takes the shapes it was captured with: tokens "
                             f"{tuple(static_tokens.shape)}, seq_idx {'absent' if static_seq_idx is None else 'given'}; "
                             f"got tokens {tuple(tokens.shape)}, seq_idx {'absent' if seq_idx is None else 'given'}")
        static_tokens.copy_(tokens, non_blocking=True)
        if seq_idx is not None:
            static_seq_idx.copy_(seq_idx, non_blocking=True)
        kind = "write" if all(p.grad is None for p in self.params) else "add"
        if kind == "add" and "add" in self.graphs and any(
                p.grad is not grad for p, grad in zip(self.params, self.added_into)):
            # Captured adding into gradients since replaced (the warm-up's, before the "write" graph gave its
            # own): its addresses are stale, so it is captured again.
            del self.graphs["add"]
        if kind not in self.graphs:
            # Capturing records the kernels without running them; the replay below runs this call's step.
            self._capture(kind)
        self.graphs[kind].replay()
        if kind == "write":
            for p, grad in zip(self.params, self.grads):
                p.grad = grad
        return self.losses[kind]
