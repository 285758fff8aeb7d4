"""Evaluating a retrieval run against its query set: top-k answer accuracy (open-domain QA) or BEIR's
qrels metrics, each with the calibration of a softmax over every query's top-5 scores.

A run is what the retriever returns: per query a best-first list of passage ids and a (Q, K) score
matrix. The functions here return typed results; printing and file names are the caller's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import numpy as np

from dpr.atomic import atomic_file
from dpr.data.queries import beir_paths, read_beir_queries, read_qa_tsv, read_qrels
from dpr.data.readers import Passage
from dpr.evaluation.calibration import expected_calibration_error, reliability_diagram
from dpr.evaluation.metrics import DEFAULT_KS, PRIMARY_METRIC, evaluate_run
from dpr.evaluation.qa_validation import top_k_accuracy
from dpr.evaluation.retrieval_eval import (
    answer_hits,
    calibration_inputs,
    check_judged_docs,
    judged_queries,
    qa_records,
    relevance_hits,
    run_dict,
)

logger = logging.getLogger(__name__)

PRINTED_KS = (1, 5, 20, 100)  # the top-k accuracies a QA summary shows
BEIR_KS = tuple(sorted({*DEFAULT_KS, 20}))  # BEIR's cutoffs plus 20, the depth DPR reports for QA


@dataclass(frozen=True)
class QAQuerySet:
    """Open-domain QA questions (``question<TAB>answers``); ids are the file's line numbers."""

    mode: ClassVar[str] = "qa"
    path: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    answers: tuple[tuple[str, ...], ...]

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True)
class BeirQuerySet:
    """The judged queries of one BEIR split, in the queries file's order, with their qrels."""

    mode: ClassVar[str] = "beir"
    beir_dir: str
    split: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    qrels: dict[str, dict[str, int]] = field(repr=False)
    qrels_path: str
    queries_path: str

    @property
    def name(self) -> str:
        """The dataset folder's name (``scifact``)."""
        return os.path.basename(os.path.normpath(self.beir_dir))

    def check_corpus(self, corpus_ids: Collection[str], corpus: str) -> None:
        """Warn how many judged doc ids the searched ``corpus`` lacks; none of them is an error."""
        check_judged_docs(self.qrels, corpus_ids, self.qrels_path, corpus)


QuerySet = Union[QAQuerySet, BeirQuerySet]


def load_qa_queries(path: str) -> QAQuerySet:
    pairs = read_qa_tsv(path)
    return QAQuerySet(
        path,
        tuple(str(p.line) for p in pairs),
        tuple(p.question for p in pairs),
        tuple(tuple(p.answers) for p in pairs),
    )


def load_beir_queries(beir_dir: str, split: str = "test") -> BeirQuerySet:
    """The judged queries of ``qrels/<split>.tsv`` (or prepare_data's ``NAME-<split>-*`` pair).

    Judged queries without a text are left out with a warning; none with a text is an error.
    """
    queries_path, qrels_path = beir_paths(beir_dir, split)
    qrels, queries = judged_queries(read_qrels(qrels_path), read_beir_queries(queries_path), qrels_path, queries_path)
    return BeirQuerySet(beir_dir, split, tuple(queries), tuple(queries.values()), qrels, qrels_path, queries_path)


@dataclass(frozen=True)
class Calibration:
    """Expected calibration error of a softmax over each query's top-K scores (10 bins)."""

    ece: float
    top: np.ndarray = field(repr=False)  # (Q', K) scores of the queries with K finite results
    correct: np.ndarray = field(repr=False)  # (Q', K) bool: whether each of them is a hit

    def describe(self) -> str:
        return (
            f"calibration: ECE {self.ece:.4f} (softmax over the top-{self.top.shape[1]} scores, 10 bins, "
            f"{len(self.top)} queries)"
        )

    def plot(self, path: str) -> None:
        """Write the reliability diagram to the PNG ``path``."""
        reliability_diagram(self.top, self.correct, path)


def calibrate(scores: np.ndarray, hits: Sequence[Sequence[bool]]) -> Calibration:
    """scores (Q, K) best first; hits (Q, K_q) whether each retrieved passage is correct."""
    top, correct = calibration_inputs(scores, hits)
    return Calibration(expected_calibration_error(top, correct), top, correct)


