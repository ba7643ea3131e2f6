"""Random packed documents for the benchmarks: ``seq_idx`` as ``data.reset_at_eod`` gives the trainer."""
from __future__ import annotations

import torch


def random_seq_idx(size: tuple[int, ...], mean_length: float, generator: torch.Generator,
                   device: torch.device | str) -> torch.Tensor:
    """int32 ``size`` (positions last): each position's document number in its row, a new document starting
    at each position but the first with probability ``1 / mean_length``."""
    starts = torch.rand(size, device=device, generator=generator) < 1.0 / mean_length
    starts[..., 0] = False
    return starts.cumsum(-1, dtype=torch.int32)
