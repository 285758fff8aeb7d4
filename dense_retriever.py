#!/usr/bin/env python3
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
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np

from dpr.atomic import atomic_file
from dpr.cli import run_cli, setup_logging
from dpr.data.queries import beir_paths, read_beir_qrels, read_beir_queries, read_qa_tsv
from dpr.embeddings_io import EmbeddingShard, EmbeddingsError, check_encoder_match, find_shards
from dpr.encoding import encode_texts
from dpr.evaluation.calibration import expected_calibration_error, reliability_diagram
from dpr.evaluation.metrics import DEFAULT_KS, PRIMARY_METRIC, evaluate_run, write_trec_run
from dpr.evaluation.qa_validation import MATCH_TYPES, top_k_accuracy
from dpr.evaluation.retrieval_eval import (answer_hits, calibration_inputs, check_judged_docs, judged_queries,
                                          qa_records, relevance_hits, run_dict)
from dpr.indexer.faiss_index import IndexParams
from dpr.models.encoder import trainable_report
from dpr.options import ConfigError, add_encoder_params, add_tuning_params, encoder_config_from_args
from dpr.retrieval import (TaskEncoder, default_index_dir, group_shards, load_inference_model,
                           lookup_corpus_passages, search_groups, select_device)
from dpr.training.checkpoint import read_checkpoint_info

logger = logging.getLogger("dense_retriever")

PRINTED_KS = (1, 5, 20, 100)


def index_type(value: str) -> str:
    """argparse type: flat, hnsw, ivfpq or factory:<FAISS index_factory string>."""
    if value in ("flat", "hnsw", "ivfpq") or (value.startswith("factory:") and len(value) > len("factory:")):
        return value
    raise argparse.ArgumentTypeError(f"expected flat, hnsw, ivfpq or factory:<string>, found {value!r}")


