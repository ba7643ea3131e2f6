"""Parallelism and memory savers applied to a single-device ``MambaLM`` from outside, per block.

Order (as torchtitan's ``parallelize``): activation checkpointing, then ``torch.compile``, then FSDP2
``fully_shard`` on every ``Block`` and finally on the root (embedding, final norm, LM head). The
composable ``checkpoint`` and ``nn.Module.compile`` keep every parameter name unchanged, so state
dicts keep mamba-ssm's keys.

Data parallelism (``parallel.data_parallel``, :func:`choose_data_parallel`): ``fsdp`` shards as above,
``replicate`` keeps the whole model on every rank and all-reduces the gradients
(``kotomamba.train.grad_sync``), ``auto`` replicates a model that fits on one GPU. FSDP strategies
(``parallel.strategy``): FULL_SHARD (parameters resharded after forward), SHARD_GRAD_OP (kept gathered
between forward and backward), HYBRID_SHARD (2-D mesh: shard within a node, replicate across nodes).
"""
from __future__ import annotations

import torch
from torch import nn

from kotomamba.errors import UserError
from kotomamba.train.decision import Decision

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def cpu_sharding_supported(torch_version: str = torch.__version__) -> bool:
    """Whether FSDP2 runs across CPU processes: from torch 2.7 (torch 2.6's FSDP2 records events on
    its CPU stream stand-in, which has no ``record_event``; its CPU DTensor checkpoint writes hang too)."""
    major, minor = (int(part) for part in torch_version.split(".")[:2])
    return (major, minor) >= (2, 7)


def check_sharding(device_type: str, world_size: int, torch_version: str = torch.__version__) -> None:
    """Raise a ``UserError`` for a sharded CPU run on a torch that cannot do it."""
    if device_type == "cpu" and world_size > 1 and not cpu_sharding_supported(torch_version):
        raise UserError(f"training on {world_size} CPU processes needs torch >= 2.7 (FSDP2 on CPU), this is "
                        f"torch {torch_version}: run one process (launch.nproc_per_node: 1) or upgrade torch")


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


# Bytes per parameter a replica holds beyond activations: weight, gradient and AdamW's two moments, all
# in the master dtype (``optim.master_dtype``).
STATE_BYTES = {"fp32": 16, "bf16": 8}
# ``auto`` replicates when that state takes at most this share of one GPU's memory: the rest is left
# for activations, the captured step's memory pool and the all-reduce buckets.
REPLICATE_SHARE = 0.25


class DataParallelChoice(Decision):
    """``kind`` (the outcome): ``single`` (one process), ``replicate`` or ``fsdp``; its reasons say why."""

    SUBJECT = "data parallel"

    @property
    def kind(self) -> str:
        return self.outcome


def choose_data_parallel(setting: str, world: int, device_type: str, parameters: int, master_dtype: str,
                         device_memory: int | None) -> DataParallelChoice:
    """How ``world`` processes share a model of ``parameters`` parameters (``parallel.data_parallel``).

    ``auto`` replicates on CUDA GPUs when ``STATE_BYTES[master_dtype] x parameters`` is at most
    ``REPLICATE_SHARE`` of ``device_memory`` (bytes, one GPU's) and shards with FSDP otherwise; on CPU it
    shards (replication's gain is the CUDA-graphed micro-step, and CPU runs are the tests of the sharded
    path). ``fsdp`` and ``replicate`` are taken as written. One process is ``single`` whatever the setting.
    """
    asked = f"parallel.data_parallel: {setting}"
    if world == 1:
        return DataParallelChoice("single", asked, ("one process",))
    if setting != "auto":
        return DataParallelChoice(setting, asked, (f"{world} processes",))
    if device_type != "cuda" or not device_memory:
        return DataParallelChoice("fsdp", asked, (f"{world} processes without a CUDA GPU",))
    state = STATE_BYTES[master_dtype] * parameters
    fits = state <= REPLICATE_SHARE * device_memory
    return DataParallelChoice("replicate" if fits else "fsdp", asked, (
        f"{world} processes",
        f"weights, gradients and AdamW state {state / 2**30:.1f} GiB ({STATE_BYTES[master_dtype]} bytes x "
        f"{parameters / 1e6:.1f}M parameters) {'within' if fits else 'over'} {REPLICATE_SHARE:.0%} of one GPU's "
        f"{device_memory / 2**30:.0f} GiB"))


def gradient_sync(model: nn.Module, params: list[nn.Parameter], choice: DataParallelChoice, strategy: str,
                  graphed: bool):
    """The :class:`~kotomamba.train.grad_sync.GradientSync` the trainer calls around each step's micro-batches,
    for a model :func:`parallelize` prepared and materialised. ``graphed``: the micro-steps are CUDA graphs
    (replicated gradients are then all-reduced after the last one, not from hooks inside its backward)."""
    from kotomamba.train.grad_sync import GradientSync, HybridShardGradients, ReplicatedGradients

    if choice.kind == "replicate":
        return ReplicatedGradients(params, overlap=not graphed)
    if choice.kind == "fsdp" and strategy == "HYBRID_SHARD":
        return HybridShardGradients(model)
    return GradientSync()


def parallelize(model: nn.Module, mesh, strategy: str, precision: str, activation_checkpointing: bool,
                checkpoint_interval: int, compile_blocks: bool, replicate: bool = False) -> nn.Module:
    """Apply checkpointing, compile and FSDP2 to ``model`` in place (it may live on ``meta``).

    A world of one process is not sharded, nor is a ``replicate``d model (each rank holds all of it;
    :func:`gradient_sync` averages its gradients): their compute dtype comes from autocast instead.

    Compute runs in ``precision`` (bf16 / fp16 casts of the fp32 shards on all-gather) and
    gradients are reduced in fp32, so the optimizer always sees fp32 weights and gradients.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    compute = PRECISIONS[precision]
    sharded = mesh.size() > 1 and not replicate
    check_sharding(mesh.device_type, mesh.size())
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute is not None else None)
    blocks = list(model.backbone.layers)
    for index, block in enumerate(blocks):
        if activation_checkpointing and index % checkpoint_interval == 0:
            from torch.distributed._composable import checkpoint

            checkpoint(block)
        if compile_blocks:
            # Static shapes: a block sees one shape per stage. With torch's automatic dynamic shapes a
            # second shape (another preset in one process, an eval batch) recompiles symbolically,
            # and Dynamo cannot trace mamba-ssm's autograd Functions then (AssertionError on an H200).
            block.compile(dynamic=False)
        if sharded:
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=strategy != "SHARD_GRAD_OP")
    if sharded:
        fully_shard(model, mesh=mesh, mp_policy=policy)
    elif compute is not None:
        # One process (or a replica) has nothing to shard: FSDP would only add a cast and copy per parameter per
        # step, enough to make a small model's step wait on the host (bench/RESULTS.md).
        # Autocast gives the same bf16/fp16 compute over the fp32 weights, as upstream trains.
        model.forward = torch.autocast(mesh.device_type, dtype=compute)(model.forward)
    return model
