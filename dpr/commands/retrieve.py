"""Retrieve passages for questions from embedding shards with FAISS, and evaluate the retrieval.

Two modes:
  --qa_file Q.tsv      open-domain QA (``question<TAB>["answer", ...]``): top-k answer accuracy
                       (--match string|regex), DPR's results JSON with --out_file
  --beir_dir DIR       BEIR (queries.jsonl + qrels/<--split>.tsv): nDCG@k, MAP@k, R@k, P@k, MRR@10,
                       a TREC run file with --out_file
Both report the expected calibration error of a softmax over each query's top-5 scores
(--reliability_plot writes the diagram). The query encoder must be the one the embeddings were made
with (checked against each shard's meta.json). --num_index_shards N searches N index groups one
after another and merges their top-k (exact for flat indexes).

Several tasks in one run: ``--task scifact=ckpt/a --task nfcorpus=ckpt/b`` (prefix, prompt or adapter
checkpoints of one backbone) loads the backbone once, registers every checkpoint in a task library,
checks each task's passage encoder against the index, builds the index once and reports metrics per
task; --out_file / --reliability_plot get the task name before their extension (run.trec ->
run.scifact.trec) and the metrics JSON holds every task under "tasks".

Per-query routing: ``--task auto --task scifact=ckpt/a --task squad=ckpt/b`` encodes each query with the
task it most resembles (each checkpoint needs a task_summary.json: ``python -m dpr.route summarize``) or
with the base model, and writes ONE run; the metrics JSON's "routing" holds the queries per task and each
query id's task. Only question-side tasks (--tune_side question) share the base model's passage index.

This file parses flags into configs and prints; the work is :mod:`dpr.search` (encode and search) and
:mod:`dpr.evaluation.evaluate` (metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from dpr.atomic import atomic_file
from dpr.cli import run_cli, setup_logging
from dpr.device import add_hardware_params
from dpr.embeddings_io import EmbeddingShard
from dpr.evaluation.evaluate import (
    PRINTED_KS,
    QAQuerySet,
    QuerySet,
    evaluate_beir,
    evaluate_qa,
    load_beir_queries,
    load_qa_queries,
    write_qa_results,
)
from dpr.evaluation.metrics import PRIMARY_METRIC, write_trec_run
from dpr.evaluation.qa_validation import MATCH_TYPES
from dpr.indexer.faiss_index import IndexParams
from dpr.inference_options import inference_config_from_args
from dpr.models.encoder import trainable_report
from dpr.options import ConfigError, add_encoder_params, add_merge_lora_param, add_tuning_params
from dpr.retrieval import InferenceModelConfig, load_inference_model, load_task_encoder
from dpr.routing import AUTO, BASE_ROUTE
from dpr.search import (
    Retrieval,
    RetrieveConfig,
    RoutedRetrieval,
    check_index_type,
    metrics_record,
    open_shards,
    retrieve,
    retrieve_routed,
    retrieve_tasks,
    retrieved_passages,
)

logger = logging.getLogger("dense_retriever")

INDEX_PARAM_FLAGS = ("hnsw_m", "ef_search", "ef_construction", "nlist", "pq_m", "nbits", "nprobe")


def index_type(value: str) -> str:
    """argparse type: flat, hnsw, ivfpq or factory:<FAISS index_factory string>."""
    try:
        return check_index_type(value)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def task_spec(value: str) -> tuple[str, str]:
    """argparse type for --task: ``NAME=CHECKPOINT_FOLDER``, or ``auto`` (route each query to a task)."""
    if value.strip() == AUTO:
        return AUTO, ""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT_FOLDER (e.g. scifact=out/ckpt), found {value!r}")
    return name.strip(), path.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder_params(parser)
    add_tuning_params(parser)
    t = parser.add_argument_group("several tasks on one backbone")
    t.add_argument(
        "--task",
        dest="tasks",
        action="append",
        type=task_spec,
        metavar="NAME=CHECKPOINT",
        help="evaluate this task checkpoint (repeat for several; instead of --model_file): one "
        "backbone, one index, metrics per task; '--task auto' routes each query to one of them instead",
    )
    d = parser.add_argument_group("data")
    d.add_argument(
        "--encoded_ctx_file",
        nargs="+",
        required=True,
        help="embedding shard folders or glob patterns (e.g. 'out/wiki_*')",
    )
    d.add_argument("--qa_file", help="QA mode: TSV question<TAB>answers")
    d.add_argument(
        "--ctx_file",
        help="QA mode: passages for answer matching (default: the embeddings' corpus); "
        "must hold the texts that were encoded (checked against their digest)",
    )
    d.add_argument("--beir_dir", help="BEIR mode: folder with queries.jsonl and qrels/")
    d.add_argument("--split", default="test", help="BEIR qrels split (qrels/<split>.tsv)")
    d.add_argument("--out_file", help="QA: DPR results JSON; BEIR: TREC run file")
    d.add_argument("--metrics_file", help="metrics JSON (default <out_file>.metrics.json)")
    d.add_argument("--reliability_plot", help="write the calibration reliability diagram to this PNG")
    d.add_argument("--allow_partial_corpus", action="store_true", help="search even if some shards are missing")
    r = parser.add_argument_group("retrieval")
    r.add_argument("--n-docs", "--n_docs", dest="n_docs", type=int, default=200, help="passages per question")
    r.add_argument("--match", choices=MATCH_TYPES, default="string", help="answer matching (QA mode)")
    r.add_argument("--validation_workers", type=int, default=1, help="processes for answer matching")
    r.add_argument("--batch_size", type=int, default=32, help="questions per encoder batch")
    r.add_argument("--index_type", type=index_type, default="flat", help="flat | hnsw | ivfpq | factory:<string>")
    r.add_argument("--hnsw_index", dest="index_type", action="store_const", const="hnsw", help="= --index_type hnsw")
    r.add_argument("--save_or_load_index", action="store_true", help="load the index if saved, else build and save")
    r.add_argument("--index_path", help="index folder (default <embeddings prefix>_index_<type>)")
    r.add_argument("--index_buffer", type=int, default=50000, help="vectors added to the index per call")
    r.add_argument("--num_index_shards", type=int, default=1, help="search N index groups in turn and merge")
    defaults = IndexParams()
    for name in INDEX_PARAM_FLAGS:
        r.add_argument(f"--{name}", type=int, default=getattr(defaults, name), help="index setting")
    h = add_hardware_params(parser, training=False, int8=True)
    add_merge_lora_param(h)
    h.add_argument("--no_progress", dest="progress", action="store_false")
    return parser


def retrieve_config_from_args(args: argparse.Namespace) -> RetrieveConfig:
    return RetrieveConfig(
        n_docs=args.n_docs,
        batch_size=args.batch_size,
        index_type=args.index_type,
        index_params=IndexParams(**{name: getattr(args, name) for name in INDEX_PARAM_FLAGS}),
        index_buffer=args.index_buffer,
        num_index_shards=args.num_index_shards,
        save_or_load_index=args.save_or_load_index,
        index_path=args.index_path,
        progress=args.progress,
    )


def _check_args(args: argparse.Namespace) -> None:
    if bool(args.qa_file) == bool(args.beir_dir):
        raise ConfigError("pass exactly one of --qa_file (open-domain QA) and --beir_dir (BEIR)")
    if args.validation_workers < 1:
        raise ConfigError(f"--validation_workers must be >= 1, found {args.validation_workers}")


def _suffixed(path: str | None, task: str) -> str | None:
    """``run.trec`` -> ``run.<task>.trec``: one output per task."""
    if path is None:
        return None
    stem, ext = os.path.splitext(path)
    return f"{stem}.{task}{ext}"


def _report(
    args: argparse.Namespace,
    queries: QuerySet,
    result: Retrieval,
    shards: list[EmbeddingShard],
    out_file: str | None,
    plot: str | None,
    passages: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``result``, print the metrics, write --out_file and --reliability_plot; the metrics JSON fields.

    ``passages`` (QA): the retrieved ids' passages when already looked up (several tasks share one lookup).
    """
    if isinstance(queries, QAQuerySet):
        if passages is None:
            passages = retrieved_passages(shards, result.ids, args.ctx_file)
        evaluation = evaluate_qa(queries, result.ids, result.scores, passages, args.match, args.validation_workers)
        print("\n".join(evaluation.summary_lines()))
        if out_file:
            write_qa_results(out_file, queries, result.ids, result.scores, passages, evaluation)
            print(f"results JSON -> {out_file}")
    else:
        evaluation = evaluate_beir(queries, result.ids, result.scores, args.n_docs)
        print("\n".join(evaluation.summary_lines(f"BEIR {queries.name} {queries.split}")))
        if out_file:
            write_trec_run(evaluation.run, out_file, tag="dense")
            print(f"TREC run -> {out_file}")
    print(evaluation.calibration.describe())
    if plot:
        evaluation.calibration.plot(plot)
        print(f"reliability diagram -> {plot}")
    return evaluation.to_dict()


