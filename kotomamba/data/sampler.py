"""Data-parallel micro-batch sampler that can start at any consumed-sample count (exact resume).

The dataset order is global and fixed (``gpt_dataset``); each optimizer step consumes a global
block of ``micro_batch_size * world_size`` consecutive sample indices, and rank ``r`` takes the
``r``-th micro-batch of each block (as Megatron-LM's ``MegatronPretrainingSampler``). Resuming
with the saved ``consumed_samples`` therefore continues exactly where training stopped, on any
number of ranks whose product with the micro-batch size is unchanged.
"""
from __future__ import annotations

from typing import Iterator


class MicroBatchSampler:
    """Yields lists of ``micro_batch_size`` sample indices for one rank; drops an incomplete last block.

    Args:
        total_samples: samples in the dataset (indices ``0 .. total_samples - 1``).
        consumed_samples: samples all ranks together have already consumed; iteration starts there.
        micro_batch_size: samples per rank per micro-batch.
        rank, world_size: this data-parallel rank and the number of them.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, rank: int, world_size: int):
        if micro_batch_size < 1 or world_size < 1:
            raise ValueError(f"micro_batch_size ({micro_batch_size}) and world_size ({world_size}) must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if not 0 <= consumed_samples <= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} is not in [0, total_samples={total_samples}]")
        self.total_samples = int(total_samples)
        self.consumed_samples = int(consumed_samples)
        self.micro_batch_size = int(micro_batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)

    @property
    def global_micro_batch(self) -> int:
        return self.micro_batch_size * self.world_size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // self.global_micro_batch

    def __iter__(self) -> Iterator[list[int]]:
        first = self.consumed_samples + self.rank * self.micro_batch_size
        for block in range(len(self)):
            start = first + block * self.global_micro_batch
            yield list(range(start, start + self.micro_batch_size))
