"""The ColBERT model: one tuned BERT encoder for queries and documents, a linear layer, L2 normalisation.

Queries and documents share ONE encoder, prefix included (ColBERT v1 shares the whole encoder; the
PT-Retrieval ColBERT trained a single prefix): the ``[Q]`` / ``[D]`` marker tokens tell the two sides
apart, so a second prefix would double the tuned parameters without a role to play. In the frozen
modes (prefix, prompt, adapter, lora) only the tuned parameters and the linear layer ``H -> dim`` train;
fine-tuning trains everything, BitFit the biases and the linear layer.

The model encodes only: tokenizing, scoring and losses live in ``colbert.tokenization``,
``colbert.scoring`` and ``colbert.losses``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel

from colbert.options import COLBERT_FIELDS, ColBERTConfig
from colbert.scoring import maxsim_all
from dpr.identity import EncoderIdentity, encoder_digest
from dpr.models.biencoder import merged_encoder
from dpr.models.encoder import TunedEncoder, build_tuned_encoder
from dpr.models.hub import load_backbone
from dpr.models.lora import LoraError
from dpr.models.serialization import backbone_fingerprint

logger = logging.getLogger(__name__)


def colbert_identity(config: ColBERTConfig, backbone: dict[str, Any], digest: str) -> EncoderIdentity:
    """The identity of a ColBERT model with ``config``, backbone fingerprint and weights digest."""
    flat = config.to_flat()
    names = ("pretrained_model_cfg", "do_lower_case", "sequence_length", "tuning", *config.tuning.ARCHITECTURE)
    settings = {name: flat[name] for name in (*names, *COLBERT_FIELDS)}
    return EncoderIdentity(settings, backbone, digest)


class ColBERT(nn.Module):
    """Token vectors ``(B, T, dim)``, unit length, for queries and documents (Tevatron-style interface)."""

    def __init__(self, encoder: TunedEncoder, config: ColBERTConfig, identity: EncoderIdentity | None = None) -> None:
        super().__init__()
        self.config = config
        self._identity = identity  # fixed by merge_lora: the merged copy searches the index of its source
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

    def identity(self) -> EncoderIdentity:
        """What an index built with this model records: every setting that shapes a token vector (the
        backbone, tuning and ColBERT settings; not dropout), the backbone's shape and the weights."""
        if self._identity is not None:
            return self._identity
        return colbert_identity(self.config, backbone_fingerprint(self.backbone), encoder_digest(self))

    def compute_similarity(self, q: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
        """MaxSim of every query with every document, ``(Nq, Lq, dim), (Nd, Ld, dim) -> (Nq, Nd)``."""
        return maxsim_all(q, d, d_mask, self.config.similarity)

    def forward(
        self, q_ids: torch.Tensor, q_mask: torch.Tensor, d_ids: torch.Tensor, d_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides in one call: ``(B, Lq, dim)`` query and ``(C, Ld, dim)`` document vectors."""
        return self.encode_query(q_ids, q_mask), self.encode_passage(d_ids, d_mask)


def merge_lora(model: ColBERT) -> ColBERT:
    """An inference copy of a --lora ColBERT with the deltas folded into a copy of the backbone, without hooks.

    Same token vectors (up to float rounding) and the same :meth:`ColBERT.identity`, so an index built with
    either model is searched with the other; ``model`` is left as it was. For encoding, not for checkpoints.
    """
    if model.config.tuning.method != "lora":
        raise LoraError(f"--merge_lora applies to --lora checkpoints; this one is {model.config.tuning.method}")
    merged = ColBERT(merged_encoder(model.encoder), model.config, identity=model.identity())
    merged.linear.load_state_dict(model.linear.state_dict())
    return merged.requires_grad_(False).train(model.training).to(model.linear.weight.device)


def build_colbert_from_backbone(
    config: ColBERTConfig, backbone: BertModel, prompt_init_ids: list[int] | None = None
) -> ColBERT:
    """Wrap a loaded backbone. ``prompt_init_ids``: tokens of ``--prompt_init_text`` (the caller tokenizes)."""
    return ColBERT(build_tuned_encoder(backbone, config.backbone, config.tuning, None, prompt_init_ids), config)


def build_colbert(config: ColBERTConfig, prompt_init_ids: list[int] | None = None) -> ColBERT:
    """Load the backbone named by the config and build ColBERT in the config's tuning mode."""
    backbone = load_backbone(
        config.backbone.pretrained_model_cfg,
        dropout=config.backbone.dropout,
        attention_dropout=config.backbone.attention_dropout,
    )
    return build_colbert_from_backbone(config, backbone, prompt_init_ids)