def _report_single(
    args: argparse.Namespace, model_cfg: InferenceModelConfig, cfg: RetrieveConfig, queries: QuerySet
) -> dict[str, Any]:
    """Retrieve and report with --model_file (or the base model); returns the metrics JSON content."""
    shards = open_shards(args.encoded_ctx_file, queries, args.allow_partial_corpus)
    loaded = load_inference_model(model_cfg)
    logger.info("%s", trainable_report(loaded.model))
    result = retrieve(loaded, shards, queries.texts, cfg)
    print(result.stats.describe())
    return {**result.to_dict(), **_report(args, queries, result, shards, args.out_file, args.reliability_plot)}


def _report_tasks(
    args: argparse.Namespace, model_cfg: InferenceModelConfig, cfg: RetrieveConfig, queries: QuerySet
) -> dict[str, Any]:
    """Retrieve and report every --task; returns the metrics JSON content (per task under "tasks")."""
    shards = open_shards(args.encoded_ctx_file, queries, args.allow_partial_corpus)
    encoder = load_task_encoder(model_cfg)
    trainable, total = encoder.library.parameter_counts()
    logger.info(
        "%d tasks on one backbone: %s tuned of %s parameters", len(encoder.tasks), f"{trainable:,}", f"{total:,}"
    )
    results = retrieve_tasks(encoder, shards, queries.texts, cfg)
    stats = next(iter(results.values())).stats
    print(stats.describe())
    passages = None
    if isinstance(queries, QAQuerySet):  # one pass over the corpus file for every task's retrieved ids
        passages = retrieved_passages(shards, [row for r in results.values() for row in r.ids], args.ctx_file)
    per_task = {}
    for task, result in results.items():
        print(f"\n== task {task} ({result.encoder}) ==")
        report = _report(
            args,
            queries,
            result,
            shards,
            _suffixed(args.out_file, task),
            _suffixed(args.reliability_plot, task),
            passages,
        )
        per_task[task] = {"encoder": result.encoder, **report}
    _print_task_summary(per_task, queries.mode)
    return {**stats.to_dict(), "tasks": per_task}


