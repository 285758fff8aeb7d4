"""BEIR-style IR metrics computed by ir-measures (trec_eval semantics), and TREC file I/O.

Metric keys are stable: ``nDCG@k``, ``MAP@k``, ``R@k``, ``P@k`` for every k, and ``MRR@10``.

- nDCG@k: trec_eval ``ndcg_cut`` (gain = the graded relevance, discount log2(rank + 1)).
- MAP@k: trec_eval ``map_cut`` as BEIR reports it: precision at each relevant document within
  the top k, summed and divided by the query's *total* number of relevant documents.
- R@k, P@k: relevant retrieved in the top k over all relevant, and over k (not over the
  number retrieved). MRR@10: 1 / rank of the first relevant document within the top 10.

Averages run over every query in the qrels: a query the run has no results for scores 0
(trec_eval ``-c``). BEIR's own evaluator averages only over queries present in the run, which
is the same whenever the retriever answers every query -- it always does here. Queries in the
run but not in the qrels are ignored. Relevance >= 1 counts as relevant.

Tied scores are broken by document id, ascending (the order :func:`write_trec_run` writes),
before evaluation: ir-measures' providers disagree on ties (pytrec_eval orders them by id
descending, its RR by id ascending), which would let two metrics see different rankings.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ir_measures
from ir_measures import AP, RR, P, R, nDCG

from dpr.atomic import atomic_file

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 3, 5, 10, 100, 1000)
PRIMARY_METRIC = "nDCG@10"  # what model selection on BEIR uses
GREATER_IS_BETTER = True

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def _measures(ks: Sequence[int]) -> dict[object, str]:
    """ir-measures measure -> our key, for every cut-off in ``ks`` plus MRR@10."""
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    names: dict[object, str] = {}
    for k in ks:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"every k must be a positive int, found {k!r}")
        names[nDCG @ k] = f"nDCG@{k}"
        names[AP @ k] = f"MAP@{k}"
        names[R @ k] = f"R@{k}"
        names[P @ k] = f"P@{k}"
    names[RR @ 10] = "MRR@10"
    return names


def _best_first(item: tuple[str, float]) -> tuple[float, str]:
    return -item[1], item[0]


def _checked_run(run: Run, ignore_identical_ids: bool) -> dict[str, dict[str, float]]:
    """``run`` with ties broken by doc id and scores replaced by rank-ordered values.

    Each query's docs get scores n, n-1, ..., 1 in (score descending, doc id ascending) order,
    so every provider sees the same ranking. Optionally drops doc == query (BEIR).
    """
    checked: dict[str, dict[str, float]] = {}
    for qid, docs in run.items():
        row: dict[str, float] = {}
        for doc_id, score in docs.items():
            value = float(score)
            if not math.isfinite(value):
                raise ValueError(f"run: query {qid!r} doc {doc_id!r} has score {score!r}")
            # BEIR drops these (a corpus that contains the queries); only on request here
            if not (ignore_identical_ids and doc_id == qid):
                row[str(doc_id)] = value
        ranked = sorted(row.items(), key=_best_first)
        checked[str(qid)] = {doc: float(len(ranked) - i) for i, (doc, _) in enumerate(ranked)}
    return checked


def evaluate_run(
    qrels: Qrels,
    run: Run,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    ignore_identical_ids: bool = False,
) -> dict[str, float]:
    """Mean nDCG@k, MAP@k, R@k, P@k over ``ks`` and MRR@10 of ``run`` against ``qrels``.

    qrels: query id -> doc id -> graded relevance (int). run: query id -> doc id -> score
    (higher is better; any depth). ``ignore_identical_ids`` drops a retrieved doc whose id
    equals its query id, as BEIR's evaluator always does.
    """
    if not qrels:
        raise ValueError("qrels are empty")
    names = _measures(ks)
    checked = _checked_run(run, ignore_identical_ids)
    judged = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    unanswered = [qid for qid in judged if not checked.get(qid)]
    if unanswered:
        logger.warning("%d of %d judged queries have no results; they score 0", len(unanswered), len(judged))
    extra = len(set(checked) - set(judged))
    if extra:
        logger.info("%d run queries have no judgments and are ignored", extra)
    # ir-measures returns nothing for a metric when no judged query has results
    scores = {key: 0.0 for key in names.values()}
    for measure, value in ir_measures.calc_aggregate(list(names), judged, checked).items():
        scores[names[measure]] = float(value)
    return {key: scores[key] for key in names.values()}  # stable order: as _measures lists


def _check_token(value: str, what: str) -> None:
    # TREC files are whitespace-separated: an embedded space would shift every column
    if not value or any(ch.isspace() for ch in value):
        raise ValueError(f"{what} {value!r} must be non-empty and contain no whitespace")


def write_trec_run(run: Run, path: str | os.PathLike[str], tag: str) -> None:
    """Write ``run`` as a TREC run file (``qid Q0 docid rank score tag``), atomically.

    Each query's docs are ranked by score, descending; ties by doc id, ascending. Scores are
    written at full float precision so re-reading cannot create ties.
    """
    _check_token(tag, "run tag")
    lines = []
    for qid in sorted(run):
        _check_token(qid, "query id")
        ranked = sorted(((d, float(v)) for d, v in run[qid].items()), key=_best_first)
        for rank, (doc_id, score) in enumerate(ranked, start=1):
            _check_token(doc_id, f"query {qid!r}: doc id")
            if not math.isfinite(float(score)):
                raise ValueError(f"query {qid!r} doc {doc_id!r} has score {score!r}")
            lines.append(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")
    target = Path(path)
    with atomic_file(target) as handle:  # creates the parent folder; the user's umask applies
        handle.write("".join(lines))
    logger.info("wrote %d lines for %d queries to %s", len(lines), len(run), target)
