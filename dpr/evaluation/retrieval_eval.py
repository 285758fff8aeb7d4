"""Scoring a retrieval run: answer hits (QA), relevance hits (BEIR), calibration inputs, result records.

These turn the retriever's output -- per query a best-first list of passage ids and a (Q, K) score
matrix -- into what the metrics in :mod:`dpr.evaluation.qa_validation`, :mod:`.metrics` and
:mod:`.calibration` take, and into DPR's results JSON records.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from dpr.data.readers import Passage
from dpr.evaluation.qa_validation import has_answer

logger = logging.getLogger(__name__)

CALIBRATION_DEPTH = 5       # PT-Retrieval's softmax over each query's top-5 scores


def _hits_chunk(jobs: Sequence[tuple[Sequence[str], Sequence[str], str]]) -> list[list[bool]]:
    """has_answer for each (answers, passage texts, match) job; module level so worker processes can run it."""
    return [[has_answer(answers, text, match) for text in texts] for answers, texts, match in jobs]


def answer_hits(answers: Sequence[Sequence[str]], retrieved: Sequence[Sequence[str]],
                passages: Mapping[str, Passage], match: str = "string", workers: int = 1) -> list[list[bool]]:
    """Whether each retrieved passage's text holds one of its question's answers (DPR's has_answer).

    answers: per question its answers; retrieved: per question its best-first passage ids. Returns
    (Q, K_q) bools. ``workers`` > 1 spreads questions over processes (DPR's --validation_workers).
    """
    if len(answers) != len(retrieved):
        raise ValueError(f"{len(answers)} answer lists for {len(retrieved)} retrieved lists")
    jobs = [(list(a), [passages[pid].text for pid in ids], match) for a, ids in zip(answers, retrieved)]
    if workers <= 1 or len(jobs) < 2 * workers:
        return _hits_chunk(jobs)
    size = -(-len(jobs) // (workers * 4))            # a few chunks per worker evens out slow questions
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [row for chunk in pool.map(_hits_chunk, chunks) for row in chunk]


def relevance_hits(query_ids: Sequence[str], retrieved: Sequence[Sequence[str]],
                   qrels: Mapping[str, Mapping[str, int]]) -> list[list[bool]]:
    """Whether each retrieved document is judged relevant (grade > 0) for its query. (Q, K_q) bools."""
    return [[qrels.get(qid, {}).get(pid, 0) > 0 for pid in ids] for qid, ids in zip(query_ids, retrieved)]


def calibration_inputs(scores: np.ndarray, hits: Sequence[Sequence[bool]],
                       depth: int = CALIBRATION_DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """The (Q', K) top-``depth`` scores and (Q', K) correctness for ECE, K = min(depth, columns).

    Queries with fewer than K finite results (an approximate index may return fewer) are left out and
    counted in the log: a softmax over a padded row would overstate the confidence.
    """
    width = min(depth, scores.shape[1])
    if width < 1:
        raise ValueError("calibration needs at least one retrieved passage per query")
    top = np.asarray(scores[:, :width], dtype=np.float64)                      # (Q, K)
    keep = np.array([len(row) >= width for row in hits]) & np.isfinite(top).all(axis=1)   # (Q,)
    if not keep.all():
        logger.warning("calibration: %d of %d queries have fewer than %d results; left out",
                       int((~keep).sum()), len(keep), width)
    correct = np.array([list(row[:width]) for row, k in zip(hits, keep) if k], dtype=bool).reshape(-1, width)
    return top[keep], correct


def qa_records(questions: Sequence[str], answers: Sequence[Sequence[str]], retrieved: Sequence[Sequence[str]],
               scores: np.ndarray, passages: Mapping[str, Passage],
               hits: Sequence[Sequence[bool]]) -> list[dict[str, Any]]:
    """DPR's results JSON: per question ``{question, answers, ctxs: [{id, title, text, score, has_answer}]}``."""
    records = []
    for q, (question, gold, ids, row_hits) in enumerate(zip(questions, answers, retrieved, hits)):
        ctxs = [{"id": pid, "title": passages[pid].title, "text": passages[pid].text,
                 "score": float(scores[q, j]), "has_answer": bool(row_hits[j])} for j, pid in enumerate(ids)]
        records.append({"question": question, "answers": list(gold), "ctxs": ctxs})
    return records


def run_dict(query_ids: Sequence[str], retrieved: Sequence[Sequence[str]],
             scores: np.ndarray) -> dict[str, dict[str, float]]:
    """``query id -> doc id -> score`` (the run format of :func:`dpr.evaluation.metrics.evaluate_run`)."""
    return {qid: {pid: float(scores[q, j]) for j, pid in enumerate(ids)}
            for q, (qid, ids) in enumerate(zip(query_ids, retrieved))}
