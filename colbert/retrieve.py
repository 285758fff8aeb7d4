"""Retrieve with a ColBERT index (end to end or brute force), or re-rank a given run; evaluate.

  python -m colbert.retrieve --index_root indexes --index_name scifact --queries Q --qrels QRELS --output_dir OUT

  end to end:   --index_root R --index_name N --queries Q [--nprobe 10 --faiss_depth 1024] --depth 1000
                (a --index_mode plaid index: [--ncells 2 --centroid_score_threshold 0.45 --ndocs 256])
  brute force:  --index_root R --index_name N --queries Q --brute_force     (exact MaxSim, small corpora)
  re-rank:      --topk RUN --queries Q  (--index_root R --index_name N, or --checkpoint C --collection F)

--queries is queries.tsv (qid<TAB>query) or a BEIR queries.jsonl; with --qrels (BEIR TSV or TREC qrels)
only judged queries are searched and MRR@10, Recall@50/200/1000 and nDCG@10 are printed (the metrics code
of dpr.evaluation). Writes <output_dir>/ranking.tsv (qid pid rank score), ranking.trec and metrics.json.
The checkpoint defaults to the one the index was built with; another one is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import torch

from colbert.checkpoint import load_colbert
from colbert.data import read_collection, read_queries
from colbert.encoding import encode_documents, encode_queries
from colbert.indexing import DocStore, check_model, index_mode, load_index, read_meta
from colbert.model import ColBERT, merge_lora
from colbert.options import add_colbert_model_params, colbert_overrides_from_args
from colbert.plaid import PlaidIndex
from colbert.retrieval import Ranking, brute_force, end_to_end, plaid_search, rerank
from colbert.runs import read_qrels, read_topk, write_ranking_tsv
from colbert.tokenization import ColBERTTokenizer
from dpr.atomic import atomic_file
from dpr.cli import run_cli, setup_logging
from dpr.data.readers import DataFormatError
from dpr.device import add_hardware_params, resolve_precision, select_device
from dpr.evaluation.metrics import evaluate_run, write_trec_run
from dpr.models.hub import load_tokenizer
from dpr.options import ConfigError, add_merge_lora_param

FAISS_DEFAULTS = {"nprobe": 10, "faiss_depth": 1024}
logger = logging.getLogger("colbert.retrieve")  # not __name__: under `python -m` that is "__main__"

REPORTED = ("MRR@10", "R@50", "R@200", "R@1000", "nDCG@10")
# PLAID's defaults (its settings for k = 10 to 100); a PLAID index ranks at most --ndocs documents a query.
PLAID_DEFAULTS = {"ncells": 2, "centroid_score_threshold": 0.45, "ndocs": 256}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colbert.retrieve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_colbert_model_params(parser)
    d = parser.add_argument_group("data")
    d.add_argument("--queries", required=True, help="queries.tsv or BEIR queries.jsonl")
    d.add_argument("--qrels", help="judgments: BEIR qrels TSV or TREC 'qid 0 pid rel'")
    d.add_argument("--index_root")
    d.add_argument("--index_name")
    d.add_argument("--topk", help="run to re-rank: TREC run, ranking.tsv or top1000 TSV")
    d.add_argument("--collection", help="documents for --topk re-ranking without an index (encoded on the fly)")
    d.add_argument("--output_dir", required=True, help="ranking.tsv, ranking.trec and metrics.json go here")
    r = parser.add_argument_group("retrieval")
    r.add_argument("--brute_force", action="store_true", help="exact MaxSim against every document")
    r.add_argument(
        "--nprobe", type=int, help=f"FAISS index: IVF cells visited per query token ({FAISS_DEFAULTS['nprobe']})"
    )
    r.add_argument(
        "--faiss_depth",
        type=int,
        help=f"FAISS index: nearest document tokens per query token ({FAISS_DEFAULTS['faiss_depth']})",
    )
    r.add_argument("--ncells", type=int, help=f"PLAID: centroids a query token visits ({PLAID_DEFAULTS['ncells']})")
    r.add_argument(
        "--centroid_score_threshold",
        type=float,
        help=f"PLAID: centroids below this score are dropped ({PLAID_DEFAULTS['centroid_score_threshold']})",
    )
    r.add_argument(
        "--ndocs",
        type=int,
        help=f"PLAID: candidates kept by centroid interaction ({PLAID_DEFAULTS['ndocs']}); "
        "the best max(ndocs / 4, --depth) of them are scored exactly",
    )
    r.add_argument("--depth", type=int, default=1000, help="documents ranked per query")
    r.add_argument("--bsize", type=int, default=128, help="queries (or documents) per encoder batch")
    r.add_argument(
        "--ignore_identical_ids",
        action="store_true",
        help="drop a document whose id equals the query id (BEIR corpora that contain the queries)",
    )
    h = add_hardware_params(parser, training=False, amp_alias=True)
    add_merge_lora_param(h, "--checkpoint")
    h.add_argument("--no_progress", dest="progress", action="store_false")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    """The index folder (or None), after checking that the flags make one mode."""
    for name in ("nprobe", "faiss_depth", "depth", "bsize", "ncells", "ndocs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if bool(args.index_root) != bool(args.index_name):
        raise ConfigError("pass both --index_root and --index_name, or neither")
    index_dir = os.path.join(args.index_root, args.index_name) if args.index_root else None
    if args.topk is None and index_dir is None:
        raise ConfigError("retrieval needs an index (--index_root, --index_name); re-ranking needs --topk")
    if args.topk and index_dir is None and not (args.collection and args.checkpoint):
        raise ConfigError("--topk without an index needs --collection and --checkpoint")
    if args.brute_force and args.topk:
        raise ConfigError("--brute_force and --topk are two different modes; pass one")
    return index_dir


def _plaid_flags(args: argparse.Namespace, meta: dict[str, Any] | None) -> dict[str, Any]:
    """PLAID's search settings (flags over defaults); refused for an index without centroids."""
    given = {name for name in PLAID_DEFAULTS if getattr(args, name) is not None}
    if given and (meta is None or index_mode(meta) != "plaid" or args.brute_force or args.topk):
        raise ConfigError(
            f"--{', --'.join(sorted(given))}: PLAID settings, for end-to-end search of a --index_mode plaid index"
        )
    return _over_defaults(args, PLAID_DEFAULTS)


