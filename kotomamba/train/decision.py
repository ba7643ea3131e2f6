"""A choice the trainer makes at start-up, with the reasons it logs: what was chosen, the setting that
asked for it, and why. The data-parallel layout (``parallelize.choose_data_parallel``) and the training
micro-step (``step_choice.choose_step``) are such choices; each logs one line,
``<subject>: <outcome> (<setting>; <reason>; ...)``. Torch-free, as ``step_choice`` must be.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Decision:
    """``outcome``: what was chosen; ``setting``: the config entry that asked, as ``name: value``;
    ``reasons``: why this outcome, in the order they were found (none where the setting says it all).
    A subclass names its ``SUBJECT`` (the log line's first words)."""

    SUBJECT: ClassVar[str] = "decision"

    outcome: str
    setting: str
    reasons: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The setting, then every reason: ``parallel.cuda_graph: auto; not graphed: no CUDA GPU``."""
        return "; ".join((self.setting, *self.reasons))

    def log_line(self) -> str:
        """The start-up log line, e.g. ``training step: eager (parallel.cuda_graph: auto; not graphed: no CUDA GPU)``."""
        return f"{self.SUBJECT}: {self.outcome} ({self.reason})"
