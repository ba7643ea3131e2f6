"""The scan's step inside Triton kernels: :func:`kotomamba.ops.ssd.step_size`'s softplus and clamp, for
the kernels that take dt as the model hands it over (the SSD scan's, both decode steps')."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """``log(1 + exp(x))`` elementwise, float32; ``x`` itself above 20 (torch's threshold)."""
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def step(raw, lo, hi, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr):
    """The step from ``raw`` = dt + dt_bias (float32): softplus'ed with ``SOFTPLUS``, clamped to
    [lo, hi] with ``CLAMP``."""
    if SOFTPLUS:
        raw = softplus(raw)
    if CLAMP:
        raw = tl.minimum(tl.maximum(raw, lo), hi)
    return raw


@triton.jit
def step_grad(raw, lo, hi, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr):
    """d step / d raw of :func:`step` at ``raw``: softplus' sigmoid (1 above the threshold), and 0 where
    the clamp holds the step outside [lo, hi] (torch's clamp passes the gradient at the bounds)."""
    # Each branch makes its own tensor: Gluon kernels (explicit layouts) call this too, and a tensor made from a
    # shape alone has no layout there.
    if SOFTPLUS:
        grad = tl.where(raw <= 20.0, tl.sigmoid(raw), 1.0)
    else:
        grad = tl.full(raw.shape, 1.0, tl.float32)
    if CLAMP:
        s = step(raw, lo, hi, SOFTPLUS, False)
        grad = tl.where((s >= lo) & (s <= hi), grad, 0.0)
    return grad
