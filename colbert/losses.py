"""ColBERT training losses as pure functions of MaxSim scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dpr.losses import biencoder_nll


def pairwise_softmax_loss(positive: Tensor, negative: Tensor) -> Tensor:
    """ColBERT v1's loss: cross-entropy of the positive over ``[positive, negative]``.

    ``positive``, ``negative``: ``(B,)`` scores of each query with its own two passages. Returns ``()``.
    Computed in fp32 whatever the autocast dtype of the scores.
    """
    if positive.shape != negative.shape or positive.dim() != 1:
        raise ValueError(f"expected two (B,) score vectors, found {tuple(positive.shape)} and {tuple(negative.shape)}")
    scores = torch.stack([positive, negative], dim=1).float()  # (B, 2)
    labels = torch.zeros(len(positive), dtype=torch.long, device=positive.device)
    return F.cross_entropy(scores, labels)


def in_batch_loss(scores: Tensor) -> Tensor:
    """Cross-entropy of each query's positive over every passage of the batch.

    ``scores`` ``(B, 2B)``: query ``i`` against all passages laid out ``[positives (B), negatives (B)]``,
    so query ``i``'s positive is column ``i``; the other queries' positives and all negatives are its
    negatives. Returns ``()``.
    """
    batch = scores.shape[0]
    if scores.dim() != 2 or scores.shape[1] != 2 * batch:
        raise ValueError(f"in_batch_loss expects (B, 2B) scores, found {tuple(scores.shape)}")
    loss, _ = biencoder_nll(scores, torch.arange(batch, device=scores.device))
    return loss


def group_loss(scores: Tensor, group_sizes: Tensor, in_batch_negatives: bool = False) -> Tensor:
    """Cross-entropy of each query's positive over its group's negatives (and every passage if in-batch).

    ``scores`` ``(B, C)``: query ``i`` against the batch's ``C`` passages, laid out group after group,
    each group ``[positive, negative_1 .. negative_n]``; ``group_sizes`` ``(B,)`` long: ``1 + n`` of
    each group (``C = sum``). Query ``i``'s candidates are its own group, or with ``in_batch_negatives``
    all ``C`` passages (the other queries' positives and negatives too). Returns ``()``, in fp32.
    Scores outside the candidates are ignored (they may be ``-inf``).
    """
    batch = scores.shape[0]
    if scores.dim() != 2 or group_sizes.shape != (batch,) or int(group_sizes.sum()) != scores.shape[1]:
        raise ValueError(
            f"group_loss expects (B, C) scores and B group sizes adding up to C, "
            f"found scores {tuple(scores.shape)} and sizes {group_sizes.tolist()}"
        )
    if bool((group_sizes < 2).any()):
        raise ValueError(f"every group needs a positive and a negative, found sizes {group_sizes.tolist()}")
    ends = group_sizes.to(scores.device).cumsum(0)  # (B,)
    starts = ends - group_sizes  # (B,): each query's positive column
    scores = scores.float()  # (B, C)
    if not in_batch_negatives:
        columns = torch.arange(scores.shape[1], device=scores.device)  # (C,)
        own = (columns >= starts[:, None]) & (columns < ends[:, None])  # (B, C)
        scores = scores.masked_fill(~own, float("-inf"))  # (B, C)
    return F.cross_entropy(scores, starts)
