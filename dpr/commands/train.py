"""Train a DPR bi-encoder with prefix-tuned (or prompt, BitFit, adapter, fine-tuned) BERT encoders.

Flags follow PT-Retrieval / DPR. Run under ``torchrun --nproc_per_node N`` for several GPUs (or CPU
processes with gloo). A run restarted on the same --output_dir resumes from its latest checkpoint, also
when the command names the --model_file it started from; other training flags than the run's are refused
unless --allow_changed_settings is given (dpr/training/resume.py).
"""

from __future__ import annotations

import argparse
import sys

from dpr.cli import run_cli, setup_logging
from dpr.options import (
    add_encoder_params,
    add_training_params,
    add_tuning_params,
    encoder_overrides_from_args,
    train_config_from_args,
)
from dpr.training.run import train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder_params(parser)
    add_tuning_params(parser)
    add_training_params(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    best = train(
        train_config_from_args(args),
        encoder_overrides_from_args(args),
        model_file=args.model_file,
        allow_changed_settings=args.allow_changed_settings,
    )
    if best is not None:
        print(
            f"best checkpoint: {best.path} ({best.metric} {best.value:.4f}, "
            f"epoch {best.epoch}, step {best.global_step})"
        )
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
