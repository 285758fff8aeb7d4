"""Checkpoint folders: tuned weights, optimizer/scheduler state, position and the full config.

Layout of ``<output_dir>/<name>.<epoch>.<iteration>/``::

    config.json          format version, encoder config, backbone shape, tuned parameter names,
                         training position, training config
    model.safetensors    the tuned weights only (a prefix of BERT-base is a few MB)
    training_state.pt    optimizer, scheduler and loss-scaler state and the rolling loss window
                         (torch.save; read back with weights_only=True)

``config.json`` also holds the validation result the checkpoint was saved with, so a run folder whose
``validation_log.jsonl`` or ``best_checkpoint.json`` missed it (a kill between the two writes) can be
repaired from the checkpoints alone.

Folders are written atomically. Loading rebuilds the model from ``config.json`` alone, so no flag has
to be repeated; a flag that contradicts the checkpoint is an error naming both values.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from safetensors import SafetensorError

from dpr.atomic import atomic_directory
from dpr.embeddings_io import passage_identity
from dpr.errors import UserError
from dpr.models.biencoder import BiEncoder, build_biencoder
from dpr.models.serialization import backbone_fingerprint, check_backbone, load_tuned_weights, save_tuned_weights
from dpr.options import EncoderConfig, encoder_config_from_args

logger = logging.getLogger(__name__)

FORMAT = "dpr-ptv2-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
BEST_FILE = "best_checkpoint.json"  # in a training output folder: which checkpoint is the best


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
    validation: dict[str, Any] | None = None  # the validation record this checkpoint was saved with


class CheckpointError(UserError, ValueError):
    """A path that is not a readable checkpoint of this format."""


def checkpoint_name(prefix: str, epoch: int, iteration: int) -> str:
    return f"{prefix}.{epoch}.{iteration}"


def save_checkpoint(
    path: str,
    model: BiEncoder,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    position: TrainingPosition = TrainingPosition(),
    training: dict[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
    extra_state: Mapping[str, Any] | None = None,
) -> str:
    """Write a checkpoint folder atomically and return its path.

    ``validation`` (the run folder's log record) goes into ``config.json``; ``extra_state`` (scaler,
    rolling losses) into ``training_state.pt`` beside the optimizer and scheduler.
    """
    config = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": model.config.to_dict(),
        "backbone": backbone_fingerprint(model.backbone),
        "tuned_parameters": list(model.tuned_names),
        # Which passage encoder an index must come from to be searched with this checkpoint.
        "passage_encoder": dict(zip(("config", "backbone", "digest"), passage_identity(model))),
        "position": asdict(position),
        "training": training or {},
        "validation": dict(validation) if validation is not None else None,
    }
    with atomic_directory(path) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        save_tuned_weights(model, os.path.join(tmp, WEIGHTS_FILE))
        if optimizer is not None or scheduler is not None:
            state = {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                **(extra_state or {}),
            }
            torch.save(state, os.path.join(tmp, STATE_FILE))
    logger.info("saved checkpoint %s", path)
    return path


def best_checkpoint_path(run_dir: str, stored: str) -> str:
    """The folder named by the ``path`` of ``run_dir``'s best_checkpoint.json.

    It holds the folder's name inside the run folder, so the run folder can be moved or used from any
    working directory. Older files held a path relative to the training's working directory, or an
    absolute one; checkpoints always live in the run folder, so their last component is the name.
    """
    return os.path.join(run_dir, os.path.basename(os.path.normpath(stored)))


def read_best_file(run_dir: str) -> dict[str, Any] | None:
    """The record of ``run_dir``'s best_checkpoint.json with ``path`` resolved, or None if there is none."""
    best_file = os.path.join(run_dir, BEST_FILE)
    if not os.path.isfile(best_file):
        return None
    try:
        with open(best_file, encoding="utf-8") as handle:
            record = json.load(handle)
        record["path"] = best_checkpoint_path(run_dir, record["path"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{best_file}: not a best-checkpoint record ({err!r}); delete it and restart "
            f"training on this folder to rebuild it from the checkpoints"
        ) from err
    return record


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder as given, or the best checkpoint of a training output folder."""
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        best = read_best_file(path)
        if best is not None:
            logger.info("%s is a training output folder; using its best checkpoint %s", path, best["path"])
            return best["path"]
    return path


def read_checkpoint_info(path: str) -> CheckpointInfo:
    """Read and validate ``config.json`` of a checkpoint folder (or of a run folder's best checkpoint)."""
    path = resolve_checkpoint(path)
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(
            f"{path} is not a checkpoint folder (no {CONFIG_FILE}) nor a training output folder (no {BEST_FILE})"
        )
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
    return CheckpointInfo(
        path=path,
        encoder=EncoderConfig.from_dict(config["encoder"], config_path),
        backbone=config["backbone"],
        position=TrainingPosition(**config["position"]),
        training=config.get("training") or {},
        validation=config.get("validation"),
    )


# What torch.load raises on a damaged file has no common base class (measured on truncated and
# bit-flipped files: RuntimeError, UnpicklingError, KeyError, IndexError, UnicodeDecodeError, EOFError, and
# OSError "Invalid argument" from the zip reader on a truncated file).
_DAMAGED_STATE = (
    RuntimeError,
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    OSError,
)


def load_training_state(path: str) -> dict[str, Any] | None:
    """Optimizer and scheduler state, or None for a weights-only checkpoint. Never unpickles code."""
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        return None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except _DAMAGED_STATE as err:
        # torch's own message may advise weights_only=False, which would run code from the file: not quoted.
        reason = f"{type(err).__name__}: {err.strerror}" if isinstance(err, OSError) else type(err).__name__
        raise CheckpointError(
            f"{state_path} is damaged or not a training state ({reason}); delete the folder "
            f"{path} to resume from the checkpoint before it"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{state_path}: expected a dict of optimizer and scheduler state, found "
            f"{type(state).__name__}; delete the folder {path} to resume from the one before"
        )
    return state


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
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE}: not a complete checkpoint folder")
    try:
        load_tuned_weights(model, weights)
    except SafetensorError as err:
        raise CheckpointError(
            f"{weights} is damaged or not a safetensors file ({err}); restore it, or delete "
            f"the folder {path} (in a training output folder, training then resumes from "
            f"the checkpoint before it)"
        ) from err
    logger.info(
        "loaded %s checkpoint %s (epoch %d, iteration %d)",
        encoder.tuning,
        path,
        info.position.epoch,
        info.position.iteration,
    )
    return model, info