@dataclass(frozen=True)
class QAEvaluation:
    accuracy: list[float]  # top-k answer accuracy for k = 1..K
    hits: list[list[bool]]  # (Q, K_q): whether each retrieved passage holds an answer
    calibration: Calibration
    match: str

    def to_dict(self) -> dict[str, Any]:
        """The metrics JSON fields: top_k_accuracy ({"1": ..., "K": ...}) and ece_top5."""
        return {
            "top_k_accuracy": {str(k): a for k, a in enumerate(self.accuracy, start=1)},
            "ece_top5": self.calibration.ece,
        }

    def summary_lines(self) -> list[str]:
        lines = [f"top-k answer accuracy over {len(self.hits)} questions (--match {self.match}):"]
        lines += [f"  top-{k:<4d} {self.accuracy[k - 1]:.4f}" for k in PRINTED_KS if k <= len(self.accuracy)]
        return lines


def evaluate_qa(
    queries: QAQuerySet,
    ids: Sequence[Sequence[str]],
    scores: np.ndarray,
    passages: Mapping[str, Passage],
    match: str = "string",
    workers: int = 1,
) -> QAEvaluation:
    """Answer hits of the retrieved ``ids`` (their texts from ``passages``), top-k accuracy, calibration."""
    hits = answer_hits(queries.answers, ids, passages, match, workers)
    accuracy = top_k_accuracy(hits)
    logger.info("top-k accuracy for k = 1..%d: %s", len(accuracy), [round(a, 4) for a in accuracy])
    return QAEvaluation(accuracy, hits, calibrate(scores, hits), match)


def write_qa_results(
    path: str,
    queries: QAQuerySet,
    ids: Sequence[Sequence[str]],
    scores: np.ndarray,
    passages: Mapping[str, Passage],
    evaluation: QAEvaluation,
) -> None:
    """DPR's results JSON (per question its answers and ranked ctxs with has_answer), atomically."""
    records = qa_records(queries.texts, queries.answers, ids, scores, passages, evaluation.hits)
    with atomic_file(path) as handle:
        json.dump(records, handle, indent=2, ensure_ascii=False)


@dataclass(frozen=True)
class BeirEvaluation:
    metrics: dict[str, float]  # nDCG@k, MAP@k, R@k, P@k for k in ks, and MRR@10
    ks: tuple[int, ...]
    run: dict[str, dict[str, float]] = field(repr=False)  # query id -> doc id -> score
    calibration: Calibration = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The metrics JSON fields: metrics and ece_top5."""
        return {"metrics": self.metrics, "ece_top5": self.calibration.ece}

    def summary_lines(self, title: str) -> list[str]:
        lines = [f"{title}, {len(self.run)} queries:"]
        headline = [f"{name} {self.metrics[name]:.4f}" for name in (PRIMARY_METRIC, "MRR@10") if name in self.metrics]
        if headline:  # absent when n_docs < 10
            lines.append("  " + "  ".join(headline))
        for kind in ("nDCG", "MAP", "R", "P"):
            lines.append("  " + "  ".join(f"{kind}@{k} {self.metrics[f'{kind}@{k}']:.4f}" for k in self.ks))
        return lines


def evaluate_beir(
    queries: BeirQuerySet, ids: Sequence[Sequence[str]], scores: np.ndarray, n_docs: int
) -> BeirEvaluation:
    """BEIR metrics at every cutoff <= ``n_docs`` (the depth searched) and the calibration of the run."""
    ks = tuple(k for k in BEIR_KS if k <= n_docs)
    if len(ks) < len(BEIR_KS):
        logger.warning("metrics at k > --n-docs %d are not computed (pass --n-docs 1000 for all)", n_docs)
    run = run_dict(queries.ids, ids, scores)
    # BEIR's evaluator drops a document whose id equals the query id; do the same so numbers compare
    metrics = evaluate_run(queries.qrels, run, ks, ignore_identical_ids=True)
    return BeirEvaluation(metrics, ks, run, calibrate(scores, relevance_hits(queries.ids, ids, queries.qrels)))
