"""Late-interaction (MaxSim) scoring as pure functions (ColBERT v2 style).

score(q, d) = sum over query tokens i of max over document tokens j (with ``d_mask[j]``) of sim(q_i, d_j)

- ``cosine``: sim = q . d (token vectors are L2-normalised by the model, so this is the cosine).
- ``l2``: sim = -||q - d||^2 (ColBERT v1's l2 option; on unit vectors it ranks as cosine does).

Masked document tokens (padding, punctuation) are excluded with ``-inf`` before the max, never by
zeroing their vectors: a zero vector has similarity 0, which would beat every *negative* real
similarity (ColBERT v1 zeroed them). Every query token is scored, including the ``[MASK]`` padding of
query augmentation. A document without any unmasked token scores ``-inf``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from colbert.options import SIMILARITIES


def _check(q: Tensor, d: Tensor, d_mask: Tensor, similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, found {similarity!r}")
    if q.shape[-1] != d.shape[-1]:
        raise ValueError(f"query and document vectors differ in size: {q.shape[-1]} vs {d.shape[-1]}")
    if d_mask.shape != d.shape[:-1]:
        raise ValueError(f"d_mask must have shape {tuple(d.shape[:-1])}, found {tuple(d_mask.shape)}")


def _token_sims(q: Tensor, d: Tensor, similarity: str) -> Tensor:
    """Token similarities ``(..., Lq, dim) x (..., Ld, dim) -> (..., Lq, Ld)`` (broadcasting leading dims)."""
    dots = q @ d.transpose(-1, -2)  # (..., Lq, Ld)
    if similarity == "cosine":
        return dots
    q_sq = (q * q).sum(-1).unsqueeze(-1)  # (..., Lq, 1)
    d_sq = (d * d).sum(-1).unsqueeze(-2)  # (..., 1, Ld)
    return -(q_sq + d_sq - 2.0 * dots).clamp(min=0.0)  # (..., Lq, Ld)


def _reduce(sims: Tensor, d_mask: Tensor) -> Tensor:
    """Max over unmasked document tokens, sum over query tokens: ``(..., Lq, Ld) -> (...)``."""
    sims = sims.masked_fill(~d_mask.unsqueeze(-2), float("-inf"))  # (..., Lq, Ld)
    return sims.amax(dim=-1).sum(dim=-1)  # (...)


def maxsim(q: Tensor, d: Tensor, d_mask: Tensor, similarity: str = "cosine") -> Tensor:
    """Score query ``b`` against document ``b``: ``(B, Lq, dim), (B, Ld, dim), (B, Ld) bool -> (B,)``."""
    _check(q, d, d_mask, similarity)
    if q.shape[0] != d.shape[0]:
        raise ValueError(f"maxsim pairs queries with documents: {q.shape[0]} queries, {d.shape[0]} documents")
    return _reduce(_token_sims(q, d, similarity), d_mask.bool())  # (B,)


def maxsim_all(q: Tensor, d: Tensor, d_mask: Tensor, similarity: str = "cosine") -> Tensor:
    """Score every query against every document: ``(Nq, Lq, dim), (Nd, Ld, dim), (Nd, Ld) -> (Nq, Nd)``.

    Memory is ``Nq * Nd * Lq * Ld`` floats: callers chunk large inputs.
    """
    _check(q, d, d_mask, similarity)
    sims = _token_sims(q.unsqueeze(1), d.unsqueeze(0), similarity)  # (Nq, Nd, Lq, Ld)
    return _reduce(sims, d_mask.bool().unsqueeze(0))  # (Nq, Nd)


def maxsim_packed(q: Tensor, d: Tensor, doclens: Tensor, similarity: str = "cosine") -> Tensor:
    """Score every query against documents packed without padding (how an index stores them).

    ``q`` ``(Nq, Lq, dim)``; ``d`` ``(sum(doclens), dim)`` holds the documents' scored tokens one
    document after another; ``doclens`` ``(Nd,)`` (each >= 1). Returns ``(Nq, Nd)``, equal to
    ``maxsim_all`` on the padded form, at the cost of the real tokens only.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, found {similarity!r}")
    if q.shape[-1] != d.shape[-1]:
        raise ValueError(f"query and document vectors differ in size: {q.shape[-1]} vs {d.shape[-1]}")
    if doclens.dim() != 1 or int(doclens.sum()) != d.shape[0] or bool((doclens < 1).any()):
        raise ValueError(f"doclens must be >= 1 and add up to the {d.shape[0]} document vectors")
    n_queries, query_len = q.shape[0], q.shape[1]
    sims = _token_sims(d, q.reshape(-1, q.shape[-1]), similarity)  # (sum(doclens), Nq*Lq)
    best = torch.segment_reduce(sims, "max", lengths=doclens.to(sims.device), axis=0)  # (Nd, Nq*Lq)
    return best.view(-1, n_queries, query_len).sum(dim=-1).T  # (Nq, Nd)