def _faiss_flags(args: argparse.Namespace) -> dict[str, int]:
    """The FAISS token index's search settings (flags over defaults)."""
    return _over_defaults(args, FAISS_DEFAULTS)


def _over_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Each setting of ``defaults`` from its flag where one was given (flags default to None)."""
    return {name: default if getattr(args, name) is None else getattr(args, name) for name, default in defaults.items()}


def _warn_plaid(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """Say what a PLAID search will not do that the flags ask for (PT-Retrieval's scripts pass FAISS flags)."""
    given = [name for name in FAISS_DEFAULTS if getattr(args, name) is not None]
    if given:
        logger.warning(
            "--%s: FAISS token-index settings, ignored by a --index_mode plaid index (its settings are --ncells, "
            "--centroid_score_threshold and --ndocs)",
            ", --".join(given),
        )
    if args.depth > settings["ndocs"]:
        logger.warning(
            "--depth %d > --ndocs %d: PLAID ranks at most --ndocs candidates per query, so rankings stop at %d "
            "documents; raise --ndocs for deeper ones",
            args.depth,
            settings["ndocs"],
            settings["ndocs"],
        )


def _mode(args: argparse.Namespace, meta: dict[str, Any] | None) -> str:
    """ "rerank", "brute_force", "plaid" (end to end over a PLAID index) or "end_to_end" (over FAISS)."""
    if args.topk:
        return "rerank"
    if args.brute_force:
        return "brute_force"
    return "plaid" if meta is not None and index_mode(meta) == "plaid" else "end_to_end"


def _queries(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, dict[str, int]] | None]:
    queries = read_queries(args.queries)
    if not args.qrels:
        return queries, None
    qrels = read_qrels(args.qrels)
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise DataFormatError(
            f"{args.queries}: {len(missing)} queries judged in {args.qrels} have no text "
            f"(e.g. {missing[:5]}); are these the matching files?"
        )
    logger.info("%d of %d queries are judged in %s: searching those", len(qrels), len(queries), args.qrels)
    return {qid: queries[qid] for qid in qrels}, qrels


def _model(args: argparse.Namespace, meta: dict[str, Any] | None, index_dir: str | None) -> ColBERT:
    checkpoint = args.checkpoint or (meta or {}).get("checkpoint")
    if not checkpoint:
        raise ConfigError("--checkpoint is required")
    model, _ = load_colbert(checkpoint, colbert_overrides_from_args(args))
    if meta is not None:
        check_model(meta, model, index_dir or "")
    if args.merge_lora:
        model = merge_lora(model)
    return model.to(select_device(args.no_cuda, args.precision))


def _store_for_rerank(
    args: argparse.Namespace,
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    topk: dict[str, list[str]],
    dtype: torch.dtype,
) -> DocStore:
    """Encode just the documents the run names (ColBERT v1's re-ranking without an index)."""
    wanted = {pid for pids in topk.values() for pid in pids}
    passages = read_collection(args.collection, wanted)
    missing = sorted(wanted - set(passages))
    if missing:
        raise DataFormatError(f"{args.topk}: {len(missing)} pids are not in {args.collection} (e.g. {missing[:5]})")
    pids = sorted(passages)
    vectors, doclens = encode_documents(
        model,
        tokenizer,
        [passages[p] for p in pids],
        batch_size=args.bsize,
        precision=args.precision,
        progress=args.progress,
    )
    return DocStore.from_arrays(vectors, doclens, pids, dtype)


