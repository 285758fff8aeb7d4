"""Our metrics recomputed by peers, for cross-checks: sentence-transformers' evaluator and pytrec_eval directly.

Three metrics, under our keys: ``nDCG@10``, ``MRR@10``, ``R@100``. Each peer gets the SAME ranking as
:func:`dpr.evaluation.metrics.evaluate_run` (score descending, ties by doc id ascending), since how ties
are broken is part of the ranking, not of the metric:

- sentence-transformers' ``InformationRetrievalEvaluator.compute_metrics`` takes one list of
  ``{"corpus_id", "score"}`` hits per query. 6.x sorts them by (score descending, corpus id ascending),
  as we do; 3.x-5.x sorted by score alone, keeping the list order for ties. Hits are passed in our order,
  so every version ranks as we do.
- pytrec_eval (trec_eval) breaks ties by doc id DESCENDING, so it is given rank scores (n, n-1, ..., 1 in
  our order), as ir-measures is in ``evaluate_run``. Its ``recip_rank`` has no cut-off: MRR@10 is
  ``recip_rank`` of the run cut to its top 10.

Definitions that differ, and how the inputs are aligned:

- sentence-transformers judges relevance as a set (binary gains): graded qrels would give it a different
  nDCG, so it gets the docs with grade >= 1 (ours: relevant = grade >= 1) and equals ours only on binary
  qrels (BEIR SciFact's are). pytrec_eval uses the grades, as ours does.
- it drops queries without a relevant doc from the average; trec_eval (``-c`` off) and ours keep every
  judged query. Both peers are given the queries with at least one relevant doc, and so is ours.
- its ``MAP@k`` divides by min(k, relevant) where ours divides by all relevant (not compared here);
  its recall@k (relevant in top k / relevant) and MRR@k are ours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dpr.errors import UserError
from dpr.evaluation.metrics import Qrels, Run, evaluate_run

logger = logging.getLogger(__name__)

KEYS = ("nDCG@10", "MRR@10", "R@100")


class PeerMissingError(UserError, ImportError):
    """A peer library that is not installed; the message says what to install."""


def judged_queries(qrels: Qrels) -> dict[str, dict[str, int]]:
    """``qrels`` restricted to queries with at least one relevant (grade >= 1) doc: what every peer averages over."""
    kept = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    return {q: docs for q, docs in kept.items() if any(g >= 1 for g in docs.values())}


def ranked(run: Run) -> dict[str, list[tuple[str, float]]]:
    """Each query's ``(doc, score)`` list in our order: score descending, ties by doc id ascending."""
    return {
        str(q): sorted(((str(d), float(s)) for d, s in docs.items()), key=lambda item: (-item[1], item[0]))
        for q, docs in run.items()
    }


def ours(qrels: Qrels, run: Run) -> dict[str, float]:
    """:func:`evaluate_run`'s values of the compared metrics, over the queries the peers average over."""
    scores = evaluate_run(judged_queries(qrels), run, ks=(10, 100))
    return {key: scores[key] for key in KEYS}


def sentence_transformers_metrics(qrels: Qrels, run: Run) -> dict[str, float]:
    """nDCG@10, MRR@10, recall@100 by sentence-transformers' InformationRetrievalEvaluator (binary relevance)."""
    try:  # 6.x's home of the evaluator; 3.x-5.x (and 6.x, deprecated) also export it from .evaluation
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    except ImportError:
        try:
            from sentence_transformers.evaluation import InformationRetrievalEvaluator
        except ImportError as err:
            raise PeerMissingError(
                f"the sentence-transformers cross-check needs it installed: pip install 'sentence-transformers>=3.0' "
                f"({err})"
            ) from err
    judged = judged_queries(qrels)
    relevant = {q: {d for d, g in docs.items() if g >= 1} for q, docs in judged.items()}
    evaluator = InformationRetrievalEvaluator(
        queries={q: q for q in judged},  # texts are never encoded: compute_metrics only reads the hits
        corpus={},
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[100],
        map_at_k=[100],
        write_csv=False,
    )
    hits = ranked(run)
    results = [[{"corpus_id": d, "score": s} for d, s in hits.get(q, [])] for q in evaluator.queries_ids]
    scores = evaluator.compute_metrics(results)
    return {"nDCG@10": scores["ndcg@k"][10], "MRR@10": scores["mrr@k"][10], "R@100": scores["recall@k"][100]}


def pytrec_eval_metrics(qrels: Qrels, run: Run, *, rank_scores: bool = True) -> dict[str, float]:
    """nDCG@10, MRR@10, recall@100 by pytrec_eval (graded nDCG), averaged over the judged queries.

    ``rank_scores=False`` passes the raw scores, so trec_eval breaks ties its own way (doc id descending):
    only to show that ties matter.
    """
    try:
        import pytrec_eval
    except ImportError as err:
        raise PeerMissingError(
            f"the trec_eval cross-check needs pytrec_eval: pip install pytrec-eval-terrier ({err})"
        ) from err
    judged = judged_queries(qrels)
    hits = ranked(run)
    if rank_scores:
        full = {q: {d: float(len(docs) - i) for i, (d, _) in enumerate(docs)} for q, docs in hits.items()}
    else:
        full = {q: dict(docs) for q, docs in hits.items()}
    top10 = {
        q: dict(sorted(docs.items(), key=lambda item: (-item[1], _desc(item[0])))[:10]) for q, docs in full.items()
    }
    cut = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut_10", "recall_100"}).evaluate(full)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    # trec_eval scores a judged query the run does not answer as 0 (it is absent from its output)
    return {
        "nDCG@10": _mean(cut, "ndcg_cut_10", judged),
        "MRR@10": _mean(rr, "recip_rank", judged),
        "R@100": _mean(cut, "recall_100", judged),
    }


def _desc(doc_id: str) -> tuple[int, ...]:
    """A key that sorts doc ids descending inside an ascending sort (trec_eval's tie order)."""
    return tuple(-ord(ch) for ch in doc_id) + (1,)


def _mean(per_query: Mapping[str, Mapping[str, float]], measure: str, judged: Mapping[str, object]) -> float:
    return sum(per_query.get(q, {}).get(measure, 0.0) for q in judged) / len(judged)
