"""Our prefix checkpoints <-> Hugging Face PEFT prefix-tuning adapter folders, checkpoint side.

:func:`export_checkpoint` writes one side of a ``--prefix`` checkpoint as a PEFT adapter folder;
:func:`import_adapters` builds a checkpoint folder from one or two adapter folders. The adapter format
itself (and PEFT's position numbering) is :mod:`dpr.models.peft_interop`; this module adds what needs
the checkpoint files of :mod:`dpr.training.checkpoint`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from dpr.configs import BiEncoderConfig, ConfigError
from dpr.models.biencoder import build_biencoder
from dpr.models.checkpoint_format import load_biencoder
from dpr.models.peft_interop import (
    PeftAdapterError,
    PeftPrefix,
    load_peft_prefix,
    read_peft_adapter,
    write_peft_adapter,
)
from dpr.models.serialization import check_backbone
from dpr.training.checkpoint import save_checkpoint

logger = logging.getLogger(__name__)

SIDES = ("question", "passage")


def export_checkpoint(model_file: str, out_dir: str, side: str = "question") -> str:
    """Write the ``side`` prefix of the checkpoint ``model_file`` as a PEFT adapter folder ``out_dir``."""
    if side not in SIDES:
        raise ConfigError(f"--side must be question or passage, found {side!r}")
    model, info = load_biencoder(model_file)
    encoder = model.question_encoder if side == "question" else model.ctx_encoder
    sidecar = {
        "side": side,
        "encoder": model.config.to_dict(),
        "backbone": info.backbone,
        "checkpoint": os.path.abspath(model_file),
    }
    return write_peft_adapter(
        encoder, out_dir, base_model_name=model.config.backbone.pretrained_model_cfg, sidecar=sidecar
    )


def _imported_config(
    adapter: PeftPrefix, pretrained_model_cfg: str | None, pooling: str | None, sequence_length: int | None
) -> BiEncoderConfig:
    """Our encoder config for an adapter: its dpr_encoder.json if we exported it, else the flags."""
    stored = adapter.sidecar.get("encoder") if adapter.sidecar else None
    base = BiEncoderConfig.from_dict(stored, f"{adapter.path}/dpr_encoder.json") if stored else BiEncoderConfig()
    name = pretrained_model_cfg or (base.backbone.pretrained_model_cfg if stored else adapter.base_model_name_or_path)
    if not name:
        raise ConfigError(
            f"{adapter.path}: adapter_config.json names no base_model_name_or_path; pass --pretrained_model_cfg"
        )
    changes: dict[str, Any] = {
        "pretrained_model_cfg": name,
        "tuning": "prefix",
        "pre_seq_len": adapter.num_virtual_tokens,
        "prefix_mlp": False,
        "projection_dim": 0,
        "gradient_checkpointing": False,
        "share_encoder": False,
    }
    if pooling is not None:
        changes["pooling"] = pooling
    if sequence_length is not None:
        changes["sequence_length"] = sequence_length
    return base.with_settings(**changes)


def import_adapters(
    question_adapter: str,
    out_dir: str,
    passage_adapter: str | None = None,
    *,
    pretrained_model_cfg: str | None = None,
    pooling: str | None = None,
    sequence_length: int | None = None,
) -> str:
    """Build a prefix checkpoint folder ``out_dir`` from PEFT adapter folder(s); returns its path.

    Settings PEFT does not store (pooling, sequence length, lower-casing) come from the question
    adapter's ``dpr_encoder.json`` when we exported it, else from the arguments or the defaults.
    """
    question = read_peft_adapter(question_adapter)
    passage = read_peft_adapter(passage_adapter) if passage_adapter else question
    if passage.num_virtual_tokens != question.num_virtual_tokens:
        raise PeftAdapterError(
            f"{passage.path} has {passage.num_virtual_tokens} virtual tokens, {question.path} "
            f"{question.num_virtual_tokens}: both sides of a checkpoint share --pre_seq_len"
        )
    config = _imported_config(question, pretrained_model_cfg, pooling, sequence_length)
    model = build_biencoder(config)
    for adapter in {id(a): a for a in (question, passage)}.values():
        if adapter.sidecar and adapter.sidecar.get("backbone"):
            check_backbone(adapter.sidecar["backbone"], model.backbone, adapter.path)
    load_peft_prefix(model.question_encoder, question)
    load_peft_prefix(model.ctx_encoder, passage)
    source = {"question": os.path.abspath(question.path), "passage": os.path.abspath(passage.path)}
    return save_checkpoint(out_dir, model, training={"imported_from_peft": source})
