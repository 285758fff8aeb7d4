"""Task summaries for per-query routing (``TaskEncoder.encode(texts, task="auto")``, ``--task auto``).

    # a summary for an existing task checkpoint, from its training questions (DPR JSON / JSONL)
    python -m dpr.route summarize --model_file runs/scifact --questions data/scifact-train.json
    # or from BEIR queries, keeping only those judged in the train qrels (never the test queries)
    python -m dpr.route summarize --model_file runs/scifact --questions scifact/queries.jsonl \\
        --qrels scifact/qrels/train.tsv

The summary (``task_summary.json`` in the checkpoint folder) holds the base model's centroid(s) of the
questions and a threshold set on held-out ones (``--quantile`` of their similarities to the centroids).
Training writes one itself with ``train_dense_encoder.py --task_summary``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dpr.cli import run_cli, setup_logging
from dpr.data.queries import read_qrels
from dpr.device import INFERENCE_REQUESTS, resolve_precision, select_device
from dpr.routing import SummaryConfig, read_questions, summarize_checkpoint, write_summary

logger = logging.getLogger("dpr.route")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("summarize", help="write task_summary.json into a task checkpoint folder")
    s.add_argument("--model_file", required=True, help="task checkpoint folder (or a training output folder)")
    s.add_argument(
        "--questions", nargs="+", required=True, help="the task's training questions: DPR JSON / JSONL or BEIR queries"
    )
    s.add_argument("--qrels", help="BEIR queries: keep only the query ids judged in this qrels file (train split)")
    defaults = SummaryConfig()
    s.add_argument("--clusters", type=int, default=defaults.clusters, help="centroids (spherical k-means)")
    s.add_argument(
        "--held_out_fraction", type=float, default=defaults.held_out_fraction, help="questions the threshold is set on"
    )
    s.add_argument(
        "--quantile", type=float, default=defaults.quantile, help="threshold: this quantile of held-out similarities"
    )
    s.add_argument("--max_questions", type=int, default=defaults.max_questions, help="questions sampled")
    s.add_argument("--seed", type=int, default=defaults.seed)
    s.add_argument("--batch_size", type=int, default=defaults.batch_size)
    s.add_argument("--precision", choices=[p for p in INFERENCE_REQUESTS if p != "int8"], default="auto")
    s.add_argument("--no_cuda", action="store_true")
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    return parser


def summary_config_from_args(args: argparse.Namespace) -> SummaryConfig:
    return SummaryConfig(
        clusters=args.clusters,
        held_out_fraction=args.held_out_fraction,
        quantile=args.quantile,
        max_questions=args.max_questions,
        seed=args.seed,
        batch_size=args.batch_size,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg = summary_config_from_args(args)
    only = set(read_qrels(args.qrels)) if args.qrels else None
    questions = read_questions(args.questions, only)
    device = select_device(args.no_cuda, args.precision)
    folder, summary = summarize_checkpoint(
        args.model_file,
        questions,
        cfg,
        device=device,
        precision=resolve_precision(args.precision, device),
        source=", ".join(args.questions),
        progress=args.progress,
    )
    path = write_summary(folder, summary)
    print(
        f"task summary of {len(questions)} question(s) ({summary.questions} fitted, {summary.held_out} held out, "
        f"{cfg.clusters} centroid(s), threshold {summary.threshold:.4f}) -> {path}"
    )
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
