"""Our prefix and LoRA checkpoints <-> Hugging Face PEFT adapter folders, checkpoint side.

:func:`export_checkpoint` writes one side of a ``--prefix`` or ``--lora`` checkpoint as a PEFT adapter folder
(PREFIX_TUNING or LORA); :func:`import_adapters` builds a checkpoint folder from one or two adapter folders of
one type. The adapter formats themselves are :mod:`dpr.models.peft_interop` (prefixes, and PEFT's position
numbering) and :mod:`dpr.models.peft_lora`; this module adds what needs the checkpoint files of
:mod:`dpr.training.checkpoint`.
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
    peft_type,
    read_peft_adapter,
    write_peft_adapter,
)
from dpr.models.peft_lora import PeftLora, load_peft_lora, read_lora_adapter, write_lora_adapter
from dpr.models.serialization import check_backbone
from dpr.training.checkpoint import save_checkpoint

logger = logging.getLogger(__name__)

SIDES = ("question", "passage")


def export_checkpoint(model_file: str, out_dir: str, side: str = "question") -> str:
    """Write the ``side`` prefix or LoRA deltas of the checkpoint ``model_file`` as the PEFT adapter ``out_dir``."""
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
    write = write_lora_adapter if encoder.lora is not None else write_peft_adapter
    return write(encoder, out_dir, base_model_name=model.config.backbone.pretrained_model_cfg, sidecar=sidecar)


def _tuning_settings(question: PeftPrefix | PeftLora, passage: PeftPrefix | PeftLora) -> dict[str, Any]:
    """The tuning flags of a checkpoint made from these adapters (both of one type, checked to agree)."""
    if isinstance(question, PeftPrefix) and isinstance(passage, PeftPrefix):
        if passage.num_virtual_tokens != question.num_virtual_tokens:
            raise PeftAdapterError(
                f"{passage.path} has {passage.num_virtual_tokens} virtual tokens, {question.path} "
                f"{question.num_virtual_tokens}: both sides of a checkpoint share --pre_seq_len"
            )
        return {"tuning": "prefix", "pre_seq_len": question.num_virtual_tokens, "prefix_mlp": False}
    if isinstance(question, PeftLora) and isinstance(passage, PeftLora):
        ours = (question.r, question.lora_alpha, question.lora_dropout)
        if (passage.r, passage.lora_alpha, passage.lora_dropout) != ours:
            raise PeftAdapterError(
                f"{passage.path} has r {passage.r}, lora_alpha {passage.lora_alpha:g}, lora_dropout "
                f"{passage.lora_dropout:g}; {question.path} {ours[0]}, {ours[1]:g}, {ours[2]:g}: both sides of a "
                f"checkpoint share --lora_r, --lora_alpha and --lora_dropout"
            )
        return {
            "tuning": "lora",
            "lora_r": question.r,
            "lora_alpha": question.lora_alpha,
            "lora_dropout": question.lora_dropout,
            "lora_target": tuple(dict.fromkeys(question.targets + passage.targets)),
            "tune_side": "both",  # both sides are LoRA encoders, whatever the exported checkpoint had
        }
    raise PeftAdapterError(f"{question.path} and {passage.path} are adapters of different types: use one type")


def _read_adapter(folder: str) -> PeftPrefix | PeftLora:
    return read_lora_adapter(folder) if peft_type(folder) == "LORA" else read_peft_adapter(folder)


def _imported_config(
    adapter: PeftPrefix | PeftLora,
    tuning: dict[str, Any],
    pretrained_model_cfg: str | None,
    pooling: str | None,
    sequence_length: int | None,
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
        **tuning,
        "projection_dim": 0,
        "gradient_checkpointing": False,
        "share_encoder": False,
    }
    if base.tuning.method == "lora" and changes["tuning"] == "lora":
        # The exported names (say attention.output.dense) may select fewer layers than the last names read
        # from the weights would; the loading step checks that every adapter layer is one of them.
        del changes["lora_target"]
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
    """Build a prefix or LoRA checkpoint folder ``out_dir`` from PEFT adapter folder(s); returns its path.

    Settings PEFT does not store (pooling, sequence length, lower-casing) come from the question
    adapter's ``dpr_encoder.json`` when we exported it, else from the arguments or the defaults.
    """
    question = _read_adapter(question_adapter)
    passage = _read_adapter(passage_adapter) if passage_adapter else question
    tuning = _tuning_settings(question, passage)
    config = _imported_config(question, tuning, pretrained_model_cfg, pooling, sequence_length)
    model = build_biencoder(config)
    for adapter in {id(a): a for a in (question, passage)}.values():
        if adapter.sidecar and adapter.sidecar.get("backbone"):
            check_backbone(adapter.sidecar["backbone"], model.backbone, adapter.path)
    for encoder, adapter in ((model.question_encoder, question), (model.ctx_encoder, passage)):
        if isinstance(adapter, PeftLora):
            load_peft_lora(encoder, adapter)
        else:
            load_peft_prefix(encoder, adapter)
    source = {"question": os.path.abspath(question.path), "passage": os.path.abspath(passage.path)}
    return save_checkpoint(out_dir, model, training={"imported_from_peft": source})
