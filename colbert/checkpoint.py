"""ColBERT checkpoint folders, mirroring ``dpr.models.checkpoint_format`` and ``dpr.training.checkpoint``.

Layout of ``<output_dir>/colbert-<step>/`` (written atomically)::

    config.json          format, version, the full ColBERT config (backbone, tuning, query_maxlen,
                         doc_maxlen, dim, similarity, mask_punctuation), backbone shape, tuned parameter
                         names, step, training config
    model.safetensors    the tuned weights only (prefix + linear layer in prefix mode)
    training_state.pt    optimizer, scheduler and loss-scaler state (read with weights_only=True)
    README.md            (training) the model card, for people; never read back

Version 2 stores the config nested (backbone and tuning objects); version 1 stored a flat DPR encoder
config under "encoder": both are read. Loading rebuilds the model from ``config.json`` alone; a flag that
contradicts it is an error naming both values, and weights that do not fit exactly are refused (never
loaded non-strictly).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from colbert.model import ColBERT, build_colbert
from colbert.options import ColBERTConfig, apply_colbert_overrides
from dpr.atomic import atomic_directory
from dpr.configs import ConfigError
from dpr.data.files import read_versioned_json
from dpr.models.checkpoint_format import CARD_FILE, CheckpointError, load_training_state, read_best_file
from dpr.models.serialization import backbone_fingerprint, check_backbone, load_tuned_weights, save_tuned_weights

logger = logging.getLogger(__name__)

FORMAT = "colbert-ptv2-checkpoint"
VERSION = 2  # 2: the config nested (backbone, tuning); 1: a flat DPR encoder config under "encoder"
PREFIX = "colbert"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"  # the same name dpr uses, so its weights_only reader applies

__all__ = [
    "CheckpointInfo",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_colbert",
    "load_training_state",
    "prune_checkpoints",
    "read_checkpoint_info",
    "save_colbert",
]


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    config: ColBERTConfig
    backbone: dict[str, Any]
    step: int
    training: dict[str, Any] = field(default_factory=dict)


def checkpoint_path(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, f"{PREFIX}-{step}")


def save_colbert(
    path: str,
    model: ColBERT,
    *,
    step: int = 0,
    training: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    card: str | None = None,
) -> str:
    """Write a checkpoint folder atomically; ``state`` holds optimizer / scheduler / scaler state dicts,
    ``card`` the model card's Markdown (``README.md``)."""
    config = {
        "format": FORMAT,
        "version": VERSION,
        "colbert": model.config.to_dict(),
        "backbone": backbone_fingerprint(model.backbone),
        "tuned_parameters": list(model.tuned_names),
        "step": step,
        "training": training or {},
    }
    with atomic_directory(path) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        save_tuned_weights(model, os.path.join(tmp, WEIGHTS_FILE))
        if state is not None:
            torch.save(state, os.path.join(tmp, STATE_FILE))
        if card is not None:
            with open(os.path.join(tmp, CARD_FILE), "w", encoding="utf-8") as handle:
                handle.write(card)
    logger.info("saved checkpoint %s", path)
    return path


def resolve_checkpoint(path: str) -> str:
    """``path`` itself, or for a training output folder the checkpoint it stands for: the best one
    (``best_checkpoint.json``, as a DPR run folder stands for its best), else the latest."""
    if os.path.isfile(os.path.join(path, CONFIG_FILE)) or not os.path.isdir(path):
        return path
    best = read_best_file(path)
    chosen = best["path"] if best is not None else latest_checkpoint(path)
    if chosen is None:
        return path  # not a checkpoint folder: read_checkpoint_info says so
    logger.info("%s: using its %s checkpoint %s", path, "best" if best is not None else "latest", chosen)
    return chosen


def read_checkpoint_info(path: str) -> CheckpointInfo:
    """Read and validate ``config.json`` of a ColBERT checkpoint folder (or of the checkpoint a training
    output folder stands for: ``resolve_checkpoint``); ``CheckpointInfo.path`` is the checkpoint's."""
    path = resolve_checkpoint(path)
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{path} is not a checkpoint folder (no {CONFIG_FILE})")
    config = read_versioned_json(
        config_path,
        max_version=VERSION,
        format=FORMAT,
        required=("colbert", "backbone", "step"),
        error=CheckpointError,
        format_hints={"dpr-ptv2-checkpoint": " (a DPR checkpoint: use dense_retriever.py)"},
    )
    return CheckpointInfo(
        path=path,
        config=ColBERTConfig.from_dict(config["colbert"], config_path),
        backbone=config["backbone"],
        step=int(config["step"]),
        training=config.get("training") or {},
    )


def load_colbert(
    path: str, overrides: Mapping[str, Any] | None = None, prompt_init_ids: list[int] | None = None
) -> tuple[ColBERT, CheckpointInfo]:
    """Rebuild the ColBERT stored at ``path`` and load its weights.

    ``overrides`` (flag-named settings) may set what does not change the network (dropout); any other
    must agree with the stored config, else ConfigError names both values.
    """
    info = read_checkpoint_info(path)
    path = info.path
    config = apply_colbert_overrides(info.config, overrides, source=path) if overrides else info.config
    model = build_colbert(config, prompt_init_ids)
    check_backbone(info.backbone, model.backbone, path)
    load_tuned_weights(model, os.path.join(path, WEIGHTS_FILE))
    logger.info("loaded %s ColBERT %s (step %d)", config.tuning.method, path, info.step)
    return model, info


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the readable ``colbert-<step>`` checkpoints in ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    pattern = re.compile(re.escape(PREFIX) + r"-\d+$")
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if pattern.match(name) and os.path.isdir(path):
            try:
                found.append((read_checkpoint_info(path).step, path))
            except (CheckpointError, ConfigError) as err:
                logger.warning("ignoring unreadable checkpoint %s: %s", path, err)
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str, keep: int) -> list[str]:
    """Delete all but the ``keep`` most recent checkpoints and the best one (named by ``best_checkpoint.json``,
    written by validation); ``keep`` 0 keeps all. Returns the deleted."""
    if keep < 1:
        return []
    best = read_best_file(output_dir)
    protected = os.path.abspath(best["path"]) if best is not None else None
    doomed = [path for _, path in list_checkpoints(output_dir)[:-keep] if os.path.abspath(path) != protected]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("deleted old checkpoint %s", path)
    return doomed
