"""What a training job says when it starts, and how long it has left.

Rank 0 prints the start-up lines once the model is built and the start is decided, so a job log
opens with what the job is about to do:

    kotomamba train: model mamba2, 129.14M parameters (24 layers, d_model 768, vocab 50280)
    kotomamba train: 2 processes (1 node(s)) on cuda (NVIDIA H200), bf16, step: eager
    kotomamba train: batch 16 x 2048 = 32768 tokens per step (micro-batch 4, 2 accumulation steps); 1000 steps, 32.77M tokens
    kotomamba train: resumed from step 400 (checkpoints/step_00000400): 600 steps to go

The time left (``eta``) is added to each logged line from the steps still to go at the last
window's step rate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StartFacts:
    """What the start-up lines report; every field comes from the trainer once its setup is done."""

    layer: str  # "mamba1" / "mamba2"
    parameters: int
    n_layer: int
    d_model: int
    vocab_size: int
    world: int
    nodes: int
    device: str  # "cpu", "cuda (NVIDIA H200)"
    precision: str
    step_kind: str  # step_choice.EAGER, step_choice.GRAPHED
    global_batch: int
    seq_length: int
    micro_batch: int
    accumulation: int
    steps: int
    start_step: int
    resumed_from: Path | None


def start_lines(facts: StartFacts) -> list[str]:
    """The start-up lines (without the ``kotomamba train:`` prefix)."""
    f = facts
    tokens_per_step = f.global_batch * f.seq_length
    lines = [
        f"model {f.layer}, {_count(f.parameters)} parameters ({f.n_layer} layers, d_model {f.d_model}, "
        f"vocab {f.vocab_size})",
        f"{f.world} process{'es' if f.world != 1 else ''} ({f.nodes} node{'s' if f.nodes != 1 else ''}) on "
        f"{f.device}, {f.precision}, step: {f.step_kind}",
        f"batch {f.global_batch} x {f.seq_length} = {tokens_per_step} tokens per step (micro-batch {f.micro_batch}, "
        f"{f.accumulation} accumulation step{'s' if f.accumulation != 1 else ''}); {f.steps} steps, "
        f"{_count(f.steps * tokens_per_step)} tokens",
    ]
    to_go = f.steps - f.start_step
    if f.resumed_from is None:
        lines.append(f"starting at step 1: {to_go} steps to go")
    else:
        where = f"{f.resumed_from.parent.name}/{f.resumed_from.name}"
        lines.append(f"resumed from step {f.start_step} ({where}): {to_go} steps to go")
    return lines


def time_left(steps_to_go: int, window_steps: int, window_seconds: float) -> float | None:
    """Seconds until the last step at the last window's rate (None before any window)."""
    if window_steps <= 0 or window_seconds <= 0:
        return None
    return steps_to_go * window_seconds / window_steps


def duration(seconds: float) -> str:
    """``1h02m``, ``5m07s`` or ``42s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
