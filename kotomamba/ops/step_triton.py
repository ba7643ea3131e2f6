"""The scan's step inside Triton kernels: :func:`kotomamba.ops.ssd.step_size`'s softplus and clamp, for
the kernels that take dt as the model hands it over (the SSD scan's, both decode steps')."""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def softplus(x):
    """``log(1 + exp(x))`` elementwise, float32; ``x`` itself above 20 (torch's threshold)."""
    # The log as the special-function unit's log2 (lg2.approx, relative error about 2^-22): ``tl.log`` compiles to
    # libdevice's logf, a polynomial of some thirty instructions a value, in the scans' walks. 1 + exp(x) is rounded
    # to float32 first either way. Triton's interpreter has no libdevice: tests/interpreted_kernels.py
    # gives it numpy's log2 in its place.
    return tl.where(x <= 20.0, libdevice.fast_log2f(1.0 + tl.exp(x)) * LN2, x)


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
