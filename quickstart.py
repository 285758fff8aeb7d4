#!/usr/bin/env python3
"""The whole pipeline on SciFact: prepare -> zero-shot index -> mine -> train a prefix -> evaluate -> one table.

Default: minilm-l6, a 32-token QUESTION-side prefix (``--tune_side question``), the settings of
``run_scripts/cpu_scifact_recipe.sh`` (BENCHMARKS.md section 11): hard negatives mined from the zero-shot
index (dense ranks 3-30, the 7 best), dropout off, the checkpoint with the best dev nDCG@10 kept. The
corpus is encoded once with the frozen base model; that index serves the zero-shot row, the mining, the
training's passage vectors, the dev validation and the trained row, so no passage is encoded twice.
``--full`` switches to the recipe's both-sides run: 64-token prefixes on both sides, 1 mined negative,
8 epochs (the corpus is re-encoded at each validation and at the end).

Every stage writes into ``--out_dir`` and is skipped when its output is already there, so a second run
reuses finished stages (training resumes from its latest checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from dpr.atomic import atomic_file
from dpr.cli import run_cli, setup_logging
from dpr.data.mining import MiningSettings
from dpr.data.preparation import PreparedData, PrepareSettings, prepare_beir
from dpr.data.prepare import NegativeConfig
from dpr.device import add_hardware_params
from dpr.embedding import EmbedConfig, embed_corpus
from dpr.evaluation.evaluate import evaluate_beir, load_beir_queries
from dpr.evaluation.metrics import write_trec_run
from dpr.mining import mine_dense_negatives
from dpr.models.checkpoint_format import resolve_checkpoint, tuned_parameter_counts
from dpr.options import TrainConfig
from dpr.retrieval import InferenceModelConfig, load_inference_model
from dpr.search import RetrieveConfig, metrics_record, open_shards, retrieve
from dpr.training.run import train

logger = logging.getLogger("quickstart")

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data", "scifact")
SPLIT = "test"  # the split that is evaluated (prepared with BM25 negatives from the train split)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beir_dir", default=DEFAULT_DATA, help="a BEIR dataset folder (default: SciFact)")
    parser.add_argument("--out_dir", default="runs/quickstart", help="all outputs go here")
    parser.add_argument("--model", default="minilm-l6", help="encoder (short name, folder or hub name)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="full-size recipe: prefixes on both sides, 64 tokens, 8 epochs (re-encodes the corpus)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (10; 8 with --full)")
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    hardware = add_hardware_params(parser, training=True)
    hardware.add_argument("--no_progress", action="store_true", help="no progress bars (logs only)")
    return parser


def _done(path: str) -> bool:
    if os.path.exists(path):
        logger.info("reusing %s", path)
        return True
    return False


def _metrics(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _model(args: argparse.Namespace, checkpoint: str | None = None) -> InferenceModelConfig:
    """The trained ``checkpoint``, or the frozen base model ``--model``; ``--sequence_length`` either way."""
    overrides = {"sequence_length": args.sequence_length}
    if checkpoint is None:
        overrides["pretrained_model_cfg"] = args.model
    return InferenceModelConfig(
        model_file=checkpoint, encoder_overrides=overrides, precision=args.precision, no_cuda=args.no_cuda
    )


def _embed(args: argparse.Namespace, out_file: str, model: InferenceModelConfig, passages: str) -> None:
    if not _done(out_file + "_0"):
        cfg = EmbedConfig(batch_size=64, progress=not args.no_progress)
        for shard in embed_corpus(load_inference_model(model), passages, out_file, cfg):
            print(f"encoded {shard.header.count} passages in {shard.seconds:.1f} s -> {shard.path}/")


def _evaluate(
    args: argparse.Namespace, name: str, embeddings: str, model: InferenceModelConfig, newer_than: str = ""
) -> dict:
    """The metrics record of ``model`` over the shards ``<embeddings>_*`` on the --beir_dir test split
    (dense_retriever's metrics JSON, saved as ``<name>-metrics.json`` and reused when still current)."""
    metrics = os.path.join(args.out_dir, f"{name}-metrics.json")
    stale = newer_than and os.path.exists(metrics) and os.path.getmtime(metrics) < os.path.getmtime(newer_than)
    if not stale and _done(metrics):
        return _metrics(metrics)
    queries = load_beir_queries(args.beir_dir, SPLIT)
    shards = open_shards(embeddings + "_*", queries)
    cfg = RetrieveConfig(n_docs=100)
    result = retrieve(load_inference_model(model), shards, queries.texts, cfg)
    print(result.stats.describe())
    evaluation = evaluate_beir(queries, result.ids, result.scores, cfg.n_docs)
    print("\n".join(evaluation.summary_lines(f"BEIR {queries.name} {queries.split}")))
    trec = os.path.join(args.out_dir, f"{name}.trec")
    write_trec_run(evaluation.run, trec, tag="dense")
    record = metrics_record(queries, cfg.n_docs, {**result.to_dict(), **evaluation.to_dict()})
    with atomic_file(metrics) as handle:
        json.dump(record, handle, indent=2)
    print(f"TREC run -> {trec}\nmetrics JSON -> {metrics}")
    return record


# The recipe's negatives: skip the three best-ranked non-positives, ranks 0-2 (on SciFact often unlabelled positives).
MINING = MiningSettings(num_negatives=7, range_min=3, range_max=30)


def _mine(args: argparse.Namespace, data: PreparedData, base_embeddings: str) -> str:
    """The train file with its BM25 negatives replaced by ones mined from the zero-shot index."""
    out = os.path.join(args.out_dir, "data", "train-dense.json")
    if not _done(out):
        search = RetrieveConfig(batch_size=64, progress=not args.no_progress)
        shards = open_shards(base_embeddings + "_*")
        report = mine_dense_negatives(
            data.train, load_inference_model(_model(args)), shards, out, MINING, ctx_file=data.passages, search=search
        )
        print("\n".join(report.summary.lines()))
    return out


def _train(args: argparse.Namespace, data: PreparedData, train_file: str, base_embeddings: str) -> str:
    out = os.path.join(args.out_dir, "prefix-both" if args.full else "prefix-question")
    encoder = {
        "pretrained_model_cfg": args.model,
        "tuning": "prefix",
        "sequence_length": args.sequence_length,
        "dropout": 0.0,  # frozen backbone: dropout only adds noise to what the prefix sees (BENCHMARKS.md 7a)
        "prefix_dropout": 0.0,
    }
    if args.full:
        encoder.update(tune_side="both", pre_seq_len=64)
    else:
        encoder.update(tune_side="question", pre_seq_len=32)
    cfg = TrainConfig(
        train_file=(train_file,),
        dev_file=(data.dev,),
        output_dir=out,
        seed=12345,
        batch_size=args.batch_size,
        dev_batch_size=args.batch_size,
        learning_rate=1e-2,
        warmup_percentage=0.05,
        max_grad_norm=2.0,
        # Question-side training looks passage vectors up, so extra hard negatives cost almost nothing.
        hard_negatives=1 if args.full else MINING.num_negatives,
        num_train_epochs=args.epochs or (8 if args.full else 10),
        eval_per_epoch=1,
        val_metric="ndcg@10",  # the best checkpoint is the one with the best dev nDCG@10 over the whole corpus
        val_ctx_file=data.passages,
        log_batch_step=10,
        ctx_embeddings=() if args.full else (base_embeddings + "_*",),
        precision=args.precision,
        no_cuda=args.no_cuda,
    )
    train(cfg, encoder)
    return out


def _share(checkpoint: str) -> str:
    trainable, total = tuned_parameter_counts(checkpoint)
    return f"{100.0 * trainable / total:.2f}% ({trainable:,})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    os.makedirs(args.out_dir, exist_ok=True)
    dataset = os.path.basename(os.path.normpath(args.beir_dir))
    data_dir = os.path.join(args.out_dir, "data")
    logger.info("stage 1/6: prepare %s (BM25 hard negatives, dev held out)", dataset)
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each index build at DEBUG
    settings = PrepareSettings(dev_ratio=0.1, negatives=NegativeConfig(30, 30, seed=0), progress=not args.no_progress)
    data = prepare_beir(args.beir_dir, data_dir, name=dataset, train_split="train", eval_split=SPLIT, settings=settings)
    base = _model(args)
    base_embeddings = os.path.join(args.out_dir, "embeddings", "zero-shot")
    logger.info("stage 2/6: encode the corpus with the frozen base model (the zero-shot index)")
    _embed(args, base_embeddings, base, data.passages)
    logger.info("stage 3/6: evaluate zero-shot")
    zero_shot = _evaluate(args, "zero-shot", base_embeddings, base)
    logger.info("stage 4/6: mine hard negatives from the zero-shot index")
    train_file = _mine(args, data, base_embeddings)
    logger.info("stage 5/6: train a %s prefix", "both-sides" if args.full else "question-side")
    run = _train(args, data, train_file, base_embeddings)
    best = resolve_checkpoint(run)
    trained_embeddings = base_embeddings
    if args.full:  # the passage side changed: its index must be rebuilt
        trained_embeddings = os.path.join(args.out_dir, "embeddings", os.path.basename(best))
        _embed(args, trained_embeddings, _model(args, best), data.passages)
    logger.info("stage 6/6: evaluate the trained prefix")
    trained = _evaluate(
        args, "trained", trained_embeddings, _model(args, best), newer_than=os.path.join(run, "best_checkpoint.json")
    )
    bm25 = _metrics(data.bm25_metrics)["metrics"]
    rows = [
        ("BM25 (bm25s)", bm25, "-"),
        (f"{args.model} zero-shot", zero_shot["metrics"], "0 (frozen)"),
        (f"{args.model} + {'both-sides' if args.full else 'question-side'} prefix", trained["metrics"], _share(best)),
    ]
    print(
        f"\n{dataset} {SPLIT} ({zero_shot['queries']:,} queries, {zero_shot['passages']:,} passages); "
        f"best checkpoint {best}"
    )
    print(f"{'retriever':<42} {'nDCG@10':>8} {'R@100':>7}  trainable parameters")
    for name, metrics, share in rows:
        print(f"{name:<42} {metrics['nDCG@10']:>8.4f} {metrics['R@100']:>7.4f}  {share}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
