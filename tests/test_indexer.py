"""DenseIndex against the numpy reference: exact kinds match it, approximate kinds come close."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from reference import brute_force_topk

from dpr.indexer.faiss_index import (
    DenseIndex,
    IndexParams,
    merge_topk,
)

DIM = 32


def _data(n: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)  # (N, D)
    queries = rng.standard_normal((q, DIM)).astype(np.float32)  # (Q, D)
    return vectors, queries, [f"doc{i}" for i in range(n)]


def _flat(vectors: np.ndarray, ids: list[str]) -> DenseIndex:
    index = DenseIndex(DIM)
    index.add(vectors, ids)
    return index


@pytest.mark.parametrize("k", [1, 7, 50, 500])  # 500 > N: returns all N, no -1 padding
def test_flat_equals_brute_force(k: int) -> None:
    vectors, queries, ids = _data(200, 25)
    index = _flat(vectors, ids)
    scores, got = index.search(queries, k, batch_size=8)  # several batches
    ref_scores, ref_ids = brute_force_topk(queries, vectors, ids, k)
    assert scores.shape == (25, min(k, 200)) and scores.dtype == np.float32
    assert got == ref_ids
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert np.isfinite(scores).all()
    assert len(index) == 200 and index.dim == DIM


def test_add_in_several_calls_equals_one_call() -> None:
    vectors, queries, ids = _data(90, 5)
    index = DenseIndex(DIM)
    for start in range(0, 90, 40):
        index.add(vectors[start : start + 40], ids[start : start + 40])
    assert index.search(queries, 10)[1] == _flat(vectors, ids).search(queries, 10)[1]


def test_hnsw_recall_against_flat() -> None:
    vectors, queries, ids = _data(2000, 100)
    hnsw = DenseIndex(DIM, "hnsw", IndexParams(hnsw_m=32))  # DPR's 512 links: slow, same idea
    hnsw.add(vectors, ids)
    _, approx = hnsw.search(queries, 10)
    _, exact = _flat(vectors, ids).search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95


def test_ivfpq_trains_on_first_add_and_searches() -> None:
    vectors, queries, ids = _data(1000, 50)
    index = DenseIndex(DIM, "ivfpq", IndexParams(nlist=8, pq_m=4, nbits=4, nprobe=8))
    index.add(vectors, ids)
    scores, got = index.search(queries, 5)
    assert scores.shape == (50, 5) and all(len(row) == 5 for row in got)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    # 4x4-bit PQ codes are very lossy; still far above chance (20 / 1000 = 2%)
    _, exact = brute_force_topk(queries, vectors, ids, 20)
    overlap = np.mean([len(set(row) & set(e)) / 5 for row, e in zip(got, exact)])
    assert overlap >= 0.2


def test_factory_string_kind() -> None:
    vectors, queries, ids = _data(100, 4)
    index = DenseIndex(DIM, "factory:Flat")
    index.add(vectors, ids)
    assert index.search(queries, 3)[1] == brute_force_topk(queries, vectors, ids, 3)[1]


def test_approximate_search_never_returns_faiss_padding() -> None:
    vectors, queries, ids = _data(700, 6)
    # one probed IVF cell holds ~44 of 700 vectors, so FAISS pads the k=100 rows with -1
    index = DenseIndex(DIM, "factory:IVF16,Flat", IndexParams(nprobe=1))
    index.add(vectors, ids)
    scores, got = index.search(queries, 100)
    assert scores.shape == (6, 100)
    for row_scores, row_ids in zip(scores, got):
        assert 0 < len(row_ids) < 100 and set(row_ids) <= set(ids)
        assert np.isfinite(row_scores[: len(row_ids)]).all()
        assert np.isneginf(row_scores[len(row_ids) :]).all()
    assert merge_topk([(scores, got)], 100)[1] == got  # padding is understood downstream


@pytest.mark.parametrize(
    "kind,params",
    [
        ("flat", None),
        ("hnsw", IndexParams(hnsw_m=16)),
        ("ivfpq", IndexParams(nlist=4, pq_m=4, nbits=4)),
    ],
)
def test_save_load_gives_identical_results(tmp_path, kind: str, params: IndexParams) -> None:
    vectors, queries, ids = _data(700, 12)  # >= 39 per centroid: no FAISS training warning
    index = DenseIndex(DIM, kind, params)
    index.add(vectors, ids)
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx")
    assert (loaded.kind, loaded.dim, len(loaded)) == (kind, DIM, 700)
    assert loaded.params == index.params
    before, after = index.search(queries, 20), loaded.search(queries, 20)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1]
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["count"] == 700 and meta["dim"] == DIM and meta["kind"] == kind
    assert not list((tmp_path / "idx").glob("*.tmp"))  # temp files were renamed away


def test_load_detects_files_that_disagree(tmp_path) -> None:
    vectors, _, ids = _data(10, 1)
    _flat(vectors, ids).save(tmp_path)
    (tmp_path / "ids.json").write_text(json.dumps(ids[:9]))
    with pytest.raises(ValueError, match="files disagree"):
        DenseIndex.load(tmp_path)


def test_sharded_search_merged_equals_one_index() -> None:
    vectors, queries, ids = _data(301, 15)
    bounds = [0, 100, 200, 301]  # 3 contiguous shards, uneven
    shards = []
    for lo, hi in zip(bounds, bounds[1:]):
        shard = DenseIndex(DIM)
        shard.add(vectors[lo:hi], ids[lo:hi])
        shards.append(shard.search(queries, 10))
    merged_scores, merged_ids = merge_topk(shards, 10)
    scores, got = _flat(vectors, ids).search(queries, 10)
    assert merged_ids == got
    np.testing.assert_allclose(merged_scores, scores, rtol=1e-6)


def test_merge_topk_ties_keep_shard_order_and_k_larger_than_total() -> None:
    a = (np.array([[2.0, 1.0]], np.float32), [["a1", "a2"]])
    b = (np.array([[2.0, 1.0, -np.inf]], np.float32), [["b1", "b2"]])  # shorter id row
    scores, ids = merge_topk([a, b], 10)
    assert ids == [["a1", "b1", "a2", "b2"]]
    np.testing.assert_array_equal(scores, [[2.0, 2.0, 1.0, 1.0]])
    assert merge_topk([b, a], 3)[1] == [["b1", "a1", "b2"]]


def test_merge_topk_rejects_overlapping_shards_and_mismatched_queries() -> None:
    a = (np.array([[1.0]], np.float32), [["x"]])
    with pytest.raises(ValueError, match="'x' was returned by more than one shard"):
        merge_topk([a, a], 2)
    b = (np.array([[1.0], [0.5]], np.float32), [["y"], ["z"]])
    with pytest.raises(ValueError, match="shard 1: expected scores"):
        merge_topk([a, b], 2)
    with pytest.raises(ValueError, match="k must be a positive int"):
        merge_topk([a], 0)


def test_bad_inputs_raise_naming_the_problem() -> None:
    vectors, queries, ids = _data(20, 2)
    index = DenseIndex(DIM)
    with pytest.raises(ValueError, match="empty index"):
        index.search(queries, 1)
    with pytest.raises(ValueError, match="vectors dimension 16 does not .* index dimension 32"):
        index.add(vectors[:, :16], ids)
    with pytest.raises(ValueError, match="got 19 ids for 20 vectors"):
        index.add(vectors, ids[:19])
    with pytest.raises(ValueError, match="duplicate id 'doc0' at position 1"):
        index.add(vectors[:2], ["doc0", "doc0"])
    with pytest.raises(ValueError, match="row 3 holds a NaN"):
        index.add(np.where(np.arange(20)[:, None] == 3, np.nan, vectors), ids)
    index.add(vectors, ids)
    with pytest.raises(ValueError, match="duplicate id 'doc5'"):  # across add() calls
        index.add(vectors[:1], ["doc5"])
    with pytest.raises(ValueError, match="queries dimension 31 does not .* index dimension 32"):
        index.search(queries[:, :31], 1)
    with pytest.raises(ValueError, match="k must be a positive int, found 0"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="2-D"):
        index.search(queries[0], 1)


def test_bad_construction_raises() -> None:
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        DenseIndex(DIM, "lsh")
    with pytest.raises(ValueError, match="index_factory string 'Nope'"):
        DenseIndex(DIM, "factory:Nope")
    with pytest.raises(ValueError, match="pq_m=5 must divide the dimension 32"):
        DenseIndex(DIM, "ivfpq", IndexParams(pq_m=5))
    with pytest.raises(ValueError, match="hnsw_m must be a positive int"):
        IndexParams(hnsw_m=0)
    small = DenseIndex(DIM, "ivfpq", IndexParams(nlist=64, nbits=8))
    vectors, _, ids = _data(100, 1)
    with pytest.raises(ValueError, match="at least .* = 256 training vectors, found 100"):
        small.add(vectors, ids)


def test_hnsw_returns_k_results_when_k_exceeds_ef_search():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    index = DenseIndex(16, "hnsw", IndexParams(hnsw_m=8, ef_search=16, ef_construction=40))
    index.add(vectors, [str(i) for i in range(600)])
    scores, ids = index.search(vectors[:5], 200)
    assert all(len(row) == 200 for row in ids) and np.isfinite(scores).all()


def test_saved_files_get_the_users_umask(tmp_path) -> None:
    vectors, _, ids = _data(10, 1)
    old = os.umask(0o027)
    try:
        _flat(vectors, ids).save(tmp_path / "idx")
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "idx").iterdir()}
    assert modes == {name: oct(0o640) for name in ("index.faiss", "ids.json", "meta.json")}
    assert len(DenseIndex.load(tmp_path / "idx")) == 10
