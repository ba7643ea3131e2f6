"""Experiment trackers: Weights & Biases (online / offline / disabled) and TensorBoard.

The wandb run id is created once and saved in every checkpoint's ``train_state``; a resumed job
passes it back with ``resume="allow"`` so the curves continue in one run.
"""
from __future__ import annotations

from pathlib import Path

from kotomamba.errors import UserError


class WandbTracker:
    def __init__(self, run_dir: Path, mode: str, project: str | None, entity: str | None, name: str | None,
                 run_id: str | None, config: dict):
        try:
            import wandb
        except ImportError as exc:
            raise UserError(
                f"logging.wandb.mode is {mode!r} but wandb is not installed (pip install 'kotomamba[wandb]')"
            ) from exc
        # A new run takes the id wandb makes (wandb.util.generate_id, used before, is absent in wandb 0.31).
        self.run = wandb.init(
            project=project, entity=entity, name=name, id=run_id, resume="allow", mode=mode,
            dir=str(run_dir), config=config,
        )
        self.run_id = self.run.id

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class TensorBoardTracker:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError(
                "logging.tensorboard is true but tensorboard is not installed (pip install 'kotomamba[tensorboard]')"
            ) from exc
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
