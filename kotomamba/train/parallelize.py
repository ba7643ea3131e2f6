"""Parallelism and memory savers applied to a single-device ``MambaLM`` from outside, per block.

Order (as torchtitan's ``parallelize``): activation checkpointing, then ``torch.compile``, then FSDP2
``fully_shard`` on every ``Block`` and finally on the root (embedding, final norm, LM head). The
composable ``checkpoint`` and ``nn.Module.compile`` keep every parameter name unchanged, so state
dicts keep mamba-ssm's keys.

Strategies: FULL_SHARD (parameters resharded after forward), SHARD_GRAD_OP (kept gathered between
forward and backward), HYBRID_SHARD (2-D mesh: shard within a node, replicate across nodes).
"""
from __future__ import annotations

import torch
from torch import nn

from kotomamba.errors import UserError

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


def parallelize(model: nn.Module, mesh, strategy: str, precision: str, activation_checkpointing: bool,
                checkpoint_interval: int, compile_blocks: bool) -> nn.Module:
    """Apply checkpointing, compile and FSDP2 to ``model`` in place (it may live on ``meta``).

    A world of one process is not sharded: its compute dtype comes from autocast instead.

    Compute runs in ``precision`` (bf16 / fp16 casts of the fp32 shards on all-gather) and
    gradients are reduced in fp32, so the optimizer always sees fp32 weights and gradients.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    compute = PRECISIONS[precision]
    sharded = mesh.size() > 1
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
        # One process has nothing to shard: FSDP would only add a cast and copy per parameter per
        # step, enough to make a small model's step wait on the host (bench/RESULTS.md).
        # Autocast gives the same bf16/fp16 compute over the fp32 weights, as upstream trains.
        model.forward = torch.autocast(mesh.device_type, dtype=compute)(model.forward)
    return model