def task_spec(value: str) -> tuple[str, str]:
    """argparse type for --task: ``NAME=CHECKPOINT_FOLDER``."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT_FOLDER (e.g. scifact=out/ckpt), found {value!r}")
    return name.strip(), path.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder_params(parser)
    add_tuning_params(parser)
    t = parser.add_argument_group("several tasks on one backbone")
    t.add_argument("--task", dest="tasks", action="append", type=task_spec, metavar="NAME=CHECKPOINT",
                   help="evaluate this task checkpoint (repeat for several; instead of --model_file): one "
                        "backbone, one index, metrics per task")
    d = parser.add_argument_group("data")
    d.add_argument("--encoded_ctx_file", nargs="+", required=True,
                   help="embedding shard folders or glob patterns (e.g. 'out/wiki_*')")
    d.add_argument("--qa_file", help="QA mode: TSV question<TAB>answers")
    d.add_argument("--ctx_file", help="QA mode: passages for answer matching (default: the embeddings' corpus); "
                                      "must hold the texts that were encoded (checked against their digest)")
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
    for name in ("hnsw_m", "ef_search", "ef_construction", "nlist", "pq_m", "nbits", "nprobe"):
        r.add_argument(f"--{name}", type=int, default=getattr(defaults, name), help="index setting")
    h = parser.add_argument_group("hardware")
    h.add_argument("--fp16", dest="precision", action="store_const", const="fp16", default="fp32")
    h.add_argument("--bf16", dest="precision", action="store_const", const="bf16")
    h.add_argument("--no_cuda", action="store_true")
    h.add_argument("--no_progress", dest="progress", action="store_false")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if bool(args.qa_file) == bool(args.beir_dir):
        raise ConfigError("pass exactly one of --qa_file (open-domain QA) and --beir_dir (BEIR)")
    if args.tasks and args.model_file:
        raise ConfigError("pass either --model_file (one checkpoint) or --task NAME=CHECKPOINT (several), not both")
    names = [name for name, _ in args.tasks or []]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--task name(s) {repeated} given more than once; each task needs its own name")
    for name in ("n_docs", "batch_size", "index_buffer", "num_index_shards", "validation_workers"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('n_docs', 'n-docs')} must be >= 1, found {getattr(args, name)}")


def _load_queries(args: argparse.Namespace) -> dict[str, Any]:
    """The questions of the chosen mode: ids, texts, and answers (QA) or qrels (BEIR)."""
    if args.qa_file:
        pairs = read_qa_tsv(args.qa_file)
        return {"mode": "qa", "ids": [str(p.line) for p in pairs], "texts": [p.question for p in pairs],
                "answers": [p.answers for p in pairs]}
    queries_path, qrels_path = beir_paths(args.beir_dir, args.split)
    # BEIR evaluates judged queries only; judged ones without a text are left out with a warning
    qrels, queries = judged_queries(read_beir_qrels(qrels_path), read_beir_queries(queries_path), qrels_path,
                                    queries_path)
    return {"mode": "beir", "ids": list(queries), "texts": list(queries.values()), "qrels": qrels,
            "qrels_path": qrels_path}


def _open_shards(args: argparse.Namespace, queries: dict[str, Any]) -> list[EmbeddingShard]:
    """The embedding shards; in BEIR mode, judged doc ids they lack are counted before any encoding."""
    shards = find_shards(args.encoded_ctx_file, allow_partial=args.allow_partial_corpus)
    if queries["mode"] == "beir":
        corpus = f"the {sum(s.header.count for s in shards)} embedded passages of {shards[0].header.ctx_file}"
        check_judged_docs(queries["qrels"], {pid for s in shards for pid in s.ids()}, queries["qrels_path"], corpus)
    return shards


def _retrieve(args: argparse.Namespace, shards: list[EmbeddingShard], texts: list[str]
              ) -> tuple[np.ndarray, list[list[str]], dict[str, Any]]:
    """Encode the questions, search every shard group; (scores (Q, k), ids, run info)."""
    device = select_device(args.no_cuda, args.precision)
    loaded = load_inference_model(args, device)
    logger.info("%s", trainable_report(loaded.model))
    check_encoder_match(shards[0], *loaded.identity(), loaded.checkpoint)
    config = loaded.model.config
    queries = encode_texts(loaded.model, loaded.tokenizer, texts, "question", max_length=config.sequence_length,
                           batch_size=args.batch_size, device=device, precision=args.precision,
                           progress=args.progress)                                  # (Q, D)
    _check_dim(shards, queries, "the query encoder")
    scores, ids, info = _search(args, shards, queries)
    info["encoder"] = loaded.checkpoint or f"base model {config.pretrained_model_cfg}"
    return scores, ids, info


def _check_dim(shards: list[EmbeddingShard], queries: np.ndarray, what: str) -> None:
    if queries.shape[1] != shards[0].header.dim:
        raise EmbeddingsError(f"{shards[0].meta_path}: passages have dimension {shards[0].header.dim}, "
                              f"{what} gives {queries.shape[1]}")


def _search(args: argparse.Namespace, shards: list[EmbeddingShard], queries: np.ndarray
            ) -> tuple[np.ndarray, list[list[str]], dict[str, Any]]:
    """Build (or load) the index of every shard group once and search ``queries`` (Q, D) in it."""
    params = IndexParams(**{name: getattr(args, name) for name in
                            ("hnsw_m", "ef_search", "ef_construction", "nlist", "pq_m", "nbits", "nprobe")})
    index_dir = (args.index_path or default_index_dir(shards, args.index_type)) if args.save_or_load_index else None
    began = time.perf_counter()
    scores, ids = search_groups(group_shards(shards, args.num_index_shards), queries, args.n_docs,
                                args.index_type, params, args.index_buffer, index_dir)
    seconds = time.perf_counter() - began
    passages = sum(s.header.count for s in shards)
    print(f"searched {passages} passages in {len(shards)} shard(s) with a {args.index_type} index "
          f"({args.num_index_shards} group(s)) for {len(queries)} queries in {seconds:.2f} s, "
          f"{len(queries) / max(seconds, 1e-9):.1f} queries/s (index build/load included)")
    info = {"index_type": args.index_type, "passages": passages, "shards": [s.path for s in shards],
            "ctx_file": shards[0].header.ctx_file, "corpus_digest": shards[0].header.corpus_digest,
            "search_seconds": seconds}
    return scores, ids, info


def _load_tasks(args: argparse.Namespace, device: Any) -> TaskEncoder:
    """One backbone (the first task's), every --task registered on it; flags that contradict one are errors."""
    configs = {}
    for name, path in args.tasks:
        # typed encoder flags must agree with every checkpoint; unset ones come from it
        configs[name] = encoder_config_from_args(args, read_checkpoint_info(path).encoder, source=path)
    encoder = TaskEncoder(configs[args.tasks[0][0]].pretrained_model_cfg, device)
    for name, path in args.tasks:
        encoder.register(name, path, configs[name])
    return encoder


def _retrieve_tasks(args: argparse.Namespace, shards: list[EmbeddingShard], texts: list[str]
                    ) -> tuple[dict[str, tuple[np.ndarray, list[list[str]]]], dict[str, Any], TaskEncoder]:
    """Encode the questions with every task, search ONE index for all of them; per-task (scores, ids)."""
    device = select_device(args.no_cuda, args.precision)
    encoder = _load_tasks(args, device)
    trainable, total = encoder.library.parameter_counts()
    logger.info("%d tasks on one backbone: %s tuned of %s parameters", len(encoder.tasks), f"{trainable:,}",
                f"{total:,}")
    for task in encoder.tasks:       # all before any search: one wrong task must not cost a long run
        check_encoder_match(shards[0], *encoder.identity(task), encoder.checkpoint(task))
    per_task = []
    for task in encoder.tasks:
        vectors = encoder.encode(texts, task, "question", batch_size=args.batch_size, precision=args.precision,
                                 progress=args.progress)                           # (Q, D)
        _check_dim(shards, vectors, f"task {task!r}")
        per_task.append(vectors)
    # One search over all tasks' queries (T*Q, D): the index is built or loaded once, not once per task.
    scores, ids, info = _search(args, shards, np.concatenate(per_task))
    q = len(texts)
    results = {task: (scores[i * q:(i + 1) * q], ids[i * q:(i + 1) * q]) for i, task in enumerate(encoder.tasks)}
    return results, info, encoder


def _calibration(args: argparse.Namespace, scores: np.ndarray, hits: list[list[bool]]) -> float:
    top, correct = calibration_inputs(scores, hits)
    ece = expected_calibration_error(top, correct)
    print(f"calibration: ECE {ece:.4f} (softmax over the top-{top.shape[1]} scores, 10 bins, "
          f"{len(top)} queries)")
    if args.reliability_plot:
        reliability_diagram(top, correct, args.reliability_plot)
        print(f"reliability diagram -> {args.reliability_plot}")
    return ece


def _lookup(args: argparse.Namespace, shard: EmbeddingShard, ids: Any) -> dict[str, Any]:
    """The passages of the retrieved ``ids`` (rows of id lists), from a --ctx_file of the embeddings' corpus."""
    return lookup_corpus_passages(args.ctx_file or shard.header.ctx_file, {pid for row in ids for pid in row},
                                  shard)


def _report_qa(args: argparse.Namespace, q: dict[str, Any], scores: np.ndarray, ids: list[list[str]],
               shard: EmbeddingShard, passages: dict[str, Any] | None = None) -> dict[str, Any]:
    """``passages``: the retrieved ids' passages when already looked up (several tasks share one lookup)."""
    if passages is None:
        passages = _lookup(args, shard, ids)
    hits = answer_hits(q["answers"], ids, passages, args.match, args.validation_workers)
    accuracy = top_k_accuracy(hits)
    logger.info("top-k accuracy for k = 1..%d: %s", len(accuracy), [round(a, 4) for a in accuracy])
    print(f"top-k answer accuracy over {len(hits)} questions (--match {args.match}):")
    for k in PRINTED_KS:
        if k <= len(accuracy):
            print(f"  top-{k:<4d} {accuracy[k - 1]:.4f}")
    if args.out_file:
        records = qa_records(q["texts"], q["answers"], ids, scores, passages, hits)
        with atomic_file(args.out_file) as handle:
            json.dump(records, handle, indent=2, ensure_ascii=False)
        print(f"results JSON -> {args.out_file}")
    return {"top_k_accuracy": {str(k): a for k, a in enumerate(accuracy, start=1)},
            "ece_top5": _calibration(args, scores, hits)}


def _report_beir(args: argparse.Namespace, q: dict[str, Any], scores: np.ndarray,
                 ids: list[list[str]]) -> dict[str, Any]:
    # BEIR's cutoffs plus 20, the depth DPR reports for open-domain QA.
    all_ks = sorted({*DEFAULT_KS, 20})
    ks = [k for k in all_ks if k <= args.n_docs]
    if len(ks) < len(all_ks):
        logger.warning("metrics at k > --n-docs %d are not computed (pass --n-docs 1000 for all)", args.n_docs)
    run = run_dict(q["ids"], ids, scores)
    # BEIR's evaluator drops a document whose id equals the query id; do the same so numbers compare
    metrics = evaluate_run(q["qrels"], run, ks, ignore_identical_ids=True)
    print(f"BEIR {os.path.basename(os.path.normpath(args.beir_dir))} {args.split}, {len(run)} queries:")
    headline = [f"{name} {metrics[name]:.4f}" for name in (PRIMARY_METRIC, "MRR@10") if name in metrics]
    if headline:                      # absent when --n-docs < 10
        print("  " + "  ".join(headline))
    for kind in ("nDCG", "MAP", "R", "P"):
        print("  " + "  ".join(f"{kind}@{k} {metrics[f'{kind}@{k}']:.4f}" for k in ks))
    if args.out_file:
        write_trec_run(run, args.out_file, tag="dense")
        print(f"TREC run -> {args.out_file}")
    return {"metrics": metrics, "ece_top5": _calibration(args, scores, relevance_hits(q["ids"], ids, q["qrels"]))}


def _suffixed(path: str | None, task: str) -> str | None:
    """``run.trec`` -> ``run.<task>.trec``: one output per task."""
    if path is None:
        return None
    stem, ext = os.path.splitext(path)
    return f"{stem}.{task}{ext}"


def _report_single(args: argparse.Namespace, queries: dict[str, Any]) -> dict[str, Any]:
    """Retrieve and report with --model_file (or the base model); returns the metrics JSON content."""
    shards = _open_shards(args, queries)
    scores, ids, info = _retrieve(args, shards, queries["texts"])
    if queries["mode"] == "qa":
        return {**info, **_report_qa(args, queries, scores, ids, shards[0])}
    return {**info, **_report_beir(args, queries, scores, ids)}


def _report_tasks(args: argparse.Namespace, queries: dict[str, Any]) -> dict[str, Any]:
    """Retrieve and report every --task; returns the metrics JSON content (per task under "tasks")."""
    shards = _open_shards(args, queries)
    results, info, encoder = _retrieve_tasks(args, shards, queries["texts"])
    passages = None
    if queries["mode"] == "qa":         # one pass over the corpus file for every task's retrieved ids
        passages = _lookup(args, shards[0], [row for _, ids in results.values() for row in ids])
    per_task = {}
    for task, (scores, ids) in results.items():
        print(f"\n== task {task} ({encoder.checkpoint(task)}) ==")
        task_args = argparse.Namespace(**{**vars(args), "out_file": _suffixed(args.out_file, task),
                                          "reliability_plot": _suffixed(args.reliability_plot, task)})
        if queries["mode"] == "qa":
            report = _report_qa(task_args, queries, scores, ids, shards[0], passages)
        else:
            report = _report_beir(task_args, queries, scores, ids)
        per_task[task] = {"encoder": encoder.checkpoint(task), **report}
    _print_task_summary(per_task, queries["mode"])
    return {**info, "tasks": per_task}


def _print_task_summary(per_task: dict[str, Any], mode: str) -> None:
    width = max(len(t) for t in per_task)
    if mode == "qa":
        print(f"\n{'task':<{width}}  " + "  ".join(f"top-{k:<4d}" for k in PRINTED_KS))
        for task, report in per_task.items():
            acc = report["top_k_accuracy"]
            print(f"{task:<{width}}  " + "  ".join(f"{acc[str(k)]:<8.4f}" if str(k) in acc else f"{'-':<8}"
                                                   for k in PRINTED_KS))
    else:
        names = (PRIMARY_METRIC, "MRR@10", "R@100")
        print(f"\n{'task':<{width}}  " + "  ".join(f"{name:<8}" for name in names))
        for task, report in per_task.items():
            values = [report["metrics"].get(name) for name in names]      # None when k > --n-docs
            print(f"{task:<{width}}  " + "  ".join(f"{v:<8.4f}" if v is not None else f"{'-':<8}" for v in values))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    _check_args(args)
    queries = _load_queries(args)
    content = _report_tasks(args, queries) if args.tasks else _report_single(args, queries)
    metrics_file = args.metrics_file or (f"{args.out_file}.metrics.json" if args.out_file else None)
    if metrics_file:
        with atomic_file(metrics_file) as handle:
            json.dump({"mode": queries["mode"], "queries": len(queries["texts"]), "n_docs": args.n_docs, **content},
                      handle, indent=2)
        print(f"metrics JSON -> {metrics_file}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
