"""Our nDCG@10 / MRR@10 / R@100 equal sentence-transformers' and pytrec_eval's on the same run (1e-4), ties included."""

from __future__ import annotations

import numpy as np
import pytest

from dpr.evaluation.peer_metrics import KEYS, judged_queries, ours, pytrec_eval_metrics, sentence_transformers_metrics

TOL = 1e-4


def _doc(i: int) -> str:
    # ids of several lengths: ties are broken by the id as a STRING ("d10" < "d7"), and every peer must agree
    return f"d{i}"


def tied_run_and_qrels(graded: bool, seed: int = 7) -> tuple[dict, dict]:
    """8 queries x 150 docs whose scores take 20 values (ties of ~8 docs all down the ranking), and qrels.

    Relevant docs score in the upper 8 values (the others below 18), so the top 10 holds some of them.
    Query q5 has no results, q6 is judged with grade 0 only (no relevant doc), q7 is in the run but not in
    the qrels; q0's relevant docs sit inside the ties that straddle ranks 10 and 100.
    """
    rng = np.random.default_rng(seed)
    run, qrels = {}, {}
    for q in range(8):
        levels = rng.integers(0, 18, size=150)  # (150,)
        relevant = rng.choice(150, size=int(rng.integers(1, 9)), replace=False)
        levels[relevant] = rng.integers(12, 20, size=len(relevant))
        if q != 5:
            run[f"q{q}"] = {_doc(i): float(levels[i]) / 19.0 for i in range(150)}
        if q < 7:
            grades = rng.integers(1, 4, size=len(relevant))  # drawn either way: the same run for both kinds
            qrels[f"q{q}"] = {_doc(int(i)): int(g) if graded else 1 for i, g in zip(relevant, grades)}
            qrels[f"q{q}"].setdefault(_doc(int(rng.integers(150))), 0)  # a judged non-relevant doc
    qrels["q6"] = {_doc(3): 0, _doc(4): 0}
    order = sorted(run["q0"], key=lambda d: (-run["q0"][d], d))
    qrels["q0"] = {order[9]: 1, order[10]: 1 + graded, order[99]: 1, order[100]: 1, order[140]: 1}
    assert run["q0"][order[9]] == run["q0"][order[10]] and run["q0"][order[99]] == run["q0"][order[100]]
    return run, qrels


def _assert_agree(a: dict[str, float], b: dict[str, float]) -> None:
    for key in KEYS:
        assert abs(a[key] - b[key]) <= TOL, f"{key}: {a[key]} vs {b[key]}"


def test_hand_computed_ties():
    """One query, three docs tied: we rank a, b, c (id ascending); trec_eval on raw scores ranks c, b, a."""
    pytest.importorskip("pytrec_eval")  # comes with ir-measures
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5}}
    assert ours(qrels, run) == {"nDCG@10": 1.0, "MRR@10": 1.0, "R@100": 1.0}
    assert pytrec_eval_metrics(qrels, run) == pytest.approx(ours(qrels, run))
    raw = pytrec_eval_metrics(qrels, run, rank_scores=False)
    assert raw["MRR@10"] == pytest.approx(1 / 3) and raw["nDCG@10"] == pytest.approx(1 / np.log2(4))


def test_sentence_transformers_agrees_on_a_tied_run():
    pytest.importorskip("sentence_transformers")
    run, qrels = tied_run_and_qrels(graded=False)
    mine, theirs = ours(qrels, run), sentence_transformers_metrics(qrels, run)
    _assert_agree(mine, theirs)
    assert all(0.0 < mine[key] < 1.0 for key in KEYS)  # not a degenerate run
    assert set(judged_queries(qrels)) == {f"q{i}" for i in range(6)}  # q6 (no relevant doc) dropped, q5 kept


def test_pytrec_eval_agrees_on_a_tied_graded_run():
    pytest.importorskip("pytrec_eval")
    run, qrels = tied_run_and_qrels(graded=True)
    mine = ours(qrels, run)
    _assert_agree(mine, pytrec_eval_metrics(qrels, run))
    # the ties matter: trec_eval's own tie order (doc id descending) gives other values on this run
    raw = pytrec_eval_metrics(qrels, run, rank_scores=False)
    assert max(abs(raw[key] - mine[key]) for key in KEYS) > 1e-3


def test_graded_qrels_are_where_sentence_transformers_differs():
    """sentence-transformers' nDCG has binary gains: on graded qrels it equals ours on the binarised qrels."""
    pytest.importorskip("sentence_transformers")
    run, graded = tied_run_and_qrels(graded=True)
    binary = {q: {d: int(g >= 1) for d, g in docs.items()} for q, docs in graded.items()}
    theirs = sentence_transformers_metrics(graded, run)
    _assert_agree(ours(binary, run), theirs)
    assert abs(ours(graded, run)["nDCG@10"] - theirs["nDCG@10"]) > 1e-3
