"""The DPR checkpoint folder format: what inference needs to rebuild a bi-encoder from disk.

Layout of a checkpoint folder (``<output_dir>/<name>.<epoch>.<iteration>/`` in a training run)::

    config.json          format, version, encoder config, backbone shape, tuned parameter names, passage
                         encoder identity, training position, training config, validation record
    model.safetensors    the tuned weights only (a prefix of BERT-base is a few MB)
    training_state.pt    (training only, see dpr.training.checkpoint) optimizer, scheduler, scaler state
    README.md            (training only) the model card, for people: never read back, so a folder without
                         it (older, or hand-made) loads the same

Version 2 stores the encoder config nested, one object per concern (``dpr.configs``); version 1 stored it
flat and kept ``insert_title`` in the training config: both are read. Loading rebuilds the model from
``config.json`` alone, so no flag has to be repeated; an override that contradicts it is an error naming
both values. A training output folder stands for its best checkpoint (``best_checkpoint.json``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError

from dpr.configs import BiEncoderConfig, apply_overrides
from dpr.data.files import read_versioned_json
from dpr.errors import UserError
from dpr.models.biencoder import BiEncoder, build_biencoder
from dpr.models.encoder import parameter_counts
from dpr.models.serialization import backbone_fingerprint, check_backbone, load_tuned_weights

logger = logging.getLogger(__name__)

FORMAT = "dpr-ptv2-checkpoint"
# 2: the encoder config nested per concern, with the passage format (insert_title) in it. 1: flat.
VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BEST_FILE = "best_checkpoint.json"  # in a training output folder: which checkpoint is the best
CARD_FILE = "README.md"  # the model card (dpr.training.model_card): what the checkpoint is and how to load it


@dataclass(frozen=True)
class TrainingPosition:
    """Where training stands: ``iteration`` batches of ``epoch`` are done, ``global_step`` optimizer steps."""

    epoch: int = 0
    iteration: int = 0
    global_step: int = 0


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    encoder: BiEncoderConfig
    backbone: dict[str, Any]
    position: TrainingPosition
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None  # the validation record this checkpoint was saved with


class CheckpointError(UserError, ValueError):
    """A path that is not a readable checkpoint of this format."""


def write_model_config(
    folder: str,
    model: BiEncoder,
    *,
    position: TrainingPosition = TrainingPosition(),
    training: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
) -> None:
    """Write the ``config.json`` of ``model`` into ``folder`` (a temp folder the caller renames into place);
    the weights go beside it as ``WEIGHTS_FILE`` (``dpr.models.serialization.save_tuned_weights``)."""
    identity = model.passage_identity()
    config = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": model.config.to_dict(),
        "backbone": backbone_fingerprint(model.backbone),
        "tuned_parameters": list(model.tuned_names),
        # Which passage encoder an index must come from to be searched with this checkpoint.
        "passage_encoder": {
            "config": model.config.passage_config().to_dict(),
            "backbone": dict(identity.backbone),
            "digest": identity.digest,
        },
        "position": asdict(position),
        "training": dict(training or {}),
        "validation": dict(validation) if validation is not None else None,
    }
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)


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


def _encoder_config(config: Mapping[str, Any], config_path: str) -> BiEncoderConfig:
    encoder = BiEncoderConfig.from_dict(config["encoder"], config_path)
    if config.get("version", 0) < 2:
        # Version 1 kept the passage format's --no_title in the training config.
        insert_title = (config.get("training") or {}).get("insert_title", True)
        encoder = encoder.with_settings(insert_title=insert_title)
    return encoder


def read_checkpoint_info(path: str) -> CheckpointInfo:
    """Read and validate ``config.json`` of a checkpoint folder (or of a run folder's best checkpoint)."""
    path = resolve_checkpoint(path)
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(
            f"{path} is not a checkpoint folder (no {CONFIG_FILE}) nor a training output folder (no {BEST_FILE})"
        )
    config = read_versioned_json(
        config_path,
        max_version=VERSION,
        format=FORMAT,
        required=("encoder", "backbone", "position"),
        error=CheckpointError,
    )
    return CheckpointInfo(
        path=path,
        encoder=_encoder_config(config, config_path),
        backbone=config["backbone"],
        position=TrainingPosition(**config["position"]),
        training=config.get("training") or {},
        validation=config.get("validation"),
    )


def load_biencoder(
    path: str, overrides: Mapping[str, Any] | None = None, prompt_init_ids: list[int] | None = None
) -> tuple[BiEncoder, CheckpointInfo]:
    """Rebuild the bi-encoder stored at ``path`` and load its tuned weights.

    ``overrides`` (flag-named settings, ``dpr.configs.BiEncoderConfig.to_flat`` keys) may change what
    does not change the network (sequence length, dropout, --no_title); a contradicting architecture
    setting raises ConfigError naming both values.
    """
    info = read_checkpoint_info(path)
    path = info.path
    encoder = apply_overrides(info.encoder, overrides, source=path) if overrides else info.encoder
    model = build_biencoder(encoder, prompt_init_ids)
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
        encoder.tuning.method,
        path,
        info.position.epoch,
        info.position.iteration,
    )
    return model, info


def tuned_parameter_counts(path: str) -> tuple[int, int]:
    """(tuned, total) parameters of the bi-encoder checkpoint at ``path``: what its training changed, and all."""
    model, _ = load_biencoder(path)
    tuned = set(model.tuned_names)
    return sum(p.numel() for n, p in model.named_parameters() if n in tuned), parameter_counts(model)[1]


STATE_FILE = "training_state.pt"  # optimizer, scheduler, scaler, RNG: only in checkpoints written while training

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
