"""Convert between our prefix / LoRA checkpoints and Hugging Face PEFT PREFIX_TUNING / LORA adapter folders.

    # one side of a --prefix or --lora checkpoint -> a PEFT adapter folder (adapter_config.json +
    # adapter_model.safetensors; the type follows the checkpoint's mode)
    python export_peft.py export --model_file out/dpr_biencoder.2.0 --side question --out_dir peft_q
    python export_peft.py export --model_file out/dpr_biencoder.2.0 --side passage  --out_dir peft_p

    # PEFT adapter folder(s) -> a checkpoint folder usable with --model_file
    python export_peft.py import --question_adapter peft_q --passage_adapter peft_p --out_dir ckpt_from_peft

The old name of ``python -m dpr.export peft`` / ``python -m dpr.export import peft`` (dpr/commands/export.py),
kept as an alias: same flags as before, same functions.

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
from dpr.commands.export import add_peft_import_args, export_peft, import_peft
from dpr.training.peft_export import SIDES

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    exp = commands.add_parser("export", help="one side of a --prefix or --lora checkpoint -> PEFT adapter folder")
    exp.add_argument("--model_file", required=True, help="prefix or LoRA checkpoint folder")
    exp.add_argument("--side", choices=SIDES, default="question")
    exp.add_argument("--out_dir", required=True, help="PEFT adapter folder to write")
    add_peft_import_args(commands.add_parser("import", help="PEFT adapter folder(s) -> checkpoint folder"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command == "export":
        return export_peft(args.model_file, args.side, args.out_dir)
    return import_peft(args)


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
