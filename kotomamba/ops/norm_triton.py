"""Triton kernels of the two RMSNorms (:func:`kotomamba.ops.norm.add_rms_norm_ref` and
:func:`kotomamba.ops.norm.gated_rms_norm_ref` are the twins): the blocks' residual add + norm, and
Mamba-2's gated norm (norm after the gate, per group of channels).

Per row and group of ``G`` channels, with ``s = x (+ residual)`` and ``g = s * silu(z)`` (gated) or
``g = s``: ``rstd = 1 / sqrt(mean(g^2) + eps)``, ``y = g * rstd * w``. The backward, with
``gh = g * rstd`` and ``dgh = dy * w``: ``dg = rstd * (dgh - gh * mean(dgh * gh))``; gated,
``ds = dg * silu(z)`` and ``dz = dg * s * silu'(z)``; ``dx = dresidual = ds + d(residual out)``;
``dw = sum over rows of dy * gh``.

The forward is one program per row and group. The backward spreads the rows over ``programs``
programs (several per multiprocessor), each walking its rows and summing its share of ``dw`` in
registers into a float32 buffer that PyTorch sums: mamba-ssm's backward walks them in one program
per multiprocessor (``layer_norm.py``, ``layernorm_gated.py``), so each waits on one row's loads at
a time (bench/RESULTS.md, issue 20 item 2). Arithmetic in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kotomamba.ops.norm import residual_dtype
from kotomamba.ops.strides import unit_stride_last

# Backward programs per multiprocessor on CUDA; bench/norm_throughput.py times others.
PROGRAMS_PER_SM = 8


@triton.jit
def _rms_fwd_kernel(
    x_ptr, res_ptr, z_ptr, w_ptr, y_ptr, res_out_ptr, rstd_ptr, G, eps,
    stride_x, stride_res, stride_z, stride_y, stride_res_out,
    HAS_RES: tl.constexpr, HAS_Z: tl.constexpr, STORE_RES: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    group, groups = tl.program_id(1), tl.num_programs(1)
    cols = group * G + tl.arange(0, BLOCK)
    ok = tl.arange(0, BLOCK) < G
    s = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * stride_res + cols, mask=ok, other=0.0).to(tl.float32)
    if STORE_RES:
        tl.store(res_out_ptr + row * stride_res_out + cols, s.to(res_out_ptr.dtype.element_ty), mask=ok)
    if HAS_Z:
        z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=0.0).to(tl.float32)
        g = s * z * tl.sigmoid(z)
    else:
        g = s
    rstd = 1.0 / tl.sqrt(tl.sum(g * g, axis=0) / G + eps)
    tl.store(rstd_ptr + row * groups + group, rstd)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, (g * rstd * w).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _rms_bwd_kernel(
    s_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dres_out_ptr, dx_ptr, dz_ptr, dres_ptr, y_ptr, dw_part_ptr,
    M, N, G, rows_per_program,
    stride_s, stride_z, stride_dy, stride_dres_out, stride_dx, stride_dz, stride_dres, stride_y,
    HAS_Z: tl.constexpr, HAS_DRES_OUT: tl.constexpr, STORE_DRES: tl.constexpr, STORE_Y: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    group, groups = tl.program_id(1), tl.num_programs(1)
    cols = group * G + tl.arange(0, BLOCK)
    ok = tl.arange(0, BLOCK) < G
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), tl.float32)
    start = pid.to(tl.int64) * rows_per_program  # int64 rows: offsets past 2**31 elements
    for row in range(start, tl.minimum(start + rows_per_program, M)):
        s = tl.load(s_ptr + row * stride_s + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row * groups + group)
        if HAS_Z:
            z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            gh = s * z * sig * rstd
        else:
            gh = s * rstd
        dy = tl.load(dy_ptr + row * stride_dy + cols, mask=ok, other=0.0).to(tl.float32)
        dgh = dy * w
        dw += dy * gh
        if STORE_Y:
            tl.store(y_ptr + row * stride_y + cols, (gh * w).to(y_ptr.dtype.element_ty), mask=ok)
        dg = rstd * (dgh - gh * (tl.sum(dgh * gh, axis=0) / G))
        if HAS_Z:
            ds = dg * z * sig
            tl.store(dz_ptr + row * stride_dz + cols, (dg * s * sig * (1.0 + z * (1.0 - sig))).to(
                dz_ptr.dtype.element_ty), mask=ok)
        else:
            ds = dg
        if HAS_DRES_OUT:
            ds += tl.load(dres_out_ptr + row * stride_dres_out + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(dx_ptr + row * stride_dx + cols, ds.to(dx_ptr.dtype.element_ty), mask=ok)
        if STORE_DRES:
            tl.store(dres_ptr + row * stride_dres + cols, ds.to(dres_ptr.dtype.element_ty), mask=ok)
    tl.store(dw_part_ptr + pid * N + cols, dw, mask=ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., N] -> [M, N] with unit stride along N (a view where possible)."""
    return unit_stride_last(t.reshape(-1, t.shape[-1]))


