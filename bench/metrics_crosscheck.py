#!/usr/bin/env python3
"""Our nDCG@10 / MRR@10 / R@100 of a real run against sentence-transformers' and pytrec_eval's (issue 17, item 3).

Reads a TREC run file (``qid Q0 docid rank score tag``: what ``dense_retriever.py --beir_dir ... --out_file
run.trec`` writes, or any other) and a qrels file (BEIR TSV or TREC), computes the three metrics with
``dpr.evaluation.metrics.evaluate_run`` and with both peers (``dpr.evaluation.peer_metrics``: the same
ranking, ties by doc id ascending, the queries with a relevant doc), and prints them with the largest
difference. Exit status 1 when a peer differs from ours by more than ``--tolerance`` (1e-4). Also
reports how many queries have tied scores in their top 100, and what trec_eval's own tie order
(doc id descending) would have given instead.

    python bench/metrics_crosscheck.py --run runs/scifact/test.trec \\
        --qrels ../shared/data/scifact/qrels/test.tsv --json runs/bench/metrics_crosscheck.json

Nothing is trained or encoded: make the run first (any retriever), or use the BM25 run that
``prepare_data.py`` writes for SciFact test (``scifact-test-bm25.trec``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ir_measures  # noqa: E402
from common import write_results  # noqa: E402

from dpr.data.queries import read_qrels  # noqa: E402
from dpr.evaluation.peer_metrics import (  # noqa: E402
    KEYS,
    judged_queries,
    ours,
    pytrec_eval_metrics,
    ranked,
    sentence_transformers_metrics,
)

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def read_run(path: str) -> dict[str, dict[str, float]]:
    """A TREC run file as ``query id -> doc id -> score`` (ir-measures' reader); a repeated pair is an error."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: --run {path} does not exist")
    run: dict[str, dict[str, float]] = {}
    for row in ir_measures.read_trec_run(path):
        docs = run.setdefault(row.query_id, {})
        if row.doc_id in docs:
            raise SystemExit(f"error: {path}: query {row.query_id!r} lists doc {row.doc_id!r} twice")
        docs[row.doc_id] = float(row.score)
    if not run:
        raise SystemExit(f"error: {path}: no run lines")
    return run


def tied_queries(run: dict[str, dict[str, float]], depth: int = 100) -> int:
    """Queries whose top ``depth`` (our order) holds two equal scores."""
    return sum(1 for docs in ranked(run).values() if max(Counter(s for _, s in docs[:depth]).values(), default=0) > 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="TREC run file")
    parser.add_argument("--qrels", default=os.path.join(SHARED, "scifact", "qrels", "test.tsv"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args(argv)
    run, qrels = read_run(args.run), read_qrels(args.qrels)
    rows = {
        "ours": ours(qrels, run),
        "sentence-transformers": sentence_transformers_metrics(qrels, run),
        "pytrec_eval": pytrec_eval_metrics(qrels, run),
        "pytrec_eval, its own tie order": pytrec_eval_metrics(qrels, run, rank_scores=False),
    }
    judged = judged_queries(qrels)
    print(f"run {args.run}: {len(run)} queries, {sum(map(len, run.values()))} lines; qrels {args.qrels}: {len(judged)}")
    print(f"queries with tied scores in their top 100: {tied_queries(run)}")
    print(f"{'':32s}" + "".join(f"{key:>12s}" for key in KEYS))
    for name, scores in rows.items():
        print(f"{name:32s}" + "".join(f"{scores[key]:12.6f}" for key in KEYS))
    diff = {
        peer: max(abs(float(rows[peer][key]) - rows["ours"][key]) for key in KEYS)
        for peer in ("sentence-transformers", "pytrec_eval")
    }
    print("max |peer - ours|: " + ", ".join(f"{peer} {value:.2e}" for peer, value in diff.items()))
    write_results(
        args.json,
        {
            "run": os.path.abspath(args.run),
            "qrels": os.path.abspath(args.qrels),
            "queries": len(judged),
            "tied_queries_top100": tied_queries(run),
            "metrics": {name: {k: float(v) for k, v in scores.items()} for name, scores in rows.items()},
            "max_abs_diff": diff,
        },
    )
    return 0 if max(diff.values()) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
