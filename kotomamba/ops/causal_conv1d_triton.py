"""Triton kernels of the causal depthwise convolution in channel-last layout, with document resets
(:func:`kotomamba.ops.causal_conv1d.causal_conv1d_ref` is the twin).

Mamba-2's in_proj leaves ``xBC`` as a [b, L, d] slice of a wider row, channels contiguous. Tri Dao's
causal-conv1d reads that layout with its channel-last kernels, which are slower with ``seq_idx``
(document resets) than without (bench/RESULTS.md). These kernels read the slice where it lies, in
[positions, channels] tiles, so a document reset is a mask on the taps and costs one extra [L]
load per tap:

- forward: ``y[t] = act(bias + sum_k w[k] * x[t - (W-1) + k])``, taps in another document (or
  before the sequence) read zero.
- backward, two launches: the first reruns the pre-activation and writes its gradient ``dpre``
  (float32); the second gathers ``dx[s] = sum_j w[W-1-j] * dpre[s + j]`` over the outputs in s's
  document and sums each program's shares of ``dweight`` and ``dbias`` over its tiles in registers,
  into a float32 buffer that PyTorch sums, so the result does not depend on the order the programs
  ran in. (One launch that reruns all W pre-activations each x feeds held too many registers: few
  programs per multiprocessor, each waiting on its loads one after another.)

Arithmetic in float32; ``y`` and ``dx`` in the input's dtype, ``dweight``/``dbias`` in the weight's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# (positions per tile, channels per tile, warps, tiles per program of the backward's second launch):
# eight values per thread, which ptxas fits in registers without spills; bench/conv_throughput.py
# times others (``conv:ours=16.64.4.8``).
CONV_CONFIG = (16, 64, 4, 8)


@triton.jit
def _pre_activation(x_base, stride_x_l, stride_x_d, w_ptr, bias, seq_base, stride_seq_l, t, doc_t, d, d_ok, L,
                    HAS_SEQ: tl.constexpr, W: tl.constexpr):
    """``bias + sum_k w[d, k] * x[t - (W-1) + k, d]`` over the taps inside the sequence and, with
    ``HAS_SEQ``, in ``doc_t``'s document: [BLOCK_L, BLOCK_D] float32."""
    acc = tl.zeros((t.shape[0], d.shape[0]), tl.float32) + bias[None, :]
    for k in tl.static_range(W):
        s = t - (W - 1) + k
        ok = (s >= 0) & (s < L)
        if HAS_SEQ:
            ok = ok & (tl.load(seq_base + s * stride_seq_l, mask=ok, other=-1) == doc_t)
        xk = tl.load(x_base + s[:, None] * stride_x_l + d[None, :] * stride_x_d, mask=ok[:, None] & d_ok[None, :],
                     other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + d * W + k, mask=d_ok, other=0.0).to(tl.float32)
        acc += xk * wk[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, seq_ptr, y_ptr, L, dim,
    stride_x_b, stride_x_l, stride_x_d, stride_y_b, stride_y_l, stride_y_d, stride_seq_b, stride_seq_l,
    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ROW_UNIT: tl.constexpr,
):
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # offsets past 2**31 elements
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok, d_ok = t < L, d < dim
    seq_base = seq_ptr + b * stride_seq_b
    doc_t = tl.load(seq_base + t * stride_seq_l, mask=t_ok, other=-2) if HAS_SEQ else 0
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros((BLOCK_D,), tl.float32)
    pre = _pre_activation(x_ptr + b * stride_x_b, stride_x_l * ROW_UNIT, stride_x_d, w_ptr, bias, seq_base,
                          stride_seq_l, t, doc_t, d, d_ok, L, HAS_SEQ, W)
    y = pre * tl.sigmoid(pre) if SILU else pre
    tl.store(y_ptr + b * stride_y_b + t[:, None] * (stride_y_l * ROW_UNIT) + d[None, :] * stride_y_d,
             y.to(y_ptr.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])


