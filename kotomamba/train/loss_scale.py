"""Dynamic loss scaling for fp16 training, decided on the global gradient norm (all shards at once).

``torch.amp.GradScaler`` checks each rank's gradients for inf/NaN; with sharded gradients that
takes an extra collective, and the predecessor clipped still-scaled gradients. Here the trainer
already computes the global gradient norm over every shard; a non-finite norm means an overflow
somewhere, so every rank skips the step and halves the scale together, and a finite one is
unscaled before clipping. The scale grows by 2 after ``growth_interval`` overflow-free steps
(the schedule of ``torch.amp.GradScaler``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LossScale:
    scale: float = 2.0**16
    growth_interval: int = 2000
    good_steps: int = 0
    min_scale: float = 1.0

    def update(self, finite: bool) -> None:
        """Record one step's outcome: halve on overflow, double after enough clean steps."""
        if not finite:
            self.scale = max(self.scale / 2, self.min_scale)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= 2
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
