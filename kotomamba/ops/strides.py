"""The one stride rule our Triton launches ask of their tensors: the last dimension has unit stride (the kernels take
the other strides as arguments but index the last dimension by element, which lets Triton load rows in vectors)."""
from __future__ import annotations

import torch


def unit_stride_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dimension has unit stride, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()
