"""Document resets for causal-conv1d's channel-last convolution, as a patch on its resetless kernels
(:func:`kotomamba.ops.causal_conv1d.causal_conv1d_ref` with ``seq_idx`` is the twin).

Mamba-2's in_proj leaves ``xBC`` as a [b, L, d] slice of a wider row, channels contiguous, which
causal-conv1d reads with its channel-last kernels; those run slower with ``seq_idx`` than without
(bench/RESULTS.md). A document reset changes only the outputs at the first ``W - 1`` positions of
each document after the first of a row: every other output's taps lie inside its own document. So:

- forward: the resetless convolution, then :func:`patch_forward` recomputes those outputs with the
  taps in the previous document masked;
- backward: :func:`stash_gradient` moves the output gradient at those positions to a side buffer
  and zeroes it there, so the resetless backward sums exactly the other outputs' contributions
  (which never cross a reset); :func:`patch_backward` then adds those positions' contributions to
  dx (at the same positions: the taps they keep lie in their own document's first ``W - 1``
  positions), dweight and dbias.

The positions near a reset are found once, as each row's list of document starts
(:func:`document_starts`, :func:`document_starts_ref` its twin), and each patch kernel runs one program
per row and tile of channels, which walks its row's starts only: a program per tile of positions that
loaded its ``seq_idx`` to find nothing to do (the first version) made every launch as long as a pass over
all of ``seq_idx`` with ~14k programs, for a few hundred live ones (bench/RESULTS.md, 2026-12-02). The
number of starts is read on the device, so nothing waits for the host and CUDA graphs can hold the
patch. The weight and bias shares are added atomically in float32 once per program, as causal-conv1d's
channel-last backward adds its own.

x, y, dy, dx: [b, L, d] (row strides free, channels contiguous fastest); weight: [d, W]; bias: [d];
seq_idx: [b, L] int32, non-decreasing along each row as the packer writes it; starts: [b, L] int32 (each
row's first ``counts[row]`` entries used), counts: [b] int32.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kotomamba.ops.causal_conv1d import channel_last, is_channel_last
from kotomamba.ops.dispatch import kernel_module

# (channels per tile, warps, channel tiles per program: 0 for all of them).
PATCH_CONFIG = (256, 4, 1)
STARTS_BLOCK = 1024  # positions of a row that document_starts' program takes at a time
_KERNEL = "causal_conv1d.cpp_functions"


class DocumentStarts(NamedTuple):
    """Per row, the positions where a document starts after the row's first: ``starts[row, :counts[row]]``,
    ascending."""

    starts: torch.Tensor  # [b, L] int32
    counts: torch.Tensor  # [b] int32


def document_starts_ref(seq_idx: torch.Tensor) -> DocumentStarts:
    """:func:`document_starts`' twin, in PyTorch (with a host synchronisation)."""
    batch, seqlen = seq_idx.shape
    changed = torch.zeros_like(seq_idx, dtype=torch.bool)
    changed[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    starts = torch.zeros(batch, seqlen, dtype=torch.int32, device=seq_idx.device)
    counts = changed.sum(1).to(torch.int32)
    for row in range(batch):
        found = changed[row].nonzero().flatten()
        starts[row, : found.numel()] = found.to(torch.int32)
    return DocumentStarts(starts, counts)


@triton.jit
def _starts_kernel(seq_ptr, starts_ptr, counts_ptr, L, stride_seq_b, stride_seq_l, BLOCK: tl.constexpr):
    """Program b: row b's document starts, compacted in order by a running count."""
    b = tl.program_id(0).to(tl.int64)
    seq_base = seq_ptr + b * stride_seq_b
    count = 0
    for first in range(0, L, BLOCK):
        t = first + tl.arange(0, BLOCK)
        ok = (t > 0) & (t < L)
        changed = ok & (tl.load(seq_base + t * stride_seq_l, mask=ok, other=0)
                        != tl.load(seq_base + (t - 1) * stride_seq_l, mask=ok, other=0))
        flags = changed.to(tl.int32)
        tl.store(starts_ptr + b * L + count + tl.cumsum(flags, 0) - 1, t.to(tl.int32), mask=changed)
        count += tl.sum(flags, 0)
    tl.store(counts_ptr + b, count)


def document_starts(seq_idx: torch.Tensor) -> DocumentStarts:
    """Each row's document starts of seq_idx [b, L] (int32), on its device, one launch."""
    batch, seqlen = seq_idx.shape
    starts = torch.empty(batch, seqlen, dtype=torch.int32, device=seq_idx.device)
    counts = torch.empty(batch, dtype=torch.int32, device=seq_idx.device)
    _starts_kernel[(batch,)](seq_idx, starts, counts, seqlen, *seq_idx.stride(), BLOCK=STARTS_BLOCK)
    return DocumentStarts(starts, counts)


@triton.jit
def _near_start(seq_base, stride_seq_l, t, L, W: tl.constexpr):
    """Each position's document id, and whether it lies within ``W - 1`` positions after a reset."""
    t_ok = t < L
    doc = tl.load(seq_base + t * stride_seq_l, mask=t_ok, other=-1)
    near = t < 0  # all false, of t's shape
    for k in tl.static_range(1, W):
        s_ok = t_ok & (t >= k)
        near = near | (s_ok & (tl.load(seq_base + (t - k) * stride_seq_l, mask=s_ok, other=0) != doc))
    return doc, near


@triton.jit
def _masked_pre_activation(x_base, stride_x_l, stride_x_d, w_ptr, bias, seq_base, stride_seq_l, t, doc, live, d,
                           d_ok, W: tl.constexpr):
    """``bias + sum_k w[d, k] * x[t - (W-1) + k, d]`` over the taps in ``doc``, at the ``live`` positions:
    [positions, BLOCK_D] float32."""
    acc = tl.zeros((t.shape[0], d.shape[0]), tl.float32) + bias[None, :]
    for k in tl.static_range(W):
        s = t - (W - 1) + k
        ok = live & (s >= 0)
        ok = ok & (tl.load(seq_base + s * stride_seq_l, mask=ok, other=-1) == doc)
        xk = tl.load(x_base + s[:, None] * stride_x_l + d[None, :] * stride_x_d, mask=ok[:, None] & d_ok[None, :],
                     other=0.0).to(tl.float32)
        acc += xk * tl.load(w_ptr + d * W + k, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _bias(bias_ptr, d, d_ok, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        return tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    return tl.zeros(d.shape, tl.float32)


@triton.jit
def _channels(tile, BLOCK_D: tl.constexpr):
    return tile * BLOCK_D + tl.arange(0, BLOCK_D)


@triton.jit
def _window(seq_base, stride_seq_l, starts_base, i, n, L, W: tl.constexpr, W_PAD: tl.constexpr):
    """The positions near the row's reset ``i`` of ``n``: from its start to before the next reset (whose
    window takes over), ``W - 1`` at most, as ``W_PAD`` lanes: (``s`` [W_PAD], their documents, ``live``).
    The windows of a row are disjoint, so each position near a reset is patched once."""
    start = tl.load(starts_base + i)
    following = tl.load(starts_base + i + 1, mask=i + 1 < n, other=L)
    lane = tl.arange(0, W_PAD)
    s = start + lane
    live = (lane < W - 1) & (s < following) & (s < L)
    doc = tl.load(seq_base + s * stride_seq_l, mask=live, other=-1)
    return s, doc, live


@triton.jit
def _patch_forward_kernel(
    x_ptr, w_ptr, bias_ptr, seq_ptr, starts_ptr, counts_ptr, y_ptr, L, dim,
    stride_x_b, stride_x_l, stride_x_d, stride_y_b, stride_y_l, stride_y_d, stride_seq_b, stride_seq_l,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
    TILES_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)  # offsets past 2**31 elements
    seq_base = seq_ptr + b * stride_seq_b
    n = tl.load(counts_ptr + b)
    for tile in range(TILES_D):
        d = _channels(tl.program_id(1) * TILES_D + tile, BLOCK_D)
        d_ok = d < dim
        bias = _bias(bias_ptr, d, d_ok, HAS_BIAS)
        for i in range(n):
            s, doc, live = _window(seq_base, stride_seq_l, starts_ptr + b * L, i, n, L, W, W_PAD)
            pre = _masked_pre_activation(x_ptr + b * stride_x_b, stride_x_l, stride_x_d, w_ptr, bias, seq_base,
                                         stride_seq_l, s, doc, live, d, d_ok, W)
            y = pre * tl.sigmoid(pre) if SILU else pre
            tl.store(y_ptr + b * stride_y_b + s[:, None] * stride_y_l + d[None, :] * stride_y_d,
                     y.to(y_ptr.dtype.element_ty), mask=live[:, None] & d_ok[None, :])


@triton.jit
def _stash_kernel(
    dy_ptr, stash_ptr, seq_ptr, starts_ptr, counts_ptr, L, dim, stride_dy_b, stride_dy_l, stride_dy_d,
    stride_seq_b, stride_seq_l, W: tl.constexpr, W_PAD: tl.constexpr, BLOCK_D: tl.constexpr, TILES_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(counts_ptr + b)
    for tile in range(TILES_D):
        d = _channels(tl.program_id(1) * TILES_D + tile, BLOCK_D)
        for i in range(n):
            s, _, live = _window(seq_ptr + b * stride_seq_b, stride_seq_l, starts_ptr + b * L, i, n, L, W, W_PAD)
            mask = live[:, None] & (d < dim)[None, :]
            at = dy_ptr + b * stride_dy_b + s[:, None] * stride_dy_l + d[None, :] * stride_dy_d
            tl.store(stash_ptr + (b * L + s[:, None]) * dim + d[None, :], tl.load(at, mask=mask), mask=mask)
            tl.store(at, tl.zeros((W_PAD, BLOCK_D), dy_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _patch_backward_window(x_base, w_ptr, bias, seq_base, stash_ptr, dx_ptr, b, L, dim, stride_x_l, stride_x_d,
                           stride_dx_b, stride_dx_l, stride_dx_d, stride_seq_l, s, doc_s, near_s, d, d_ok,
                           SILU: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr):
    """:func:`_patch_backward_kernel`'s work on the channels ``d`` [BLOCK_D] of one reset's window ``s``
    [W_PAD]: adds to dx in place, returns the window's shares of dweight [BLOCK_D, W_PAD] and dbias."""
    taps = tl.arange(0, W_PAD)
    dx = tl.zeros((s.shape[0], d.shape[0]), tl.float32)
    dw = tl.zeros((d.shape[0], W_PAD), tl.float32)
    dbias = tl.zeros(d.shape, tl.float32)
    for j in tl.static_range(W):
        u = s + j
        doc_u, near_u = _near_start(seq_base, stride_seq_l, u, L, W)
        live = near_s & near_u & (doc_u == doc_s)
        dpre = tl.load(stash_ptr + (b * L + u[:, None]) * dim + d[None, :], mask=live[:, None] & d_ok[None, :],
                       other=0.0).to(tl.float32)
        if SILU:
            pre = _masked_pre_activation(x_base, stride_x_l, stride_x_d, w_ptr, bias, seq_base, stride_seq_l, u, doc_u,
                                         live, d, d_ok, W)
            sig = tl.sigmoid(pre)
            dpre = dpre * sig * (1.0 + pre * (1.0 - sig))
        dx += dpre * tl.load(w_ptr + d * W + (W - 1 - j), mask=d_ok, other=0.0).to(tl.float32)[None, :]
        if j == 0:  # the weight's taps of the outputs at s
            for k in tl.static_range(W):
                r = s - (W - 1) + k
                ok = near_s & (r >= 0)
                ok = ok & (tl.load(seq_base + r * stride_seq_l, mask=ok, other=-1) == doc_s)
                xk = tl.load(x_base + r[:, None] * stride_x_l + d[None, :] * stride_x_d,
                             mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
                dw += tl.where(taps[None, :] == k, tl.sum(dpre * xk, axis=0)[:, None], 0.0)
            dbias += tl.sum(dpre, axis=0)
    at = dx_ptr + b * stride_dx_b + s[:, None] * stride_dx_l + d[None, :] * stride_dx_d
    mask = near_s[:, None] & d_ok[None, :]
    tl.store(at, (tl.load(at, mask=mask, other=0.0).to(tl.float32) + dx).to(dx_ptr.dtype.element_ty), mask=mask)
    return dw, dbias


@triton.jit
def _patch_backward_kernel(
    x_ptr, w_ptr, bias_ptr, seq_ptr, starts_ptr, counts_ptr, stash_ptr, dx_ptr, dw_ptr, dbias_ptr, L, dim,
    stride_x_b, stride_x_l, stride_x_d, stride_dx_b, stride_dx_l, stride_dx_d, stride_seq_b, stride_seq_l,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
    TILES_D: tl.constexpr,
):
    """At each position s near a reset: ``dx[s] += sum_j w[W-1-j] * dpre[s + j]`` over the outputs s + j
    near the same reset (the others are in the resetless backward's dx), and the weight's and bias's
    gradients from the outputs near a reset (``dpre`` = the stashed gradient times ``silu'``)."""
    b = tl.program_id(0).to(tl.int64)
    seq_base = seq_ptr + b * stride_seq_b
    n = tl.load(counts_ptr + b)
    taps = tl.arange(0, W_PAD)
    for tile in range(TILES_D):
        d = _channels(tl.program_id(1) * TILES_D + tile, BLOCK_D)
        d_ok = d < dim
        bias = _bias(bias_ptr, d, d_ok, HAS_BIAS)
        dw = tl.zeros((BLOCK_D, W_PAD), tl.float32)
        dbias = tl.zeros((BLOCK_D,), tl.float32)
        for i in range(n):
            s, doc_s, near_s = _window(seq_base, stride_seq_l, starts_ptr + b * L, i, n, L, W, W_PAD)
            dw_i, dbias_i = _patch_backward_window(
                x_ptr + b * stride_x_b, w_ptr, bias, seq_base, stash_ptr, dx_ptr, b, L, dim, stride_x_l, stride_x_d,
                stride_dx_b, stride_dx_l, stride_dx_d, stride_seq_l, s, doc_s, near_s, d, d_ok, SILU, W, W_PAD)
            dw += dw_i
            dbias += dbias_i
        if n > 0:
            tl.atomic_add(dw_ptr + d[:, None] * W + taps[None, :], dw, mask=d_ok[:, None] & (taps[None, :] < W))
            if HAS_BIAS:
                tl.atomic_add(dbias_ptr + d, dbias, mask=d_ok)


def _launch(x: torch.Tensor, width: int, config: tuple[int, ...]) -> tuple[tuple[int, int], dict]:
    """The grid over (rows, channel-tile groups) and the blocking's kernel arguments."""
    block_d, warps, per_program = config
    tiles_d = triton.cdiv(x.shape[2], block_d)
    per_program = per_program or tiles_d
    grid = (x.shape[0], triton.cdiv(tiles_d, per_program))
    return grid, {"W": width, "W_PAD": triton.next_power_of_2(width), "BLOCK_D": block_d, "TILES_D": per_program,
                  "num_warps": warps}


def patch_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor,
                  starts: DocumentStarts, y: torch.Tensor, silu: bool, config: tuple[int, ...] = PATCH_CONFIG) -> None:
    """Rewrite y [b, L, d], the resetless convolution of x, at the positions near a reset, in place."""
    grid, blocking = _launch(x, weight.shape[1], config)
    _patch_forward_kernel[grid](
        x, weight, weight if bias is None else bias, seq_idx, *starts, y, x.shape[1], x.shape[2], *x.stride(),
        *y.stride(), *seq_idx.stride(), HAS_BIAS=bias is not None, SILU=silu, **blocking,
    )


def stash_gradient(dy: torch.Tensor, seq_idx: torch.Tensor, starts: DocumentStarts, width: int,
                   config: tuple[int, ...] = PATCH_CONFIG) -> torch.Tensor:
    """Move dy [b, L, d] at the positions near a reset into a [b, L, d] buffer (written only there) and
    zero it there, in place. Returns the buffer."""
    stash = torch.empty(dy.shape, dtype=dy.dtype, device=dy.device)
    grid, blocking = _launch(dy, width, config)
    _stash_kernel[grid](
        dy, stash, seq_idx, *starts, dy.shape[1], dy.shape[2], *dy.stride(), *seq_idx.stride(), **blocking,
    )
    return stash


def patch_backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor,
                   starts: DocumentStarts, stash: torch.Tensor, dx: torch.Tensor, silu: bool,
                   config: tuple[int, ...] = PATCH_CONFIG) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Add the contributions of the outputs near a reset (their gradient in ``stash``) to dx [b, L, d] in
    place. Returns their share of dweight [d, W] and dbias [d] (None without bias), float32."""
    dim, width = weight.shape
    dw = torch.zeros((dim, width), dtype=torch.float32, device=x.device)
    dbias = torch.zeros((dim,), dtype=torch.float32, device=x.device) if bias is not None else None
    grid, blocking = _launch(x, width, config)
    _patch_backward_kernel[grid](
        x, weight, weight if bias is None else bias, seq_idx, *starts, stash, dx, dw, dw if dbias is None else dbias,
        x.shape[1], dim, *x.stride(), *dx.stride(), *seq_idx.stride(), HAS_BIAS=bias is not None, SILU=silu,
        **blocking,
    )
    return dw, dbias


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None,
                 silu: bool, config: tuple[int, ...] = PATCH_CONFIG,
                 starts: DocumentStarts | None = None) -> torch.Tensor:
    """causal-conv1d's channel-last forward of x [b, L, d] (row stride a multiple of 8), with document
    resets patched in (``starts``: seq_idx's, found here if not given). Returns y [b, L, d], contiguous, in
    x's dtype. CUDA only."""
    fwd = kernel_module(_KERNEL).causal_conv1d_fwd_function
    x = channel_last(x)
    y = fwd(x.transpose(1, 2), weight, bias, None, None, None, silu).transpose(1, 2)
    if seq_idx is not None:
        patch_forward(x, weight, bias, seq_idx, document_starts(seq_idx) if starts is None else starts, y, silu,
                      config)
    return y


def conv_backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None,
                  dy: torch.Tensor, silu: bool, dx: torch.Tensor | None = None,
                  config: tuple[int, ...] = PATCH_CONFIG, starts: DocumentStarts | None = None):
    """Gradients of :func:`conv_forward` for dy [b, L, d] (overwritten near resets): dx [b, L, d] (into
    ``dx`` if given), dweight [d, W] and dbias [d] in the weight's and bias's dtypes. CUDA only."""
    bwd = kernel_module(_KERNEL).causal_conv1d_bwd_function
    x, dy = channel_last(x), channel_last(dy)
    if seq_idx is not None:
        starts = document_starts(seq_idx) if starts is None else starts
    stash = stash_gradient(dy, seq_idx, starts, weight.shape[1], config) if seq_idx is not None else None
    writable = dx is not None and is_channel_last(dx)
    dx_t, dweight, dbias, _ = bwd(x.transpose(1, 2), weight, bias, dy.transpose(1, 2), None, None, None,
                                  dx.transpose(1, 2) if writable else None, False, silu)
    if dx is None or writable:
        dx = dx_t.transpose(1, 2)
    else:
        dx.copy_(dx_t.transpose(1, 2))
    if seq_idx is not None:
        dw_near, dbias_near = patch_backward(x, weight, bias, seq_idx, starts, stash, dx, silu, config)
        dweight = (dweight.float() + dw_near).to(weight.dtype)
        dbias = None if bias is None else (dbias.float() + dbias_near).to(bias.dtype)
    return dx, dweight, dbias


class _ResetConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx, silu, config):
        starts = document_starts(seq_idx)
        ctx.save_for_backward(x, weight, bias, seq_idx, *starts)
        ctx.silu, ctx.config = silu, config
        return conv_forward(x, weight, bias, seq_idx, silu, config, starts)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, seq_idx, *starts = ctx.saved_tensors
        # The backward overwrites its dy near resets: a copy, as autograd may hand dy to others.
        dx, dweight, dbias = conv_backward(x, weight, bias, seq_idx, dy.clone(memory_format=torch.contiguous_format),
                                           ctx.silu, config=ctx.config, starts=DocumentStarts(*starts))
        return dx, dweight, dbias, None, None, None


def causal_conv1d_resets(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor,
                         activation: str | None, config: tuple[int, ...] = PATCH_CONFIG) -> torch.Tensor:
    """The twin's maths with documents, differentiable. x: [b, L, d] (channel-last, the transpose of the
    twin's [b, d, L]); weight: [d, W]; bias: [d]; seq_idx: [b, L] int; activation None or "silu".
    Returns [b, L, d] in x's dtype; ``config``: the patch's blocking (:data:`PATCH_CONFIG`). CUDA only."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    return _ResetConv.apply(x, weight.contiguous(), bias, seq_idx.to(torch.int32).contiguous(), activation is not None,
                            tuple(config))
