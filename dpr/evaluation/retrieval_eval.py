"""Scoring a retrieval run: answer hits (QA), relevance hits (BEIR), calibration inputs, result records.

These turn the retriever's output -- per query a best-first list of passage ids and a (Q, K) score
matrix -- into what the metrics in :mod:`dpr.evaluation.qa_validation`, :mod:`.metrics` and
:mod:`.calibration` take, and into DPR's results JSON records.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from dpr.data.readers import DataFormatError, Passage
from dpr.evaluation.qa_validation import has_answer

logger = logging.getLogger(__name__)

CALIBRATION_DEPTH = 5  # PT-Retrieval's softmax over each query's top-5 scores


def _hits_chunk(jobs: Sequence[tuple[Sequence[str], Sequence[str], str]]) -> list[list[bool]]:
    """has_answer for each (answers, passage texts, match) job; module level so worker processes can run it."""
    return [[has_answer(answers, text, match) for text in texts] for answers, texts, match in jobs]


def answer_hits(
    answers: Sequence[Sequence[str]],
    retrieved: Sequence[Sequence[str]],
    passages: Mapping[str, Passage],
    match: str = "string",
    workers: int = 1,
) -> list[list[bool]]:
    """Whether each retrieved passage's text holds one of its question's answers (DPR's has_answer).

    answers: per question its answers; retrieved: per question its best-first passage ids. Returns
    (Q, K_q) bools. ``workers`` > 1 spreads questions over processes (DPR's --validation_workers).
    """
    if len(answers) != len(retrieved):
        raise ValueError(f"{len(answers)} answer lists for {len(retrieved)} retrieved lists")
    jobs = [(list(a), [passages[pid].text for pid in ids], match) for a, ids in zip(answers, retrieved)]
    if workers <= 1 or len(jobs) < 2 * workers:
        return _hits_chunk(jobs)
    size = -(-len(jobs) // (workers * 4))  # a few chunks per worker evens out slow questions
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [row for chunk in pool.map(_hits_chunk, chunks) for row in chunk]


def judged_queries(
    qrels: Mapping[str, Mapping[str, int]], queries: Mapping[str, str], qrels_path: str, queries_path: str
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """The judged queries that have a text: (their qrels, their texts in the queries file's order).

    Judged queries without a text cannot be run: they are left out of the metrics with a warning naming
    both files; none with a text is an error (these qrels belong to another query set).
    """
    missing = [qid for qid in qrels if qid not in queries]
    if len(missing) == len(qrels):
        raise DataFormatError(
            f"{qrels_path}: none of its {len(qrels)} judged query ids is in {queries_path} "
            f"(e.g. {missing[:5]}); are these the qrels of this dataset?"
        )
    if missing:
        logger.warning(
            "%s: %d of %d judged queries are not in %s (e.g. %s); they are left out of the metrics",
            qrels_path,
            len(missing),
            len(qrels),
            queries_path,
            missing[:5],
        )
    texts = {qid: text for qid, text in queries.items() if qid in qrels}
    return {qid: dict(qrels[qid]) for qid in texts}, texts


def check_judged_docs(
    qrels: Mapping[str, Mapping[str, int]], corpus_ids: Collection[str], qrels_path: str, corpus: str
) -> None:
    """Warn how many judged doc ids ``corpus`` (the index's passages) lacks; none found is an error.

    A missing judged document can never be retrieved, so it silently lowers nDCG / recall.
    """
    judged = {doc for docs in qrels.values() for doc in docs}
    missing = sorted(judged.difference(corpus_ids))
    if len(missing) == len(judged):
        raise DataFormatError(
            f"{qrels_path}: none of its {len(judged)} judged doc ids is in {corpus} (e.g. "
            f"{missing[:5]}); wrong corpus or embeddings for these qrels?"
        )
    if missing:
        logger.warning(
            "%s: %d of %d judged doc ids are not in %s (e.g. %s); they can never be retrieved and lower the scores",
            qrels_path,
            len(missing),
            len(judged),
            corpus,
            missing[:5],
        )


def relevance_hits(
    query_ids: Sequence[str], retrieved: Sequence[Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> list[list[bool]]:
    """Whether each retrieved document is judged relevant (grade > 0) for its query. (Q, K_q) bools."""
    return [[qrels.get(qid, {}).get(pid, 0) > 0 for pid in ids] for qid, ids in zip(query_ids, retrieved)]


def calibration_inputs(
    scores: np.ndarray, hits: Sequence[Sequence[bool]], depth: int = CALIBRATION_DEPTH
) -> tuple[np.ndarray, np.ndarray]:
    """The (Q', K) top-``depth`` scores and (Q', K) correctness for ECE, K = min(depth, columns).

    Queries with fewer than K finite results (an approximate index may return fewer) are left out and
    counted in the log: a softmax over a padded row would overstate the confidence.
    """
    width = min(depth, scores.shape[1])
    if width < 1:
        raise ValueError("calibration needs at least one retrieved passage per query")
    top = np.asarray(scores[:, :width], dtype=np.float64)  # (Q, K)
    keep = np.array([len(row) >= width for row in hits]) & np.isfinite(top).all(axis=1)  # (Q,)
    if not keep.all():
        logger.warning(
            "calibration: %d of %d queries have fewer than %d results; left out", int((~keep).sum()), len(keep), width
        )
    correct = np.array([list(row[:width]) for row, k in zip(hits, keep) if k], dtype=bool).reshape(-1, width)
    return top[keep], correct


def qa_records(
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    retrieved: Sequence[Sequence[str]],
    scores: np.ndarray,
    passages: Mapping[str, Passage],
    hits: Sequence[Sequence[bool]],
) -> list[dict[str, Any]]:
    """DPR's results JSON: per question ``{question, answers, ctxs: [{id, title, text, score, has_answer}]}``."""
    records = []
    for q, (question, gold, ids, row_hits) in enumerate(zip(questions, answers, retrieved, hits)):
        ctxs = [
            {
                "id": pid,
                "title": passages[pid].title,
                "text": passages[pid].text,
                "score": float(scores[q, j]),
                "has_answer": bool(row_hits[j]),
            }
            for j, pid in enumerate(ids)
        ]
        records.append({"question": question, "answers": list(gold), "ctxs": ctxs})
    return records


def run_dict(
    query_ids: Sequence[str], retrieved: Sequence[Sequence[str]], scores: np.ndarray
) -> dict[str, dict[str, float]]:
    """``query id -> doc id -> score`` (the run format of :func:`dpr.evaluation.metrics.evaluate_run`)."""
    return {
        qid: {pid: float(scores[q, j]) for j, pid in enumerate(ids)}
        for q, (qid, ids) in enumerate(zip(query_ids, retrieved))
    }
