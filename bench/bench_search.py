#!/usr/bin/env python3
"""Search benchmark: our DenseIndex (flat, HNSW) against a bare FAISS IndexFlatIP on the same vectors.

Prints, measured side by side in one run:
- queries/s of DenseIndex('flat') and of faiss.IndexFlatIP (ratio; target: ours within 10%),
- queries/s of DenseIndex('hnsw') and its recall@10 against the exact flat top-10.

Vectors: ``--embeddings "<glob of generate_embeddings.py shard folders>"`` (queries are then taken
from the corpus vectors with a little noise), or random unit vectors (``--num_vectors``, default 100k).

    python bench/bench_search.py --num_vectors 100000 --dim 384 --num_queries 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from common import write_results  # noqa: E402

from dpr.embeddings_io import find_shards  # noqa: E402
from dpr.indexer.faiss_index import DenseIndex, IndexParams  # noqa: E402


def load_vectors(args: argparse.Namespace) -> np.ndarray:
    if args.embeddings:
        parts = [np.asarray(shard.vectors(), dtype=np.float32) for shard in find_shards([args.embeddings])]
        return np.concatenate(parts)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.num_vectors, args.dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_queries(vectors: np.ndarray, count: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    picked = vectors[rng.choice(len(vectors), size=count, replace=len(vectors) < count)]
    noisy = picked + 0.5 * rng.standard_normal(picked.shape, dtype=np.float32) * picked.std()
    return noisy.astype(np.float32)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` runs (the least disturbed by other load) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", default=None, help="glob of embedding shard folders")
    parser.add_argument("--num_vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--num_queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw_m", type=int, default=32)
    parser.add_argument("--ef_search", type=int, default=128)
    parser.add_argument("--ef_construction", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (0: FAISS default)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    vectors = load_vectors(args)
    queries = make_queries(vectors, args.num_queries)
    ids = [str(i) for i in range(len(vectors))]
    n, dim = vectors.shape

    ours = DenseIndex(dim, "flat")
    ours.add(vectors, ids)
    bare = faiss.IndexFlatIP(dim)
    bare.add(vectors)
    # Alternate the two so that drifting machine load affects both alike.
    t_bare, (_, bare_labels) = timed(lambda: bare.search(queries, args.k), args.repeats)
    t_ours, (flat_scores, flat_ids) = timed(lambda: ours.search(queries, args.k), args.repeats)
    t_bare2, _ = timed(lambda: bare.search(queries, args.k), args.repeats)
    t_bare = min(t_bare, t_bare2)
    assert [list(map(str, row)) for row in bare_labels] == flat_ids, "flat results differ from bare FAISS"

    params = IndexParams(hnsw_m=args.hnsw_m, ef_search=args.ef_search, ef_construction=args.ef_construction)
    start = time.perf_counter()
    hnsw = DenseIndex(dim, "hnsw", params)
    hnsw.add(vectors, ids)
    build_s = time.perf_counter() - start
    t_hnsw, (_, hnsw_ids) = timed(lambda: hnsw.search(queries, args.k), args.repeats)
    recall = float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(flat_ids, hnsw_ids)]))

    result = {
        "vectors": n,
        "dim": dim,
        "queries": len(queries),
        "k": args.k,
        "faiss_threads": faiss.omp_get_max_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "faiss": faiss.__version__,
        "qps_bare_flat": len(queries) / t_bare,
        "qps_ours_flat": len(queries) / t_ours,
        "ours_over_bare": t_bare / t_ours,
        "hnsw_m": args.hnsw_m,
        "ef_search": args.ef_search,
        "hnsw_build_s": build_s,
        "qps_hnsw": len(queries) / t_hnsw,
        "hnsw_recall_at_k": recall,
        "hnsw_speedup_over_flat": t_ours / t_hnsw,
    }
    print(
        f"{n:,} vectors x {dim}, {len(queries):,} queries, top-{args.k}, FAISS {faiss.__version__}, "
        f"{result['faiss_threads']} threads"
    )
    print(f"flat  bare FAISS IndexFlatIP : {result['qps_bare_flat']:10.1f} queries/s")
    print(
        f"flat  DenseIndex             : {result['qps_ours_flat']:10.1f} queries/s  "
        f"(ours/bare throughput {result['ours_over_bare']:.3f})"
    )
    print(
        f"hnsw  DenseIndex (M={args.hnsw_m}, efSearch={args.ef_search}): {result['qps_hnsw']:10.1f} queries/s, "
        f"recall@{args.k} vs flat {recall:.4f}, build {build_s:.1f} s"
    )
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
