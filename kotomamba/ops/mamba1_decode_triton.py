"""Triton kernels of one Mamba-1 decoding step after in_proj (:func:`kotomamba.ops.mamba1_decode.mamba1_decode_step_ref`
is the twin), two launches per layer where causal-conv1d's update, x_proj's and dt_proj's GEMVs, ``-exp(A_log)``
and mamba-ssm's ``selective_state_update`` make about seven: at batch 1 each costs its launch latency more than its
bytes. No atomics (the results do not depend on the programs' order) and no buffer to zero first.

- "conv", one program per (row, block of :data:`CONV_CHANNELS` channels): the shift convolution update of its
  channels (each channel belongs to one program, so no other program reads the slots it moves), silu, the result
  x [b, d_inner] in float32 for "scan", and the block's share of x_proj:
  ``partial[b, block, r] = sum_{c in block} x_proj_weight[r, c] * x[c]`` for r over dt_rank + 2n, float32.
- "scan", one program per (row, block of channels): the sum of the partials over the conv blocks (dt's low-rank
  input, B and C; every program adds them up itself, in the same order, from L2),
  ``dt = softplus(dt_proj_weight[c] . dt_low + dt_proj_bias[c])``, ``A = -exp(A_log[c])``,
  ``state = exp(dt A) * state + dt x B``, ``y = (state . C + D x) * silu(z)`` in xz's dtype, the state in place.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kotomamba.ops.step_triton import softplus
from kotomamba.ops.strides import unit_stride_last

# Powers of two. CONV_CHANNELS: channels per conv program. Fewer make more programs (batch 1 has d_inner /
# CONV_CHANNELS of them), each reading less of x_proj's weight, but more partial products, which every scan program
# adds up. CONV_TILE: elements of the conv program's float32 product
# tile, x_proj's rows (padded) by a slice of its channels; a tile as wide as the program's channels makes one loop
# trip, a larger one costs registers. SCAN_TILE: elements of the scan program's tiles, a slice of its channels by
# dt_rank (padded) and conv blocks by dt_rank when adding up the partials; larger: fewer trips, more registers.
# SCAN_PROGRAMS: how many scan programs a launch aims for: a row's channels are split into about SCAN_PROGRAMS / batch
# blocks (at least one, at most one per channel slice), enough programs at batch 1 without adding up the partials
# once per small block at a large batch. bench/generate_throughput.py times others (generate:ours=NAME:VALUE+...).
# MAX_BATCH: the most rows a step runs these launches for (kotomamba.ops.mamba1_decode dispatches the upstream
# kernels' composition above it): every conv program reads x_proj's weight for its own row and every scan program
# adds up its row's partials, which grows with the batch where the upstream GEMVs do not (bench/RESULTS.md,
# 2026-12-02 sessions 12 and 13: faster up to batch 4, slower from 8).
MAX_BATCH = 4
CONV_CHANNELS = 64
CONV_TILE = 8192
SCAN_TILE = 4096
SCAN_PROGRAMS = 256


@triton.jit
def _shift_conv_silu(state_ptr, stride_state_c, stride_state_w, w_ptr, stride_w_c, bias_ptr, channels, mask, new,
                     WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_W: tl.constexpr):
    """The shift update of ``channels``' convolution state (the oldest input dropped, ``new`` appended, rounded to
    the state's dtype) and silu of the convolution over it, float32 [channels]."""
    k = tl.arange(0, BLOCK_W)
    ok = mask[:, None] & (k < WIDTH)[None, :]
    rows = state_ptr + channels[:, None] * stride_state_c
    past = tl.load(rows + (k[None, :] + 1) * stride_state_w, mask=mask[:, None] & (k + 1 < WIDTH)[None, :],
                   other=0.0)
    window = tl.where((k == WIDTH - 1)[None, :], new.to(state_ptr.dtype.element_ty)[:, None], past)
    # Every slot is read and written: all of the program's threads read before any writes.
    tl.debug_barrier()
    tl.store(rows + k[None, :] * stride_state_w, window, mask=ok)
    w = tl.load(w_ptr + channels[:, None] * stride_w_c + k[None, :], mask=ok, other=0.0).to(tl.float32)
    acc = tl.sum(window.to(tl.float32) * w, axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + channels, mask=mask, other=0.0).to(tl.float32)
    return acc * tl.sigmoid(acc)


