"""IR metrics against values computed by hand, and the TREC / BEIR file helpers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from dpr.data.queries import read_qrels
from dpr.evaluation.metrics import evaluate_run, write_trec_run

SCIFACT_QRELS = Path(__file__).resolve().parents[1].parent / "shared/data/scifact/qrels/test.tsv"

QRELS = {
    "q1": {"d1": 2, "d3": 1},  # graded: d1 highly relevant
    "q2": {"d2": 1},
    "q3": {"d4": 1, "d5": 1},  # not in the run: scores 0 everywhere, still averaged
}
RUN = {
    "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.1},  # ranking d1(2) d2(0) d3(1) d4(0)
    "q2": {"d5": 0.9, "d6": 0.5, "d2": 0.4},  # ranking d5(0) d6(0) d2(1)
    "qx": {"d1": 1.0},  # not judged: ignored
}


def test_metrics_equal_hand_computed_values() -> None:
    got = evaluate_run(QRELS, RUN, ks=(1, 3))
    # q1: P@1 = 1/1, P@3 = 2/3 | q2: P@1 = 0, P@3 = 1/3 | q3: 0, 0
    expected = {"P@1": (1 + 0 + 0) / 3, "P@3": (2 / 3 + 1 / 3 + 0) / 3}
    # q1: R@1 = 1/2 (1 of 2 relevant), R@3 = 2/2 | q2: R@1 = 0, R@3 = 1/1 | q3: 0, 0
    expected |= {"R@1": (0.5 + 0 + 0) / 3, "R@3": (1 + 1 + 0) / 3}
    # reciprocal rank of the first relevant: q1 rank 1 -> 1, q2 rank 3 -> 1/3, q3 -> 0
    expected["MRR@10"] = (1 + 1 / 3 + 0) / 3
    # MAP@k = sum of precision at relevant ranks <= k / all relevant of the query
    # q1: @1 -> 1/2, @3 -> (1/1 + 2/3) / 2 = 5/6 | q2: @1 -> 0, @3 -> (1/3) / 1 | q3: 0
    expected |= {"MAP@1": (0.5 + 0 + 0) / 3, "MAP@3": (5 / 6 + 1 / 3 + 0) / 3}
    # nDCG: gain = relevance grade, discount log2(rank + 1)
    # q1@1: DCG 2/log2(2) = 2, ideal 2 -> 1
    # q1@3: DCG 2/1 + 0/log2(3) + 1/log2(4) = 2.5, ideal 2/1 + 1/log2(3) -> 2.5 / 2.6309
    # q2@1: 0 | q2@3: DCG 1/log2(4) = 0.5, ideal 1/1 -> 0.5 | q3: 0
    q1_at3 = 2.5 / (2 + 1 / math.log2(3))
    expected |= {"nDCG@1": (1 + 0 + 0) / 3, "nDCG@3": (q1_at3 + 0.5 + 0) / 3}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_default_keys_are_stable() -> None:
    got = evaluate_run(QRELS, RUN)
    for k in (1, 3, 5, 10, 100, 1000):
        assert {f"nDCG@{k}", f"MAP@{k}", f"R@{k}", f"P@{k}"} <= set(got)
    assert "MRR@10" in got and len(got) == 6 * 4 + 1
    # deeper cut-offs only add documents: R@k never drops
    assert got["R@1"] <= got["R@3"] <= got["R@1000"] == pytest.approx(2 / 3)


def test_ties_broken_by_doc_id_for_every_metric() -> None:
    # all tied: order a, b, c (ascending id), so relevant c is at rank 3 for P and RR alike
    got = evaluate_run({"q": {"c": 1}}, {"q": {"a": 1.0, "b": 1.0, "c": 1.0}}, ks=(1, 3))
    assert got["P@1"] == 0.0 and got["MRR@10"] == pytest.approx(1 / 3)
    assert got["nDCG@3"] == pytest.approx(0.5)  # 1/log2(4)


def test_identical_ids_only_dropped_on_request() -> None:
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 5.0, "d1": 1.0}}  # the query itself was retrieved first
    assert evaluate_run(qrels, run, ks=(1,))["P@1"] == 0.0
    assert evaluate_run(qrels, run, ks=(1,), ignore_identical_ids=True)["P@1"] == 1.0


def test_bad_metric_inputs() -> None:
    with pytest.raises(ValueError, match="qrels are empty"):
        evaluate_run({}, RUN)
    with pytest.raises(ValueError, match="every k must be a positive int, found 0"):
        evaluate_run(QRELS, RUN, ks=(0,))
    with pytest.raises(ValueError, match="query 'q1' doc 'd1' has score nan"):
        evaluate_run(QRELS, {"q1": {"d1": float("nan")}})


def test_write_trec_run(tmp_path: Path) -> None:
    path = tmp_path / "out" / "run.trec"
    write_trec_run({"q2": {"b": 0.5, "a": 0.5, "c": 2.0}, "q1": {"x": 1.25}}, path, "dpr")
    assert path.read_text().splitlines() == [
        "q1 Q0 x 1 1.25 dpr",
        "q2 Q0 c 1 2.0 dpr",
        "q2 Q0 a 2 0.5 dpr",  # tie: doc id ascending
        "q2 Q0 b 3 0.5 dpr",
    ]
    assert [p.name for p in path.parent.iterdir()] == ["run.trec"]  # no temp file left
    with pytest.raises(ValueError, match="run tag 'my run'"):
        write_trec_run({"q": {"d": 1.0}}, path, "my run")
    with pytest.raises(ValueError, match="doc id 'd 1'"):
        write_trec_run({"q": {"d 1": 1.0}}, path, "t")


def test_read_qrels_tsv(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n\nq1\td2\t2\nq2\td1\t0\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}
    path.write_text("q1\td1\t1\n")  # no header is fine
    assert read_qrels(path) == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    "body,message",
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\n", ":2: expected 3 tab-separated columns"),
        ("q1\td1\t1\nq1 d2 1\n", ":2: expected 3 tab-separated columns"),
        ("q1\td1\thigh\n", ":1: score must be an integer, found 'high'"),
        ("q1\td1\t1\nq1\td1\t2\n", ":2: ('q1', 'd1') judged 2, but 1 earlier"),
        ("query-id\tcorpus-id\tscore\n", ": no judgments found"),
    ],
)
def test_read_qrels_errors_name_path_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(body)
    with pytest.raises(ValueError) as info:
        read_qrels(path)
    assert str(info.value).startswith(f"{path}{message}")


def test_read_real_beir_qrels() -> None:
    if not SCIFACT_QRELS.exists():
        pytest.skip(f"{SCIFACT_QRELS} not present")
    qrels = read_qrels(SCIFACT_QRELS)
    assert len(qrels) == 300 and sum(len(docs) for docs in qrels.values()) == 339
    perfect = {q: {d: 1.0 for d in docs} for q, docs in qrels.items()}
    assert evaluate_run(qrels, perfect, ks=(10,))["nDCG@10"] == pytest.approx(1.0)


def test_trec_run_gets_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_trec_run({"q": {"d": 1.0}}, tmp_path / "run.trec", "t")
    finally:
        os.umask(old)
    assert oct((tmp_path / "run.trec").stat().st_mode & 0o777) == oct(0o640)
