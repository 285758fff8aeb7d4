"""Convert a BEIR dataset or SQuAD v1.1 into DPR training data, a passages TSV, evaluation files and a
BM25 baseline; or re-mine the hard negatives of DPR training data with a dense model (``mine``).

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

  python prepare_data.py mine --train_file data/scifact/scifact-train.json --model_file runs/round1 \\
      --ctx_file data/scifact/scifact-passages.tsv --out_file data/scifact/scifact-train-dense.json \\
      --range_min 3 --range_max 100 --num_negatives 30 --relative_margin 0.05

writes the training JSON again with ``hard_negative_ctxs`` from the model's dense ranking (every other field
kept) and a summary of what was kept and dropped beside it (NAME.mining.json). The ranking comes from
--encoded_ctx_file (generate_embeddings.py shards of the model's passage encoder, checked as
dense_retriever.py checks them) or, without it, from --ctx_file encoded with the model first (into a
temporary folder, or kept at --embeddings_out). The library is dpr.mining / dpr.data.mining.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time

from dpr.cli import run_cli, setup_logging
from dpr.data.bm25 import BM25Config
from dpr.data.corpus import resolve_corpus_path
from dpr.data.mining import SAMPLING_STRATEGIES, MiningSettings
from dpr.data.preparation import PreparedData, PrepareSettings, prepare_beir, prepare_squad
from dpr.data.prepare import NegativeConfig
from dpr.data.readers import expand_patterns
from dpr.device import add_hardware_params
from dpr.embedding import EmbedConfig
from dpr.inference_options import inference_config_from_args
from dpr.mining import embed_for_mining, mine_dense_negatives
from dpr.options import ConfigError, add_encoder_params, add_tuning_params
from dpr.retrieval import load_inference_model
from dpr.search import RetrieveConfig, open_shards

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
    _add_mine_parser(sub)
    return parser


def _add_mine_parser(sub: argparse._SubParsersAction) -> None:
    mine = sub.add_parser("mine", help="hard negatives from a dense model's ranking: DPR JSON in, DPR JSON out")
    add_encoder_params(mine)
    add_tuning_params(mine)
    g = mine.add_argument_group("data")
    g.add_argument("--train_file", nargs="+", required=True, help="DPR JSON/JSONL files or glob patterns")
    g.add_argument("--out_file", required=True, help="mined DPR JSON; the summary goes beside it (NAME.mining.json)")
    g.add_argument(
        "--encoded_ctx_file",
        nargs="+",
        help="embedding shards of the model's passage encoder (folders or globs); without them --ctx_file is encoded",
    )
    g.add_argument(
        "--ctx_file",
        help="corpus (DPR TSV, BEIR corpus.jsonl or folder): encoded when no --encoded_ctx_file is given; the "
        "hard negatives' texts come from it (default: the corpus the shards were encoded from)",
    )
    g.add_argument("--embeddings_out", help="keep the encoded --ctx_file shard at <prefix>_0 (default: a temp folder)")
    d = MiningSettings()
    m = mine.add_argument_group("mining (sentence-transformers' mine_hard_negatives controls)")
    m.add_argument("--num_negatives", type=int, default=d.num_negatives, help="hard negatives per question, at most")
    m.add_argument("--range_min", type=int, default=d.range_min, help="skip the best N non-positive passages")
    m.add_argument("--range_max", type=int, default=d.range_max, help="look no deeper than this non-positive rank")
    m.add_argument("--absolute_margin", type=float, help="drop a candidate scoring > positive score - margin")
    m.add_argument(
        "--relative_margin", type=float, help="drop a candidate scoring > positive - |positive| * margin (0..1)"
    )
    m.add_argument("--sampling_strategy", choices=SAMPLING_STRATEGIES, default=d.sampling_strategy)
    m.add_argument("--seed", type=int, default=d.seed, help="seeds --sampling_strategy random (per question)")
    s = mine.add_argument_group("search")
    s.add_argument("--batch_size", type=int, default=64, help="texts per forward pass (questions, passages)")
    s.add_argument("--index_type", default="flat", help="flat | hnsw | ivfpq | factory:<string>")
    s.add_argument("--index_path", help="load the FAISS index saved here (if built from these shards), else save it")
    h = add_hardware_params(mine, training=False, int8=True)
    h.add_argument("--no_progress", action="store_true", help="no progress bars")


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


def mining_settings_from_args(args: argparse.Namespace) -> MiningSettings:
    """The mining flags are named as MiningSettings' fields."""
    return MiningSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MiningSettings)})


def _search_config(args: argparse.Namespace) -> RetrieveConfig:
    return RetrieveConfig(
        batch_size=args.batch_size,
        index_type=args.index_type,
        save_or_load_index=args.index_path is not None,
        index_path=args.index_path,
        progress=not args.no_progress,
    )


def _mine(args: argparse.Namespace) -> int:
    settings, search = mining_settings_from_args(args), _search_config(args)  # bad flags before any loading
    if not args.encoded_ctx_file and not args.ctx_file:
        raise ConfigError("pass --encoded_ctx_file (shards of the model's passage encoder) or --ctx_file (to encode)")
    if args.encoded_ctx_file and args.embeddings_out:
        raise ConfigError("--embeddings_out keeps an encoded --ctx_file; --encoded_ctx_file shards need no encoding")
    expand_patterns(args.train_file)  # missing inputs, too, fail before a model is loaded
    shards = open_shards(args.encoded_ctx_file) if args.encoded_ctx_file else None
    if args.ctx_file:
        resolve_corpus_path(args.ctx_file)
    logger.info("settings: %s", json.dumps(vars(args), sort_keys=True))
    loaded = load_inference_model(inference_config_from_args(args))
    started = time.perf_counter()
    temporary = shards is None and not args.embeddings_out
    scratch = (
        tempfile.TemporaryDirectory(dir=_folder_of(args.out_file), prefix=".mining-embeddings-")
        if temporary
        else contextlib.nullcontext()
    )
    with scratch as folder:
        if shards is None:  # the corpus is encoded once: into a temp folder beside --out_file, or --embeddings_out
            embed = EmbedConfig(batch_size=args.batch_size, progress=not args.no_progress)
            prefix = os.path.join(folder, "corpus") if temporary else args.embeddings_out
            shards = embed_for_mining(loaded, args.ctx_file, prefix, embed)
        report = mine_dense_negatives(
            args.train_file, loaded, shards, args.out_file, settings, ctx_file=args.ctx_file, search=search
        )
    print("\n".join(report.summary.lines()))
    print(f"mined DPR JSON -> {report.out_file} ({report.record['records']} records); summary -> {report.summary_file}")
    logger.info("done in %.1f s", time.perf_counter() - started)
    return 0


def _folder_of(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.source == "mine":
        return _mine(args)
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