def _report_routed(
    args: argparse.Namespace, model_cfg: InferenceModelConfig, cfg: RetrieveConfig, queries: QuerySet
) -> dict[str, Any]:
    """Retrieve with per-query routing over the --task checkpoints; the metrics JSON content with "routing"."""
    shards = open_shards(args.encoded_ctx_file, queries, args.allow_partial_corpus)
    encoder = load_task_encoder(model_cfg)
    routed = retrieve_routed(encoder, shards, queries.texts, cfg)
    print(routed.retrieval.stats.describe())
    report = _report(args, queries, routed.retrieval, shards, args.out_file, args.reliability_plot)
    routing = routing_record(routed, queries.ids, encoder.tasks)
    width = max(len(r) for r in routing["counts"])
    print(f"\n{'route':<{width}}  queries")
    for route, count in routing["counts"].items():
        print(f"{route:<{width}}  {count}")
    return {**routed.retrieval.to_dict(), **report, "routing": routing}


def routing_record(routed: RoutedRetrieval, ids: Sequence[str], tasks: Sequence[str]) -> dict[str, Any]:
    """The metrics JSON's "routing": queries per route (every task and the base, zeros included) and per id."""
    counts = routed.counts()
    return {
        "counts": {route: counts.get(route, 0) for route in (*tasks, BASE_ROUTE)},
        "queries": dict(zip(ids, routed.routes, strict=True)),
    }


def _print_task_summary(per_task: dict[str, Any], mode: str) -> None:
    width = max(len(t) for t in per_task)
    if mode == "qa":
        print(f"\n{'task':<{width}}  " + "  ".join(f"top-{k:<4d}" for k in PRINTED_KS))
        for task, report in per_task.items():
            acc = report["top_k_accuracy"]
            print(
                f"{task:<{width}}  "
                + "  ".join(f"{acc[str(k)]:<8.4f}" if str(k) in acc else f"{'-':<8}" for k in PRINTED_KS)
            )
    else:
        names = (PRIMARY_METRIC, "MRR@10", "R@100")
        print(f"\n{'task':<{width}}  " + "  ".join(f"{name:<8}" for name in names))
        for task, report in per_task.items():
            values = [report["metrics"].get(name) for name in names]  # None when k > --n-docs
            print(f"{task:<{width}}  " + "  ".join(f"{v:<8.4f}" if v is not None else f"{'-':<8}" for v in values))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    _check_args(args)
    routed = any(name == AUTO for name, _ in args.tasks or ())
    args.tasks = [spec for spec in args.tasks or () if spec[0] != AUTO]
    if routed and not args.tasks:
        raise ConfigError(f"--task {AUTO} routes queries among the other --task NAME=CHECKPOINT flags: give some")
    model_cfg, cfg = inference_config_from_args(args), retrieve_config_from_args(args)
    queries = load_qa_queries(args.qa_file) if args.qa_file else load_beir_queries(args.beir_dir, args.split)
    report = _report_routed if routed else _report_tasks if model_cfg.tasks else _report_single
    content = report(args, model_cfg, cfg, queries)
    metrics_file = args.metrics_file or (f"{args.out_file}.metrics.json" if args.out_file else None)
    if metrics_file:
        with atomic_file(metrics_file) as handle:
            json.dump(metrics_record(queries, cfg.n_docs, content), handle, indent=2)
        print(f"metrics JSON -> {metrics_file}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
