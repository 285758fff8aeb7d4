#!/usr/bin/env python3
"""Convert between our prefix checkpoints and Hugging Face PEFT prefix-tuning adapter folders.

    # one side of a --prefix checkpoint -> a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)
    python export_peft.py export --model_file out/dpr_biencoder.2.0 --side question --out_dir peft_q
    python export_peft.py export --model_file out/dpr_biencoder.2.0 --side passage  --out_dir peft_p

    # PEFT adapter folder(s) -> a checkpoint folder usable with --model_file
    python export_peft.py import --question_adapter peft_q --passage_adapter peft_p --out_dir ckpt_from_peft

Load an exported folder in PEFT with ``PeftModel.from_pretrained(BertModel.from_pretrained(...), folder)``.
PEFT numbers the real tokens from P unless given ``position_ids``; see dpr/models/peft_interop.py for
the exact correspondence (``peft_position_ids`` reproduces our vectors). Without --passage_adapter the
question adapter is used for passages too (a symmetric encoder, as PEFT embedding models usually are).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any

from dpr.cli import run_cli, setup_logging
from dpr.models.biencoder import build_biencoder
from dpr.models.peft_interop import (PeftAdapterError, PeftPrefix, load_peft_prefix, read_peft_adapter,
                                    write_peft_adapter)
from dpr.models.serialization import check_backbone
from dpr.options import POOLING_MODES, ConfigError, EncoderConfig
from dpr.training.checkpoint import load_biencoder, save_checkpoint

logger = logging.getLogger("export_peft")

SIDES = ("question", "passage")


def export_checkpoint(model_file: str, out_dir: str, side: str = "question") -> str:
    """Write the ``side`` prefix of the checkpoint ``model_file`` as a PEFT adapter folder ``out_dir``."""
    if side not in SIDES:
        raise ConfigError(f"--side must be question or passage, found {side!r}")
    model, info = load_biencoder(model_file)
    encoder = model.question_encoder if side == "question" else model.ctx_encoder
    sidecar = {"side": side, "encoder": model.config.to_dict(), "backbone": info.backbone,
               "checkpoint": os.path.abspath(model_file)}
    return write_peft_adapter(encoder, out_dir, base_model_name=model.config.pretrained_model_cfg, sidecar=sidecar)


def _imported_config(adapter: PeftPrefix, pretrained_model_cfg: str | None, pooling: str | None,
                     sequence_length: int | None) -> EncoderConfig:
    """Our encoder config for an adapter: its dpr_encoder.json if we exported it, else the flags."""
    stored = adapter.sidecar.get("encoder") if adapter.sidecar else None
    base = EncoderConfig.from_dict(stored, f"{adapter.path}/dpr_encoder.json") if stored else EncoderConfig()
    name = pretrained_model_cfg or (base.pretrained_model_cfg if stored else adapter.base_model_name_or_path)
    if not name:
        raise ConfigError(f"{adapter.path}: adapter_config.json names no base_model_name_or_path; pass "
                          f"--pretrained_model_cfg")
    changes: dict[str, Any] = {"pretrained_model_cfg": name, "tuning": "prefix", "pre_seq_len":
                               adapter.num_virtual_tokens, "prefix_mlp": False, "projection_dim": 0,
                               "gradient_checkpointing": False, "share_encoder": False}
    if pooling is not None:
        changes["pooling"] = pooling
    if sequence_length is not None:
        changes["sequence_length"] = sequence_length
    return dataclasses.replace(base, **changes)


def import_adapters(question_adapter: str, out_dir: str, passage_adapter: str | None = None, *,
                    pretrained_model_cfg: str | None = None, pooling: str | None = None,
                    sequence_length: int | None = None) -> str:
    """Build a prefix checkpoint folder ``out_dir`` from PEFT adapter folder(s); returns its path.

    Settings PEFT does not store (pooling, sequence length, lower-casing) come from the question
    adapter's ``dpr_encoder.json`` when we exported it, else from the arguments or the defaults.
    """
    question = read_peft_adapter(question_adapter)
    passage = read_peft_adapter(passage_adapter) if passage_adapter else question
    if passage.num_virtual_tokens != question.num_virtual_tokens:
        raise PeftAdapterError(f"{passage.path} has {passage.num_virtual_tokens} virtual tokens, {question.path} "
                               f"{question.num_virtual_tokens}: both sides of a checkpoint share --pre_seq_len")
    config = _imported_config(question, pretrained_model_cfg, pooling, sequence_length)
    model = build_biencoder(config)
    for adapter in {id(a): a for a in (question, passage)}.values():
        if adapter.sidecar and adapter.sidecar.get("backbone"):
            check_backbone(adapter.sidecar["backbone"], model.backbone, adapter.path)
    load_peft_prefix(model.question_encoder, question)
    load_peft_prefix(model.ctx_encoder, passage)
    source = {"question": os.path.abspath(question.path), "passage": os.path.abspath(passage.path)}
    return save_checkpoint(out_dir, model, training={"imported_from_peft": source})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    exp = commands.add_parser("export", help="one side of a --prefix checkpoint -> PEFT adapter folder")
    exp.add_argument("--model_file", required=True, help="prefix checkpoint folder")
    exp.add_argument("--side", choices=SIDES, default="question")
    exp.add_argument("--out_dir", required=True, help="PEFT adapter folder to write")
    imp = commands.add_parser("import", help="PEFT adapter folder(s) -> checkpoint folder")
    imp.add_argument("--question_adapter", required=True, help="PEFT prefix-tuning adapter folder")
    imp.add_argument("--passage_adapter", help="adapter for passages (default: the question adapter)")
    imp.add_argument("--out_dir", required=True, help="checkpoint folder to write")
    imp.add_argument("--pretrained_model_cfg", help="backbone (default: from the adapter's files)")
    imp.add_argument("--pooling", choices=POOLING_MODES, help="default: exported value, else auto")
    imp.add_argument("--sequence_length", type=int, help="default: exported value, else 512")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command == "export":
        path = export_checkpoint(args.model_file, args.out_dir, args.side)
        print(f"PEFT prefix adapter ({args.side} side of {args.model_file}) -> {path}")
    else:
        path = import_adapters(args.question_adapter, args.out_dir, args.passage_adapter,
                               pretrained_model_cfg=args.pretrained_model_cfg, pooling=args.pooling,
                               sequence_length=args.sequence_length)
        print(f"checkpoint -> {path}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
