"""How far a training run has come: the counters a checkpoint saves whole under ``train_state``.

The saved layout is the one every kotomamba checkpoint has had (``docs/architecture.md``), so older
checkpoints resume unchanged::

    train_state.step                   optimizer steps taken, skipped ones included
    train_state.consumed_samples       the data position: samples of the global order drawn so far
    train_state.skipped_nonfinite      steps skipped for a non-finite loss or gradient norm
    train_state.skipped_overflow       fp16 steps skipped for a loss-scale overflow
    train_state.skipped_range          steps skipped by ``train.skip_ranges``
    train_state.consecutive_nonfinite  non-finite steps in a row (the abort rule counts these)
    train_state.tracker_id             the wandb run id ("" when none), so a resumed job logs to the same run
    train_state.world_size             the world that wrote it
    train_state.loss_scale             ``LossScale.state_dict()`` ({} without fp16 loss scaling)
    train_state.rng.rank_<r>           rank r's generator states (CPU, then CUDA when on a GPU)

A resumed job restores each rank's generators only when the checkpoint was written by the same world
(the same ranks and devices); otherwise every rank keeps its freshly seeded ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kotomamba.train.loss_scale import LossScale
from kotomamba.train.step import NONFINITE, OVERFLOW, RANGE


def rng_state(device: torch.device) -> torch.Tensor:
    """This process's CPU generator state, then ``device``'s when it is a GPU (one uint8 tensor)."""
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return torch.cat(states)


def set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    cpu_size = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu_size].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[cpu_size:].clone(), device)


@dataclass
class TrainState:
    """The run's counters on one rank (equal on every rank but the generator states)."""

    rank: int
    world_size: int
    device: torch.device
    loss_scale: LossScale | None = None
    step: int = 0
    consumed_samples: int = 0
    skipped_nonfinite: int = 0
    skipped_overflow: int = 0
    skipped_range: int = 0
    consecutive_nonfinite: int = 0
    tracker_id: str | None = None

    def advance(self, kind: str, global_batch_size: int) -> None:
        """Count one step that ended as ``kind`` (``kotomamba.train.step``'s outcome) and drew a global batch."""
        self.step += 1
        self.consumed_samples += global_batch_size
        if kind == RANGE:
            self.skipped_range += 1
        elif kind == OVERFLOW:
            self.skipped_overflow += 1
        elif kind == NONFINITE:
            self.skipped_nonfinite += 1
            self.consecutive_nonfinite += 1
        else:
            self.consecutive_nonfinite = 0

    @property
    def _rng_key(self) -> str:
        return f"rank_{self.rank}"

    def state_dict(self) -> dict:
        return {
            "step": self.step, "consumed_samples": self.consumed_samples,
            "skipped_nonfinite": self.skipped_nonfinite, "skipped_overflow": self.skipped_overflow,
            "skipped_range": self.skipped_range, "consecutive_nonfinite": self.consecutive_nonfinite,
            "tracker_id": self.tracker_id or "", "world_size": self.world_size,
            "loss_scale": self.loss_scale.state_dict() if self.loss_scale is not None else {},
            "rng": {self._rng_key: rng_state(self.device)},
        }

    def load_template(self, checkpoint_keys: dict[str, tuple[int, ...] | None]) -> dict:
        """What to load from a checkpoint with these flattened keys (``checkpoint.checkpoint_keys``): the
        whole state, less the generators when another world wrote it (its rank's state is missing or
        has another size)."""
        template = self.state_dict()
        key = f"train_state.rng.{self._rng_key}"
        if checkpoint_keys.get(key, ()) != tuple(template["rng"][self._rng_key].shape):
            del template["rng"]
        return template

    def load_state_dict(self, state: dict) -> None:
        """Restore from a ``train_state`` entry (generators only when it carries this rank's)."""
        self.step, self.consumed_samples = int(state["step"]), int(state["consumed_samples"])
        self.skipped_nonfinite, self.skipped_overflow = int(state["skipped_nonfinite"]), int(state["skipped_overflow"])
        self.skipped_range = int(state["skipped_range"])
        self.consecutive_nonfinite = int(state["consecutive_nonfinite"])
        self.tracker_id = state["tracker_id"] or None
        if self.loss_scale is not None and state["loss_scale"]:
            self.loss_scale.load_state_dict(state["loss_scale"])
        rng = state.get("rng", {}).get(self._rng_key)
        if rng is not None:
            set_rng_state(rng, self.device)
