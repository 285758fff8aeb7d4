"""Checkpoint folders: tuned weights, optimizer/scheduler state, position and the full config.

Layout of ``<output_dir>/<name>.<epoch>.<iteration>/``::

    config.json          format version, encoder config, backbone shape, tuned parameter names,
                         training position, training config
    model.safetensors    the tuned weights only (a prefix of BERT-base is a few MB)
    training_state.pt    optimizer + scheduler state (torch.save; read back with weights_only=True)

Folders are written atomically. Loading rebuilds the model from ``config.json`` alone, so no flag has
to be repeated; a flag that contradicts the checkpoint is an error naming both values.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dpr.errors import UserError
from dpr.atomic import atomic_directory
from dpr.embeddings_io import passage_identity
from dpr.models.biencoder import BiEncoder, build_biencoder
from dpr.models.serialization import backbone_fingerprint, check_backbone, load_tuned_weights, save_tuned_weights
from dpr.options import EncoderConfig, encoder_config_from_args

logger = logging.getLogger(__name__)

FORMAT = "dpr-ptv2-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
BEST_FILE = "best_checkpoint.json"     # in a training output folder: which checkpoint is the best


@dataclass(frozen=True)
class TrainingPosition:
    """Where training stands: ``iteration`` batches of ``epoch`` are done, ``global_step`` optimizer steps."""

    epoch: int = 0
    iteration: int = 0
    global_step: int = 0


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    encoder: EncoderConfig
    backbone: dict[str, Any]
    position: TrainingPosition
    training: dict[str, Any] = field(default_factory=dict)


class CheckpointError(UserError, ValueError):
    """A path that is not a readable checkpoint of this format."""


def checkpoint_name(prefix: str, epoch: int, iteration: int) -> str:
    return f"{prefix}.{epoch}.{iteration}"


def save_checkpoint(path: str, model: BiEncoder, *, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, position: TrainingPosition = TrainingPosition(),
                    training: dict[str, Any] | None = None) -> str:
    """Write a checkpoint folder atomically and return its path."""
    config = {
        "format": FORMAT, "version": VERSION,
        "encoder": model.config.to_dict(),
        "backbone": backbone_fingerprint(model.backbone),
        "tuned_parameters": list(model.tuned_names),
        # Which passage encoder an index must come from to be searched with this checkpoint.
        "passage_encoder": dict(zip(("config", "backbone", "digest"), passage_identity(model))),
        "position": asdict(position),
        "training": training or {},
    }
    with atomic_directory(path) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        save_tuned_weights(model, os.path.join(tmp, WEIGHTS_FILE))
        if optimizer is not None or scheduler is not None:
            state = {"optimizer": optimizer.state_dict() if optimizer is not None else None,
                     "scheduler": scheduler.state_dict() if scheduler is not None else None}
            torch.save(state, os.path.join(tmp, STATE_FILE))
    logger.info("saved checkpoint %s", path)
    return path


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder as given, or the best checkpoint of a training output folder."""
    best_file = os.path.join(path, BEST_FILE)
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(best_file):
        with open(best_file, encoding="utf-8") as handle:
            best = json.load(handle)["path"]
        logger.info("%s is a training output folder; using its best checkpoint %s", path, best)
        return best
    return path


def read_checkpoint_info(path: str) -> CheckpointInfo:
    """Read and validate ``config.json`` of a checkpoint folder (or of a run folder's best checkpoint)."""
    path = resolve_checkpoint(path)
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{path} is not a checkpoint folder (no {CONFIG_FILE}) nor a training output "
                              f"folder (no {BEST_FILE})")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from err
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version", 0) > VERSION:
        raise CheckpointError(f"{config_path}: version {config['version']} is newer than this code ({VERSION})")
    for key in ("encoder", "backbone", "position"):
        if key not in config:
            raise CheckpointError(f"{config_path}: missing key {key!r}")
    return CheckpointInfo(path=path, encoder=EncoderConfig.from_dict(config["encoder"], config_path),
                          backbone=config["backbone"], position=TrainingPosition(**config["position"]),
                          training=config.get("training") or {})


def load_training_state(path: str) -> dict[str, Any] | None:
    """Optimizer and scheduler state, or None for a weights-only checkpoint. Never unpickles code."""
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        return None
    return torch.load(state_path, map_location="cpu", weights_only=True)


def load_biencoder(path: str, args: argparse.Namespace | None = None) -> tuple[BiEncoder, CheckpointInfo]:
    """Rebuild the bi-encoder stored at ``path`` and load its tuned weights.

    ``args`` (parsed flags) may override settings that do not change the network (sequence length,
    dropout); a contradicting architecture flag raises ConfigError naming both values.
    """
    info = read_checkpoint_info(path)
    path = info.path
    encoder = info.encoder if args is None else encoder_config_from_args(args, info.encoder, source=path)
    model = build_biencoder(encoder)
    check_backbone(info.backbone, model.backbone, path)
    load_tuned_weights(model, os.path.join(path, WEIGHTS_FILE))
    logger.info("loaded %s checkpoint %s (epoch %d, iteration %d)", encoder.tuning, path,
                info.position.epoch, info.position.iteration)
    return model, info
