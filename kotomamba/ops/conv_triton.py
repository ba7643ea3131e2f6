"""Mamba-2's depthwise causal convolution over channel-last rows, document resets included, in Triton: one
launch forward, one backward. :func:`kotomamba.ops.causal_conv1d.causal_conv1d_ref` is the twin.

    pre[b, t, d] = bias[d] + sum_{k < W} w[d, k] * x[b, t - (W-1) + k, d] * [seq[b, t - (W-1) + k] == seq[b, t]]
    y = silu(pre) (or pre)

Mamba-2's in_proj leaves ``xBC`` as a [b, L, d] slice of a wider row, channels contiguous. Each program takes a
tile of channels and walks a chunk of positions one row at a time, keeping the last three rows (and their
document numbers) in registers: every element is read once (and the three rows before the chunk), a thread
owns its channels from the first row to the last, so nothing crosses threads, and a reset costs one compare of
document numbers per tap. (A first version computed tiles of positions x channels and reread x at each tap's
shift: it lost to causal-conv1d's kernels, bench/RESULTS.md, session 33.) causal-conv1d's
channel-last kernels run slower with ``seq_idx`` than without (bench/RESULTS.md, sessions 18 and 31); this walk
keeps their pace without documents and outruns them with documents (session 34).

The taps are padded to four at the front (zero weights for widths 1 to 3), so the walk carries a fixed window:
widths above four (which causal-conv1d does not take either) are refused.

Backward, with ``g[t] = dy[t] * silu'(pre[t])``:

    dx[t] = sum_{j < W} w[d, W-1-j] * g[t + j] * [seq[t + j] == seq[t]]
    dweight[d, k] = sum_t g[t] * x[t - (W-1) + k] * [seq[t - (W-1) + k] == seq[t]];  dbias[d] = sum_t g[t]

The walk computes ``g`` once per row and writes dx three rows behind it (the rows after the chunk are
recomputed by the next program too). Each program sums its positions' shares of dweight and dbias in its own
registers and writes them to a buffer of one row per program that one ``torch.sum`` reduces: no atomics, so the
gradients are the same bits on every run.

x, dy, dx: [b, L, d] (any strides); y: [b, L, d] contiguous; weight: [d, W]; bias: [d]; seq_idx: [b, L] int32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

TAPS = 4  # the widths taken: 1 to TAPS
# (positions per program, channels per program, warps): two warps a program (four channels a thread forward,
# two backward), the fastest of the blockings bench/conv_throughput.py times at the presets' widths
# (bench/RESULTS.md, session 34).
FWD_CONFIG = (128, 256, 2)
BWD_CONFIG = (128, 128, 2)


@triton.jit
def _within(t, lo, hi, d_ok):
    """[BLOCK_D]: ``d_ok`` where ``lo <= t < hi`` (a tensor of the row's shape also where the interpreter's loop
    gives ``t`` as a Python int)."""
    at = t + tl.zeros(d_ok.shape, tl.int32)
    return d_ok & (at >= lo) & (at < hi)


@triton.jit
def _stored_row(base, t, stride_l, offsets_d, d_ok, L):
    """Row ``t`` [BLOCK_D] as stored, zero outside ``[0, L)``."""
    return tl.load(base + t * stride_l + offsets_d, mask=_within(t, 0, L, d_ok), other=0.0)


@triton.jit
def _row(base, t, stride_l, offsets_d, d_ok, L):
    """Row ``t`` [BLOCK_D] as float32, zero outside ``[0, L)``."""
    return _stored_row(base, t, stride_l, offsets_d, d_ok, L).to(tl.float32)


@triton.jit
def _doc(seq_base, t, stride_l, L, HAS_SEQ: tl.constexpr):
    """The document number at ``t`` [1] (-1 outside the row; 0 without documents)."""
    at = t + tl.zeros((1,), tl.int32)  # a tensor also where the interpreter's loop gives a Python int
    if HAS_SEQ:
        doc = tl.load(seq_base + at * stride_l, mask=(at >= 0) & (at < L), other=-1)
    else:
        doc = at * 0
    return doc


@triton.jit
def _keep(v, doc_v, doc_out, HAS_SEQ: tl.constexpr):
    """``v`` where its row's document is the output's, zero elsewhere."""
    if HAS_SEQ:
        return tl.where(doc_v == doc_out, v, 0.0)
    return v


@triton.jit
def _tap(w_ptr, d, d_ok, k: tl.constexpr, W: tl.constexpr):
    """The weight of padded tap ``k`` (0 .. TAPS-1, TAPS-1 the output's own position) [BLOCK_D]."""
    if k < 4 - W:
        return tl.zeros(d.shape, tl.float32)
    return tl.load(w_ptr + d * W + (k - (4 - W)), mask=d_ok, other=0.0).to(tl.float32)


@triton.jit
def _bias(bias_ptr, d, d_ok, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        return tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    return tl.zeros(d.shape, tl.float32)


@triton.jit
def _taps(w_ptr, bias_ptr, d, d_ok, W: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The four padded taps' weights and the bias, each [BLOCK_D] float32."""
    return (_tap(w_ptr, d, d_ok, 0, W), _tap(w_ptr, d, d_ok, 1, W), _tap(w_ptr, d, d_ok, 2, W),
            _tap(w_ptr, d, d_ok, 3, W), _bias(bias_ptr, d, d_ok, HAS_BIAS))


@triton.jit
def _rows_before(x_base, seq_base, first, stride_x_l, stride_seq_l, x_d, d_ok, L, HAS_SEQ: tl.constexpr):
    """The window a chunk starts with: the three rows before it, nearest first (float32 [BLOCK_D] each), then
    their document numbers."""
    return (_row(x_base, first - 1, stride_x_l, x_d, d_ok, L), _row(x_base, first - 2, stride_x_l, x_d, d_ok, L),
            _row(x_base, first - 3, stride_x_l, x_d, d_ok, L), _doc(seq_base, first - 1, stride_seq_l, L, HAS_SEQ),
            _doc(seq_base, first - 2, stride_seq_l, L, HAS_SEQ), _doc(seq_base, first - 3, stride_seq_l, L, HAS_SEQ))


@triton.jit
def _pre(x, x1, x2, x3, doc, doc1, doc2, doc3, w0, w1, w2, w3, bias, HAS_SEQ: tl.constexpr):
    """The pre-activation [BLOCK_D] of the row ``x`` (document ``doc``); ``x1 .. x3``: the rows 1 .. 3 before it."""
    return (bias + x * w3 + _keep(x1, doc1, doc, HAS_SEQ) * w2 + _keep(x2, doc2, doc, HAS_SEQ) * w1
            + _keep(x3, doc3, doc, HAS_SEQ) * w0)


@triton.jit
def _grad(dy, pre, SILU: tl.constexpr):
    """The pre-activation's gradient from the output's."""
    if SILU:
        sig = tl.sigmoid(pre)
        return dy * sig * (1.0 + pre * (1.0 - sig))
    return dy


@triton.jit
def _fwd_kernel(
    x_ptr, w_ptr, bias_ptr, seq_ptr, y_ptr, L, dim,
    stride_x_b, stride_x_l, stride_x_d, stride_y_b, stride_y_l, stride_seq_b, stride_seq_l,
    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)  # offsets past 2**31 elements
    first = tl.program_id(1) * CHUNK
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    x_base, seq_base, y_base = x_ptr + b * stride_x_b, seq_ptr + b * stride_seq_b, y_ptr + b * stride_y_b
    x_d = d * stride_x_d
    w0, w1, w2, w3, bias = _taps(w_ptr, bias_ptr, d, d_ok, W, HAS_BIAS)
    x1, x2, x3, doc1, doc2, doc3 = _rows_before(x_base, seq_base, first, stride_x_l, stride_seq_l, x_d, d_ok, L,
                                                HAS_SEQ)
    # The walk's next two rows, read ahead (as stored): each row's loads are in flight for two rows' work.
    xa, doca = _stored_row(x_base, first, stride_x_l, x_d, d_ok, L), _doc(seq_base, first, stride_seq_l, L, HAS_SEQ)
    xb = _stored_row(x_base, first + 1, stride_x_l, x_d, d_ok, L)
    docb = _doc(seq_base, first + 1, stride_seq_l, L, HAS_SEQ)
    for t in range(first, first + CHUNK):
        x, doc = xa.to(tl.float32), doca
        xa, doca = xb, docb
        xb, docb = (_stored_row(x_base, t + 2, stride_x_l, x_d, d_ok, L),
                    _doc(seq_base, t + 2, stride_seq_l, L, HAS_SEQ))
        pre = _pre(x, x1, x2, x3, doc, doc1, doc2, doc3, w0, w1, w2, w3, bias, HAS_SEQ)
        y = pre * tl.sigmoid(pre) if SILU else pre
        tl.store(y_base + t * stride_y_l + d, y.to(y_ptr.dtype.element_ty), mask=_within(t, 0, L, d_ok))
        x3, x2, x1 = x2, x1, x
        doc3, doc2, doc1 = doc2, doc1, doc


@triton.jit
def _bwd_kernel(
    x_ptr, w_ptr, bias_ptr, seq_ptr, dy_ptr, dx_ptr, part_ptr, L, dim,
    stride_x_b, stride_x_l, stride_x_d, stride_dy_b, stride_dy_l, stride_dy_d, stride_dx_b, stride_dx_l,
    stride_dx_d, stride_seq_b, stride_seq_l,
    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx on this program's chunk; its shares of dweight (padded taps 0 .. 3) and dbias (row 4) into
    ``part`` [b * chunks, 5, dim]."""
    b = tl.program_id(0).to(tl.int64)
    first = tl.program_id(1) * CHUNK
    end = tl.minimum(first + CHUNK, L)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    x_base, dy_base, seq_base = x_ptr + b * stride_x_b, dy_ptr + b * stride_dy_b, seq_ptr + b * stride_seq_b
    dx_base = dx_ptr + b * stride_dx_b
    x_d, dy_d, dx_d = d * stride_x_d, d * stride_dy_d, d * stride_dx_d
    w0, w1, w2, w3, bias = _taps(w_ptr, bias_ptr, d, d_ok, W, HAS_BIAS)
    x1, x2, x3, doc1, doc2, doc3 = _rows_before(x_base, seq_base, first, stride_x_l, stride_seq_l, x_d, d_ok, L,
                                                HAS_SEQ)
    # g at the rows 1 .. 3 before the walk's row (rows before the chunk give nothing to it).
    g1 = tl.zeros((BLOCK_D,), tl.float32)
    g2 = tl.zeros((BLOCK_D,), tl.float32)
    g3 = tl.zeros((BLOCK_D,), tl.float32)
    dw0 = tl.zeros((BLOCK_D,), tl.float32)
    dw1 = tl.zeros((BLOCK_D,), tl.float32)
    dw2 = tl.zeros((BLOCK_D,), tl.float32)
    dw3 = tl.zeros((BLOCK_D,), tl.float32)
    dbias = tl.zeros((BLOCK_D,), tl.float32)
    # The walk's next two rows, read ahead as in the forward.
    xa = _stored_row(x_base, first, stride_x_l, x_d, d_ok, L)
    dya = _stored_row(dy_base, first, stride_dy_l, dy_d, d_ok, L)
    doca = _doc(seq_base, first, stride_seq_l, L, HAS_SEQ)
    xb = _stored_row(x_base, first + 1, stride_x_l, x_d, d_ok, L)
    dyb = _stored_row(dy_base, first + 1, stride_dy_l, dy_d, d_ok, L)
    docb = _doc(seq_base, first + 1, stride_seq_l, L, HAS_SEQ)
    for t in range(first, first + CHUNK + 3):
        x, dy, doc = xa.to(tl.float32), dya.to(tl.float32), doca
        xa, dya, doca = xb, dyb, docb
        xb, dyb, docb = (_stored_row(x_base, t + 2, stride_x_l, x_d, d_ok, L),
                         _stored_row(dy_base, t + 2, stride_dy_l, dy_d, d_ok, L),
                         _doc(seq_base, t + 2, stride_seq_l, L, HAS_SEQ))
        g = _grad(dy, _pre(x, x1, x2, x3, doc, doc1, doc2, doc3, w0, w1, w2, w3, bias, HAS_SEQ), SILU)
        # dx of the row three behind (document doc3) is complete: it takes g at rows t-3 .. t.
        dx = (g3 * w3 + _keep(g2, doc2, doc3, HAS_SEQ) * w2 + _keep(g1, doc1, doc3, HAS_SEQ) * w1
              + _keep(g, doc, doc3, HAS_SEQ) * w0)
        tl.store(dx_base + (t - 3) * stride_dx_l + dx_d, dx.to(dx_ptr.dtype.element_ty),
                 mask=_within(t - 3, first, end, d_ok))
        own = tl.where(t < end, g, 0.0)  # the weight's and bias's shares of this chunk's rows only
        dw0 += own * _keep(x3, doc3, doc, HAS_SEQ)
        dw1 += own * _keep(x2, doc2, doc, HAS_SEQ)
        dw2 += own * _keep(x1, doc1, doc, HAS_SEQ)
        dw3 += own * x
        dbias += own
        x3, x2, x1 = x2, x1, x
        g3, g2, g1 = g2, g1, g
        doc3, doc2, doc1 = doc2, doc1, doc
    part = part_ptr + (b * tl.num_programs(1) + tl.program_id(1)) * 5 * dim + d
    tl.store(part, dw0, mask=d_ok)
    tl.store(part + dim, dw1, mask=d_ok)
    tl.store(part + 2 * dim, dw2, mask=d_ok)
    tl.store(part + 3 * dim, dw3, mask=d_ok)
    tl.store(part + 4 * dim, dbias, mask=d_ok)


def _checked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             seq_idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The arguments refused unless the kernels take them; weight and bias as the kernels index them,
    contiguous (themselves where they already are)."""
    width = weight.shape[1]
    if not 1 <= width <= TAPS:
        raise ValueError(f"the convolution takes widths 1 to {TAPS}, got {width}")
    if weight.shape[0] != x.shape[2]:
        raise ValueError(f"weight has {weight.shape[0]} channels, x has {x.shape[2]}")
    if seq_idx is not None and (seq_idx.shape != x.shape[:2] or seq_idx.dtype != torch.int32):
        raise ValueError(f"seq_idx must be int32 of x's [b, L] {tuple(x.shape[:2])}, got {seq_idx.dtype} "
                         f"{tuple(seq_idx.shape)}")
    return weight.contiguous(), None if bias is None else bias.contiguous()


def _grid(x: torch.Tensor, config: tuple[int, ...]) -> tuple[int, int, int]:
    """(rows, chunks of positions, tiles of channels)."""
    chunk, block_d = config[:2]
    return x.shape[0], triton.cdiv(x.shape[1], chunk), triton.cdiv(x.shape[2], block_d)


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None,
                 silu: bool, config: tuple[int, int, int] = FWD_CONFIG) -> torch.Tensor:
    """y [b, L, d] (contiguous, x's dtype) of x [b, L, d]; weight [d, W]."""
    weight, bias = _checked(x, weight, bias, seq_idx)
    batch, seqlen, dim = x.shape
    chunk, block_d, warps = config
    y = torch.empty((batch, seqlen, dim), dtype=x.dtype, device=x.device)
    seq = seq_idx if seq_idx is not None else x  # any pointer: unread without documents
    _fwd_kernel[_grid(x, config)](
        x, weight, weight if bias is None else bias, seq, y, seqlen, dim, *x.stride(), y.stride(0), y.stride(1),
        *(seq_idx.stride() if seq_idx is not None else (0, 0)), HAS_BIAS=bias is not None,
        HAS_SEQ=seq_idx is not None, SILU=silu, W=weight.shape[1], CHUNK=chunk, BLOCK_D=block_d,
        num_warps=warps,
    )
    return y


def conv_backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None,
                  dy: torch.Tensor, silu: bool, dx: torch.Tensor | None = None,
                  config: tuple[int, int, int] = BWD_CONFIG):
    """Gradients of :func:`conv_forward` for dy [b, L, d]: dx [b, L, d] (written into ``dx`` if given, any
    strides; else new, x's dtype), dweight [d, W] and dbias [d] (None without bias) in the weight's and bias's
    dtypes."""
    weight, bias = _checked(x, weight, bias, seq_idx)
    batch, seqlen, dim = x.shape
    chunk, block_d, warps = config
    if dx is None:
        dx = torch.empty((batch, seqlen, dim), dtype=x.dtype, device=x.device)
    grid = _grid(x, config)
    part = torch.empty((batch * grid[1], 5, dim), dtype=torch.float32, device=x.device)
    seq = seq_idx if seq_idx is not None else x
    _bwd_kernel[grid](
        x, weight, weight if bias is None else bias, seq, dy, dx, part, seqlen, dim, *x.stride(), *dy.stride(),
        *dx.stride(), *(seq_idx.stride() if seq_idx is not None else (0, 0)), HAS_BIAS=bias is not None,
        HAS_SEQ=seq_idx is not None, SILU=silu, W=weight.shape[1], CHUNK=chunk, BLOCK_D=block_d,
        num_warps=warps,
    )
    sums = part.sum(0)  # [5, dim]: padded taps 0 .. 3, then the bias
    dweight = sums[TAPS - weight.shape[1] : TAPS].t().to(weight.dtype)
    dbias = None if bias is None else sums[TAPS].to(bias.dtype)
    return dx, dweight, dbias


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx, silu, configs):
        ctx.save_for_backward(x, weight, bias, seq_idx)
        ctx.silu, ctx.bwd_config = silu, configs[1]
        return conv_forward(x, weight, bias, seq_idx, silu, configs[0])

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, seq_idx = ctx.saved_tensors
        dx, dweight, dbias = conv_backward(x, weight, bias, seq_idx, dy, ctx.silu, config=ctx.bwd_config)
        return dx, dweight, dbias, None, None, None


def causal_conv1d_channel_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               seq_idx: torch.Tensor | None, activation: str | None,
                               fwd_config: tuple[int, int, int] = FWD_CONFIG,
                               bwd_config: tuple[int, int, int] = BWD_CONFIG) -> torch.Tensor:
    """The twin's maths, differentiable. x: [b, L, d] (the transpose of the twin's [b, d, L]); weight: [d, W];
    bias: [d]; seq_idx: [b, L] int or None; activation None or "silu". Returns [b, L, d] in x's dtype."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    seq_idx = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
    return _Conv.apply(x, weight, bias, seq_idx, activation is not None, (fwd_config, bwd_config))