def _search(args: argparse.Namespace, index_dir: str | None, queries: dict[str, str]) -> Ranking:
    meta = read_meta(index_dir) if index_dir else None
    _plaid_flags(args, meta)  # refuse misplaced PLAID flags before loading anything
    model = _model(args, meta, index_dir)
    backbone = model.config.backbone
    tokenizer = ColBERTTokenizer.from_config(
        load_tokenizer(backbone.pretrained_model_cfg, backbone.do_lower_case), model.config
    )
    device, similarity = next(model.parameters()).device, model.config.similarity
    # fp16 halves the memory on a GPU; on a CPU fp16 arithmetic is slow, so documents are held as fp32.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    topk = read_topk(args.topk) if args.topk else None
    qids = [qid for qid in queries if topk is None or qid in topk]
    if topk is not None and len(qids) < len(queries):
        logger.warning("%d queries have no candidates in %s: they get no results", len(queries) - len(qids), args.topk)
    q = encode_queries(
        model,
        tokenizer,
        [queries[qid] for qid in qids],
        batch_size=args.bsize,
        precision=args.precision,
        progress=args.progress,
    )  # (Nq, Lq, dim)
    began = time.perf_counter()
    if topk is not None:
        store = (
            load_index(index_dir, False, dtype)[1]
            if index_dir
            else _store_for_rerank(args, model, tokenizer, topk, dtype)
        )
        ranking = rerank(q, qids, [topk[qid] for qid in qids], store, similarity, device=device, progress=args.progress)
    elif args.brute_force:
        store = load_index(index_dir, False, dtype)[1]
        ranking = brute_force(q, qids, store, args.depth, similarity, device=device, progress=args.progress)
    elif _mode(args, meta) == "plaid":
        _, store, plaid = load_index(index_dir, True, dtype)
        assert isinstance(plaid, PlaidIndex)
        _warn_plaid(args, _plaid_flags(args, meta))
        ranking = plaid_search(
            q,
            qids,
            store,
            plaid,
            depth=args.depth,
            similarity=similarity,
            device=device,
            progress=args.progress,
            **_plaid_flags(args, meta),
        )
    else:
        _, store, token_index = load_index(index_dir, True, dtype)
        ranking = end_to_end(
            q,
            qids,
            store,
            token_index,
            depth=args.depth,
            **_faiss_flags(args),
            similarity=similarity,
            device=device,
            progress=args.progress,
        )
    seconds = time.perf_counter() - began
    print(f"ranked {len(ranking)} queries in {seconds:.2f} s ({len(ranking) / max(seconds, 1e-9):.1f} queries/s)")
    return ranking


def _evaluate(args: argparse.Namespace, ranking: Ranking, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    run = {qid: dict(rows) for qid, rows in ranking.items()}
    metrics = evaluate_run(qrels, run, ks=(10, 50, 100, 200, 1000), ignore_identical_ids=args.ignore_identical_ids)
    print("  ".join(f"{name} {metrics[name]:.4f}" for name in REPORTED))
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    index_dir = _check_args(args)
    # auto -> the precision this machine runs fast, chosen once (and logged) for queries and documents alike
    args.precision = resolve_precision(args.precision, select_device(args.no_cuda, args.precision))
    queries, qrels = _queries(args)
    ranking = _search(args, index_dir, queries)
    os.makedirs(args.output_dir, exist_ok=True)
    write_ranking_tsv(ranking, os.path.join(args.output_dir, "ranking.tsv"))
    write_trec_run(
        {qid: dict(rows) for qid, rows in ranking.items()}, os.path.join(args.output_dir, "ranking.trec"), tag="colbert"
    )
    meta = read_meta(index_dir) if index_dir else None
    mode = _mode(args, meta)
    record: dict[str, Any] = {
        "queries": len(ranking),
        "mode": mode,
        "index": index_dir,
        "depth": args.depth,
    }
    if mode == "plaid":
        record.update(_plaid_flags(args, meta))
    elif mode == "end_to_end":  # the settings only the search that ran used (brute force and re-ranking have none)
        record.update(_faiss_flags(args))
    if qrels is not None:
        record["metrics"] = _evaluate(args, ranking, qrels)
    with atomic_file(os.path.join(args.output_dir, "metrics.json")) as handle:
        json.dump(record, handle, indent=2)
    print(f"ranking -> {os.path.join(args.output_dir, 'ranking.tsv')}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
