"""Which micro-step a training job runs, CUDA-graphed or eager, and why: decided here and nowhere else.

``parallel.cuda_graph`` is ``auto`` (the default: graphed wherever it is safe, eager with the reasons
otherwise), ``true`` (graphed; an error naming every reason where it is not safe) or ``false`` (always
eager). What the config alone rules out is known when the config is read (:func:`config_refusals`, also
used by ``kotomamba.train.config`` to refuse ``true`` early); what the job finds at start-up (a GPU,
how many processes, whether they replicate the model) only in the trainer, which logs the answer of
:func:`choose_step`.

Graphed where it can be: on one GPU a small model's eager step waits on Python launching kernels, and
the captured step keeps the card busy (bench/RESULTS.md has the measured difference). Torch-free, so
the pipeline's config check can import it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kotomamba.errors import UserError
from kotomamba.train.decision import Decision

if TYPE_CHECKING:
    from kotomamba.train.config import TrainConfig

GRAPHED, EAGER = "CUDA-graphed", "eager"


class StepChoice(Decision):
    """The outcome: ``GRAPHED`` or ``EAGER``; its reasons say where it runs, or, when eager, every refusal."""

    SUBJECT = "training step"

    @property
    def graphed(self) -> bool:
        return self.outcome == GRAPHED


def config_refusals(config: TrainConfig) -> list[tuple[str, str]]:
    """``(setting, why)`` for every setting of ``config`` a captured step cannot run with."""
    refusals = []
    if config.parallel.compile:
        refusals.append(("parallel.compile: true", "torch.compile's own graphs are not captured inside ours"))
    if config.parallel.activation_checkpointing:
        refusals.append(("parallel.activation_checkpointing: true",
                         "its recompute saves and restores the RNG state, which a capture cannot"))
    if config.precision == "fp16":
        refusals.append(("precision: fp16", "its loss scale changes between steps; a captured step keeps the first"))
    return refusals


def job_refusals(device_type: str, world: int, replicated: bool) -> list[str]:
    """What the job itself rules out: no GPU, or several processes sharding the model."""
    if device_type != "cuda":
        return ["no CUDA GPU"]
    if world > 1 and not replicated:
        return [f"{world} processes sharding with FSDP (its collectives and hooks are not captured; "
                "parallel.data_parallel: replicate graphs a model that fits on one GPU)"]
    return []


def choose_step(config: TrainConfig, device_type: str, world: int, replicated: bool = False) -> StepChoice:
    """The micro-step this job runs; ``replicated``: several processes each hold the whole model
    (``kotomamba.train.parallelize.choose_data_parallel``), so a micro-step holds no collective.
    Raises ``UserError`` for ``parallel.cuda_graph: true`` where it cannot run."""
    setting = config.parallel.cuda_graph
    asked = f"parallel.cuda_graph: {'auto' if setting == 'auto' else str(setting).lower()}"
    if setting is False:
        return StepChoice(EAGER, asked)
    refusals = [f"{name} ({why})" for name, why in config_refusals(config)] + job_refusals(device_type, world, replicated)
    if not refusals:
        where = "one process on a CUDA GPU" if world == 1 else f"{world} processes, each replicating the model on a CUDA GPU"
        return StepChoice(GRAPHED, asked, (where,))
    if setting is True:
        raise UserError(f"parallel.cuda_graph: true cannot run here: {'; '.join(refusals)}; "
                        "set it to auto (graphed where it can be) or false")
    return StepChoice(EAGER, asked, (f"not graphed: {'; '.join(refusals)}",))
