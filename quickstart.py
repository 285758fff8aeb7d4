#!/usr/bin/env python3
"""The whole pipeline on SciFact: prepare -> zero-shot index -> train a prefix -> evaluate -> one table.

Default (about 10-15 minutes on a 2-core CPU): minilm-l6, a 32-token QUESTION-side prefix
(``--tune_side question``). The corpus is encoded once with the frozen base model; that index serves
both the zero-shot row and the trained row, and its vectors feed training, so no passage is encoded
twice. ``--full`` switches to the full-size recipe: prefixes on both sides (the corpus is re-encoded
with the trained passage encoder), more epochs.

Every stage writes into ``--out_dir`` and is skipped when its output is already there, so a second run
reuses finished stages (training resumes from its latest checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import dense_retriever
import generate_embeddings
import prepare_data
import train_dense_encoder
from dpr.cli import run_cli, setup_logging
from dpr.models.encoder import parameter_counts
from dpr.training.checkpoint import load_biencoder, resolve_checkpoint

logger = logging.getLogger("quickstart")

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data", "scifact")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beir_dir", default=DEFAULT_DATA, help="a BEIR dataset folder (default: SciFact)")
    parser.add_argument("--out_dir", default="runs/quickstart", help="all outputs go here")
    parser.add_argument("--model", default="minilm-l6", help="encoder (short name, folder or hub name)")
    parser.add_argument("--full", action="store_true",
                        help="full-size recipe: prefixes on both sides, 64 tokens, 8 epochs (re-encodes the corpus)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (3; 8 with --full)")
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (logs only)")
    return parser


def _done(path: str) -> bool:
    if os.path.exists(path):
        logger.info("reusing %s", path)
        return True
    return False


def _metrics(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _embed(args: argparse.Namespace, out_file: str, model_flags: list[str], passages: str) -> None:
    if not _done(out_file + "_0"):
        progress = ["--no_progress"] if args.no_progress else []
        _check(generate_embeddings.main(["--ctx_file", passages, "--out_file", out_file, "--batch_size", "64",
                                         "--sequence_length", str(args.sequence_length), *model_flags, *progress]))


def _evaluate(args: argparse.Namespace, name: str, embeddings: str, model_flags: list[str], newer_than: str = "") -> str:
    metrics = os.path.join(args.out_dir, f"{name}-metrics.json")
    stale = newer_than and os.path.exists(metrics) and os.path.getmtime(metrics) < os.path.getmtime(newer_than)
    if stale or not _done(metrics):
        _check(dense_retriever.main(["--encoded_ctx_file", embeddings + "_*", "--beir_dir", args.beir_dir,
                                     "--split", "test", "--n-docs", "100", "--metrics_file", metrics,
                                     "--out_file", os.path.join(args.out_dir, f"{name}.trec"),
                                     "--sequence_length", str(args.sequence_length), "--no_progress",
                                     *model_flags]))
    return metrics


def _check(code: int) -> None:
    if code != 0:
        raise SystemExit(code)


def _train(args: argparse.Namespace, data: str, base_embeddings: str) -> str:
    out = os.path.join(args.out_dir, "prefix-both" if args.full else "prefix-question")
    epochs = args.epochs or (8 if args.full else 3)
    side = ["--tune_side", "both", "--pre_seq_len", "64"] if args.full else \
        ["--tune_side", "question", "--pre_seq_len", "32", "--ctx_embeddings", base_embeddings + "_*"]
    _check(train_dense_encoder.main([
        "--pretrained_model_cfg", args.model, "--prefix", *side,
        "--train_file", os.path.join(data, "scifact-train.json"), "--dev_file", os.path.join(data, "scifact-dev.json"),
        "--output_dir", out, "--seed", "12345", "--sequence_length", str(args.sequence_length),
        "--batch_size", str(args.batch_size), "--dev_batch_size", str(args.batch_size), "--learning_rate", "1e-2",
        # Question-side training looks passage vectors up, so extra hard negatives cost almost nothing.
        "--warmup_percentage", "0.05", "--max_grad_norm", "2.0", "--hard_negatives", "1" if args.full else "3",
        "--num_train_epochs", str(epochs), "--eval_per_epoch", "1", "--log_batch_step", "10"]))
    return out


def _share(checkpoint: str) -> str:
    model, _ = load_biencoder(checkpoint)
    trainable = sum(p.numel() for n, p in model.named_parameters() if n in set(model.tuned_names))
    total = parameter_counts(model)[1]
    return f"{100.0 * trainable / total:.2f}% ({trainable:,})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    os.makedirs(args.out_dir, exist_ok=True)
    data = os.path.join(args.out_dir, "data")
    logger.info("stage 1/5: prepare SciFact (BM25 hard negatives, dev held out)")
    _check(prepare_data.main(["beir", "--beir_dir", args.beir_dir, "--out_dir", data, "--name", "scifact",
                              "--train_split", "train", "--eval_split", "test", "--dev_ratio", "0.1",
                              "--hard_negatives", "30", "--other_negatives", "30", "--seed", "0"]
                             + (["--no_progress"] if args.no_progress else [])))
    passages = os.path.join(data, "scifact-passages.tsv")
    base = ["--pretrained_model_cfg", args.model]
    base_embeddings = os.path.join(args.out_dir, "embeddings", "zero-shot")
    logger.info("stage 2/5: encode the corpus with the frozen base model (the zero-shot index)")
    _embed(args, base_embeddings, base, passages)
    logger.info("stage 3/5: evaluate zero-shot")
    zero_shot = _evaluate(args, "zero-shot", base_embeddings, base)
    logger.info("stage 4/5: train a %s prefix", "both-sides" if args.full else "question-side")
    run = _train(args, data, base_embeddings)
    best = resolve_checkpoint(run)
    trained_embeddings = base_embeddings
    if args.full:   # the passage side changed: its index must be rebuilt
        trained_embeddings = os.path.join(args.out_dir, "embeddings", os.path.basename(best))
        _embed(args, trained_embeddings, ["--model_file", best], passages)
    logger.info("stage 5/5: evaluate the trained prefix")
    trained = _evaluate(args, "trained", trained_embeddings, ["--model_file", best],
                        newer_than=os.path.join(run, "best_checkpoint.json"))
    bm25 = _metrics(os.path.join(data, "scifact-test-bm25.json"))["metrics"]
    rows = [("BM25 (bm25s)", bm25, "-"), (f"{args.model} zero-shot", _metrics(zero_shot)["metrics"], "0 (frozen)"),
            (f"{args.model} + {'both-sides' if args.full else 'question-side'} prefix", _metrics(trained)["metrics"],
             _share(best))]
    print(f"\nSciFact test (300 queries, {_metrics(zero_shot)['passages']:,} passages); best checkpoint {best}")
    print(f"{'retriever':<42} {'nDCG@10':>8} {'R@100':>7}  trainable parameters")
    for name, metrics, share in rows:
        print(f"{name:<42} {metrics['nDCG@10']:>8.4f} {metrics['R@100']:>7.4f}  {share}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