@triton.jit
def _conv_bwd_pre_kernel(
    x_ptr, w_ptr, bias_ptr, seq_ptr, dy_ptr, dpre_ptr, L, dim,
    stride_x_b, stride_x_l, stride_x_d, stride_dy_b, stride_dy_l, stride_dy_d, stride_seq_b, stride_seq_l,
    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, W: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ROW_UNIT: tl.constexpr,
):
    """The pre-activation's gradient ``dy * silu'(pre)`` into a float32 [b, L, d] buffer."""
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # offsets past 2**31 elements
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok, d_ok = t < L, d < dim
    tile_ok = t_ok[:, None] & d_ok[None, :]
    seq_base = seq_ptr + b * stride_seq_b
    doc_t = tl.load(seq_base + t * stride_seq_l, mask=t_ok, other=-2) if HAS_SEQ else 0
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros((BLOCK_D,), tl.float32)
    pre = _pre_activation(x_ptr + b * stride_x_b, stride_x_l * ROW_UNIT, stride_x_d, w_ptr, bias, seq_base,
                          stride_seq_l, t, doc_t, d, d_ok, L, HAS_SEQ, W)
    sig = tl.sigmoid(pre)
    dy = tl.load(dy_ptr + b * stride_dy_b + t[:, None] * (stride_dy_l * ROW_UNIT) + d[None, :] * stride_dy_d,
                 mask=tile_ok, other=0.0).to(tl.float32)
    tl.store(dpre_ptr + (b * L + t[:, None]) * dim + d[None, :], dy * sig * (1.0 + pre * (1.0 - sig)), mask=tile_ok)


@triton.jit
def _conv_bwd_dx_kernel(
    dpre_ptr, x_ptr, w_ptr, seq_ptr, dx_ptr, dw_part_ptr, dbias_part_ptr, L, dim,
    stride_x_b, stride_x_l, stride_x_d, stride_dx_b, stride_dx_l, stride_dx_d, stride_seq_b, stride_seq_l,
    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr, TILES: tl.constexpr, ROW_UNIT: tl.constexpr,
):
    """``dx[s] = sum_j w[W-1-j] * dpre[s + j]`` over the outputs s + j in s's document, for ``TILES``
    consecutive tiles per program, and the program's shares of the weight's gradient (tap W-1-j:
    ``sum_s dpre[s + j] * x[s]`` over the same pairs) and of the bias's, summed over its tiles in
    registers."""
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # offsets past 2**31 elements
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    seq_base = seq_ptr + b * stride_seq_b
    taps = tl.arange(0, W_PAD)
    dw = tl.zeros((BLOCK_D, W_PAD), tl.float32)
    dbias = tl.zeros((BLOCK_D,), tl.float32)
    for i in range(TILES):
        s = (pid_l * TILES + i) * BLOCK_L + tl.arange(0, BLOCK_L)
        s_ok = s < L
        tile_ok = s_ok[:, None] & d_ok[None, :]
        doc_s = tl.load(seq_base + s * stride_seq_l, mask=s_ok, other=-2) if HAS_SEQ else 0
        x_s = tl.load(x_ptr + b * stride_x_b + s[:, None] * (stride_x_l * ROW_UNIT) + d[None, :] * stride_x_d,
                      mask=tile_ok, other=0.0).to(tl.float32)
        dx = tl.zeros((BLOCK_L, BLOCK_D), tl.float32)
        for j in tl.static_range(W):
            u = s + j
            same = u < L
            if HAS_SEQ:
                same = same & (tl.load(seq_base + u * stride_seq_l, mask=same, other=-2) == doc_s)
            dpre = tl.load(dpre_ptr + (b * L + u[:, None]) * dim + d[None, :], mask=same[:, None] & d_ok[None, :],
                           other=0.0)
            dx += dpre * tl.load(w_ptr + d * W + (W - 1 - j), mask=d_ok, other=0.0).to(tl.float32)[None, :]
            dw += tl.where(taps[None, :] == W - 1 - j, tl.sum(dpre * x_s, axis=0)[:, None], 0.0)
            if j == 0:
                dbias += tl.sum(dpre, axis=0)
        tl.store(dx_ptr + b * stride_dx_b + s[:, None] * (stride_dx_l * ROW_UNIT) + d[None, :] * stride_dx_d,
                 dx.to(dx_ptr.dtype.element_ty), mask=tile_ok)
    share = (b * tl.num_programs(0) + pid_l) * dim
    tl.store(dw_part_ptr + (share + d[:, None]) * W + taps[None, :], dw, mask=d_ok[:, None] & (taps[None, :] < W))
    if HAS_BIAS:
        tl.store(dbias_part_ptr + share + d, dbias, mask=d_ok)


def _grid(x: torch.Tensor, config: tuple[int, ...], positions: int) -> tuple[int, int, int]:
    batch, seqlen, dim = x.shape
    return (triton.cdiv(seqlen, positions), triton.cdiv(dim, config[1]), batch)


def _seq_args(seq_idx: torch.Tensor | None, x: torch.Tensor):
    if seq_idx is None:
        return x, 0, 0  # any pointer: HAS_SEQ=False never reads it
    return seq_idx, seq_idx.stride(0), seq_idx.stride(1)


