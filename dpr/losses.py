"""In-batch negative-log-likelihood loss of a dense passage retriever.

Each question is scored against every passage of the batch: its own positive and hard negatives,
and the passages of all other questions as in-batch negatives (DPR, Karpukhin et al. 2020).
The functions here are pure: no device moves, no gathering across ranks (that lives in
``dpr.training.distributed``), no state.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["dot_scores", "biencoder_nll"]


def dot_scores(q: Tensor, p: Tensor) -> Tensor:
    """Dot-product similarity of every question with every passage.

    Args:
        q: question embeddings, shape (B, D).
        p: passage embeddings, shape (C, D).

    Returns:
        scores, shape (B, C); ``scores[i, j] = <q[i], p[j]>``.
    """
    if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(
            f"dot_scores expects q (B, D) and p (C, D) with the same D; found q {tuple(q.shape)} and p {tuple(p.shape)}"
        )
    return q @ p.transpose(0, 1)  # (B, D) x (D, C) -> (B, C)


def biencoder_nll(scores: Tensor, positive_idx: Tensor) -> tuple[Tensor, Tensor]:
    """Mean NLL of each question's positive under a softmax over all C passages.

    Args:
        scores: similarity of every question with every passage in the batch, shape (B, C).
        positive_idx: column of each question's positive passage, shape (B,), dtype long.

    Returns:
        ``(loss, correct)``: ``loss`` is the mean over questions of
        ``-log softmax(scores[i])[positive_idx[i]]``, shape (); ``correct`` is the number of
        questions whose highest-scoring passage is their positive, shape (), dtype long
        (ties go to the lowest column, as ``argmax`` breaks them).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (B, C); found {tuple(scores.shape)}")
    if positive_idx.shape != (scores.shape[0],):
        raise ValueError(
            f"positive_idx must have shape ({scores.shape[0]},) to match scores "
            f"{tuple(scores.shape)}; found {tuple(positive_idx.shape)}"
        )
    # Softmax in fp32 even when the encoders ran under fp16/bf16 autocast: log-sum-exp over a
    # few thousand passages loses too much precision in half types.
    # promote_types keeps fp64 scores in fp64 (tests, numerics checks) instead of downcasting.
    work_dtype = torch.promote_types(scores.dtype, torch.float32)
    log_probs = F.log_softmax(scores.to(work_dtype), dim=1)  # (B, C)
    loss = F.nll_loss(log_probs, positive_idx, reduction="mean")  # ()
    correct = (scores.detach().argmax(dim=1) == positive_idx).sum()  # ()
    return loss, correct
