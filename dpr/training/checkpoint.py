"""Checkpoints during training: a model folder (``dpr.models.checkpoint_format``) plus training state.

Layout of ``<output_dir>/<name>.<epoch>.<iteration>/``::

    config.json          the model folder's (format, encoder config, backbone, position, training config,
                         and the validation result the checkpoint was saved with)
    model.safetensors    the tuned weights only
    training_state.pt    optimizer, scheduler and loss-scaler state and the rolling loss window
                         (torch.save; read back with weights_only=True)
    README.md            the model card (``dpr.training.model_card``), for people; never read back

``config.json`` holds the validation result, so a run folder whose ``validation_log.jsonl`` or
``best_checkpoint.json`` missed it (a kill between the two writes) can be repaired from the checkpoints
alone. Folders are written atomically. Reading a checkpoint (inference needs that too) lives in
``dpr.models.checkpoint_format``; its names are re-exported here for the training code.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch

from dpr.atomic import atomic_directory
from dpr.models.biencoder import BiEncoder
from dpr.models.checkpoint_format import (
    BEST_FILE,
    CARD_FILE,
    CONFIG_FILE,
    FORMAT,
    STATE_FILE,
    VERSION,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointInfo,
    TrainingPosition,
    best_checkpoint_path,
    load_biencoder,
    load_training_state,
    read_best_file,
    read_checkpoint_info,
    resolve_checkpoint,
    write_model_config,
)
from dpr.models.serialization import save_tuned_weights

__all__ = [
    "BEST_FILE",
    "CARD_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "STATE_FILE",
    "VERSION",
    "WEIGHTS_FILE",
    "CheckpointError",
    "CheckpointInfo",
    "TrainingPosition",
    "best_checkpoint_path",
    "checkpoint_name",
    "load_biencoder",
    "load_training_state",
    "read_best_file",
    "read_checkpoint_info",
    "resolve_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)


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
    card: str | None = None,
) -> str:
    """Write a checkpoint folder atomically and return its path.

    ``validation`` (the run folder's log record) goes into ``config.json``; ``extra_state`` (scaler,
    rolling losses) into ``training_state.pt`` beside the optimizer and scheduler; ``card`` (Markdown,
    ``dpr.training.model_card``) into ``README.md``, inside the same atomic write.
    """
    with atomic_directory(path) as tmp:
        write_model_config(tmp, model, position=position, training=training, validation=validation)
        if card is not None:
            with open(os.path.join(tmp, CARD_FILE), "w", encoding="utf-8") as handle:
                handle.write(card)
        save_tuned_weights(model, os.path.join(tmp, WEIGHTS_FILE))  # looked up here: bench/kill_resume.py hooks it
        if optimizer is not None or scheduler is not None:
            state = {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                **(extra_state or {}),
            }
            torch.save(state, os.path.join(tmp, STATE_FILE))
    logger.info("saved checkpoint %s", path)
    return path
