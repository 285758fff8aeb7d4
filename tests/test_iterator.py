"""ShardedDataIterator: coverage across shards, equal full batches, epoch orders, resume, RNG."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from dpr.data.iterator import ShardBatch, ShardedDataIterator, batch_rng


def _epoch(n: int, batch_size: int, num_shards: int, epoch: int = 0, seed: int = 3):
    """All shards' batches of one epoch: list (per shard) of lists of ShardBatch."""
    data = [f"s{i}" for i in range(n)]
    return [
        list(ShardedDataIterator(data, batch_size, shard, num_shards, seed=seed).iterate(epoch))
        for shard in range(num_shards)
    ]


@pytest.mark.parametrize(
    "n, batch_size, num_shards",
    [(10, 3, 1), (10, 3, 2), (10, 3, 3), (7, 2, 3), (11, 4, 2), (2, 4, 3), (1, 1, 3), (12, 4, 3)],
)
def test_every_sample_once_per_epoch_in_full_equal_batches(n: int, batch_size: int, num_shards: int) -> None:
    for epoch in (0, 1):
        shards = _epoch(n, batch_size, num_shards, epoch)
        expected_steps = math.ceil(math.ceil(n / num_shards) / batch_size)
        real: list[str] = []
        for batches in shards:
            assert len(batches) == expected_steps
            assert [b.iteration for b in batches] == list(range(expected_steps))
            for batch in batches:
                assert len(batch.items) == batch_size == len(batch.indices)
                assert batch.items == [f"s{i}" for i in batch.indices]
                assert 0 <= batch.num_padding <= batch_size
                real.extend(batch.real_items)
        assert sorted(real) == sorted(f"s{i}" for i in range(n))  # each exactly once


def test_hand_checked_layout_without_shuffle() -> None:
    # N=5, 2 shards -> 3 positions each; batch 2 -> 2 steps. Shard 1 owns positions 3, 4 and
    # pads by wrapping to the start of the order.
    data = list("abcde")
    shard0 = list(ShardedDataIterator(data, 2, 0, 2, shuffle=False).iterate(0))
    shard1 = list(ShardedDataIterator(data, 2, 1, 2, shuffle=False).iterate(0))
    assert shard0 == [ShardBatch(0, ["a", "b"], [0, 1], 0), ShardBatch(1, ["c", "d"], [2, 3], 1)]
    assert shard1 == [ShardBatch(0, ["d", "e"], [3, 4], 0), ShardBatch(1, ["a", "b"], [0, 1], 2)]
    assert shard0[1].real_items == ["c"] and shard1[1].real_items == []


def test_shuffle_is_random_seed_plus_epoch_and_same_on_every_shard() -> None:
    data = list(range(50))
    iterators = [ShardedDataIterator(data, 4, shard, 3, seed=11) for shard in range(3)]
    expected = list(range(50))
    random.Random(11 + 2).shuffle(expected)
    assert all(it.epoch_order(2) == expected for it in iterators)
    assert iterators[0].epoch_order(2) != iterators[0].epoch_order(3)
    first = [b.indices for b in iterators[1].iterate(5)]
    assert first == [b.indices for b in iterators[1].iterate(5)]  # same epoch, same order
    assert first != [b.indices for b in iterators[1].iterate(6)]  # different epoch, new order
    other_seed = ShardedDataIterator(data, 4, 1, 3, seed=12)
    assert first != [b.indices for b in other_seed.iterate(5)]


def test_iteration_does_not_touch_global_random_state() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    list(ShardedDataIterator(list(range(20)), 3, seed=1).iterate(4))
    assert random.random() == expected


@pytest.mark.parametrize("shard", [0, 1, 2])
def test_resume_yields_the_tail_of_the_uninterrupted_epoch(shard: int) -> None:
    iterator = ShardedDataIterator(list(range(23)), 3, shard, 3, seed=7)
    full = list(iterator.iterate(epoch=4))
    assert len(full) == iterator.iterations_per_epoch == 3
    for k in range(len(full) + 1):
        fresh = ShardedDataIterator(list(range(23)), 3, shard, 3, seed=7)  # as after a restart
        assert list(fresh.iterate(epoch=4, start_iteration=k)) == full[k:]


def test_batch_rng_is_a_function_of_its_arguments() -> None:
    draws = batch_rng(5, 2, 9).integers(0, 10**9, size=8)
    np.random.seed(0)
    random.seed(0)  # global state must not matter
    assert np.array_equal(batch_rng(5, 2, 9).integers(0, 10**9, size=8), draws)
    for args in ((5, 2, 10), (5, 3, 9), (6, 2, 9), (5, 2, 9, 1)):
        other = batch_rng(*args)
        assert not np.array_equal(other.integers(0, 10**9, size=8), draws)
    iterator = ShardedDataIterator(list(range(4)), 2, 1, 2, seed=5)
    assert np.array_equal(
        iterator.batch_rng(2, 9).integers(0, 10**9, size=8), batch_rng(5, 2, 9, 1).integers(0, 10**9, size=8)
    )
    with pytest.raises(ValueError, match="non-negative"):
        batch_rng(-1, 0, 0)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ShardedDataIterator([1, 2], 0)
    with pytest.raises(ValueError, match="shard_id"):
        ShardedDataIterator([1, 2], 1, shard_id=2, num_shards=2)
    with pytest.raises(ValueError, match="shard_id"):
        ShardedDataIterator([1, 2], 1, shard_id=-1, num_shards=2)
    with pytest.raises(ValueError, match="num_shards"):
        ShardedDataIterator([1, 2], 1, shard_id=0, num_shards=0)
    with pytest.raises(ValueError, match="empty"):
        ShardedDataIterator([], 1)
    iterator = ShardedDataIterator([1, 2, 3], 2)
    with pytest.raises(ValueError, match="start_iteration"):
        list(iterator.iterate(0, start_iteration=3))
    with pytest.raises(ValueError, match="epoch"):
        list(iterator.iterate(-1))
