"""One training run as a library call: ``train(TrainConfig, encoder settings)`` -> the best checkpoint.

``dpr/commands/train.py`` (``train_dense_encoder.py``) turns flags into these arguments; ``quickstart.py`` and
user code call :func:`train` directly. Under ``torchrun`` every process calls it with the same arguments.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from dpr.atomic import remove_orphans
from dpr.configs import apply_overrides
from dpr.data.readers import BiEncoderSample, DataFormatError, expand_patterns, read_dpr_files
from dpr.device import resolve_precision
from dpr.models.biencoder import BiEncoder, build_biencoder
from dpr.models.checkpoint_format import TrainingPosition, load_biencoder, load_training_state
from dpr.models.encoder import trainable_report
from dpr.models.hub import load_tokenizer
from dpr.options import FILE_SETTINGS, PATH_SETTINGS, ConfigError, TrainConfig, absolute_pattern
from dpr.routing import SummaryConfig, base_question_encoder, summarize_questions, write_summary
from dpr.training.dashboard import resolve_tensorboard
from dpr.training.distributed import (
    DistributedContext,
    barrier,
    cleanup_distributed,
    configure_logging,
    init_distributed,
)
from dpr.training.resume import choose_start, plan_resume, stored_setting
from dpr.training.run_dir import BestRecord, check_output_dir, latest_checkpoint
from dpr.training.trainer import BiEncoderTrainer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = ["train", "read_split"]


def read_split(
    patterns: tuple[str, ...], rates: tuple[int, ...] | None, ctx_field: str, flag: str, hint: str = ""
) -> list[BiEncoderSample]:
    """The samples of ``patterns``; none at all is an error naming the files (training or validation
    would otherwise be skipped without a word). A pattern matching no file already raises."""
    samples = read_dpr_files(patterns, rates, ctx_field)
    if not samples:
        raise DataFormatError(
            f"{flag}: no usable sample (a question with at least one positive passage) in "
            f"{', '.join(expand_patterns(patterns))}; check the files{hint}"
        )
    return samples


def _build_model(
    cfg: TrainConfig, settings: Mapping[str, Any], model_file: str | None, allow_changed: bool
) -> tuple[BiEncoder, PreTrainedTokenizerBase, TrainConfig, TrainingPosition, dict[str, Any] | None]:
    """The model to train, its tokenizer, the config to train with, where to start and the state to resume."""
    source, own_run = choose_start(cfg, model_file)
    if source is None:
        enc_cfg = apply_overrides(None, settings, "checkpoint")
        tokenizer = load_tokenizer(enc_cfg.backbone.pretrained_model_cfg, enc_cfg.backbone.do_lower_case)
        init_text = getattr(enc_cfg.tuning, "prompt_init_text", None)  # only a --prompt has one
        init_ids = tokenizer(init_text, add_special_tokens=False)["input_ids"] if init_text else None
        return build_biencoder(enc_cfg, init_ids), tokenizer, cfg, TrainingPosition(), None
    model, info = load_biencoder(source, settings)
    state = load_training_state(info.path)
    if own_run and cfg.precision == "auto" and info.training:  # auto continues a run in the precision it ran in
        cfg = dataclasses.replace(cfg, precision=stored_setting(info.training, "precision"))
    cfg, resume = plan_resume(cfg, info, state, own_run, allow_changed, encoder=model.config)
    start = info.position if resume else TrainingPosition()
    if resume:
        logger.info("resuming from %s at epoch %d, iteration %d", info.path, start.epoch, start.iteration)
    tokenizer = load_tokenizer(model.config.backbone.pretrained_model_cfg, model.config.backbone.do_lower_case)
    return model, tokenizer, cfg, start, state if resume else None


def _run(
    cfg: TrainConfig, settings: Mapping[str, Any], model_file: str | None, allow_changed: bool, ctx: DistributedContext
) -> BestRecord | None:
    """Read the data, build or load the model, train; the whole run of one process."""
    if ctx.is_main:  # a write killed mid-swap may have moved the newest checkpoint aside: put it back
        remove_orphans(cfg.output_dir)
    barrier(ctx)
    # Data first: a wrong file is reported before any model is built or loaded.
    train_samples = read_split(cfg.train_file, cfg.train_files_upsample_rates, cfg.ctx_field, "--train_file")
    dev = (
        read_split(cfg.dev_file, None, cfg.ctx_field, "--dev_file", " or drop --dev_file to train without validation")
        if cfg.dev_file
        else []
    )
    # Seeds the initialisation of prefixes, prompts, adapters and projections (dropout is re-seeded per step).
    torch.manual_seed(cfg.seed)
    model, tokenizer, cfg, start, state = _build_model(cfg, settings, model_file, allow_changed)
    if cfg.task_summary and not model.config.frozen_backbone:  # now, not after the training
        raise ConfigError(
            f"--task_summary is for task-library checkpoints (prefix, prompt, adapters: a frozen backbone), "
            f"not --{model.config.tuning.method}: its backbone changes, so it cannot be routed to"
        )
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, ctx.device))  # stored resolved
    logger.info("encoder config: %s", json.dumps(model.config.to_dict(), sort_keys=True))
    logger.info("training config: %s", json.dumps(cfg.to_dict(), sort_keys=True))
    logger.info("%s", trainable_report(model))
    best = BiEncoderTrainer(cfg, model, tokenizer, train_samples, dev, ctx, start, state).run()
    if ctx.is_main:
        logger.info("%s", trainable_report(model))
        if cfg.task_summary:
            _write_task_summary(cfg, model, tokenizer, [s.question for s in train_samples], best)
    return best if ctx.is_main else None


def _write_task_summary(
    cfg: TrainConfig,
    model: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    best: BestRecord | None,
) -> None:
    """task_summary.json (routing) into the best checkpoint, or the last one without validation.

    The base model is the frozen backbone this run trained on, with no task active: no second load.
    """
    folder = best.path if best is not None else latest_checkpoint(cfg.output_dir, cfg.checkpoint_file_name)
    if folder is None:
        logger.warning("--task_summary: no checkpoint was written, so no task summary either")
        return
    summary = summarize_questions(
        base_question_encoder(model.backbone, model.config.head),
        tokenizer,
        questions,
        SummaryConfig(seed=cfg.seed),
        model_name=model.config.backbone.pretrained_model_cfg,
        max_length=model.config.backbone.sequence_length,
        precision=cfg.precision,
        source=", ".join(cfg.train_file),
    )
    logger.info("task summary -> %s", write_summary(folder, summary))


def train(
    cfg: TrainConfig,
    encoder_settings: Mapping[str, Any] | None = None,
    *,
    model_file: str | None = None,
    allow_changed_settings: bool = False,
) -> BestRecord | None:
    """Train (or resume) the run in ``cfg.output_dir``; returns its best checkpoint (None without validation).

    Args:
        cfg: the training settings. File patterns are stored absolute, so a run resumed from another working
            directory compares equal to the one that started it.
        encoder_settings: encoder settings by flag name (``dpr.configs.FLAT_FIELDS``, e.g. ``{"tuning":
            "prefix", "pre_seq_len": 32, "tune_side": "question"}``): a new model is built from them (the rest
            at their defaults); a checkpoint being resumed or started from must agree with the architecture
            ones (ConfigError naming the setting otherwise).
        model_file: a checkpoint to start from (or, when it has training state and is this run's, to resume).
        allow_changed_settings: continue a run although ``cfg`` differs from the settings it was started with.

    Returns:
        The best checkpoint record on the main process (None on the others and when nothing was validated).

    Raises:
        UserError subclasses for bad data, settings or folders, before any training step when they can be seen.
    """
    paths = {name: tuple(map(absolute_pattern, getattr(cfg, name))) for name in PATH_SETTINGS}
    files = {name: absolute_pattern(getattr(cfg, name)) for name in FILE_SETTINGS if getattr(cfg, name)}
    cfg = dataclasses.replace(cfg, **paths, **files)
    if model_file and cfg.init_checkpoint is None:
        cfg = dataclasses.replace(cfg, init_checkpoint=os.path.realpath(model_file))
    check_output_dir(cfg.output_dir)  # now, not at the first checkpoint hours later
    resolve_tensorboard(cfg.tensorboard)  # --tensorboard on without the package: an error now, not mid-run
    ctx = init_distributed(no_cuda=cfg.no_cuda, local_rank=cfg.local_rank, precision=cfg.precision)
    configure_logging(ctx)
    finished = False
    try:
        best = _run(cfg, encoder_settings or {}, model_file, allow_changed_settings, ctx)
        finished = True
    finally:
        # The trainer (and its DDP wrapper, which holds the process group) is gone once _run() returns.
        cleanup_distributed(synchronize=finished)
    return best
