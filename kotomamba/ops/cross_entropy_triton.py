"""Triton kernel of :func:`kotomamba.ops.cross_entropy.cross_entropy_rows_`: each row's cross-entropy and,
in place of the logits, its gradient.

One program per row reads the row twice (an online max and sum of exponentials, then the gradient,
from the row's end back) and writes it once, in the logits' own dtype, with float32 arithmetic in
registers. The PyTorch twin makes a float32 copy of the logits and passes over it about eight times
(``logsumexp``, ``sub_``, ``exp_``, ``mul_``, the cast back), which at a 50k vocabulary is ~90 GB of
memory traffic per step of 16 x 2048 tokens, against ~10 GB here. Online softmax normaliser: Milakov &
Gimelshein, arXiv:1805.02867.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_BLOCK = 4096


@triton.jit
def _cross_entropy_rows_kernel(logits_ptr, row_stride, labels_ptr, scale_ptr, loss_ptr, n_cols, ignore_index,
                               WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr, N_BLOCKS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    offsets = tl.arange(0, BLOCK)
    # Every block holds at least one real column (N_BLOCKS = ceil(n_cols / BLOCK)), so the running max is
    # finite after the first block and exp(m - m_new) never sees -inf - -inf. The block count is a
    # compile-time constant (one compilation per vocabulary size), which also keeps the loop bounds plain
    # integers under Triton's interpreter (NumPy 2 refuses to read a one-element array as a loop bound).
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    for index in range(N_BLOCKS):
        cols = index * BLOCK + offsets
        x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    target = tl.where(valid, label, 0)
    # A label past the vocabulary reads no memory and makes the row's loss NaN.
    picked = tl.load(base + target, mask=target < n_cols, other=float("nan")).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - picked, 0.0))
    if WRITE_GRAD:
        scale = tl.load(scale_ptr + row)
        # From the row's end back: the blocks the first pass read last are the likeliest still in L2.
        for back in range(N_BLOCKS):
            cols = (N_BLOCKS - 1 - back) * BLOCK + offsets
            mask = cols < n_cols
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            tl.store(base + cols, (grad * scale).to(logits_ptr.dtype.element_ty), mask=mask)


def cross_entropy_rows_(logits: torch.Tensor, labels: torch.Tensor, row_scale: torch.Tensor, ignore_index: int,
                        write_grad: bool, block: int | None = None) -> torch.Tensor:
    """logits [n, V] (rows contiguous), labels [n] int64, row_scale [n] float32 -> loss [n] float32
    (0 where the label is ``ignore_index``). With ``write_grad`` the logits are overwritten by
    ``(softmax - onehot(label)) * row_scale``. ``block``: columns per iteration (a power of 2; tests
    pass a small one to cover several iterations on a small vocabulary)."""
    n_rows, n_cols = logits.shape
    if logits.stride(1) != 1:
        raise ValueError(f"cross_entropy_rows_ needs rows with contiguous columns, got strides {logits.stride()}")
    loss = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return loss
    block = block or min(triton.next_power_of_2(n_cols), _MAX_BLOCK)
    _cross_entropy_rows_kernel[(n_rows,)](
        logits, logits.stride(0), labels.contiguous(), row_scale.float().contiguous(), loss, n_cols, ignore_index,
        WRITE_GRAD=write_grad, BLOCK=block, N_BLOCKS=triton.cdiv(n_cols, block), num_warps=8 if block >= 2048 else 4,
    )
    return loss
