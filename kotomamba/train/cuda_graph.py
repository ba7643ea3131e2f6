"""One micro-batch's forward, loss and backward captured once as a CUDA graph and replayed.

A small model's step on a fast GPU waits on the host: every block launches dozens of kernels (the
Mamba-2 mixer's backward alone is a chain of Triton launches), and Python issues them more slowly
than the GPU runs them (bench/RESULTS.md profiles how busy that leaves the card). Replaying a
captured graph issues the whole micro-step in one launch. The rest of the step (``kotomamba.train.step``:
the gradient norm, the skip decisions, clipping, the optimizer) stays eager and unchanged.

Rules the capture relies on (PyTorch, "CUDA Graphs" in the CUDA semantics notes): the same shapes
every call (the trainer's micro-batches are), inputs copied into static buffers, no host
synchronisation inside the step (the chunked cross-entropy keeps its token count on the device),
Triton autotuning done before the capture (the eager warm-up calls do it), and gradients that stay
allocated: the captured backward adds into each ``.grad`` in place, so between steps they are
zeroed, never set to None. No collective inside: FSDP's collectives and hooks are not captured, so
several processes graph their micro-steps only when each replicates the whole model and all-reduces the
gradients after the last one (``kotomamba.train.grad_sync``).
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
    """:func:`micro_step`, accumulating into the parameters' ``.grad``, from a CUDA graph.

    The first ``warmup`` calls run eagerly (and autotune the kernels); the next one captures the step
    and every call from then on replays it. tokens [b, L+1] int64, seq_idx [b, L] int32 or None, with
    the shapes of the first call. Returns the micro-batch's loss, a 0-d float32 tensor that the next
    call overwrites.
    """

    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter], multiplier: float,
                 warmup: int = 2):
        self.model, self.params, self.multiplier, self.warmup = model, params, multiplier, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict[str, torch.Tensor | None] = {}

    def _capture(self, tokens: torch.Tensor, seq_idx: torch.Tensor | None) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.static = {"tokens": tokens.clone(), "seq_idx": None if seq_idx is None else seq_idx.clone()}
        # Blocks the warm-up left cached in the ordinary pool go back before the graph takes its own.
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static["loss"] = micro_step(self.model, self.static["tokens"], self.static["seq_idx"],
                                             self.multiplier)
        self.graph = graph

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
        if self.graph is None:
            # Capturing records the kernels without running them; the replay below runs this call's step.
            self._capture(tokens, seq_idx)
        static_tokens, static_seq_idx = self.static["tokens"], self.static["seq_idx"]
        if tokens.shape != static_tokens.shape or (seq_idx is None) != (static_seq_idx is None):
            raise ValueError(f"a CUDA-graphed step takes the shapes it was captured with: tokens "
                             f"{tuple(static_tokens.shape)}, seq_idx {'absent' if static_seq_idx is None else 'given'}; "
                             f"got tokens {tuple(tokens.shape)}, seq_idx {'absent' if seq_idx is None else 'given'}")
        static_tokens.copy_(tokens, non_blocking=True)
        if seq_idx is not None:
            static_seq_idx.copy_(seq_idx, non_blocking=True)
        self.graph.replay()
        return self.static["loss"]
