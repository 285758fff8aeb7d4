"""Resumable sharded batching over a data sequence (DPR's ShardedDataIterator, with padding fixed).

Every shard (DDP rank) shuffles the whole data with ``random.Random(seed + epoch)``, so all ranks
see the same order, and takes a contiguous slice of ``ceil(N / num_shards)`` positions. Each shard
yields exactly ``ceil(ceil(N / num_shards) / batch_size)`` full batches: the short slice of the last
shard and the final short batch are padded by continuing the shuffled order cyclically (past the
end it wraps to the start). Under DDP every rank therefore runs the same number of steps, and each
sample is a real (non-padding) item exactly once per epoch across all shards.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

T = TypeVar("T")


def batch_rng(seed: int, epoch: int, iteration: int, shard_id: int = 0) -> np.random.Generator:
    """A generator determined only by ``(seed, epoch, iteration, shard_id)``, e.g. for negatives.

    Independent of the global ``random`` / numpy state, so a resumed run draws what the
    uninterrupted run drew. All arguments must be non-negative integers.
    """
    values = (seed, epoch, iteration, shard_id)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(
            f"batch_rng needs non-negative integers, found seed={seed!r}, epoch={epoch!r}, "
            f"iteration={iteration!r}, shard_id={shard_id!r}"
        )
    return np.random.default_rng(np.random.SeedSequence(list(values)))


@dataclass(frozen=True)
class ShardBatch(Generic[T]):
    """One batch of one shard.

    ``items`` always holds ``batch_size`` items; the LAST ``num_padding`` of them are padding
    (repeats that keep the batch full and the step count equal across shards). ``indices`` are the
    items' positions in the data sequence. ``iteration`` is the 0-based batch number in the epoch.
    """

    iteration: int
    items: list[T]
    indices: list[int]
    num_padding: int

    @property
    def real_items(self) -> list[T]:
        """The items that are not padding (use these for validation metrics)."""
        return self.items[: len(self.items) - self.num_padding]


class ShardedDataIterator(Generic[T]):
    """Yields the full, padded batches of one shard for an epoch; resumable mid-epoch.

    Args:
        data: the samples (not copied; indexed by position).
        batch_size: items per batch on this shard (>= 1).
        shard_id: this shard (rank), ``0 <= shard_id < num_shards``.
        num_shards: number of shards (world size).
        shuffle: shuffle with ``random.Random(seed + epoch)``; otherwise keep the data order.
        seed: base seed of the shuffle and of :meth:`batch_rng`.
    """

    def __init__(
        self,
        data: Sequence[T],
        batch_size: int,
        shard_id: int = 0,
        num_shards: int = 1,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if len(data) == 0:
            raise ValueError("ShardedDataIterator: the data is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {batch_size}")
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, found {num_shards}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, {num_shards}), found {shard_id}")
        self.data = data
        self.batch_size = batch_size
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.shuffle = shuffle
        self.seed = seed

    @property
    def shard_size(self) -> int:
        """Positions of the shuffled order assigned to each shard: ``ceil(N / num_shards)``."""
        return math.ceil(len(self.data) / self.num_shards)

    @property
    def iterations_per_epoch(self) -> int:
        """Batches every shard yields per epoch: ``ceil(shard_size / batch_size)``."""
        return math.ceil(self.shard_size / self.batch_size)

    def __len__(self) -> int:
        return self.iterations_per_epoch

    def epoch_order(self, epoch: int) -> list[int]:
        """The data positions in this epoch's order, identical on every shard. Shape (N,)."""
        order = list(range(len(self.data)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def iterate(self, epoch: int, start_iteration: int = 0) -> Iterator[ShardBatch[T]]:
        """Yield this shard's batches of ``epoch`` from ``start_iteration`` on.

        Resuming with ``start_iteration=k`` yields exactly the batches ``k, k+1, ...`` of the
        uninterrupted epoch.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, found {epoch}")
        if not 0 <= start_iteration <= self.iterations_per_epoch:
            raise ValueError(f"start_iteration must be in [0, {self.iterations_per_epoch}], found {start_iteration}")
        order = self.epoch_order(epoch)
        n, size = len(order), self.batch_size
        start = self.shard_id * self.shard_size
        # Real positions of this shard: the last shards may get fewer (or none) when N is small.
        num_real = max(0, min(start + self.shard_size, n) - start)
        for iteration in range(start_iteration, self.iterations_per_epoch):
            first = iteration * size
            indices = [order[(start + p) % n] for p in range(first, first + size)]
            num_padding = min(size, max(0, first + size - max(num_real, first)))
            yield ShardBatch(
                iteration=iteration,
                items=[self.data[i] for i in indices],
                indices=indices,
                num_padding=num_padding,
            )

    def batch_rng(self, epoch: int, iteration: int) -> np.random.Generator:
        """:func:`batch_rng` for this iterator's seed and shard."""
        return batch_rng(self.seed, epoch, iteration, self.shard_id)
