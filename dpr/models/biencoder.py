"""The DPR bi-encoder: a question encoder and a passage encoder (encoding only; no loss here).

In the frozen-backbone modes (prefix, prompt, adapter, lora) both encoders hold the SAME backbone module, so
its weights exist once in memory; each side owns only its tuned parameters. Fine-tuning and BitFit keep
two backbones unless ``share_encoder``.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from transformers import BertModel

from dpr.configs import BiEncoderConfig, ConfigError, FinetuneConfig
from dpr.identity import EncoderIdentity, encoder_digest
from dpr.models.encoder import TunedEncoder, build_tuned_encoder
from dpr.models.hub import default_normalize, default_pooling, default_title_mode, load_backbone
from dpr.models.lora import LoraError, merged_backbone
from dpr.models.serialization import backbone_fingerprint

logger = logging.getLogger(__name__)


class BiEncoder(nn.Module):
    """Question and passage encoders with dot-product similarity (Tevatron-style interface)."""

    def __init__(
        self,
        question_encoder: TunedEncoder,
        ctx_encoder: TunedEncoder,
        config: BiEncoderConfig,
        identity: EncoderIdentity | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._identity = identity  # a merged LoRA model keeps the identity of the model it was merged from
        self.question_encoder = question_encoder
        self.ctx_encoder = ctx_encoder
        # Names of the parameters the tuning mode trains: exactly what a checkpoint stores. Fixed at build
        # time so that freezing parameters later does not change the file format.
        self.tuned_names = tuple(name for name, p in self.named_parameters() if p.requires_grad)

    @property
    def backbone(self) -> BertModel:
        return self.question_encoder.backbone

    def encode_query(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) tokens -> (B, D) question vectors."""
        return self.question_encoder(input_ids, attention_mask, token_type_ids)

    def encode_passage(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(C, T) tokens -> (C, D) passage vectors."""
        return self.ctx_encoder(input_ids, attention_mask, token_type_ids)

    def passage_identity(self) -> EncoderIdentity:
        """What an index of this model's passage vectors records: the passage side's own config (the
        base model's with ``tune_side='question'``, so an index built before training matches), the
        backbone's shape, the passage format and the passage encoder's weights."""
        if self._identity is not None:
            return self._identity
        return EncoderIdentity.of_config(
            self.config.passage_config(), backbone_fingerprint(self.backbone), encoder_digest(self.ctx_encoder)
        )

    @staticmethod
    def compute_similarity(questions: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
        """Dot products ``(B, D) x (C, D) -> (B, C)``."""
        return questions @ passages.T

    def forward(
        self,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        q_segments: torch.Tensor | None,
        c_ids: torch.Tensor | None = None,
        c_mask: torch.Tensor | None = None,
        c_segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both sides in one call (what DDP wraps): ``(B, D)`` and ``(C, D)`` vectors.

        Without passage tokens only the questions are encoded (passage vectors come from a cache).
        """
        passages = self.encode_passage(c_ids, c_mask, c_segments) if c_ids is not None else None
        return self.encode_query(q_ids, q_mask, q_segments), passages


def resolve_config(config: BiEncoderConfig) -> BiEncoderConfig:
    """Resolve the 'auto' settings from the model folder: pooling (mean for sentence-transformers),
    L2 normalisation (on when its sentence-transformers modules include Normalize) and the title mode
    (concat for sentence-transformers)."""
    name = config.backbone.pretrained_model_cfg
    if config.head.pooling == "auto":
        config = config.with_settings(pooling=default_pooling(name))
        logger.info("pooling auto -> %s for %s", config.head.pooling, name)
    if config.head.normalize is None:
        config = config.with_settings(normalize=default_normalize(name))
        logger.info("normalize auto -> %s for %s", config.head.normalize, name)
    if config.passages.title_mode == "auto":
        config = config.with_settings(title_mode=default_title_mode(name))
        logger.info("title_mode auto -> %s for %s", config.passages.title_mode, name)
    return config


def build_biencoder_from_backbone(
    config: BiEncoderConfig, backbone: BertModel, prompt_init_ids: list[int] | None = None
) -> BiEncoder:
    """Wrap an already loaded backbone (its dropout settings are used as they are).

    ``prompt_init_ids``: token ids of ``--prompt_init_text`` (the caller tokenizes; models never do).
    """
    if config.head.pooling == "auto":
        raise ConfigError("pooling must be resolved before building (see resolve_config)")
    if config.head.normalize is None:  # a bare backbone has no sentence-transformers folder to ask
        config = config.with_settings(normalize=False)
    if config.passages.title_mode == "auto":
        config = config.with_settings(title_mode="pair")
    question = build_tuned_encoder(backbone, config.backbone, config.tuning, config.head, prompt_init_ids)
    if config.sides.tune_side == "question":
        # The passage side is the plain base encoder and never trains; it shares the backbone when
        # that stays frozen, else keeps a frozen copy of the original weights.
        ctx_backbone = backbone if config.frozen_backbone else copy.deepcopy(backbone).requires_grad_(False)
        ctx = TunedEncoder(ctx_backbone, FinetuneConfig(), config.head)
    elif config.frozen_backbone:  # same backbone object: one copy
        ctx = build_tuned_encoder(backbone, config.backbone, config.tuning, config.head, prompt_init_ids)
    elif config.sides.share_encoder:
        ctx = question
    else:
        ctx = TunedEncoder(copy.deepcopy(backbone), config.tuning, config.head)
    return BiEncoder(question, ctx, config)


def build_biencoder(config: BiEncoderConfig, prompt_init_ids: list[int] | None = None) -> BiEncoder:
    """Load the backbone named by the config and build the bi-encoder in the config's tuning mode."""
    config = resolve_config(config)
    backbone = load_backbone(
        config.backbone.pretrained_model_cfg,
        dropout=config.backbone.dropout,
        attention_dropout=config.backbone.attention_dropout,
    )
    return build_biencoder_from_backbone(config, backbone, prompt_init_ids)


def merge_lora(model: BiEncoder) -> BiEncoder:
    """An inference copy of a --lora bi-encoder: each LoRA side on its own merged backbone, without hooks.

    The vectors are the same (up to float rounding), and so is :meth:`BiEncoder.passage_identity` (indexes made
    with either model can be searched with the other); ``model`` and its shared backbone are left as they were.
    The copy holds one backbone per LoRA side and trains nothing: it is for encoding, not for checkpoints.
    """
    if model.config.tuning.method != "lora":
        raise LoraError(f"--merge_lora applies to --lora checkpoints; this one is {model.config.tuning.method}")
    return BiEncoder(
        merged_encoder(model.question_encoder),
        merged_encoder(model.ctx_encoder),
        model.config,
        identity=model.passage_identity(),
    )


def merged_encoder(encoder: TunedEncoder) -> TunedEncoder:
    """A plain (hook-free, frozen) copy of a LoRA ``encoder`` with its deltas folded into its own backbone copy;
    an encoder without LoRA (the fixed base passage side of --tune_side question) is returned as it is."""
    if encoder.lora is None:
        return encoder
    plain = TunedEncoder(merged_backbone(encoder), FinetuneConfig(), encoder.head)
    plain.projection = copy.deepcopy(encoder.projection)
    return plain.requires_grad_(False).train(encoder.training)
