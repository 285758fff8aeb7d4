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

from colbert.data import Triple, check_doc
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
    """One group a DPR question: (question, first positive, its first ``hard_negatives`` hard negatives).

    The negatives are chosen as ``colbert.data.triples_from_dpr`` chooses them (hard negatives, else the
    random ``negative_ctxs``), so a question may have fewer than ``hard_negatives``. Questions with no
    positive or no negative are skipped; returns ``(groups, skipped)``.
    """
    groups: list[Group] = []
    skipped = 0
    for number, sample in enumerate(samples, start=1):
        negatives = (sample.hard_negative_passages or sample.negative_passages)[:hard_negatives]
        if not sample.positive_passages or not negatives:
            skipped += 1
            continue
        where = f"DPR sample {number} ({sample.question[:40]!r})"
        positive = check_doc(sample.positive_passages[0], f"{where}, positive")
        groups.append(Group(sample.question, positive, tuple(check_doc(n, f"{where}, negative") for n in negatives)))
    return groups, skipped
