#!/usr/bin/env python3
"""ColBERT search benchmark (issue 16): exact brute force, the FAISS path and PLAID at several settings, over
fp16 and residual-compressed vectors, measured side by side in one run on one BEIR collection.

    python bench/bench_colbert_search.py --checkpoint runs/colbert/colbert-2000 \\
        --beir_dir ../shared/data/scifact --index_root /tmp/colbert-search-bench --threads 2 --json out.json

Prints, per method: queries/s of search alone and of the whole (query encoding + search), nDCG@10 and
R@100 against the qrels with their difference from exact MaxSim over the whole collection, and the mean
overlap of the top 10 with the exact top 10; per index: bytes, bytes a token and the ratio to the fp16
PLAID index. Targets: PLAID >= 50 queries/s on 2 cores with nDCG@10 within 0.005 of exact; a compressed
index <= 25% of the fp16 index's bytes with nDCG@10 within 0.01 of it.

Indexes are built once under --index_root (the fp16 one by encoding, the others from its vectors with
``colbert.indexing.reindex``) and reused while the checkpoint, collection subset and settings match
(--rebuild forces). --max_docs / --max_queries take a subset (judged documents first) for a quick check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import faiss
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from common import header, write_results  # noqa: E402

from colbert.checkpoint import load_colbert  # noqa: E402
from colbert.data import iter_collection, read_queries  # noqa: E402
from colbert.encoding import encode_queries  # noqa: E402
from colbert.faiss_index import FaissSettings, TokenIndex  # noqa: E402
from colbert.indexing import FAISS_FILE, build_index, index_bytes, load_index, read_meta, reindex  # noqa: E402
from colbert.plaid import PlaidIndex, PlaidSettings  # noqa: E402
from colbert.retrieval import Ranking, brute_force, end_to_end, plaid_search  # noqa: E402
from colbert.runs import read_qrels  # noqa: E402
from colbert.tokenization import ColBERTTokenizer  # noqa: E402
from dpr import device as device_seam  # noqa: E402
from dpr.evaluation.metrics import evaluate_run  # noqa: E402
from dpr.models.hub import load_tokenizer  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")
FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
DEPTH = 100  # documents ranked a query: R@100


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a ColBERT checkpoint folder")
    parser.add_argument("--beir_dir", default=DATA, help="corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    parser.add_argument("--split", default="test")
    parser.add_argument("--index_root", default="/tmp/colbert-search-bench")
    parser.add_argument("--rebuild", action="store_true", help="build the indexes even where they match")
    parser.add_argument("--max_queries", type=int, default=0, help="first N judged queries (0 = all)")
    parser.add_argument("--max_docs", type=int, default=0, help="N documents, judged ones first (0 = all)")
    parser.add_argument("--ncentroids", type=int, default=0, help="PLAID centroids (0 = 2**floor(log2(16 sqrt(n))))")
    parser.add_argument("--nbits", type=int, nargs="+", default=[2], help="residual compressions to compare")
    parser.add_argument(
        "--plaid",
        nargs="+",
        default=["1,0.5,256", "2,0.45,256", "4,0.4,1024"],
        help="PLAID settings 'ncells,centroid_score_threshold,ndocs'",
    )
    parser.add_argument("--faiss_depth", type=int, default=1024)
    parser.add_argument("--skip_faiss", action="store_true", help="leave out the (slow) FAISS path")
    parser.add_argument("--bsize", type=int, default=128, help="queries per encoder batch")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each method (best kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch and FAISS threads (0: their default)")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args()


def load_data(args: argparse.Namespace) -> tuple[list, dict[str, str], dict[str, dict[str, int]]]:
    """The documents (a subset: judged ones first), the judged queries with text, their qrels."""
    qrels = read_qrels(os.path.join(args.beir_dir, "qrels", f"{args.split}.tsv"))
    texts = read_queries(os.path.join(args.beir_dir, "queries.jsonl"))
    qids = [qid for qid in qrels if qid in texts][: args.max_queries or None]
    docs = list(iter_collection(os.path.join(args.beir_dir, "corpus.jsonl")))
    if args.max_docs:
        judged = {pid for qid in qids for pid in qrels[qid]}
        first = [row for row in docs if row[0] in judged]
        docs = (first + [row for row in docs if row[0] not in judged])[: args.max_docs]
    kept = {pid for pid, _ in docs}
    qrels = {qid: {pid: rel for pid, rel in qrels[qid].items() if pid in kept} for qid in qids}
    return docs, {qid: texts[qid] for qid in qids}, {qid: rel for qid, rel in qrels.items() if rel}


def ensure_indexes(args: argparse.Namespace, model, tokenizer, docs: list) -> dict[str, str]:
    """name -> folder: "fp16" (FAISS flat, encoded), "plaid" (fp16 vectors) and "plaid-<n>bit" (reindexed)."""
    os.makedirs(args.index_root, exist_ok=True)
    wanted = {"checkpoint": os.path.abspath(args.checkpoint), "collection": f"{args.beir_dir} ({len(docs)} docs)"}
    digest = model.identity().digest

    def current(folder: str, extra: dict, plaid: PlaidSettings | None = None) -> bool:
        if args.rebuild or not os.path.isdir(folder):
            return False
        meta = read_meta(folder)
        if meta["model_digest"] != digest or any(meta.get(k) != v for k, v in {**wanted, **extra}.items()):
            return False
        stored = meta.get("plaid", {})
        settings = {} if plaid is None else plaid.to_dict()
        return all(stored.get(k) == v for k, v in settings.items() if k != "ncentroids" or v)

    folders = {"fp16": os.path.join(args.index_root, "fp16-faiss")}
    fresh = not current(folders["fp16"], {})
    if fresh:
        print(f"encoding {len(docs)} documents into {folders['fp16']}", flush=True)
        build_index(model, tokenizer, iter(docs), folders["fp16"], settings=FaissSettings(), provenance=wanted)
    for nbits in [0, *args.nbits]:
        name = f"plaid-{nbits}bit" if nbits else "plaid"
        folders[name] = os.path.join(args.index_root, name)
        compression = "residual" if nbits else "none"
        settings = PlaidSettings(ncentroids=args.ncentroids, compression=compression, nbits=nbits or 2)
        source = folders["plaid" if nbits else "fp16"]  # the compressed ones reuse the fp16 PLAID's centroids
        if fresh or not current(folders[name], {"reindexed_from": os.path.abspath(source)}, settings):
            print(f"building {name} from the fp16 vectors of {source}", flush=True)
            reindex(source, folders[name], settings)
            fresh = fresh or not nbits  # new centroids: rebuild the compressed ones too
    return folders


def timed(fn: Callable[[], Ranking], repeats: int) -> tuple[float, Ranking]:
    """Best wall time of ``repeats`` runs and the last result."""
    best, result = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def quality(ranking: Ranking, qrels: dict, exact: Ranking | None) -> dict[str, float]:
    run = {qid: dict(rows) for qid, rows in ranking.items()}
    metrics = evaluate_run(qrels, run, ks=(10, 100), ignore_identical_ids=True)
    out = {"nDCG@10": metrics["nDCG@10"], "R@100": metrics["R@100"]}
    if exact is not None:
        top = [len({p for p, _ in ranking[q][:10]} & {p for p, _ in exact[q][:10]}) / 10 for q in exact]
        out["top10_overlap"] = float(np.mean(top))
    return out


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    print(header(torch.get_num_threads()))
    flags = device_seam._cpu_flags()
    print(f"CPU flags: {', '.join(sorted(flags.intersection(FLAGS))) if flags is not None else 'unreadable'}")
    model, _ = load_colbert(args.checkpoint)
    model.eval()
    backbone = model.config.backbone
    tokenizer = ColBERTTokenizer.from_config(
        load_tokenizer(backbone.pretrained_model_cfg, backbone.do_lower_case), model.config
    )
    docs, queries, qrels = load_data(args)
    folders = ensure_indexes(args, model, tokenizer, docs)
    qids, texts = list(queries), list(queries.values())
    print(f"{len(docs)} documents, {len(qids)} judged queries; depth {DEPTH}; exact = brute-force MaxSim (fp16)")

    encode_s, q = timed(lambda: encode_queries(model, tokenizer, texts, batch_size=args.bsize), args.repeats)
    similarity = model.config.similarity
    meta, store, plaid = load_index(folders["plaid"])  # fp16 vectors + codes: serves exact, FAISS and PLAID
    assert isinstance(plaid, PlaidIndex)
    methods: dict[str, Callable[[], Ranking]] = {
        "exact brute force": lambda: brute_force(q, qids, store, DEPTH, similarity)
    }
    if not args.skip_faiss:
        token_index = TokenIndex.load(os.path.join(folders["fp16"], FAISS_FILE))
        methods[f"FAISS flat, faiss_depth {args.faiss_depth}"] = lambda: end_to_end(
            q, qids, store, token_index, depth=DEPTH, faiss_depth=args.faiss_depth, nprobe=1, similarity=similarity
        )
    for name in ["plaid", *(f"plaid-{n}bit" for n in args.nbits)]:
        _, s, p = (meta, store, plaid) if name == "plaid" else load_index(folders[name])
        stored = "fp16" if name == "plaid" else name.removeprefix("plaid-")
        if name != "plaid":  # exact MaxSim over the decoded vectors: what compression alone costs
            methods[f"exact brute force, {stored} vectors"] = lambda s=s: brute_force(q, qids, s, DEPTH, similarity)
        for setting in args.plaid:
            ncells, threshold, ndocs = setting.split(",")
            kwargs = {"ncells": int(ncells), "centroid_score_threshold": float(threshold), "ndocs": int(ndocs)}
            label = f"PLAID {stored} ncells {ncells} thr {threshold} ndocs {ndocs}"
            methods[label] = lambda s=s, p=p, kwargs=kwargs: plaid_search(
                q, qids, s, p, depth=DEPTH, similarity=similarity, **kwargs
            )

    results: dict = {"header": header(torch.get_num_threads()), "docs": len(docs), "queries": len(qids)}
    results["encode_queries_per_s"] = len(qids) / encode_s
    print(f"query encoding alone: {len(qids) / encode_s:.1f} queries/s")
    print(
        f"{'method':<48} {'search q/s':>10} {'whole q/s':>10} {'nDCG@10':>8} {'d exact':>8} "
        f"{'R@100':>7} {'d exact':>8} {'top10':>6}"
    )
    exact: Ranking | None = None
    rows = {}
    for label, fn in methods.items():
        seconds, ranking = timed(fn, args.repeats)
        exact = exact or ranking
        scores = quality(ranking, qrels, exact)
        base = rows.get("exact brute force", scores)
        row = {
            "search_qps": len(qids) / seconds,
            "whole_qps": len(qids) / (seconds + encode_s),
            **scores,
            "d_nDCG@10": scores["nDCG@10"] - base["nDCG@10"],
            "d_R@100": scores["R@100"] - base["R@100"],
        }
        rows[label] = row
        print(
            f"{label:<48} {row['search_qps']:>10.1f} {row['whole_qps']:>10.1f} {row['nDCG@10']:>8.4f} "
            f"{row['d_nDCG@10']:>+8.4f} {row['R@100']:>7.4f} {row['d_R@100']:>+8.4f} {row['top10_overlap']:>6.3f}",
            flush=True,
        )
    results["methods"] = rows
    for label, row in rows.items():  # target (b): a compressed index within 0.01 nDCG@10 of the fp16 one
        if label.startswith("PLAID ") and not label.startswith("PLAID fp16"):
            fp16_row = rows["PLAID fp16 " + label.split(" ", 2)[2]]
            row["d_nDCG@10_vs_fp16"] = row["nDCG@10"] - fp16_row["nDCG@10"]
            print(f"{label}: nDCG@10 {row['d_nDCG@10_vs_fp16']:+.4f} against the same PLAID setting over fp16")
    results["indexes"] = sizes(folders, meta["num_embeddings"])
    write_results(args.json, results)
    return 0


def sizes(folders: dict[str, str], tokens: int) -> dict[str, dict]:
    """Bytes of each index (the FAISS one with and without faiss.index), a token, and against fp16 PLAID."""
    fp16 = index_bytes(folders["plaid"])
    table = {
        "fp16 vectors, FAISS flat": index_bytes(folders["fp16"]),
        "fp16 vectors only": index_bytes(folders["fp16"], (FAISS_FILE,)),
    }
    table.update({name: index_bytes(folder) for name, folder in folders.items() if name.startswith("plaid")})
    print(f"{'index':<28} {'bytes':>14} {'bytes/token':>12} {'vs fp16 PLAID':>14}")
    out = {}
    for name, total in table.items():
        out[name] = {"bytes": total, "bytes_per_token": total / tokens, "vs_fp16_plaid": total / fp16}
        print(f"{name:<28} {total:>14,} {total / tokens:>12.1f} {total / fp16:>14.3f}")
    return out


if __name__ == "__main__":
    sys.exit(main())