def _rows(*tensors: torch.Tensor) -> tuple[int, list[tuple[int, int, int]]]:
    """Strides of [b, L, d] tensors with the row (L) stride in units of ``unit`` elements: 8 when every
    row stride is a multiple of 8, so that the kernels know rows start 16-byte aligned and load them in
    wide vectors (Triton proves alignment only from a multiplication by a constant)."""
    unit = 8 if all(t.stride(1) % 8 == 0 for t in tensors) else 1
    return unit, [(t.stride(0), t.stride(1) // unit, t.stride(2)) for t in tensors]


def conv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None,
             silu: bool, config: tuple[int, ...] = CONV_CONFIG, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [b, L, d] (any strides; channels contiguous reads fastest); weight: [d, W] contiguous;
    bias: [d]; seq_idx: [b, L] int32. Returns y [b, L, d] in x's dtype (into ``out`` if given)."""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    seq, stride_seq_b, stride_seq_l = _seq_args(seq_idx, x)
    unit, (x_strides, y_strides) = _rows(x, y)
    _conv_fwd_kernel[_grid(x, config, config[0])](
        x, weight, weight if bias is None else bias, seq, y, x.shape[1], x.shape[2],
        *x_strides, *y_strides, stride_seq_b, stride_seq_l,
        HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu, W=weight.shape[1],
        BLOCK_L=config[0], BLOCK_D=config[1], ROW_UNIT=unit, num_warps=config[2],
    )
    return y


def conv_bwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None,
             dy: torch.Tensor, silu: bool, config: tuple[int, ...] = CONV_CONFIG,
             dx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`conv_fwd` for ``dy`` [b, L, d]: dx [b, L, d] in x's dtype (into ``dx`` if
    given), dweight [d, W] and dbias [d] (None without bias) in the weight's dtype. Two launches
    through a float32 [b, L, d] buffer of the pre-activation's gradient (without activation, dy is it)."""
    batch, seqlen, dim = x.shape
    width = weight.shape[1]
    grid = _grid(x, config, config[0] * config[3])
    shares = grid[0] * grid[2]
    dw_part = torch.empty((shares, dim, width), dtype=torch.float32, device=x.device)
    dbias_part = torch.empty((shares, dim), dtype=torch.float32, device=x.device) if bias is not None else dw_part
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if dx is None else dx
    seq, stride_seq_b, stride_seq_l = _seq_args(seq_idx, x)
    unit, (x_strides, dy_strides, dx_strides) = _rows(x, dy, dx)
    if silu:
        dpre = torch.empty((batch, seqlen, dim), dtype=torch.float32, device=x.device)
        _conv_bwd_pre_kernel[_grid(x, config, config[0])](
            x, weight, weight if bias is None else bias, seq, dy, dpre, seqlen, dim,
            *x_strides, *dy_strides, stride_seq_b, stride_seq_l,
            HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, W=width, BLOCK_L=config[0], BLOCK_D=config[1],
            ROW_UNIT=unit, num_warps=config[2],
        )
    else:
        dpre = dy.float().contiguous()
    _conv_bwd_dx_kernel[grid](
        dpre, x, weight, seq, dx, dw_part, dbias_part, seqlen, dim, *x_strides, *dx_strides, stride_seq_b,
        stride_seq_l, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, W=width,
        W_PAD=triton.next_power_of_2(width), BLOCK_L=config[0], BLOCK_D=config[1], TILES=config[3], ROW_UNIT=unit,
        num_warps=config[2],
    )
    dbias = dbias_part.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dw_part.sum(0).to(weight.dtype), dbias


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx, silu, config):
        ctx.save_for_backward(x, weight, bias, seq_idx)
        ctx.silu, ctx.config = silu, config
        return conv_fwd(x, weight, bias, seq_idx, silu, config)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, seq_idx = ctx.saved_tensors
        dx, dweight, dbias = conv_bwd(x, weight, bias, seq_idx, dy, ctx.silu, ctx.config)
        return dx, dweight, dbias, None, None, None


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    activation: str | None = None,
    config: tuple[int, ...] = CONV_CONFIG,
) -> torch.Tensor:
    """The twin's maths through this module's kernels, differentiable. x: [b, L, d] (channel-last,
    the transpose of the twin's [b, d, L]); weight: [d, W]; bias: [d]; seq_idx: [b, L] int.
    Returns [b, L, d] in x's dtype."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    if seq_idx is not None:
        seq_idx = seq_idx.to(torch.int32)
    return _CausalConv1d.apply(x, weight.contiguous(), bias, seq_idx, activation is not None, config)