@triton.jit
def _conv_kernel(
    xz_ptr, conv_state_ptr, conv_w_ptr, conv_b_ptr, x_proj_w_ptr, x_ptr, partial_ptr,
    d_inner, proj_rows,
    stride_xz, stride_conv_b, stride_conv_c, stride_conv_w, stride_w_c, stride_proj_r, stride_x, stride_partial_b,
    stride_partial_block,
    WIDTH: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, CHANNELS: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    r = tl.arange(0, BLOCK_R)
    r_ok = r < proj_rows
    acc = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for start in range(0, CHANNELS, BLOCK_C):
        c = block * CHANNELS + start + tl.arange(0, BLOCK_C)
        c_ok = c < d_inner
        new = tl.load(xz_ptr + b * stride_xz + c, mask=c_ok, other=0.0)
        x = _shift_conv_silu(conv_state_ptr + b * stride_conv_b, stride_conv_c, stride_conv_w, conv_w_ptr, stride_w_c,
                             conv_b_ptr, c, c_ok, new, WIDTH, HAS_CONV_BIAS, BLOCK_W)
        tl.store(x_ptr + b * stride_x + c, x, mask=c_ok)
        w = tl.load(x_proj_w_ptr + r[:, None] * stride_proj_r + c[None, :], mask=r_ok[:, None] & c_ok[None, :],
                    other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    tl.store(partial_ptr + b * stride_partial_b + block * stride_partial_block + r, tl.sum(acc, axis=1), mask=r_ok)


@triton.jit
def _scan_kernel(
    xz_ptr, x_ptr, partial_ptr, ssm_state_ptr, dt_w_ptr, dt_b_ptr, A_log_ptr, D_ptr, y_ptr,
    d_inner, dt_rank, dstate, parts, channels,
    stride_xz, stride_x, stride_partial_b, stride_partial_block, stride_ssm_b, stride_ssm_c, stride_ssm_n,
    stride_dt_w_c, stride_A_c, stride_y,
    BLOCK_S: tl.constexpr, BLOCK_DT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_PARTS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_DT)
    j_ok = j < dt_rank
    n = tl.arange(0, BLOCK_N)
    n_ok = n < dstate
    # x_proj's output: the sum over the conv blocks of their partial products, in the same order in every program.
    dt_low = tl.zeros((BLOCK_DT,), tl.float32)
    B = tl.zeros((BLOCK_N,), tl.float32)
    C = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, parts, BLOCK_PARTS):
        p = start + tl.arange(0, BLOCK_PARTS)
        p_ok = (p < parts)[:, None]
        row = partial_ptr + b * stride_partial_b + p[:, None] * stride_partial_block
        dt_low += tl.sum(tl.load(row + j[None, :], mask=p_ok & j_ok[None, :], other=0.0), axis=0)
        B += tl.sum(tl.load(row + dt_rank + n[None, :], mask=p_ok & n_ok[None, :], other=0.0), axis=0)
        C += tl.sum(tl.load(row + dt_rank + dstate + n[None, :], mask=p_ok & n_ok[None, :], other=0.0), axis=0)
    first = tl.program_id(1) * channels
    for start in range(first, first + channels, BLOCK_S):
        c = start + tl.arange(0, BLOCK_S)
        c_ok = c < d_inner
        dt_w = tl.load(dt_w_ptr + c[:, None] * stride_dt_w_c + j[None, :], mask=c_ok[:, None] & j_ok[None, :],
                       other=0.0)
        dt = tl.sum(dt_w.to(tl.float32) * dt_low[None, :], axis=1)
        dt += tl.load(dt_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        dt = softplus(dt)
        ok = c_ok[:, None] & n_ok[None, :]
        A = -tl.exp(tl.load(A_log_ptr + c[:, None] * stride_A_c + n[None, :], mask=ok, other=0.0).to(tl.float32))
        x = tl.load(x_ptr + b * stride_x + c, mask=c_ok, other=0.0)
        state_ptrs = ssm_state_ptr + b * stride_ssm_b + c[:, None] * stride_ssm_c + n[None, :] * stride_ssm_n
        state = tl.load(state_ptrs, mask=ok, other=0.0).to(tl.float32)
        state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * B[None, :]
        tl.store(state_ptrs, state.to(ssm_state_ptr.dtype.element_ty), mask=ok)
        y = tl.sum(state * C[None, :], axis=1) + tl.load(D_ptr + c, mask=c_ok, other=0.0).to(tl.float32) * x
        z = tl.load(xz_ptr + b * stride_xz + d_inner + c, mask=c_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + b * stride_y + c, (y * z * tl.sigmoid(z)).to(y_ptr.dtype.element_ty), mask=c_ok)


def conv(xz, conv_state, conv_weight, conv_bias, x_proj_weight):
    """The "conv" launch: xz [b, 2*d_inner] (x read), conv_state [b, d_inner, W] updated in place, conv_weight
    [d_inner, W], conv_bias [d_inner] or None, x_proj_weight [dt_rank + 2n, d_inner]. Returns x [b, d_inner] and the
    partial x_proj products [b, blocks, dt_rank + 2n], both float32."""
    xz, conv_weight, x_proj_weight = (unit_stride_last(t) for t in (xz, conv_weight, x_proj_weight))
    batch = xz.shape[0]
    d_inner, width = conv_weight.shape
    proj_rows = x_proj_weight.shape[0]
    block_r = triton.next_power_of_2(proj_rows)
    channels = min(CONV_CHANNELS, triton.next_power_of_2(d_inner))
    block_c = min(channels, max(CONV_TILE // block_r, 1))
    blocks = triton.cdiv(d_inner, channels)
    x = torch.empty(batch, d_inner, dtype=torch.float32, device=xz.device)
    partial = torch.empty(batch, blocks, proj_rows, dtype=torch.float32, device=xz.device)
    _conv_kernel[(batch, blocks)](
        xz, conv_state, conv_weight, conv_weight if conv_bias is None else conv_bias, x_proj_weight, x, partial,
        d_inner, proj_rows,
        xz.stride(0), *conv_state.stride(), conv_weight.stride(0), x_proj_weight.stride(0), x.stride(0),
        partial.stride(0), partial.stride(1),
        WIDTH=width, HAS_CONV_BIAS=conv_bias is not None, CHANNELS=channels, BLOCK_C=block_c,
        BLOCK_W=triton.next_power_of_2(width), BLOCK_R=block_r, num_warps=4,
    )
    return x, partial


def scan(xz, x, partial, ssm_state, dt_proj_weight, dt_proj_bias, A_log, D):
    """The "scan" launch: xz [b, 2*d_inner] (z read), x and the partial products from :func:`conv`, ssm_state
    [b, d_inner, n] updated in place, dt_proj_weight [d_inner, dt_rank], dt_proj_bias and D [d_inner], A_log
    [d_inner, n]. Returns y [b, d_inner] in xz's dtype."""
    xz, dt_proj_weight, A_log = (unit_stride_last(t) for t in (xz, dt_proj_weight, A_log))
    batch, d_inner = x.shape
    dt_rank, dstate, parts = dt_proj_weight.shape[1], A_log.shape[1], partial.shape[1]
    block_dt, block_n = triton.next_power_of_2(dt_rank), triton.next_power_of_2(dstate)
    block_s = min(triton.next_power_of_2(d_inner), max(SCAN_TILE // max(block_dt, block_n), 1))
    per_row = max(1, min(triton.cdiv(d_inner, block_s), SCAN_PROGRAMS // batch))
    channels = triton.cdiv(triton.cdiv(d_inner, per_row), block_s) * block_s
    y = torch.empty(batch, d_inner, dtype=xz.dtype, device=xz.device)
    _scan_kernel[(batch, triton.cdiv(d_inner, channels))](
        xz, x, partial, ssm_state, dt_proj_weight, dt_proj_bias, A_log, D, y,
        d_inner, dt_rank, dstate, parts, channels,
        xz.stride(0), x.stride(0), partial.stride(0), partial.stride(1), *ssm_state.stride(),
        dt_proj_weight.stride(0), A_log.stride(0), y.stride(0),
        BLOCK_S=block_s, BLOCK_DT=block_dt, BLOCK_N=block_n,
        BLOCK_PARTS=min(triton.next_power_of_2(parts), max(SCAN_TILE // block_dt, 1)), num_warps=4,
    )
    return y


def mamba1_decode_step_triton(xz, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                              dt_proj_bias, A_log, D):
    """Arguments and result as :func:`kotomamba.ops.mamba1_decode.mamba1_decode_step_ref` (two launches)."""
    xz = unit_stride_last(xz)  # once for both launches
    x, partial = conv(xz, conv_state, conv_weight, conv_bias, x_proj_weight)
    return scan(xz, x, partial, ssm_state, dt_proj_weight, dt_proj_bias, A_log, D)
