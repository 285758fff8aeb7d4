"""Training rows with several negatives: (query, positive, neg_1 .. neg_N), scored together.

ColBERT v1 trains on triples, one negative a row; a DPR question with N hard negatives then gives N rows
that meet in different batches. A group keeps them in one row, so the loss is a cross-entropy of the
positive over all N negatives at once (``colbert.losses.group_loss``), optionally with every other
passage of the batch as well (in-batch negatives).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from colbert.data import Triple, dpr_rows
from dpr.data.readers import BiEncoderSample, Passage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """A training query with its positive and one or more negatives."""

    query: str
    positive: Passage
    negatives: tuple[Passage, ...]

    def __post_init__(self) -> None:
        if not self.negatives:
            raise ValueError(f"group of {self.query[:40]!r}: no negatives")

    @property
    def passages(self) -> tuple[Passage, ...]:
        """``(positive, *negatives)``: the order the loss scores them in."""
        return (self.positive, *self.negatives)


Row = Triple | Group


@dataclass(frozen=True)
class Pool:
    """A DPR question, its positive and a pool of negatives that every step draws its row from afresh.

    A fixed row repeats the same negative every epoch, and on data such as SciFact the best-ranked BM25
    "negative" is often an unlabelled positive: drawing from the first N (DPR shuffles its hard negatives
    the same way) spreads that risk and shows the model more negatives over the epochs.
    """

    query: str
    positive: Passage
    negatives: tuple[Passage, ...]

    def __post_init__(self) -> None:
        if not self.negatives:
            raise ValueError(f"pool of {self.query[:40]!r}: no negatives")

    @property
    def passages(self) -> tuple[Passage, ...]:
        return (self.positive, *self.negatives)

    def draw(self, rng: np.random.Generator, count: int, group: bool) -> Row:
        """A group of ``count`` negatives drawn without replacement (fewer if the pool is smaller), or a triple."""
        picks = rng.choice(len(self.negatives), size=min(count if group else 1, len(self.negatives)), replace=False)
        chosen = tuple(self.negatives[int(i)] for i in picks)
        return Group(self.query, self.positive, chosen) if group else Triple(self.query, self.positive, chosen[0])


def pools_from_dpr(
    samples: Sequence[BiEncoderSample], pool_size: int, hard_negatives: int, group: bool
) -> tuple[list[Pool], int]:
    """Rows that draw their negatives at each step from each question's first ``pool_size`` (at least
    ``hard_negatives``): one a question in group mode, else ``hard_negatives`` a question (each drawing one
    negative, as the fixed triples are one a negative). Returns ``(pools, skipped)``."""
    rows, skipped = dpr_rows(samples, max(pool_size, hard_negatives))
    copies = 1 if group else hard_negatives
    return [
        Pool(question, positive, negatives) for question, positive, negatives in rows for _ in range(copies)
    ], skipped


def groups_from_dpr(samples: Sequence[BiEncoderSample], hard_negatives: int) -> tuple[list[Group], int]:
    """One group a DPR question: (question, first positive, its first ``hard_negatives`` negatives), chosen
    as ``colbert.data.dpr_rows`` chooses them, so a question may have fewer than ``hard_negatives``.
    Returns ``(groups, skipped)``."""
    rows, skipped = dpr_rows(samples, hard_negatives)
    return [Group(question, positive, negatives) for question, positive, negatives in rows], skipped
