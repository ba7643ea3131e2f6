"""Products with a weight whose gradient the backward's matrix product writes in the weight's own dtype.

Under autocast a float32 weight is cast to the compute dtype (bf16 / fp16) for its product, the product's
backward returns the weight's gradient in that dtype, and autograd casts it back to float32: one kernel that
reads and writes every weight each step, and a gradient rounded to bf16 before the optimizer sees it.
:func:`weight_grad` has the product accumulate in float32 and write float32 itself
(``torch.mm(..., out_dtype=...)``, CUDA, where the installed torch has that overload); :func:`linear` and
:func:`channels_first_product` are the products of ``in_proj`` built on it, and the mixers' autograd functions
call :func:`weight_grad` for the weights they multiply. Without autocast, or with weights already in the compute
dtype (FSDP's mixed precision), both are the plain product.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def _mm_writes_other_dtypes() -> bool:
    """Whether this torch has ``aten::mm.dtype`` (``torch.mm(a, b, out_dtype=...)``)."""
    return "dtype" in torch.ops.aten.mm.overloads()


def weight_grad(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] @ b [K, N] -> [M, N] in ``dtype``. On CUDA with a torch that has ``mm(..., out_dtype)`` a float32
    result of bf16 / fp16 inputs is accumulated and written in float32 without a rounding to the inputs' dtype;
    elsewhere it is the product cast to ``dtype``."""
    if a.dtype != dtype and dtype == torch.float32 and a.is_cuda and _mm_writes_other_dtypes():
        return torch.mm(a, b, out_dtype=dtype)
    return (a @ b).to(dtype)


class _Product(torch.autograd.Function):
    """x [N, K] times weight [M, K] in ``compute``: x @ weight.T [N, M], or weight @ x.T [M, N] with
    ``channels_first``."""

    @staticmethod
    def forward(ctx, x, weight, bias, compute, channels_first):
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.channels_first = channels_first
        x, weight = x.to(compute), weight.to(compute)
        ctx.save_for_backward(x, weight)
        if channels_first:
            out = weight @ x.t()
            return out if bias is None else out + bias.to(compute)[:, None]
        return F.linear(x, weight, None if bias is None else bias.to(compute))

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        with torch.autocast(x.device.type, enabled=False):
            rows = dout.to(weight.dtype)
            if ctx.channels_first:  # dout [M, N]
                dx, dweight = rows.t() @ weight, weight_grad(rows, x, weight_dtype)
                dbias = None if bias_dtype is None else rows.sum(1, dtype=bias_dtype)
            else:  # dout [N, M]
                dx, dweight = rows @ weight, weight_grad(rows.t(), x, weight_dtype)
                dbias = None if bias_dtype is None else rows.sum(0, dtype=bias_dtype)
        return dx.to(x_dtype), dweight, dbias, None, None


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype the weight is cast to for its product here, or None when it is not cast."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return None
    compute = torch.get_autocast_dtype(device)
    return compute if weight.dtype == torch.float32 and compute != torch.float32 else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``: x [..., K], weight [M, K] -> [..., M], with a float32 weight's gradient written in float32 by
    the backward's product under autocast."""
    compute = _compute_dtype(x, weight)
    if compute is None:
        return F.linear(x, weight, bias)
    return _Product.apply(x.reshape(-1, x.shape[-1]), weight, bias, compute, False).view(*x.shape[:-1], -1)


def channels_first_product(weight: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """weight [M, K] @ rows [N, K].T (+ bias [M] down each column) -> [M, N], the layout of Mamba-1's xz; a float32
    weight's gradient written in float32 by the backward's product under autocast."""
    compute = _compute_dtype(rows, weight)
    if compute is None:
        out = weight @ rows.t()
        return out if bias is None else out + bias.to(out.dtype)[:, None]
    return _Product.apply(rows, weight, bias, compute, True)
