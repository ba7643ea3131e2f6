"""Triton kernels of one Mamba-2 decoding step (:func:`kotomamba.ops.mamba2_decode.mamba2_decode_step_ref` is the
twin): two launches per layer after in_proj where mamba-ssm's ``Mamba2.step`` makes about seven (conv update, casts,
state update, gated norm, out_proj): at batch 1 each costs its launch latency more than its bytes.

- "mix", one program per (row, head, block of head channels): the circular convolution update of its x channels
  and of its group's B and C channels (read from the state before any program writes, see
  :mod:`kotomamba.ops.mamba2_decode`; one program per group writes B and C's new inputs), ``dt = softplus(dt +
  dt_bias)`` clamped, ``dA = exp(-dt * exp(A_log))``, ``state = dA * state + dt * x B^T``, ``y = state C + D x``,
  ``g = y * silu(z)`` (float32), and its share of ``sum(g^2)``: each program writes its own partial sum and the
  next launch adds them (deterministic, nothing to zero first).
- "out", one program per (block of out_proj's rows, block of batch rows): ``out[b, j] = sum_k W[j, k] *
  (g[b, k] * rstd[b, group(k)] * norm_w[k])``, the normalised input rounded to W's dtype as the twin's is before
  its linear; rstd from the partial sums. Below 16 rows a broadcast product summed over k; from 16 on ``tl.dot``.

The block's add+RMSNorm and in_proj stay the norm kernel and cuBLAS's GEMV: a launch of ours that took them in
(residual add and norm applied on load, the convolution update as its epilogue) was slower at every tile timed
(bench/RESULTS.md, 2026-12-02 session 12).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kotomamba.ops.ssd import DEFAULT_DT_LIMIT
from kotomamba.ops.step_triton import step
from kotomamba.ops.strides import unit_stride_last

# Elements of the float32 tiles each program holds: the mix kernel's state tile (head channels x d_state) and
# the out kernel's product tile (batch rows x W's rows x inputs) when it does not use tl.dot. Then W's rows per
# out program below 16 batch rows and with tl.dot (fewer: more programs, each rereading its inputs), and the out
# program's warps below 16 batch rows (more: a larger product tile per trip over W without spilling), and how many
# trips over W the out program keeps in flight below 16 batch rows (above 1, Triton's pipeliner loads the next tiles
# into shared memory while this one is summed: one program then has more of W's bytes in flight, which a GEMV at
# batch 1 needs to approach the bandwidth). DOT_STAGES is the same for the tl.dot path (16 batch rows and more): one
# stage there starves the loads, and 4 with 16 W rows per program ran fastest of those timed at batch 16 and 64
# (bench/RESULTS.md, 2026-12-02 session 13).
# bench/generate_throughput.py times others (generate:ours=NAME:VALUE+...).
MIX_TILE = 2048
OUT_TILE = 4096
OUT_ROWS = 8
DOT_ROWS = 16
OUT_WARPS = 4
OUT_STAGES = 3
DOT_STAGES = 4


@triton.jit
def _conv_silu(state_ptr, stride_state_c, stride_state_w, w_ptr, stride_w_c, bias_ptr, channels, mask, new, slot0,
               WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """silu of the convolution of ``channels`` at the current position: ``new`` (their input now, float32)
    times the last tap, the state's slots ``(slot0 + k) % WIDTH`` (the inputs of the W - 1 positions before,
    oldest first) times the others."""
    acc = new * tl.load(w_ptr + channels * stride_w_c + WIDTH - 1, mask=mask, other=0.0).to(tl.float32)
    for k in tl.static_range(WIDTH - 1):
        slot = (slot0 + k) % WIDTH
        past = tl.load(state_ptr + channels * stride_state_c + slot * stride_state_w, mask=mask, other=0.0)
        acc += past.to(tl.float32) * tl.load(w_ptr + channels * stride_w_c + k, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + channels, mask=mask, other=0.0).to(tl.float32)
    return acc * tl.sigmoid(acc)


@triton.jit
def _mix_kernel(
    zxbcdt_ptr, conv_state_ptr, ssm_state_ptr, position_ptr, conv_w_ptr, conv_b_ptr, dt_bias_ptr, A_log_ptr, D_ptr,
    g_ptr, sumsq_ptr,
    d_inner, headdim, dstate, ngroups, heads_per_group, dt_min, dt_max,
    stride_zxbcdt, stride_conv_b, stride_conv_c, stride_conv_w, stride_w_c,
    stride_ssm_b, stride_ssm_h, stride_ssm_p, stride_ssm_n, stride_g, stride_sumsq,
    WIDTH: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_LIMIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    pblock, pblocks = tl.program_id(2), tl.num_programs(2)
    group = head // heads_per_group
    position = tl.load(position_ptr)
    p = pblock * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < headdim
    n = tl.arange(0, BLOCK_N)
    n_ok = n < dstate
    row = zxbcdt_ptr + b * stride_zxbcdt
    # Channels of xBC (the convolution's channels): x, then B of every group, then C.
    x_ch = head * headdim + p
    B_ch = d_inner + group * dstate + n
    C_ch = d_inner + (ngroups + group) * dstate + n
    x_new = tl.load(row + d_inner + x_ch, mask=p_ok, other=0.0)
    B_new = tl.load(row + d_inner + B_ch, mask=n_ok, other=0.0)
    C_new = tl.load(row + d_inner + C_ch, mask=n_ok, other=0.0)
    conv = conv_state_ptr + b * stride_conv_b
    slot0 = position + 1  # the slot of position t - (W - 1), modulo W
    x = _conv_silu(conv, stride_conv_c, stride_conv_w, conv_w_ptr, stride_w_c, conv_b_ptr, x_ch, p_ok,
                   x_new.to(tl.float32), slot0, WIDTH, HAS_CONV_BIAS)
    B = _conv_silu(conv, stride_conv_c, stride_conv_w, conv_w_ptr, stride_w_c, conv_b_ptr, B_ch, n_ok,
                   B_new.to(tl.float32), slot0, WIDTH, HAS_CONV_BIAS)
    C = _conv_silu(conv, stride_conv_c, stride_conv_w, conv_w_ptr, stride_w_c, conv_b_ptr, C_ch, n_ok,
                   C_new.to(tl.float32), slot0, WIDTH, HAS_CONV_BIAS)
    # Slot position % W holds position - W, which no tap reads: writing it races with no program's reads.
    slot = position % WIDTH
    conv_dtype = conv_state_ptr.dtype.element_ty
    tl.store(conv + x_ch * stride_conv_c + slot * stride_conv_w, x_new.to(conv_dtype), mask=p_ok)
    if head % heads_per_group + pblock == 0:  # the group's first program writes B and C's new inputs
        tl.store(conv + B_ch * stride_conv_c + slot * stride_conv_w, B_new.to(conv_dtype), mask=n_ok)
        tl.store(conv + C_ch * stride_conv_c + slot * stride_conv_w, C_new.to(conv_dtype), mask=n_ok)

    dt = tl.load(row + 2 * d_inner + 2 * ngroups * dstate + head).to(tl.float32)
    dt += tl.load(dt_bias_ptr + head).to(tl.float32)
    dt = step(dt, dt_min, dt_max, True, HAS_DT_LIMIT)
    dA = tl.exp(-dt * tl.exp(tl.load(A_log_ptr + head).to(tl.float32)))
    state_ptrs = (ssm_state_ptr + b * stride_ssm_b + head * stride_ssm_h + p[:, None] * stride_ssm_p
                  + n[None, :] * stride_ssm_n)
    ok = p_ok[:, None] & n_ok[None, :]
    state = tl.load(state_ptrs, mask=ok, other=0.0).to(tl.float32)
    state = state * dA + (dt * x)[:, None] * B[None, :]
    tl.store(state_ptrs, state.to(ssm_state_ptr.dtype.element_ty), mask=ok)
    y = tl.sum(state * C[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + head).to(tl.float32) * x
    z = tl.load(row + x_ch, mask=p_ok, other=0.0).to(tl.float32)
    g = tl.where(p_ok, y * z * tl.sigmoid(z), 0.0)
    tl.store(g_ptr + b * stride_g + x_ch, g, mask=p_ok)
    tl.store(sumsq_ptr + b * stride_sumsq + head * pblocks + pblock, tl.sum(g * g, axis=0))


@triton.jit
def _out_kernel(
    g_ptr, sumsq_ptr, norm_w_ptr, w_ptr, bias_ptr, out_ptr,
    batch, d_out, group_size, ngroups, parts_per_group, eps,
    stride_g, stride_sumsq, stride_w_out, stride_w_in, stride_out,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_PARTS: tl.constexpr,
    STAGES: tl.constexpr,
):
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    rows_ok = rows < batch
    j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    j_ok = j < d_out
    parts = tl.arange(0, BLOCK_PARTS)
    w_dtype = w_ptr.dtype.element_ty
    if USE_DOT:
        acc = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    else:
        acc3 = tl.zeros((BLOCK_B, BLOCK_J, BLOCK_K), tl.float32)
    for group in range(ngroups):
        # A tile never spans two groups: each group's inputs are walked on their own, with its rstd.
        sumsq = tl.load(sumsq_ptr + rows[:, None] * stride_sumsq + group * parts_per_group + parts[None, :],
                        mask=rows_ok[:, None] & (parts[None, :] < parts_per_group), other=0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(sumsq, axis=1) / group_size + eps)
        for start in tl.range(0, group_size, BLOCK_K, num_stages=STAGES):
            k_in = start + tl.arange(0, BLOCK_K)
            k_ok = k_in < group_size
            k = group * group_size + k_in
            g = tl.load(g_ptr + rows[:, None] * stride_g + k[None, :], mask=rows_ok[:, None] & k_ok[None, :],
                        other=0.0)
            norm_w = tl.load(norm_w_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            a = (g * rstd[:, None] * norm_w[None, :]).to(w_dtype)
            if USE_DOT:
                w = tl.load(w_ptr + j[None, :] * stride_w_out + k[:, None] * stride_w_in,
                            mask=j_ok[None, :] & k_ok[:, None], other=0.0)
                if IEEE:
                    acc += tl.dot(a, w, input_precision="ieee")
                else:
                    acc += tl.dot(a, w)
            else:
                w = tl.load(w_ptr + j[:, None] * stride_w_out + k[None, :] * stride_w_in,
                            mask=j_ok[:, None] & k_ok[None, :], other=0.0)
                acc3 += a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    if not USE_DOT:
        acc = tl.sum(acc3, axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + j, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * stride_out + j[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rows_ok[:, None] & j_ok[None, :])


def _blocking(batch, rows, tile, dot_rows):
    """(batch rows, W's rows, inputs) per program of a matrix-vector launch over ``batch`` rows, and whether it
    uses tl.dot: ``rows`` W rows and a float32 product tile of ``tile`` elements below 16 batch rows, else
    ``dot_rows`` W rows by 64 inputs."""
    block_b = min(triton.next_power_of_2(batch), 64)
    if block_b >= 16:
        return block_b, dot_rows, 64, True
    return block_b, rows, max(tile // (block_b * rows), 16), False


def mix(zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log, D, headdim, ngroups,
        dt_limit=DEFAULT_DT_LIMIT):
    """The "mix" launch. Arguments as :func:`kotomamba.ops.mamba2_decode.mamba2_decode_mix_ref`; returns
    g = y * silu(z) [b, d_inner] float32 and the partial sums of g^2, [b, nheads * blocks per head] float32
    (a head's blocks together, heads in order: a norm group's partial sums are contiguous)."""
    zxbcdt, conv_weight = unit_stride_last(zxbcdt), unit_stride_last(conv_weight)
    batch = zxbcdt.shape[0]
    nheads, _, dstate = ssm_state.shape[1:]
    d_inner = nheads * headdim
    width = conv_weight.shape[-1]
    block_n = triton.next_power_of_2(dstate)
    block_p = min(triton.next_power_of_2(headdim), max(MIX_TILE // block_n, 1))
    pblocks = triton.cdiv(headdim, block_p)
    g = torch.empty(batch, d_inner, dtype=torch.float32, device=zxbcdt.device)
    sumsq = torch.empty(batch, nheads * pblocks, dtype=torch.float32, device=zxbcdt.device)
    limited = tuple(dt_limit) != DEFAULT_DT_LIMIT
    _mix_kernel[(batch, nheads, pblocks)](
        zxbcdt, conv_state, ssm_state, position, conv_weight, conv_weight if conv_bias is None else conv_bias,
        dt_bias, A_log, A_log if D is None else D, g, sumsq,
        d_inner, headdim, dstate, ngroups, nheads // ngroups, float(dt_limit[0]) if limited else 0.0,
        float(dt_limit[1]) if limited else 0.0,
        zxbcdt.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), conv_weight.stride(0),
        *ssm_state.stride(), g.stride(0), sumsq.stride(0),
        WIDTH=width, HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, HAS_DT_LIMIT=limited,
        BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4,
    )
    return g, sumsq


def out(g, sumsq, norm_weight, norm_eps, out_proj_weight, out_proj_bias, ngroups, out_dtype=None):
    """The "out" launch: out_proj of the gated norm of g [b, d_inner] (float32) per group of d_inner / ngroups
    channels, from the partial sums of g^2 [b, parts] (each group's ``parts / ngroups`` together), norm_weight
    [d_inner], out_proj_weight [d_out, d_inner]. Returns [b, d_out] in ``out_dtype`` (default W's)."""
    batch, d_inner = g.shape
    d_out = out_proj_weight.shape[0]
    parts_per_group = sumsq.shape[1] // ngroups
    result = torch.empty(batch, d_out, dtype=out_dtype or out_proj_weight.dtype, device=g.device)
    block_b, block_j, block_k, use_dot = _blocking(batch, OUT_ROWS, OUT_TILE, DOT_ROWS)
    grid = (triton.cdiv(d_out, block_j), triton.cdiv(batch, block_b))
    _out_kernel[grid](
        g, sumsq, norm_weight, out_proj_weight, out_proj_weight if out_proj_bias is None else out_proj_bias, result,
        batch, d_out, d_inner // ngroups, ngroups, parts_per_group, norm_eps,
        g.stride(0), sumsq.stride(0), out_proj_weight.stride(0), out_proj_weight.stride(1), result.stride(0),
        HAS_BIAS=out_proj_bias is not None, USE_DOT=use_dot, IEEE=out_proj_weight.dtype == torch.float32,
        BLOCK_B=block_b, BLOCK_J=block_j, BLOCK_K=block_k,
        BLOCK_PARTS=triton.next_power_of_2(parts_per_group), num_warps=4 if use_dot else OUT_WARPS,
        STAGES=DOT_STAGES if use_dot else OUT_STAGES,
    )
    return result


def mamba2_decode_step_triton(zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log, D,
                              norm_weight, norm_eps, out_proj_weight, out_proj_bias, headdim, ngroups,
                              dt_limit=DEFAULT_DT_LIMIT):
    """Arguments and result as :func:`kotomamba.ops.mamba2_decode.mamba2_decode_step_ref` (two launches)."""
    g, sumsq = mix(zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log, D, headdim,
                   ngroups, dt_limit)
    return out(g, sumsq, norm_weight, norm_eps, out_proj_weight, out_proj_bias, ngroups)
