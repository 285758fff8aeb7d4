#!/usr/bin/env python3
"""Per-query routing on a mixed query stream: own-prefix vs routed vs zero-shot nDCG@10 per domain.

    bash run_scripts/cpu_routing_bench.sh      # trains both tasks (with summaries), then runs:
    python bench/routing.py --task scifact=runs/recipe-minilm-l6/prefix-question-s12345 \
        --task squad=runs/route-squad/run \
        --domain scifact ../shared/data/scifact/queries.jsonl ../shared/data/scifact/qrels/test.tsv \
            'runs/recipe-minilm-l6/zero-shot_*' \
        --domain squad runs/route-squad/data/squad-test-queries.jsonl runs/route-squad/data/squad-test-qrels.tsv \
            'runs/route-squad/zero-shot_*' \
        --max_queries 300 --leave_one_out --out bench/results/routing.json

Every --task is a question-side task checkpoint with a task_summary.json (``python -m dpr.route summarize``);
every --domain is NAME QUERIES.jsonl QRELS.tsv EMBEDDINGS (the zero-shot index of that domain's corpus: the
passage side of a question-side task). A domain named like a task is that task's own domain. The judged
queries of all domains (at most --max_queries per domain, sampled with --seed) are shuffled into ONE stream and
routed together; each domain's queries are then searched in its own index with:

  own prefix  the domain's own task (domains with a task only)
  routed      TaskEncoder.encode(stream, task="auto"): the task each query most resembles, or the base model
  zero-shot   the base model (the backbone with no task active)
  held out    (--leave_one_out) routed with the domain's own task unregistered: the domain is then one no
              registered task was trained on, and routing must not fall below zero-shot

and the table prints nDCG@10 per row and how often routing chose each task.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpr.atomic import atomic_file  # noqa: E402
from dpr.cli import setup_logging  # noqa: E402
from dpr.data.queries import read_beir_queries, read_qrels  # noqa: E402
from dpr.embeddings_io import EmbeddingShard  # noqa: E402
from dpr.evaluation.metrics import evaluate_run  # noqa: E402
from dpr.retrieval import TaskEncoder  # noqa: E402
from dpr.routing import BASE_ROUTE, choose_routes  # noqa: E402
from dpr.search import RetrieveConfig, open_shards, search  # noqa: E402


@dataclass
class Domain:
    name: str
    ids: list[str]
    texts: list[str]
    qrels: dict[str, dict[str, int]]
    shards: list[EmbeddingShard]


def read_domain(name: str, queries: str, qrels_path: str, embeddings: str, max_queries: int, seed: int) -> Domain:
    qrels = read_qrels(qrels_path)
    found = read_beir_queries(queries, only=set(qrels))
    ids = sorted(found)
    if len(ids) > max_queries:
        ids = sorted(random.Random(seed).sample(ids, max_queries))
    return Domain(name, ids, [found[i] for i in ids], {i: qrels[i] for i in ids}, open_shards(embeddings))


def ndcg(domain: Domain, vectors: np.ndarray, n_docs: int) -> float:
    """nDCG@10 of ``vectors`` (the domain's queries, (Q, D)) in the domain's own index."""
    scores, ids, _ = search(domain.shards, vectors, RetrieveConfig(n_docs=n_docs))
    run = {qid: dict(zip(row, map(float, s), strict=False)) for qid, row, s in zip(domain.ids, ids, scores)}
    return evaluate_run(domain.qrels, run, ks=(10,))["nDCG@10"]


def compose(encoder: TaskEncoder, texts: list[str], routes: list[str], base: np.ndarray) -> np.ndarray:
    """Each text's vector from its route (a task or the base model) -> (N, D)."""
    out = base.copy()
    for task in set(routes) - {BASE_ROUTE}:
        rows = [i for i, r in enumerate(routes) if r == task]
        out[rows] = encoder.encode([texts[i] for i in rows], task)
    return out


def counts(routes: list[str], names: list[str]) -> dict[str, int]:
    return {name: routes.count(name) for name in (*names, BASE_ROUTE)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--domain", action="append", nargs=4, required=True, metavar=("NAME", "Q", "QRELS", "EMB"))
    parser.add_argument("--max_queries", type=int, default=300, help="judged queries per domain (sampled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_docs", type=int, default=100)
    parser.add_argument("--leave_one_out", action="store_true", help="also route each domain without its own task")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args(argv)
    setup_logging()
    tasks = dict(spec.split("=", 1) for spec in args.task)
    encoder = TaskEncoder.from_checkpoints(tasks)
    domains = [read_domain(*spec, args.max_queries, args.seed) for spec in args.domain]
    stream = [(d, i) for d, domain in enumerate(domains) for i in range(len(domain.texts))]
    random.Random(args.seed).shuffle(stream)  # one mixed stream: routing never sees which domain a query is from
    texts = [domains[d].texts[i] for d, i in stream]
    routed, routes = encoder.encode(texts, "auto", return_routes=True)
    base = encoder.base_encode(texts)
    names = list(encoder.tasks)
    summaries = {t: encoder.summary(t) for t in names}
    rows = []
    for d, domain in enumerate(domains):
        at = [k for k, (dd, _) in enumerate(stream) if dd == d]
        order = np.argsort([stream[k][1] for k in at])  # back to the domain's own query order
        at = [at[k] for k in order]
        row = {
            "domain": domain.name,
            "queries": len(at),
            "own_prefix": ndcg(domain, encoder.encode(domain.texts, domain.name), args.n_docs)
            if domain.name in tasks
            else None,
            "routed": ndcg(domain, routed[at], args.n_docs),
            "zero_shot": ndcg(domain, base[at], args.n_docs),
            "routes": counts([routes[k] for k in at], names),
        }
        if args.leave_one_out and domain.name in tasks and len(tasks) > 1:
            others = {t: s for t, s in summaries.items() if t != domain.name}
            held_routes = choose_routes(others, base[at])
            row["held_out_routed"] = ndcg(domain, compose(encoder, domain.texts, held_routes, base[at]), args.n_docs)
            row["held_out_routes"] = counts(held_routes, names)
        rows.append(row)
    print_table(rows, names, summaries)
    if args.out:
        with atomic_file(args.out) as handle:
            json.dump(
                {"tasks": tasks, "thresholds": {t: s.threshold for t, s in summaries.items()}, "rows": rows},
                handle,
                indent=2,
            )
        print(f"-> {args.out}")
    return 0


def print_table(rows: list[dict], names: list[str], summaries: dict) -> None:
    print(
        "thresholds: "
        + ", ".join(f"{t} {s.threshold:.4f} ({s.quantile:.0%} of {s.held_out} held out)" for t, s in summaries.items())
    )
    routes_head = " / ".join((*names, "base"))
    print(f"\n| domain | queries | own prefix | routed | zero-shot | routed - own | routed to {routes_head} |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        own = f"{row['own_prefix']:.4f}" if row["own_prefix"] is not None else "-"
        delta = f"{row['routed'] - row['own_prefix']:+.4f}" if row["own_prefix"] is not None else "-"
        chosen = " / ".join(str(v) for v in row["routes"].values())
        print(
            f"| {row['domain']} | {row['queries']} | {own} | {row['routed']:.4f} | {row['zero_shot']:.4f} | "
            f"{delta} | {chosen} |"
        )
        if "held_out_routed" in row:
            chosen = " / ".join(str(v) for v in row["held_out_routes"].values())
            gain = row["held_out_routed"] - row["zero_shot"]
            print(
                f"| {row['domain']}, its task unregistered | {row['queries']} | - | {row['held_out_routed']:.4f} | "
                f"{row['zero_shot']:.4f} | vs zero-shot {gain:+.4f} | {chosen} |"
            )


if __name__ == "__main__":
    sys.exit(main())
