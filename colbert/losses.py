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
