"""Parsed flags -> the inference configs of :mod:`dpr.retrieval` (the CLI boundary of embedding / retrieval).

Only command-line tools call this module: library code takes :class:`InferenceModelConfig` and never an
argparse namespace. (It belongs in :mod:`dpr.options` beside the encoder flags it reads.)
"""

from __future__ import annotations

import argparse

from dpr.options import encoder_overrides_from_args
from dpr.retrieval import InferenceModelConfig

__all__ = ["encoder_overrides_from_args", "inference_config_from_args"]


def inference_config_from_args(args: argparse.Namespace) -> InferenceModelConfig:
    """--model_file / --task, the encoder and tuning flags, --fp16 / --bf16, --no_cuda and --merge_lora."""
    return InferenceModelConfig(
        model_file=args.model_file,
        encoder_overrides=encoder_overrides_from_args(args),
        tasks=tuple(getattr(args, "tasks", None) or ()),
        precision=args.precision,
        no_cuda=args.no_cuda,
        merge_lora=getattr(args, "merge_lora", False),
    )
