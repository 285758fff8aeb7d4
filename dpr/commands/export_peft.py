"""Convert between our prefix / LoRA checkpoints and Hugging Face PEFT PREFIX_TUNING / LORA adapter folders.

    # one side of a --prefix or --lora checkpoint -> a PEFT adapter folder (adapter_config.json +
    # adapter_model.safetensors; the type follows the checkpoint's mode)
    python export_peft.py export --model_file out/dpr_biencoder.2.0 --side question --out_dir peft_q
    python export_peft.py export --model_file out/dpr_biencoder.2.0 --side passage  --out_dir peft_p

    # PEFT adapter folder(s) -> a checkpoint folder usable with --model_file
    python export_peft.py import --question_adapter peft_q --passage_adapter peft_p --out_dir ckpt_from_peft

Load an exported folder in PEFT with ``PeftModel.from_pretrained(BertModel.from_pretrained(...), folder)``.
For prefixes, PEFT numbers the real tokens from P unless given ``position_ids``; see dpr/models/peft_interop.py
for the exact correspondence (``peft_position_ids`` reproduces our vectors). LoRA adapters give our vectors
as they are (dpr/models/peft_lora.py). Without --passage_adapter the
question adapter is used for passages too (a symmetric encoder, as PEFT embedding models usually are).
"""

from __future__ import annotations

import argparse
import logging
import sys

from dpr.cli import run_cli, setup_logging
from dpr.options import POOLING_MODES
from dpr.training.peft_export import SIDES, export_checkpoint, import_adapters

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    exp = commands.add_parser("export", help="one side of a --prefix or --lora checkpoint -> PEFT adapter folder")
    exp.add_argument("--model_file", required=True, help="prefix or LoRA checkpoint folder")
    exp.add_argument("--side", choices=SIDES, default="question")
    exp.add_argument("--out_dir", required=True, help="PEFT adapter folder to write")
    imp = commands.add_parser("import", help="PEFT adapter folder(s) -> checkpoint folder")
    imp.add_argument("--question_adapter", required=True, help="PEFT prefix-tuning or LoRA adapter folder")
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
        print(f"PEFT adapter ({args.side} side of {args.model_file}) -> {path}")
    else:
        path = import_adapters(
            args.question_adapter,
            args.out_dir,
            args.passage_adapter,
            pretrained_model_cfg=args.pretrained_model_cfg,
            pooling=args.pooling,
            sequence_length=args.sequence_length,
        )
        print(f"checkpoint -> {path}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
