"""Held-out perplexity: token-weighted mean cross-entropy over a validation dataset.

Samples are read in index order and their losses summed in float64 weighted by the number of
predicted tokens, so the result does not depend on the micro-batch size (up to float32 rounding
inside each batch) and is the same on every run. ``exp(loss)`` is the perplexity.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


@torch.inference_mode()
def heldout_loss(model, dataset: Sequence[dict], micro_batch_size: int, use_seq_idx: bool = False) -> dict:
    """Mean next-token loss of ``model`` over ``dataset`` items ``{"tokens": int64[L + 1], "seq_idx": int32[L]}``.

    ``use_seq_idx`` passes each sample's document numbers so a Mamba-2 model resets its state at
    document boundaries, as it was trained. Returns ``{"loss", "perplexity", "tokens", "samples"}``.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(dataset), micro_batch_size):
        items = [dataset[i] for i in range(start, min(start + micro_batch_size, len(dataset)))]
        tokens = torch.stack([torch.as_tensor(item["tokens"], dtype=torch.long) for item in items]).to(device)
        seq_idx = None
        if use_seq_idx:
            seq_idx = torch.stack([torch.as_tensor(item["seq_idx"], dtype=torch.int32) for item in items]).to(device)
        labels = tokens[:, 1:]
        loss = model(tokens[:, :-1], labels=labels, seq_idx=seq_idx)
        predicted = labels.numel()
        total += float(loss) * predicted
        count += predicted
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if count else float("nan"), "tokens": count,
            "samples": len(dataset)}
