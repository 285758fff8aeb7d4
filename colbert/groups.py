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


def groups_from_dpr(samples: Sequence[BiEncoderSample], hard_negatives: int) -> tuple[list[Group], int]:
    """One group a DPR question: (question, first positive, its first ``hard_negatives`` negatives), chosen
    as ``colbert.data.dpr_rows`` chooses them, so a question may have fewer than ``hard_negatives``.
    Returns ``(groups, skipped)``."""
    rows, skipped = dpr_rows(samples, hard_negatives)
    return [Group(question, positive, negatives) for question, positive, negatives in rows], skipped
