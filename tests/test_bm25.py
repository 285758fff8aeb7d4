"""BM25 through bm25s: exact match first, ranked ids and scores, save -> load, missing packages."""

from __future__ import annotations

import sys

import pytest

from dpr.data import bm25
from dpr.data.bm25 import BM25Config, BM25Index, MissingDependencyError, passage_text, resolve_config
from dpr.data.readers import Passage

TOY = [
    ("d0", "The cat sat on the mat in the sun"),
    ("d1", "Quantum chromodynamics describes the strong interaction"),
    ("d2", "Dogs are loyal pets and love long walks"),
    ("d3", "Photosynthesis converts light energy into chemical energy in plants"),
    ("d4", "The stock market fell sharply on Monday"),
]


@pytest.fixture(scope="module")
def index() -> BM25Index:
    return BM25Index.build(TOY)


def test_exact_match_ranks_first(index):
    for doc_id, text in TOY:
        hits = index.search([text], k=3)[0]
        assert hits[0][0] == doc_id


def test_search_returns_ids_and_descending_scores(index):
    rows = index.search(["energy in plants", "strong interaction of quarks", "zzzz unknown"], k=10)
    assert rows[0][0][0] == "d3" and rows[1][0][0] == "d1"
    for row in rows[:2]:
        scores = [score for _, score in row]
        assert scores == sorted(scores, reverse=True) and all(score > 0 for score in scores)
        assert all(isinstance(doc_id, str) for doc_id, _ in row)
    assert rows[2] == []  # no known term: nothing, not five zero-score passages
    assert len(index.search(["the"], k=100)) == 1  # k above the corpus size is clamped
    with pytest.raises(ValueError, match="k must be"):
        index.search(["cat"], k=0)
    assert index.search([], k=5) == []


def test_stemming_matches_inflections():
    stemmed = resolve_config(BM25Config(stemmer="english"))
    if stemmed.stemmer != "english":
        pytest.skip("PyStemmer not installed")
    index = BM25Index.build(TOY, stemmed)
    assert index.search(["converting lights"], k=1)[0][0][0] == "d3"
    plain = BM25Index.build(TOY, BM25Config(stemmer="none"))
    assert plain.search(["converting lights"], k=1)[0] == []


def test_save_load_roundtrip(index, tmp_path):
    folder = str(tmp_path / "idx")
    index.save(folder)
    loaded = BM25Index.load(folder)
    queries = ["cat on a mat", "market on Monday", "loyal dogs"]
    assert loaded.search(queries, k=5) == index.search(queries, k=5)
    assert loaded.passage_ids == index.passage_ids and loaded.config == index.config
    index.save(folder)  # saving over an existing index replaces it
    assert BM25Index.load(folder).search(queries, k=5) == index.search(queries, k=5)
    with pytest.raises(FileNotFoundError, match="not a saved BM25 index"):
        BM25Index.load(str(tmp_path))


def test_passage_text_includes_title():
    assert passage_text(Passage(text="body", title="Head")) == "Head body"
    assert passage_text(Passage(text="body")) == "body"


def test_bad_settings_and_empty_corpus():
    with pytest.raises(ValueError, match="stemmer"):
        BM25Config(stemmer="porter")
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build([])


def test_missing_bm25s_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # makes `import bm25s` raise ImportError
    with pytest.raises(MissingDependencyError, match="pip install bm25s"):
        BM25Index.build(TOY)


def test_missing_pystemmer_falls_back_to_no_stemming(monkeypatch):
    monkeypatch.setitem(sys.modules, "Stemmer", None)
    bm25._have_pystemmer.cache_clear()
    try:
        assert resolve_config(BM25Config(stemmer="english")).stemmer == "none"
        assert BM25Index.build(TOY).config.stemmer == "none"  # the index records what it used
    finally:
        bm25._have_pystemmer.cache_clear()
