"""Triton kernels of one Mamba-2 decoding step (:func:`kotomamba.ops.mamba2_decode.mamba2_decode_in_ref` and
:func:`kotomamba.ops.mamba2_decode.mamba2_decode_step_ref` are the twins), three launches per layer with
:data:`FUSED_IN` on (four with it off: add+norm and in_proj stay two) where mamba-ssm's ``Block`` around
``Mamba2.step`` makes about nine (add+norm, in_proj, conv update, casts, state update, gated norm, out_proj): at
batch 1 each costs its launch latency more than its bytes.

- "in", one program per (block of in_proj's rows, block of batch rows), used when :data:`FUSED_IN` is on: the
  block's residual add ``s = hidden + residual``, its RMSNorm and in_proj: ``zxbcdt[b, j] = sum_k W[j, k] *
  (s[b, k] * rstd[b] * norm_w[k])``, the normalised input rounded to W's dtype as the twin's is before its
  linear. Each program first walks its rows' d_model inputs for their sum of squares (they sit in L2: no
  separate launch), then again for the product; the programs of the first block of W's rows write the new
  residual (one writer per element). Below 16 batch rows a broadcast product summed over k; from 16 on
  ``tl.dot``. With :data:`IN_CONV`, the epilogue of the programs whose rows are xBC channels does their
  circular convolution update (each channel has one program) and writes its result, float32, for "mix".
- "mix", one program per (row, head, block of head channels): unless "in" did it, the circular convolution
  update of its x channels and of its group's B and C channels (read from the state before any program writes, see
  :mod:`kotomamba.ops.mamba2_decode`; one program per group writes B and C's new inputs), ``dt = softplus(dt +
  dt_bias)`` clamped, ``dA = exp(-dt * exp(A_log))``, ``state = dA * state + dt * x B^T``, ``y = state C + D x``,
  ``g = y * silu(z)`` (float32), and its share of ``sum(g^2)``: each program writes its own partial sum and the
  next launch adds them (deterministic, nothing to zero first).
- "out", one program per (block of out_proj's rows, block of batch rows): ``out[b, j] = sum_k W[j, k] *
  (g[b, k] * rstd[b, group(k)] * norm_w[k])``, the normalised input rounded to W's dtype as the twin's is before
  its linear; rstd from the partial sums. Below 16 rows a broadcast product summed over k; from 16 on ``tl.dot``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kotomamba.ops.norm import residual_dtype
from kotomamba.ops.ssd import DEFAULT_DT_LIMIT

# Whether a Mamba-2 block's step runs the "in" launch (kotomamba.ops.mamba2_decode.mamba2_decode_block_step); off:
# the add+norm kernel and in_proj's cuBLAS GEMV, as before the "in" kernel existed. With it, whether the in launch
# also does the convolution update of the xBC channels (as its epilogue) instead of the mix launch.
FUSED_IN = False
IN_CONV = True
# Elements of the float32 tiles each program holds: the mix kernel's state tile (head channels x d_state) and
# the in and out kernels' product tiles (batch rows x W's rows x inputs) when they do not use tl.dot. Then W's
# rows per program of the in and out kernels below 16 batch rows and with tl.dot (fewer: more programs, each
# rereading its inputs: the in kernel reads hidden and residual twice per program).
# bench/generate_throughput.py times others (generate:ours=NAME:VALUE+...).
MIX_TILE = 2048
IN_TILE = 4096
OUT_TILE = 4096
IN_ROWS = 16
OUT_ROWS = 8
IN_DOT_ROWS = 32
DOT_ROWS = 32


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
def _block_input(x_ptr, res_ptr, rows, k, ok, stride_x, stride_res, HAS_RES: tl.constexpr):
    """s = hidden + residual at (rows, k), float32 [rows, k]; 0 where not ``ok``."""
    s = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + rows[:, None] * stride_res + k[None, :], mask=ok, other=0.0).to(tl.float32)
    return s


@triton.jit
def _in_kernel(
    x_ptr, res_ptr, norm_w_ptr, w_ptr, bias_ptr, out_ptr, res_out_ptr,
    conv_state_ptr, position_ptr, conv_w_ptr, conv_b_ptr, xbc_ptr,
    batch, d_model, d_out, eps, conv_start, conv_dim,
    stride_x, stride_res, stride_w_out, stride_w_in, stride_out, stride_res_out,
    stride_conv_b, stride_conv_c, stride_conv_w, stride_conv_w_c, stride_xbc,
    HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, IEEE: tl.constexpr,
    CONV: tl.constexpr, WIDTH: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    rows_ok = rows < batch
    rows = rows.to(tl.int64)
    j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    j_ok = j < d_out
    writes_residual = tl.program_id(0) == 0
    w_dtype = w_ptr.dtype.element_ty
    sumsq = tl.zeros((BLOCK_B,), tl.float32)
    for start in range(0, d_model, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        ok = rows_ok[:, None] & (k < d_model)[None, :]
        s = _block_input(x_ptr, res_ptr, rows, k, ok, stride_x, stride_res, HAS_RES)
        if writes_residual:
            tl.store(res_out_ptr + rows[:, None] * stride_res_out + k[None, :],
                     s.to(res_out_ptr.dtype.element_ty), mask=ok)
        sumsq += tl.sum(s * s, axis=1)
    rstd = 1.0 / tl.sqrt(sumsq / d_model + eps)
    if USE_DOT:
        acc = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    else:
        acc3 = tl.zeros((BLOCK_B, BLOCK_J, BLOCK_K), tl.float32)
    for start in range(0, d_model, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        k_ok = k < d_model
        s = _block_input(x_ptr, res_ptr, rows, k, rows_ok[:, None] & k_ok[None, :], stride_x, stride_res, HAS_RES)
        norm_w = tl.load(norm_w_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        a = (s * rstd[:, None] * norm_w[None, :]).to(w_dtype)
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
    zxbcdt = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * stride_out + j[None, :], zxbcdt, mask=rows_ok[:, None] & j_ok[None, :])
    if CONV:
        # Rows conv_start .. conv_start + conv_dim - 1 are the convolution's channels (xBC): each belongs to this
        # program alone, so it reads their past inputs and writes the new one (slot position % W, which no tap
        # reads) without a race, as the mix launch would.
        c = j - conv_start
        ok = rows_ok[:, None] & (j_ok & (c >= 0) & (c < conv_dim))[None, :]
        position = tl.load(position_ptr)
        state = conv_state_ptr + rows[:, None] * stride_conv_b
        x = _conv_silu(state, stride_conv_c, stride_conv_w, conv_w_ptr, stride_conv_w_c, conv_b_ptr, c[None, :], ok,
                       zxbcdt.to(tl.float32), position + 1, WIDTH, HAS_CONV_BIAS)
        tl.store(state + c[None, :] * stride_conv_c + (position % WIDTH) * stride_conv_w,
                 zxbcdt.to(conv_state_ptr.dtype.element_ty), mask=ok)
        tl.store(xbc_ptr + rows[:, None] * stride_xbc + c[None, :], x, mask=ok)


@triton.jit
def _mix_kernel(
    zxbcdt_ptr, conv_state_ptr, ssm_state_ptr, position_ptr, conv_w_ptr, conv_b_ptr, dt_bias_ptr, A_log_ptr, D_ptr,
    g_ptr, sumsq_ptr, xbc_ptr,
    d_inner, headdim, dstate, ngroups, heads_per_group, dt_min, dt_max,
    stride_zxbcdt, stride_conv_b, stride_conv_c, stride_conv_w, stride_w_c,
    stride_ssm_b, stride_ssm_h, stride_ssm_p, stride_ssm_n, stride_g, stride_sumsq, stride_xbc,
    WIDTH: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_LIMIT: tl.constexpr,
    CONVOLVED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
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
    if CONVOLVED:  # the in launch did the convolution update
        x = tl.load(xbc_ptr + b * stride_xbc + x_ch, mask=p_ok, other=0.0)
        B = tl.load(xbc_ptr + b * stride_xbc + B_ch, mask=n_ok, other=0.0)
        C = tl.load(xbc_ptr + b * stride_xbc + C_ch, mask=n_ok, other=0.0)
    else:
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
    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)  # softplus, with torch's threshold
    if HAS_DT_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
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
        for start in range(0, group_size, BLOCK_K):
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


def in_launch(hidden, residual, norm_weight, norm_eps, in_proj_weight, in_proj_bias, residual_in_fp32=False,
              conv=None):
    """The "in" launch. Arguments as :func:`kotomamba.ops.mamba2_decode.mamba2_decode_in_ref`, whose (zxbcdt,
    residual) it returns, with a third result: None, or with ``conv`` = (conv_state [b, conv_dim, W], position,
    conv_weight [conv_dim, W], conv_bias, start) the convolution update of in_proj's outputs start .. start +
    conv_dim - 1 (Mamba-2's xBC) as :func:`kotomamba.ops.mamba2_decode.conv_update_circular_ref` does it: the
    circular state updated in place, and its result xbc [b, conv_dim] float32."""
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    batch, d_model = hidden.shape
    d_out = in_proj_weight.shape[0]
    zxbcdt = torch.empty(batch, d_out, dtype=in_proj_weight.dtype, device=hidden.device)
    residual_out = torch.empty(batch, d_model, dtype=residual_dtype(hidden, residual, residual_in_fp32),
                               device=hidden.device)
    xbc = None
    if conv is None:  # placeholders the kernel does not read
        conv_state, position, conv_weight, conv_bias, start = zxbcdt[:, :, None], zxbcdt, zxbcdt, None, 0
        conv_dim, width, conv_strides = 0, 1, (0, 0, 0, 0, 0)
    else:
        conv_state, position, conv_weight, conv_bias, start = conv
        if conv_weight.stride(-1) != 1:
            conv_weight = conv_weight.contiguous()
        conv_dim, width = conv_weight.shape
        xbc = torch.empty(batch, conv_dim, dtype=torch.float32, device=hidden.device)
        conv_strides = (*conv_state.stride(), conv_weight.stride(0), xbc.stride(0))
    block_b, block_j, block_k, use_dot = _blocking(batch, IN_ROWS, IN_TILE, IN_DOT_ROWS)
    grid = (triton.cdiv(d_out, block_j), triton.cdiv(batch, block_b))
    _in_kernel[grid](
        hidden, hidden if residual is None else residual, norm_weight, in_proj_weight,
        in_proj_weight if in_proj_bias is None else in_proj_bias, zxbcdt, residual_out,
        conv_state, position, conv_weight, conv_weight if conv_bias is None else conv_bias,
        zxbcdt if xbc is None else xbc,
        batch, d_model, d_out, norm_eps, start, conv_dim,
        hidden.stride(0), 0 if residual is None else residual.stride(0), in_proj_weight.stride(0),
        in_proj_weight.stride(1), zxbcdt.stride(0), residual_out.stride(0), *conv_strides,
        HAS_RES=residual is not None, HAS_BIAS=in_proj_bias is not None, USE_DOT=use_dot,
        IEEE=in_proj_weight.dtype == torch.float32, CONV=conv is not None, WIDTH=width,
        HAS_CONV_BIAS=conv_bias is not None, BLOCK_B=block_b, BLOCK_J=block_j, BLOCK_K=block_k, num_warps=4,
    )
    return zxbcdt, residual_out, xbc


def mix(zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log, D, headdim, ngroups,
        dt_limit=DEFAULT_DT_LIMIT, xbc=None):
    """The "mix" launch. Arguments as :func:`kotomamba.ops.mamba2_decode.mamba2_decode_mix_ref`; returns
    g = y * silu(z) [b, d_inner] float32 and the partial sums of g^2, [b, nheads * blocks per head] float32
    (a head's blocks together, heads in order: a norm group's partial sums are contiguous). ``xbc``: the
    convolution's result [b, conv_dim] float32 when :func:`in_launch` has done the update (the conv state is then
    neither read nor written here)."""
    if zxbcdt.stride(-1) != 1:
        zxbcdt = zxbcdt.contiguous()
    if conv_weight.stride(-1) != 1:
        conv_weight = conv_weight.contiguous()
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
        dt_bias, A_log, A_log if D is None else D, g, sumsq, g if xbc is None else xbc,
        d_inner, headdim, dstate, ngroups, nheads // ngroups, float(dt_limit[0]) if limited else 0.0,
        float(dt_limit[1]) if limited else 0.0,
        zxbcdt.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), conv_weight.stride(0),
        *ssm_state.stride(), g.stride(0), sumsq.stride(0), 0 if xbc is None else xbc.stride(0),
        WIDTH=width, HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, HAS_DT_LIMIT=limited,
        CONVOLVED=xbc is not None, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4,
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
        BLOCK_PARTS=triton.next_power_of_2(parts_per_group), num_warps=4,
    )
    return result


def mamba2_decode_step_triton(zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log, D,
                              norm_weight, norm_eps, out_proj_weight, out_proj_bias, headdim, ngroups,
                              dt_limit=DEFAULT_DT_LIMIT):
    """Arguments and result as :func:`kotomamba.ops.mamba2_decode.mamba2_decode_step_ref` (two launches)."""
    g, sumsq = mix(zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log, D, headdim,
                   ngroups, dt_limit)
    return out(g, sumsq, norm_weight, norm_eps, out_proj_weight, out_proj_bias, ngroups)


def mamba2_decode_block_step_triton(hidden, residual, norm_weight, norm_eps, in_proj_weight, in_proj_bias,
                                    residual_in_fp32, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias,
                                    A_log, D, out_norm_weight, out_norm_eps, out_proj_weight, out_proj_bias, headdim,
                                    ngroups, dt_limit=DEFAULT_DT_LIMIT):
    """Arguments and result as :func:`kotomamba.ops.mamba2_decode.mamba2_decode_block_step` (three launches: in,
    with the convolution update when :data:`IN_CONV` is on, mix and out)."""
    d_inner = ssm_state.shape[1] * headdim
    conv = (conv_state, position, conv_weight, conv_bias, d_inner) if IN_CONV else None
    zxbcdt, residual, xbc = in_launch(hidden, residual, norm_weight, norm_eps, in_proj_weight, in_proj_bias,
                                      residual_in_fp32, conv)
    g, sumsq = mix(zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log, D, headdim,
                   ngroups, dt_limit, xbc)
    return out(g, sumsq, out_norm_weight, out_norm_eps, out_proj_weight, out_proj_bias, ngroups), residual
