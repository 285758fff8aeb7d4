"""Convert a BEIR dataset or SQuAD v1.1 into DPR training data, a passages TSV, evaluation files and a
BM25 baseline.

  python prepare_data.py beir --beir_dir ../shared/data/scifact --out_dir data/scifact \\
      --train_split train --eval_split test --dev_ratio 0.1 --hard_negatives 30 --other_negatives 30
  python prepare_data.py squad --squad_file train-v1.1.json --eval_file dev-v1.1.json --out_dir data/squad1

Writes into --out_dir (NAME = --name, default the BEIR folder name or "squad1"):
  NAME-train.json, NAME-dev.json   DPR retriever JSON, split by --dev_ratio (seeded; SQuAD by article)
  NAME-passages.tsv                the corpus evaluation retrieves from (id, text, title)
  NAME-EVAL-qrels.tsv, NAME-EVAL-queries.jsonl   evaluation questions (BEIR format; EVAL = --eval_split
                                   for BEIR, "test" for SQuAD), plus NAME-test-qa.tsv for SQuAD
  NAME-EVAL-bm25.trec, NAME-EVAL-bm25.json       the BM25 baseline run and its metrics
  bm25-*/                          saved BM25 indexes; prepare_manifest.json: what was made from what
A rerun skips every stage whose outputs exist and whose inputs and settings are unchanged (--overwrite
redoes all).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from dpr.cli import run_cli, setup_logging
from dpr.data.bm25 import BM25Config
from dpr.data.preparation import PreparedData, PrepareSettings, prepare_beir, prepare_squad
from dpr.data.prepare import NegativeConfig
from dpr.options import ConfigError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    beir = sub.add_parser("beir", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    beir.add_argument("--beir_dir", required=True)
    beir.add_argument("--train_split", default="train", help="qrels split for train/dev ('none': skip)")
    beir.add_argument("--eval_split", default="test", help="qrels split to evaluate on ('none': skip)")
    beir.add_argument(
        "--strict",
        action="store_true",
        help="a qrels id missing from the corpus or queries is an error, not a counted skip",
    )
    squad = sub.add_parser("squad", help="SQuAD v1.1 JSON: paragraphs are passages")
    squad.add_argument("--squad_file", required=True, help="questions for train/dev (split by article)")
    squad.add_argument("--eval_file", required=True, help="evaluation questions; its paragraphs are the corpus")
    for group in (beir, squad):
        group.add_argument("--out_dir", required=True)
        group.add_argument("--name", default=None, help="file name prefix and the JSON 'dataset' field")
        group.add_argument("--dev_ratio", type=float, default=0.1)
        group.add_argument("--hard_negatives", type=int, default=30)
        group.add_argument("--other_negatives", type=int, default=30)
        group.add_argument("--seed", type=int, default=0)
        group.add_argument("--bm25_depth", type=int, default=100, help="BM25 baseline run depth")
        group.add_argument("--bm25_k1", type=float, default=1.5)
        group.add_argument("--bm25_b", type=float, default=0.75)
        group.add_argument("--bm25_stemmer", choices=("english", "none"), default="english")
        group.add_argument("--overwrite", action="store_true", help="redo every stage")
        group.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Every bad flag at once, by its flag name (the library checks the same values by field name)."""
    problems = [
        f"--{flag} must be >= {low}, found {getattr(args, flag)}"
        for flag, low in (("hard_negatives", 0), ("other_negatives", 0), ("bm25_depth", 1))
        if getattr(args, flag) < low
    ]
    if not 0 <= args.dev_ratio < 1:
        problems.append(f"--dev_ratio must be in [0, 1), found {args.dev_ratio}")
    if args.source == "beir" and args.train_split == args.eval_split != "none":
        problems.append(
            f"--train_split and --eval_split are both {args.eval_split!r}: training on the evaluation questions"
        )
    if problems:
        raise ConfigError("; ".join(problems))


def settings_from_args(args: argparse.Namespace) -> PrepareSettings:
    return PrepareSettings(
        dev_ratio=args.dev_ratio,
        negatives=NegativeConfig(args.hard_negatives, args.other_negatives, args.seed),
        bm25=BM25Config(k1=args.bm25_k1, b=args.bm25_b, stemmer=args.bm25_stemmer),
        bm25_depth=args.bm25_depth,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def _split(value: str) -> str | None:
    return None if value == "none" else value


def _print_report(prepared: PreparedData) -> None:
    for report in prepared.stages:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.counts.items())
        print(f"{'reused' if report.reused else 'wrote '} {report.stage:12s} {', '.join(report.outputs)}: {shown}")
    print(f"outputs in {os.path.abspath(prepared.out_dir)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    _check_args(args)
    settings = settings_from_args(args)
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each index build at DEBUG
    logger.info("settings: %s", json.dumps(vars(args), sort_keys=True))
    started = time.perf_counter()
    if args.source == "beir":
        prepared = prepare_beir(
            args.beir_dir,
            args.out_dir,
            name=args.name,
            train_split=_split(args.train_split),
            eval_split=_split(args.eval_split),
            strict=args.strict,
            settings=settings,
        )
    else:
        prepared = prepare_squad(args.squad_file, args.eval_file, args.out_dir, name=args.name, settings=settings)
    _print_report(prepared)
    logger.info("done in %.1f s", time.perf_counter() - started)
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
