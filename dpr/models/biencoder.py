"""The DPR bi-encoder: a question encoder and a passage encoder (encoding only; no loss here).

In the frozen-backbone modes (prefix, prompt, adapter) both encoders hold the SAME backbone module, so
its weights exist once in memory; each side owns only its tuned parameters. Fine-tuning and BitFit keep
two backbones unless ``share_encoder``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from torch import nn
from transformers import BertModel

from dpr.models.encoder import TunedEncoder
from dpr.models.hub import default_normalize, default_pooling, default_title_mode, load_backbone
from dpr.models.prefix import prompt_init_embeddings
from dpr.options import ConfigError, EncoderConfig

logger = logging.getLogger(__name__)


class BiEncoder(nn.Module):
    """Question and passage encoders with dot-product similarity (Tevatron-style interface)."""

    def __init__(self, question_encoder: TunedEncoder, ctx_encoder: TunedEncoder, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.question_encoder = question_encoder
        self.ctx_encoder = ctx_encoder
        # Names of the parameters the tuning mode trains: exactly what a checkpoint stores. Fixed at build
        # time so that freezing a side later (e.g. --fix_ctx_encoder) does not change the file format.
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


def resolve_config(config: EncoderConfig) -> EncoderConfig:
    """Resolve the 'auto' settings from the model folder: pooling (mean for sentence-transformers),
    L2 normalisation (on when its sentence-transformers modules include Normalize) and the title mode
    (concat for sentence-transformers)."""
    if config.pooling == "auto":
        config = dataclasses.replace(config, pooling=default_pooling(config.pretrained_model_cfg))
        logger.info("pooling auto -> %s for %s", config.pooling, config.pretrained_model_cfg)
    if config.normalize is None:
        config = dataclasses.replace(config, normalize=default_normalize(config.pretrained_model_cfg))
        logger.info("normalize auto -> %s for %s", config.normalize, config.pretrained_model_cfg)
    if config.title_mode == "auto":
        config = dataclasses.replace(config, title_mode=default_title_mode(config.pretrained_model_cfg))
        logger.info("title_mode auto -> %s for %s", config.title_mode, config.pretrained_model_cfg)
    return config


def check_positions(config: EncoderConfig, max_positions: int) -> None:
    """Refuse sequence lengths the backbone has no position embeddings for."""
    needed = config.sequence_length + (config.pre_seq_len if config.tuning == "prompt" else 0)
    if needed > max_positions:
        extra = f" plus --pre_seq_len {config.pre_seq_len} prompt tokens" if config.tuning == "prompt" else ""
        longest = max_positions - needed + config.sequence_length
        raise ConfigError(
            f"--sequence_length {config.sequence_length}{extra} needs {needed} positions but "
            f"the model has {max_positions}; pass --sequence_length {longest} or less"
        )


def set_trainable(backbone: BertModel, tuning: str) -> None:
    """Backbone trainability per tuning mode: all (finetune), biases (bitfit), nothing (frozen modes)."""
    if tuning == "finetune":
        backbone.requires_grad_(True)
    elif tuning == "bitfit":
        for name, param in backbone.named_parameters():
            param.requires_grad_(name.endswith(".bias"))
    else:
        backbone.requires_grad_(False)


def build_biencoder_from_backbone(
    config: EncoderConfig, backbone: BertModel, prompt_init_ids: list[int] | None = None
) -> BiEncoder:
    """Wrap an already loaded backbone (its dropout settings are used as they are).

    ``prompt_init_ids``: token ids of ``--prompt_init_text`` (the caller tokenizes; models never do).
    """
    if config.pooling == "auto":
        raise ConfigError("pooling must be resolved before building (see resolve_config)")
    if config.normalize is None:  # a bare backbone has no sentence-transformers folder to ask
        config = dataclasses.replace(config, normalize=False)
    if config.title_mode == "auto":
        config = dataclasses.replace(config, title_mode="pair")
    check_positions(config, backbone.config.max_position_embeddings)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing lets gradients reach a soft prompt fed through inputs_embeds.
        kwargs = {"use_reentrant": False}
        if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x name
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    set_trainable(backbone, config.tuning)
    prompt_init = None
    if config.tuning == "prompt":
        prompt_init = prompt_init_embeddings(
            backbone.embeddings.word_embeddings.weight, prompt_init_ids, config.pre_seq_len
        )
    question = TunedEncoder(backbone, config, prompt_init)
    if config.tune_side == "question":
        # The passage side is the plain base encoder and never trains; it shares the backbone when
        # that stays frozen, else keeps a frozen copy of the original weights.
        ctx_backbone = backbone if config.frozen_backbone else copy.deepcopy(backbone).requires_grad_(False)
        ctx = TunedEncoder(ctx_backbone, config.passage_config())
    elif config.frozen_backbone:
        ctx = TunedEncoder(backbone, config, prompt_init)  # same backbone object: one copy
    elif config.share_encoder:
        ctx = question
    else:
        ctx = TunedEncoder(copy.deepcopy(backbone), config)
    return BiEncoder(question, ctx, config)


def build_biencoder(config: EncoderConfig, prompt_init_ids: list[int] | None = None) -> BiEncoder:
    """Load the backbone named by the config and build the bi-encoder in the config's tuning mode."""
    config = resolve_config(config)
    backbone = load_backbone(config.pretrained_model_cfg, dropout=config.dropout)
    return build_biencoder_from_backbone(config, backbone, prompt_init_ids)
