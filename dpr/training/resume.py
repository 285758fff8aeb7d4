"""Where a training run starts, and whether the run it continues may change its settings.

A run starts from (a) the latest checkpoint of its --output_dir: a restart, which continues exactly, so
that checkpoint must hold its training state; else (b) the --model_file checkpoint: with training state
it continues that run (as DPR does), without it is a new run from its weights; else (c) a new model.
--model_file only names where a run STARTED: restarting with the same command resumes the output folder's
run, never starts it over. Continuing a run with other training settings than it was trained with is
refused, naming each difference, unless the user allows it (then the new values are used).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

from dpr.configs import BiEncoderConfig
from dpr.errors import UserError
from dpr.options import FILE_SETTINGS, PATH_SETTINGS, TrainConfig, absolute_pattern
from dpr.training.checkpoint import BEST_FILE, STATE_FILE, CheckpointInfo, read_checkpoint_info
from dpr.training.run_dir import HISTORY_FILE, latest_checkpoint

logger = logging.getLogger(__name__)

# Settings that cannot change what a run computes: they never block a resume. Keep this list small;
# everything else (data, batch sizes, seed, optimizer, schedule, validation, precision) must match.
RESULT_NEUTRAL_SETTINGS = (
    "output_dir",
    "log_batch_step",
    "keep_checkpoints",
    "no_cuda",
    "local_rank",
    "task_summary",
    "tensorboard",
)
# Compared by choose_start instead (a restart may leave --model_file out).
_NOT_COMPARED = RESULT_NEUTRAL_SETTINGS + ("init_checkpoint",)


class ResumeError(UserError, ValueError):
    """A restart that would silently do something else than continue the run in --output_dir."""


def _inside(path: str, folder: str) -> bool:
    folder = os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def choose_start(cfg: TrainConfig, model_file: str | None) -> tuple[str | None, bool]:
    """(checkpoint to load or None for a new model, whether it is the output folder's own latest)."""
    latest = latest_checkpoint(cfg.output_dir, cfg.checkpoint_file_name)
    if latest is None:
        _refuse_orphan_records(cfg.output_dir)
        return model_file, False
    if model_file is not None:
        _check_model_file_started_this_run(cfg.output_dir, latest, model_file)
    return latest, True


def _check_model_file_started_this_run(output_dir: str, latest: str, model_file: str) -> None:
    given = os.path.realpath(model_file)
    if _inside(given, output_dir):
        # The run folder itself (its best) or its latest checkpoint: both mean "continue this run".
        if given not in (os.path.realpath(output_dir), os.path.realpath(latest)):
            raise ResumeError(
                f"--model_file {model_file} is an older checkpoint of --output_dir {output_dir}, "
                f"whose latest is {latest}: a run resumes from its latest checkpoint; drop "
                f"--model_file, or delete the checkpoints after the one you want"
            )
    else:
        training = read_checkpoint_info(latest).training
        if given != training.get("init_checkpoint"):
            raise ResumeError(
                f"--output_dir {output_dir} already holds a run {_origin(training)}, not from "
                f"--model_file {model_file}: to resume that run drop --model_file; to start a new "
                f"run from {model_file} choose a new --output_dir"
            )
    logger.info(
        "--model_file %s belongs to the run in %s: resuming it from its latest checkpoint %s",
        model_file,
        output_dir,
        latest,
    )


def _origin(training: Mapping[str, Any]) -> str:
    if "init_checkpoint" not in training:
        return "that does not record its --model_file (saved by an older version)"
    started = training["init_checkpoint"]
    return f"started from {started}" if started else "started from a new model (no --model_file)"


def _refuse_orphan_records(output_dir: str) -> None:
    """A log or best record without any checkpoint would be extended by an unrelated new run."""
    leftovers = [name for name in (HISTORY_FILE, BEST_FILE) if os.path.isfile(os.path.join(output_dir, name))]
    if leftovers:
        raise ResumeError(
            f"--output_dir {output_dir} holds {' and '.join(leftovers)} but no readable checkpoint "
            f"to resume from: choose a new --output_dir, or delete those files to start over there"
        )


def plan_resume(
    cfg: TrainConfig,
    info: CheckpointInfo,
    state: dict[str, Any] | None,
    own_run: bool,
    allow_changed: bool,
    encoder: BiEncoderConfig | None = None,
) -> tuple[TrainConfig, bool]:
    """The config to train with and whether to continue from ``info``'s position and ``state``.

    ``own_run``: ``info`` is the output folder's latest checkpoint (a restart), else a --model_file.
    ``encoder``: the encoder config the run would continue with; its passage format (--no_title) must
    be the checkpoint's, as the training settings must.
    """
    if state is None:
        if own_run:
            raise ResumeError(
                f"{info.path} is the latest checkpoint of --output_dir {cfg.output_dir} but has no "
                f"{STATE_FILE} (optimizer and schedule), so the run cannot continue from it: delete "
                f"that folder to resume from the checkpoint before it, or start a new run from its "
                f"weights with --model_file {info.path} and a new --output_dir"
            )
        logger.info("%s has no %s: a new run starts from its weights", info.path, STATE_FILE)
        return cfg, False
    passage_changes = passage_format_changes(info.encoder, encoder) if encoder is not None else []
    check_settings(info.training, cfg, info.path, allow_changed, passage_changes)
    if own_run:  # a restart may leave --model_file out: the record of where the run started stays
        cfg = dataclasses.replace(cfg, init_checkpoint=info.training.get("init_checkpoint"))
    return cfg, True


def passage_format_changes(stored: BiEncoderConfig, new: BiEncoderConfig) -> list[str]:
    """``"insert_title: True -> False"`` for each passage format setting that differs (it was a training
    setting in format 1, and changes what the run computes)."""
    old, now = stored.passages.to_dict(), new.passages.to_dict()
    return [f"{name}: {_shown(old[name])} -> {_shown(now[name])}" for name in old if old[name] != now[name]]


def check_settings(
    stored: Mapping[str, Any],
    cfg: TrainConfig,
    source: str,
    allow_changed: bool,
    other_changes: list[str] | None = None,
) -> None:
    """Refuse (or with ``allow_changed`` log) every setting that differs from the run being continued."""
    if not stored and not other_changes:
        logger.warning("%s records no training settings: cannot check that this run continues with the same", source)
        return
    changes = (changed_settings(stored, cfg) if stored else []) + list(other_changes or [])
    if changes and not allow_changed:
        raise ResumeError(
            f"{source} was trained with other settings: {'; '.join(changes)}. Restart with the "
            f"flags it was trained with, add --allow_changed_settings to continue it with the new "
            f"values, or choose a new --output_dir for a new run"
        )
    for change in changes:
        logger.warning("continuing %s with a changed setting (--allow_changed_settings): %s", source, change)


# What a checkpoint that does not store a setting ran with, where that is not today's default (precision
# defaulted to fp32 before --precision auto).
_RAN_WITH_WHEN_MISSING = {"precision": "fp32"}


def stored_setting(stored: Mapping[str, Any], name: str) -> Any:
    """The value of training setting ``name`` a run was started with (its default if the run predates it)."""
    if name in stored:
        return stored[name]
    if name in _RAN_WITH_WHEN_MISSING:
        return _RAN_WITH_WHEN_MISSING[name]
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def changed_settings(stored: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """``"name: old -> new"`` for each setting of ``cfg`` that differs from the stored training config."""
    changes = []
    for name, new in cfg.to_dict().items():
        if name in _NOT_COMPARED:
            continue
        old = stored_setting(stored, name)  # a setting newer than the checkpoint: it ran with the default
        if _comparable(name, old) != _comparable(name, new):
            changes.append(f"{name}: {_shown(old)} -> {_shown(new)}")
    return changes


def _comparable(name: str, value: Any) -> Any:
    """JSON turned tuples into lists; older checkpoints stored patterns relative to their working dir (and a
    library call may still pass a relative --val_ctx_file)."""
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        if name in PATH_SETTINGS:
            value = tuple(absolute_pattern(p) for p in value)
    elif name in FILE_SETTINGS and value:
        value = absolute_pattern(value)
    return value


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value)
