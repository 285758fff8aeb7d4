"""Train a DPR bi-encoder with prefix-tuned (or prompt, BitFit, adapter, fine-tuned) BERT encoders.

Flags follow PT-Retrieval / DPR. Run under ``torchrun --nproc_per_node N`` for several GPUs (or CPU
processes with gloo). A run restarted on the same --output_dir resumes from its latest checkpoint, also
when the command names the --model_file it started from; other training flags than the run's are refused
unless --allow_changed_settings is given (dpr/training/resume.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import torch

from dpr.atomic import remove_orphans
from dpr.cli import run_cli, setup_logging
from dpr.data.readers import BiEncoderSample, DataFormatError, expand_patterns, read_dpr_files
from dpr.models.biencoder import BiEncoder, build_biencoder
from dpr.models.encoder import trainable_report
from dpr.models.hub import load_tokenizer
from dpr.options import (
    TrainConfig,
    add_encoder_params,
    add_training_params,
    add_tuning_params,
    encoder_config_from_args,
    encoder_overrides_from_args,
    train_config_from_args,
)
from dpr.training.checkpoint import TrainingPosition, load_biencoder, load_training_state
from dpr.training.distributed import (
    DistributedContext,
    barrier,
    cleanup_distributed,
    configure_logging,
    init_distributed,
)
from dpr.training.resume import choose_start, plan_resume
from dpr.training.run_dir import check_output_dir
from dpr.training.trainer import BiEncoderTrainer

logger = logging.getLogger("train_dense_encoder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder_params(parser)
    add_tuning_params(parser)
    add_training_params(parser)
    return parser


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


def build_model(
    args: argparse.Namespace, cfg: TrainConfig, allow_changed: bool
) -> tuple[BiEncoder, Any, TrainConfig, TrainingPosition, dict[str, Any] | None]:
    """The model to train, its tokenizer, the config to train with, where to start and the state to resume."""
    source, own_run = choose_start(cfg, args.model_file)
    if source is None:
        enc_cfg = encoder_config_from_args(args)
        tokenizer = load_tokenizer(enc_cfg.backbone.pretrained_model_cfg, enc_cfg.backbone.do_lower_case)
        init_text = getattr(enc_cfg.tuning, "prompt_init_text", None)  # only a --prompt has one
        init_ids = tokenizer(init_text, add_special_tokens=False)["input_ids"] if init_text else None
        return build_biencoder(enc_cfg, init_ids), tokenizer, cfg, TrainingPosition(), None
    model, info = load_biencoder(source, encoder_overrides_from_args(args))
    state = load_training_state(info.path)
    cfg, resume = plan_resume(cfg, info, state, own_run, allow_changed, encoder=model.config)
    start = info.position if resume else TrainingPosition()
    if resume:
        logger.info("resuming from %s at epoch %d, iteration %d", info.path, start.epoch, start.iteration)
    tokenizer = load_tokenizer(model.config.backbone.pretrained_model_cfg, model.config.backbone.do_lower_case)
    return model, tokenizer, cfg, start, state if resume else None


def run_training(args: argparse.Namespace, train_cfg: TrainConfig, ctx: DistributedContext) -> None:
    """Read the data, build or load the model, train; the whole run of one process."""
    if ctx.is_main:  # a write killed mid-swap may have moved the newest checkpoint aside: put it back
        remove_orphans(train_cfg.output_dir)
    barrier(ctx)
    # Data first: a wrong file is reported before any model is built or loaded.
    train = read_split(train_cfg.train_file, train_cfg.train_files_upsample_rates, train_cfg.ctx_field, "--train_file")
    dev = (
        read_split(
            train_cfg.dev_file,
            None,
            train_cfg.ctx_field,
            "--dev_file",
            " or drop --dev_file to train without validation",
        )
        if train_cfg.dev_file
        else []
    )
    # Seeds the initialisation of prefixes, prompts, adapters and projections (dropout is re-seeded per step).
    torch.manual_seed(train_cfg.seed)
    model, tokenizer, train_cfg, start, state = build_model(args, train_cfg, args.allow_changed_settings)
    logger.info("encoder config: %s", json.dumps(model.config.to_dict(), sort_keys=True))
    logger.info("training config: %s", json.dumps(train_cfg.to_dict(), sort_keys=True))
    logger.info("%s", trainable_report(model))
    trainer = BiEncoderTrainer(train_cfg, model, tokenizer, train, dev, ctx, start, state)
    best = trainer.run()
    if ctx.is_main:
        if best is not None:
            print(
                f"best checkpoint: {best.path} ({best.metric} {best.value:.4f}, epoch {best.epoch}, "
                f"step {best.global_step})"
            )
        logger.info("%s", trainable_report(model))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    train_cfg = train_config_from_args(args)
    check_output_dir(train_cfg.output_dir)  # now, not at the first checkpoint hours later
    ctx = init_distributed(no_cuda=train_cfg.no_cuda, local_rank=train_cfg.local_rank)
    configure_logging(ctx)
    finished = False
    try:
        run_training(args, train_cfg, ctx)
        finished = True
    finally:
        # The trainer (and its DDP wrapper, which holds the process group) is gone once run_training() returns.
        cleanup_distributed(synchronize=finished)
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
