"""Language-model loss without materialising the float32 logits of the whole batch.

``chunked_cross_entropy(hidden, weight, labels)`` equals
``F.cross_entropy((hidden @ weight.T).float(), labels, ignore_index=-100)`` (mean over labelled
tokens) but computes the logits ``chunk_size`` tokens at a time, so peak memory holds one chunk of
logits instead of [tokens, vocab] (6.6 GB in float32 for a micro-batch of 16 x 2048 tokens and a 50k
vocabulary; one 8192-token chunk is 1.6 GB).

When gradients are wanted, the forward pass also computes them chunk by chunk, while each chunk's
logits are at hand ("fused linear cross-entropy", as in Liger-Kernel, arXiv:2410.10989): the backward
pass only scales them by the incoming gradient. A backward pass that recomputed the logits would run
the head's largest matmul a fourth time per step.

Per chunk, :func:`cross_entropy_rows_` turns the logits into each row's loss and, in place, the
gradient with respect to the logits: on CUDA one Triton kernel (:mod:`kotomamba.ops.cross_entropy_triton`),
elsewhere its PyTorch twin :func:`cross_entropy_rows_ref_`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.dispatch import kernel_module, use_kernels

IGNORE_INDEX = -100
_ROWS_KERNEL = "kotomamba.ops.cross_entropy_triton"


def cross_entropy_ref(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """hidden [N, d], weight [V, d], labels [N] -> mean CE over labels != ignore_index (0-d fp32)."""
    logits = (hidden.to(weight.dtype) @ weight.t()).float()
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def cross_entropy_rows_ref_(logits: torch.Tensor, labels: torch.Tensor, row_scale: torch.Tensor, ignore_index: int,
                            write_grad: bool) -> torch.Tensor:
    """logits [n, V], labels [n] int64, row_scale [n] float32 -> loss [n] float32 (0 where the label is
    ``ignore_index``), computed in float32. With ``write_grad`` the logits are overwritten (in their dtype)
    by d(sum of row_scale * loss)/d(logits) = ``(softmax - onehot(label)) * row_scale``."""
    x = logits.float()
    valid = labels != ignore_index
    target = labels.clamp(min=0)[:, None]
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    loss = torch.where(valid, (lse - x.gather(1, target)).squeeze(1), 0.0)
    if write_grad:
        grad = x.sub_(lse).exp_()  # x may be the logits themselves (float32): written in place either way
        grad.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=grad.dtype))
        logits.copy_(grad.mul_(row_scale[:, None]))
    return loss


def cross_entropy_rows_(logits: torch.Tensor, labels: torch.Tensor, row_scale: torch.Tensor, ignore_index: int,
                        write_grad: bool) -> torch.Tensor:
    """Dispatching twin of :func:`cross_entropy_rows_ref_` (the Triton kernel on CUDA)."""
    if not use_kernels(logits, _ROWS_KERNEL):
        return cross_entropy_rows_ref_(logits, labels, row_scale, ignore_index, write_grad)
    return kernel_module(_ROWS_KERNEL).cross_entropy_rows_(logits, labels, row_scale, ignore_index, write_grad)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _loss_and_grads(hidden, weight, labels, chunk_size, ignore_index, need_hidden, need_weight):
    """One pass over ``chunk_size``-token chunks: (mean loss, d loss/d hidden or None, d loss/d weight
    in float32 or None). The gradient work of a chunk is skipped when neither gradient is wanted."""
    dtype = _compute_dtype(hidden, weight)
    valid = labels != ignore_index
    n_valid = valid.sum()
    # Each labelled token's share of d(mean loss)/d(logits); 0 on ignored tokens (and 0, not NaN,
    # when no token is labelled: the loss is then NaN, as F.cross_entropy's).
    row_scale = valid.float() / n_valid.clamp_min(1)
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    for start in range(0, hidden.shape[0], chunk_size):
        end = start + chunk_size
        h = hidden[start:end].to(dtype)
        logits = h @ w.t()
        total += cross_entropy_rows_(logits, labels[start:end], row_scale[start:end], ignore_index,
                                     need_hidden or need_weight).sum()
        if need_hidden:
            grad_hidden[start:end] = (logits @ w).to(hidden.dtype)  # the logits now hold their gradient
        if need_weight:
            grad_weight += (logits.t() @ h).float()
    return total / n_valid, grad_hidden, grad_weight


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Loss and both gradients in one chunked pass; backward scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size, ignore_index):
        ctx.need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        loss, grad_hidden, grad_weight = _loss_and_grads(hidden, weight, labels, chunk_size, ignore_index, *ctx.need)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        saved = iter(ctx.saved_tensors)
        grad_hidden = grad_weight = None
        if ctx.need[0]:
            stored = next(saved)
            grad_hidden = stored * grad_loss.to(stored.dtype)
        if ctx.need[1]:
            grad_weight = (next(saved) * grad_loss.float()).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_size: int = 8192, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` over labels != ignore_index.

    hidden [N, d]; weight [V, d] (the LM head); labels [N] int64. Returns a 0-d float32 tensor (NaN
    when no token is labelled, as F.cross_entropy). Logits are computed in the autocast dtype when
    autocast is on, else in weight's dtype, and reduced in float32. With gradients enabled, the
    gradients are computed during this call (see the module docstring) and held until backward:
    one [N, d] tensor in hidden's dtype and one float32 [V, d] tensor.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, weight, labels, chunk_size, ignore_index)
    with torch.no_grad():
        return _loss_and_grads(hidden, weight, labels, chunk_size, ignore_index, False, False)[0]
