"""Every way out of (and back into) our checkpoints: ``python -m dpr.export FORMAT ...`` (installed as ``dpr-export``).

    # one side of a --prefix checkpoint -> a Hugging Face PEFT prefix-tuning adapter folder
    python -m dpr.export peft --model_file out/dpr_biencoder.2.0 --side question --out_dir peft_q

    # one side of a fine-tuning / BitFit (or LoRA, merged) checkpoint -> a sentence-transformers folder
    python -m dpr.export sentence-transformers --model_file out/dpr_biencoder.2.0 --side passage --out_dir st_p

    # PEFT adapter folder(s) -> a checkpoint folder usable with --model_file
    python -m dpr.export import peft --question_adapter peft_q --passage_adapter peft_p --out_dir ckpt

A sentence-transformers folder needs no import: ``--pretrained_model_cfg FOLDER`` reads it as a backbone
(its pooling and normalisation become the defaults). Which modes can go where, and why the others cannot:
dpr/models/st_export.py and dpr/models/peft_interop.py. ``export_peft.py`` (``dpr-export-peft``) is the old
name of the PEFT half and calls the same functions.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dpr.cli import run_cli, setup_logging
from dpr.models.st_export import export_sentence_transformers
from dpr.options import POOLING_MODES
from dpr.training.peft_export import export_checkpoint, import_adapters

logger = logging.getLogger(__name__)

SIDE_METAVAR = "question|passage"


def _add_export(commands: argparse._SubParsersAction, name: str, help_text: str) -> None:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("--model_file", required=True, help="checkpoint folder, or a training output folder (its best)")
    # Checked by the library, not by argparse choices: a bad value is then one `error:` line (exit 2), as for
    # every other bad input, instead of argparse's usage text.
    sub.add_argument("--side", default="question", metavar=SIDE_METAVAR, help="which encoder (default: question)")
    sub.add_argument("--out_dir", required=True, help="folder to write (replaces an existing one, atomically)")


def add_peft_import_args(parser: argparse.ArgumentParser) -> None:
    """The flags of a PEFT import (shared with export_peft.py's ``import``)."""
    parser.add_argument("--question_adapter", required=True, help="PEFT prefix-tuning or LoRA adapter folder")
    parser.add_argument("--passage_adapter", help="adapter for passages (default: the question adapter)")
    parser.add_argument("--out_dir", required=True, help="checkpoint folder to write")
    parser.add_argument("--pretrained_model_cfg", help="backbone (default: from the adapter's files)")
    parser.add_argument("--pooling", choices=POOLING_MODES, help="default: exported value, else auto")
    parser.add_argument("--sequence_length", type=int, help="default: exported value, else 512")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dpr.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="format", required=True)
    _add_export(commands, "peft", "one side of a --prefix checkpoint -> a PEFT prefix-tuning adapter folder")
    _add_export(
        commands,
        "sentence-transformers",
        "one side of a fine-tuning / BitFit / LoRA checkpoint -> a sentence-transformers model folder",
    )
    imports = commands.add_parser("import", help="a foreign folder -> a checkpoint folder")
    sources = imports.add_subparsers(dest="source", required=True)
    add_peft_import_args(sources.add_parser("peft", help="PEFT prefix-tuning adapter folder(s) -> checkpoint"))
    return parser


def export_peft(model_file: str, side: str, out_dir: str) -> int:
    path = export_checkpoint(model_file, out_dir, side)
    print(f"PEFT adapter ({side} side of {model_file}) -> {path}")
    return 0


def import_peft(args: argparse.Namespace) -> int:
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


def export_st(model_file: str, side: str, out_dir: str) -> int:
    path = export_sentence_transformers(model_file, out_dir, side)
    print(f"sentence-transformers folder ({side} side of {model_file}) -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.format == "peft":
        return export_peft(args.model_file, args.side, args.out_dir)
    if args.format == "sentence-transformers":
        return export_st(args.model_file, args.side, args.out_dir)
    return import_peft(args)


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
