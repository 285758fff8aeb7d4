"""The ColBERT model: one tuned BERT encoder for queries and documents, a linear layer, L2 normalisation.

Queries and documents share ONE encoder, prefix included (ColBERT v1 shares the whole encoder; the
PT-Retrieval ColBERT trained a single prefix): the ``[Q]`` / ``[D]`` marker tokens tell the two sides
apart, so a second prefix would double the tuned parameters without a role to play. In the frozen
modes (prefix, prompt, adapter) only the tuned parameters and the linear layer ``H -> dim`` train;
fine-tuning trains everything, BitFit the biases and the linear layer.

The model encodes only: tokenizing, scoring and losses live in ``colbert.tokenization``,
``colbert.scoring`` and ``colbert.losses``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel

from colbert.options import ColBERTConfig
from colbert.scoring import maxsim_all
from dpr.models.biencoder import check_positions, set_trainable
from dpr.models.encoder import TunedEncoder
from dpr.models.hub import load_backbone
from dpr.models.prefix import prompt_init_embeddings

logger = logging.getLogger(__name__)


class ColBERT(nn.Module):
    """Token vectors ``(B, T, dim)``, unit length, for queries and documents (Tevatron-style interface)."""

    def __init__(self, encoder: TunedEncoder, config: ColBERTConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        # No bias, as in ColBERT v1: the vectors are normalised right after, a bias would only tilt them.
        self.linear = nn.Linear(encoder.backbone.config.hidden_size, config.dim, bias=False)
        # What the tuning mode trains, fixed at build time: exactly what a checkpoint stores.
        self.tuned_names = tuple(name for name, p in self.named_parameters() if p.requires_grad)

    @property
    def backbone(self) -> BertModel:
        return self.encoder.backbone

    def _vectors(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        states = self.encoder.token_states(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return F.normalize(self.linear(states), p=2, dim=-1)  # (B, T, dim)

    def encode_query(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, Lq)`` query tokens (with ``[MASK]`` padding) -> ``(B, Lq, dim)``; every position is kept."""
        return self._vectors(input_ids, attention_mask, token_type_ids)

    def encode_passage(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, Ld)`` document tokens -> ``(B, Ld, dim)``; the caller's ``score_mask`` says which to score."""
        return self._vectors(input_ids, attention_mask, token_type_ids)

    def compute_similarity(self, q: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
        """MaxSim of every query with every document, ``(Nq, Lq, dim), (Nd, Ld, dim) -> (Nq, Nd)``."""
        return maxsim_all(q, d, d_mask, self.config.similarity)

    def forward(
        self, q_ids: torch.Tensor, q_mask: torch.Tensor, d_ids: torch.Tensor, d_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides in one call: ``(B, Lq, dim)`` query and ``(C, Ld, dim)`` document vectors."""
        return self.encode_query(q_ids, q_mask), self.encode_passage(d_ids, d_mask)


def build_colbert_from_backbone(
    config: ColBERTConfig, backbone: BertModel, prompt_init_ids: list[int] | None = None
) -> ColBERT:
    """Wrap a loaded backbone. ``prompt_init_ids``: tokens of ``--prompt_init_text`` (the caller tokenizes)."""
    encoder_cfg = config.encoder
    check_positions(encoder_cfg, backbone.config.max_position_embeddings)
    set_trainable(backbone, encoder_cfg.tuning)
    prompt_init = None
    if encoder_cfg.tuning == "prompt":
        prompt_init = prompt_init_embeddings(
            backbone.embeddings.word_embeddings.weight, prompt_init_ids, encoder_cfg.pre_seq_len
        )
    return ColBERT(TunedEncoder(backbone, encoder_cfg, prompt_init), config)


def build_colbert(config: ColBERTConfig, prompt_init_ids: list[int] | None = None) -> ColBERT:
    """Load the backbone named by the config and build ColBERT in the config's tuning mode."""
    backbone = load_backbone(config.encoder.pretrained_model_cfg, dropout=config.encoder.dropout)
    return build_colbert_from_backbone(config, backbone, prompt_init_ids)
