"""The small interface every retriever model offers (Tevatron's ``EncoderModel``): encode each side, score.

:class:`dpr.models.biencoder.BiEncoder` (one vector per text, dot products) and ``colbert.model.ColBERT``
(one vector per token, MaxSim) both satisfy it, so code that only encodes and scores takes either.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class RetrieverModel(Protocol):
    """Encode queries and passages from token tensors; score queries against passages."""

    config: Any  # the frozen config the model was built from (stored with its checkpoint)

    def encode_query(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, T)`` query tokens -> ``(B, D)`` vectors, or ``(B, T, D)`` token vectors."""
        ...

    def encode_passage(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(C, T)`` passage tokens -> ``(C, D)`` vectors, or ``(C, T, D)`` token vectors."""
        ...

    def compute_similarity(self, queries: torch.Tensor, passages: torch.Tensor, *args: Any) -> torch.Tensor:
        """Scores ``(B, C)`` of every query with every passage."""
        ...