def _block(group_size: int) -> tuple[int, int]:
    block = triton.next_power_of_2(group_size)
    return block, min(max(block // 256, 1), 16)


def rms_norm_fwd(x, weight, eps, residual=None, z=None, group_size=None, residual_dtype=None):
    """x, residual, z: [M, N] rows; weight: [N]. Returns y [M, N] (x's dtype), the summed residual
    [M, N] (``residual_dtype``; None when it is not asked for) and rstd [M, groups] float32."""
    rows, width = x.shape
    size = group_size or width
    y = torch.empty_like(x)
    res_out = None if residual_dtype is None else torch.empty(x.shape, dtype=residual_dtype, device=x.device)
    rstd = torch.empty((rows, width // size), dtype=torch.float32, device=x.device)
    block, warps = _block(size)
    _rms_fwd_kernel[(rows, width // size)](
        x, x if residual is None else residual, x if z is None else z, weight, y, y if res_out is None else res_out,
        rstd, size, eps, x.stride(0), 0 if residual is None else residual.stride(0), 0 if z is None else z.stride(0),
        y.stride(0), 0 if res_out is None else res_out.stride(0),
        HAS_RES=residual is not None, HAS_Z=z is not None, STORE_RES=res_out is not None, BLOCK=block,
        num_warps=warps,
    )
    return y, res_out, rstd


def rms_norm_bwd(dy, s, weight, rstd, z=None, dres_out=None, group_size=None, store_dres=False,
                 x_dtype=None, programs=None, dz=None, y=None):
    """Gradients of :func:`rms_norm_fwd` for ``dy`` [M, N], from the summed input ``s`` [M, N] (x, or
    x + residual), and ``dres_out`` [M, N], the gradient of the returned residual. Returns dx
    (``x_dtype``), dz (z's dtype, into ``dz`` if given; None without z), dresidual (None unless
    ``store_dres``) and dweight (the weight's dtype). With ``y`` [M, N], the forward's output is
    rerun into it on the way. ``programs``: how many programs walk the rows (default: several per
    multiprocessor on CUDA, 4 elsewhere)."""
    rows, width = s.shape
    size = group_size or width
    if programs is None:
        programs = (torch.cuda.get_device_properties(s.device).multi_processor_count * PROGRAMS_PER_SM
                    if s.is_cuda else 4)
    programs = max(min(programs, rows), 1)
    per_program = triton.cdiv(rows, programs)
    programs = triton.cdiv(rows, per_program)
    dx = torch.empty(s.shape, dtype=x_dtype or s.dtype, device=s.device)
    dz = None if z is None else (torch.empty_like(z) if dz is None else dz)
    dres = torch.empty(s.shape, dtype=s.dtype, device=s.device) if store_dres else None
    dw_part = torch.empty((programs, width), dtype=torch.float32, device=s.device)
    block, warps = _block(size)
    _rms_bwd_kernel[(programs, width // size)](
        s, s if z is None else z, weight, rstd, dy, dy if dres_out is None else dres_out, dx,
        dx if dz is None else dz, dx if dres is None else dres, dx if y is None else y, dw_part, rows, width, size,
        per_program, s.stride(0), 0 if z is None else z.stride(0), dy.stride(0),
        0 if dres_out is None else dres_out.stride(0), dx.stride(0), 0 if dz is None else dz.stride(0),
        0 if dres is None else dres.stride(0), 0 if y is None else y.stride(0),
        HAS_Z=z is not None, HAS_DRES_OUT=dres_out is not None, STORE_DRES=store_dres, STORE_Y=y is not None,
        BLOCK=block, num_warps=warps,
    )
    return dx, dz, dres, dw_part.sum(0).to(weight.dtype)


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps, prenorm, residual_in_fp32):
        shape = x.shape
        x2, res2 = _rows(x), None if residual is None else _rows(residual)
        r_dtype = residual_dtype(x, residual, residual_in_fp32)
        # The summed input is kept for the backward (and returned with prenorm); when it is not
        # returned, needs no add and keeps x's dtype, it is x itself.
        keep = prenorm or residual is not None or r_dtype != x.dtype
        y, res_out, rstd = rms_norm_fwd(x2, weight, eps, res2, residual_dtype=r_dtype if keep else None)
        s = res_out if keep else x2
        ctx.save_for_backward(s, weight, rstd)
        ctx.has_residual, ctx.x_dtype, ctx.shape, ctx.prenorm = residual is not None, x.dtype, shape, prenorm
        y = y.view(shape)
        return (y, s.view(shape)) if prenorm else y

    @staticmethod
    def backward(ctx, dy, *rest):
        s, weight, rstd = ctx.saved_tensors
        dres_out = _rows(rest[0]) if ctx.prenorm and rest[0] is not None else None
        dx, _, dres, dw = rms_norm_bwd(_rows(dy), s, weight, rstd, dres_out=dres_out, store_dres=ctx.has_residual,
                                       x_dtype=ctx.x_dtype)
        return (dx.view(ctx.shape), dw, None if dres is None else dres.view(ctx.shape), None, None, None)


class _GatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, weight, eps, group_size):
        shape = x.shape
        x2, z2 = _rows(x), _rows(z)
        y, _, rstd = rms_norm_fwd(x2, weight, eps, z=z2, group_size=group_size)
        ctx.save_for_backward(x2, z2, weight, rstd)
        ctx.shape, ctx.group_size = shape, group_size
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, z2, weight, rstd = ctx.saved_tensors
        dx, dz, _, dw = rms_norm_bwd(_rows(dy), x2, weight, rstd, z=z2, group_size=ctx.group_size)
        return dx.view(ctx.shape), dz.view(ctx.shape), dw, None, None


def add_rms_norm_triton(x, weight, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
    """Arguments and results as :func:`kotomamba.ops.norm.add_rms_norm_ref`, differentiable."""
    return _AddRMSNorm.apply(x, weight, residual, eps, prenorm, residual_in_fp32)


def gated_rms_norm_triton(x, z, weight, eps=1e-5, group_size=None):
    """Arguments and result as :func:`kotomamba.ops.norm.gated_rms_norm_ref`, differentiable."""
    if group_size is not None and x.shape[-1] % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {x.shape[-1]} channels")
    return _GatedRMSNorm.apply(x, z, weight, eps, group_size)
