#!/usr/bin/env python3
"""Train a DPR bi-encoder with prefix-tuned (or prompt, BitFit, adapter, fine-tuned) BERT encoders.

Flags follow PT-Retrieval / DPR. Run under ``torchrun --nproc_per_node N`` for several GPUs (or CPU
processes with gloo). A run restarted on the same --output_dir resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from dpr.cli import run_cli, setup_logging
from dpr.data.readers import read_dpr_files
from dpr.models.biencoder import build_biencoder
from dpr.models.encoder import trainable_report
from dpr.models.hub import load_tokenizer
from dpr.options import (add_encoder_params, add_training_params, add_tuning_params, encoder_config_from_args,
                         train_config_from_args)
from dpr.training.checkpoint import TrainingPosition, load_biencoder, load_training_state
from dpr.training.distributed import cleanup_distributed, configure_logging, init_distributed
from dpr.training.run_dir import latest_checkpoint
from dpr.training.trainer import BiEncoderTrainer

logger = logging.getLogger("train_dense_encoder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder_params(parser)
    add_tuning_params(parser)
    add_training_params(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    train_cfg = train_config_from_args(args)
    ctx = init_distributed(no_cuda=train_cfg.no_cuda, local_rank=train_cfg.local_rank)
    configure_logging(ctx)
    # Seeds the initialisation of prefixes, prompts, adapters and projections (dropout is re-seeded per step).
    torch.manual_seed(train_cfg.seed)
    try:
        resume = args.model_file or latest_checkpoint(train_cfg.output_dir, train_cfg.checkpoint_file_name)
        start, state = TrainingPosition(), None
        if resume:
            model, info = load_biencoder(resume, args)
            state = load_training_state(resume)
            start = info.position if state is not None else TrainingPosition()
            logger.info("resuming from %s at epoch %d, iteration %d", resume, start.epoch, start.iteration)
            tokenizer = load_tokenizer(model.config.pretrained_model_cfg, model.config.do_lower_case)
        else:
            enc_cfg = encoder_config_from_args(args)
            tokenizer = load_tokenizer(enc_cfg.pretrained_model_cfg, enc_cfg.do_lower_case)
            init_ids = (tokenizer(enc_cfg.prompt_init_text, add_special_tokens=False)["input_ids"]
                        if enc_cfg.prompt_init_text else None)
            model = build_biencoder(enc_cfg, init_ids)
        logger.info("encoder config: %s", json.dumps(model.config.to_dict(), sort_keys=True))
        logger.info("training config: %s", json.dumps(train_cfg.to_dict(), sort_keys=True))
        logger.info("%s", trainable_report(model))
        train = read_dpr_files(train_cfg.train_file, train_cfg.train_files_upsample_rates, train_cfg.ctx_field)
        dev = read_dpr_files(train_cfg.dev_file, None, train_cfg.ctx_field) if train_cfg.dev_file else []
        trainer = BiEncoderTrainer(train_cfg, model, tokenizer, train, dev, ctx, start, state)
        best = trainer.run()
        if ctx.is_main:
            if best is not None:
                print(f"best checkpoint: {best.path} ({best.metric} {best.value:.4f}, epoch {best.epoch}, "
                      f"step {best.global_step})")
            logger.info("%s", trainable_report(model))
    finally:
        cleanup_distributed()
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
