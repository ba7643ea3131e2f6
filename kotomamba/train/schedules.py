"""Learning-rate schedules: linear warmup, then cosine, linear, constant or WSD decay to a minimum.

``lr_at(step)`` is a pure function of the 0-based optimizer step, so a resumed run gets exactly the
LR it would have had (the scheduler's state is just the step, saved in the checkpoint).

- warmup (step < warmup): ``lr * (step + 1) / warmup`` (never 0 at the first step);
- cosine: ``min + (lr - min) * (1 + cos(pi * t)) / 2`` with ``t = (step - warmup) / (decay - warmup)``
  (Loshchilov & Hutter 2017, as Megatron-LM's ``OptimizerParamScheduler``);
- linear: ``lr - (lr - min) * t``;
- constant: ``lr`` after warmup (``min_lr`` unused);
- wsd (warmup-stable-decay, Hu et al. 2024 "MiniCPM"): ``lr`` until the last
  ``wsd_decay_fraction`` of the post-warmup steps, then linear to ``min``;
- after ``decay_steps``: ``min_lr`` (except constant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    lr: float
    min_lr: float
    warmup_steps: int
    decay_steps: int
    style: str = "cosine"
    wsd_decay_fraction: float = 0.1

    def __post_init__(self):
        if self.style not in ("cosine", "linear", "constant", "wsd"):
            raise ValueError(f"unknown LR schedule style {self.style!r}")
        if not 0 <= self.warmup_steps <= self.decay_steps:
            raise ValueError(f"need 0 <= warmup_steps ({self.warmup_steps}) <= decay_steps ({self.decay_steps})")

    def lr_at(self, step: int) -> float:
        """The learning rate of the optimizer step with 0-based index ``step``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.style == "constant":
            return self.lr
        if step >= self.decay_steps:
            return self.min_lr
        span = self.decay_steps - self.warmup_steps
        t = (step - self.warmup_steps) / span
        if self.style == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.style == "linear":
            return self.lr - (self.lr - self.min_lr) * t
        decay_len = self.wsd_decay_fraction * span
        stable_end = span - decay_len
        position = step - self.warmup_steps
        if position < stable_end or decay_len == 0:
            return self.lr
        return self.lr - (self.lr - self.min_lr) * (position - stable_end) / decay_len
