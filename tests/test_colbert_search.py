"""PLAID candidate generation and residual compression (issue 16): centroids, inverted lists, centroid
interaction, the codec, the index on disk and the CLIs, on synthetic vectors and a tiny random BERT."""

from __future__ import annotations

import collections
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from test_colbert_retrieval import DOCS, QUERIES, _index_args, _query_args, _train
from test_colbert_retrieval import files as data_files  # noqa: F401  (fixtures: pytest finds them under these names)
from test_colbert_retrieval import model_and_tok as tiny_colbert  # noqa: F401

from colbert import index as colbert_index
from colbert import retrieve as colbert_retrieve
from colbert.compression import ResidualCodec, pack_buckets, unpack_buckets
from colbert.data import iter_collection
from colbert.encoding import encode_queries
from colbert.faiss_index import FaissSettings
from colbert.indexing import build_index, index_bytes, load_index, reindex
from colbert.plaid import PlaidIndex, PlaidSettings, assign_centroids, build_ivf, default_ncentroids, train_centroids
from colbert.retrieval import brute_force, centroid_interaction, full_centroid_interaction, plaid_search
from dpr.cli import run_cli
from dpr.configs import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: these tiny models run on one thread


def clustered(n: int, dim: int = 32, clusters: int = 16, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    """``(n, dim)`` unit vectors around ``clusters`` random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(clusters, size=n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("nbits", [1, 2])
def test_bucket_packing_round_trips(nbits):
    buckets = np.random.default_rng(0).integers(2**nbits, size=(7, 16)).astype(np.uint8)
    packed = pack_buckets(buckets, nbits)
    assert packed.dtype == np.uint8 and packed.shape == (7, 16 * nbits // 8)
    assert np.array_equal(unpack_buckets(packed, nbits), buckets)


def test_assignment_is_the_nearest_centroid_and_the_lists_cover_every_document():
    vectors = clustered(2000)
    centroids = train_centroids(vectors, 16, niters=10, seed=0)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(16), atol=1e-3)
    codes = assign_centroids(vectors, centroids)
    c = centroids.double().numpy()
    distances = ((vectors[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)  # (n, C)
    assert np.allclose(distances[np.arange(len(vectors)), codes], distances.min(1), atol=1e-3)
    assert np.array_equal(codes, (vectors.astype(np.float64) @ c.T).argmax(1))
    doclens = np.random.default_rng(1).integers(1, 30, size=120)
    doclens[-1] += len(vectors) - doclens.sum()  # 120 documents sharing the 2000 tokens
    doc_of_token = np.repeat(np.arange(len(doclens)), doclens)
    offsets, docs = build_ivf(codes, doc_of_token, 16)
    pairs = {(cell, int(d)) for cell in range(16) for d in docs[offsets[cell] : offsets[cell + 1]]}
    assert pairs == set(zip(codes.tolist(), doc_of_token.tolist(), strict=True))
    assert set(docs.tolist()) == set(range(len(doclens)))
    assert all(np.all(np.diff(docs[offsets[i] : offsets[i + 1]]) > 0) for i in range(16))


def test_default_ncentroids_is_colbertv2s_power_of_two():
    assert default_ncentroids(1_000_000) == 8192  # 16 * sqrt(1e6) = 16000 -> 2**13
    assert default_ncentroids(100) == 16  # capped at a quarter of the tokens


def test_centroid_interaction_by_hand():
    plaid = PlaidIndex(torch.zeros(3, 2), np.array([0, 2, 3, 5]), np.array([0, 1, 1, 0, 2]))
    # centroid 0 holds docs 0 and 1, centroid 1 doc 1, centroid 2 docs 0 and 2
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, 0.3]])  # (Lq 2, C 3)
    approx = centroid_interaction(scores, plaid, np.array([0, 1, 2]), threshold=-1.0)
    assert approx.tolist() == pytest.approx([0.9 + 0.3, 0.9 + 0.8, 0.5 + 0.3])
    # at 0.6 centroid 2 (max 0.5) is dropped: doc 2 meets no centroid and scores 0
    approx = centroid_interaction(scores, plaid, np.array([0, 1, 2]), threshold=0.6)
    assert approx.tolist() == pytest.approx([0.9 + 0.1, 0.9 + 0.8, 0.0])
    assert centroid_interaction(scores, plaid, np.array([2]), threshold=-1.0).tolist() == pytest.approx([0.8])


def test_residual_codec_error_is_bounded_and_keeps_the_ranking():
    vectors = clustered(4000, dim=64, spread=0.6)
    centroids = train_centroids(vectors, 32, niters=10, seed=0)
    codes = assign_centroids(vectors, centroids)
    queries = clustered(50, dim=64, spread=0.6, seed=1)
    top10 = np.argsort(-(queries @ vectors.T), 1)[:, :10]  # (50, 10) exact

    def recall_at_100(approx: np.ndarray) -> float:
        """Share of the exact top 10 found in the top 100 by the approximate vectors."""
        top100 = np.argsort(-(queries @ approx.T), 1)[:, :100]
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10, top100, strict=True)]))

    only_centroid = centroids.numpy()[codes]
    errors, recalls = {0: np.linalg.norm(only_centroid - vectors, axis=1).mean()}, {0: recall_at_100(only_centroid)}
    for nbits in (1, 2):
        codec = ResidualCodec.train(centroids, vectors[:1000], codes[:1000], nbits)
        packed = codec.compress(vectors, codes)
        assert packed.shape == (len(vectors), 64 * nbits // 8) and codec.bytes_per_vector == 8 * nbits
        decoded = codec.decompress(torch.from_numpy(codes), torch.from_numpy(packed)).numpy()
        assert np.allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-5)
        errors[nbits], recalls[nbits] = np.linalg.norm(decoded - vectors, axis=1).mean(), recall_at_100(decoded)
    # measured: L2 error 0.52 / 0.32 / 0.20 and recall 0.33 / 0.93 / 0.99 for centroid only / 1 bit / 2 bits
    assert errors[2] < 0.25 and errors[1] < 0.4 and errors[0] > 0.45, errors
    assert recalls[2] >= 0.97 and recalls[1] >= 0.85 and recalls[0] < 0.6, recalls


@pytest.fixture(scope="module")
def indexes(tiny_colbert, data_files, tmp_path_factory):  # noqa: F811 (the imported fixtures)
    """The 12 documents indexed three ways: FAISS flat, PLAID fp16, PLAID 2-bit residuals."""
    model, ct = tiny_colbert
    root = tmp_path_factory.mktemp("search-indexes")
    modes = {
        "faiss": FaissSettings(),
        "plaid": PlaidSettings(ncentroids=8, niters=5),
        "residual": PlaidSettings(ncentroids=8, niters=5, compression="residual", nbits=2),
    }
    for name, settings in modes.items():
        build_index(model, ct, iter_collection(str(data_files / "collection.tsv")), str(root / name), settings=settings)
    return root


def test_exhaustive_plaid_equals_brute_force_and_compression_stays_close(tiny_colbert, indexes):  # noqa: F811
    model, ct = tiny_colbert
    q, qids = encode_queries(model, ct, list(QUERIES.values())), list(QUERIES)
    _, fp16, _ = load_index(str(indexes / "faiss"), with_faiss=False)
    exact = brute_force(q, qids, fp16, depth=len(DOCS), similarity="cosine")
    for name in ("plaid", "residual"):
        meta, store, plaid = load_index(str(indexes / name))
        assert isinstance(plaid, PlaidIndex) and meta["index_mode"] == "plaid" and meta["version"] == 3
        everything = {"ncells": plaid.ncentroids, "centroid_score_threshold": -np.inf, "ndocs": len(DOCS)}
        found = plaid_search(q, qids, store, plaid, depth=len(DOCS), similarity="cosine", **everything)
        reference = brute_force(q, qids, store, depth=len(DOCS), similarity="cosine")
        assert found == reference
        if name == "plaid":
            assert found == exact  # the same fp16 vectors
        # compressed: every document's score close to its fp16 score. The random model's 12 scores of a query
        # all lie within 0.7 of each other, so ranks move; measured: mean error 0.008, at most 0.028 a query token
        errors = np.array([[s - dict(exact[qid])[p] for p, s in found[qid]] for qid in qids]) / q.shape[1]
        assert np.abs(errors).mean() < 0.015 and np.abs(errors).max() < 0.05, errors
    # pruning at a threshold above every score and one candidate: PLAID still ranks what it finds
    _, store, plaid = load_index(str(indexes / "plaid"))
    few = plaid_search(
        q, qids, store, plaid, depth=3, similarity="cosine", ncells=1, centroid_score_threshold=9, ndocs=2
    )
    assert all(1 <= len(rows) <= 2 for rows in few.values())


def test_compressed_index_is_small_and_round_trips_through_disk(indexes):
    _, store, plaid = load_index(str(indexes / "residual"))
    _, fp16, _ = load_index(str(indexes / "plaid"))
    assert store.embeddings.dtype == torch.uint8 and store.embeddings.shape == (fp16.num_tokens, 16 * 2 // 8)
    assert torch.equal(store.codes, fp16.codes)  # one k-means, seeded: the same codes
    rows = np.arange(len(DOCS))
    decoded, lens = store.packed(rows)
    original, _ = fp16.packed(rows)
    assert torch.equal(decoded, store.codec.decompress(store.codes, store.embeddings))
    cosines = (decoded * original).sum(1)
    assert lens.sum() == fp16.num_tokens and float(cosines.min()) > 0.7 and float(cosines.mean()) > 0.9
    vector_bytes = {name: index_bytes(str(indexes / name), ("plaid.safetensors",)) for name in ("plaid", "residual")}
    assert vector_bytes["residual"] < 0.4 * vector_bytes["plaid"]  # tiny dim 16: 4 + 2 bytes a token against 32 + 2


def test_cli_plaid_compressed_index_and_retrieve(data_files, tiny_bert_dir, tmp_path, capsys, caplog):  # noqa: F811
    assert _train(data_files, tiny_bert_dir, tmp_path / "run", "--maxsteps", "0") == 0
    ckpt = str(tmp_path / "run" / "colbert-0")
    plaid_flags = ["--index_mode", "plaid", "--ncentroids", "8", "--compression", "residual", "--nbits", "2"]
    assert colbert_index.main(["--checkpoint", ckpt, *_index_args(data_files, tmp_path), *plaid_flags]) == 0
    assert "PLAID 8 centroids, 2-bit residuals" in capsys.readouterr().out
    common = _query_args(data_files, tmp_path, "--qrels", str(data_files / "qrels.tsv"), "--depth", "5")
    # every centroid, no pruning, and ndocs / 4 >= the 12 documents: nothing is left out before exact MaxSim
    exhaustive = ["--ncells", "8", "--centroid_score_threshold", "-10", "--ndocs", "48"]
    assert colbert_retrieve.main([*common, *exhaustive, "--output_dir", str(tmp_path / "plaid")]) == 0
    assert colbert_retrieve.main([*common, "--brute_force", "--output_dir", str(tmp_path / "bf")]) == 0
    plaid = (tmp_path / "plaid" / "ranking.tsv").read_text().splitlines()
    assert len(plaid) == 4 * 5 and plaid == (tmp_path / "bf" / "ranking.tsv").read_text().splitlines()
    record = json.loads((tmp_path / "plaid" / "metrics.json").read_text())
    assert record["mode"] == "plaid" and record["ndocs"] == 48 and "nDCG@10" in record["metrics"]
    assert colbert_retrieve.main([*common, "--output_dir", str(tmp_path / "defaults")]) == 0  # PLAID's defaults
    # FAISS flags (PT-Retrieval's scripts pass them) and a --depth beyond --ndocs are said, not silently dropped
    with caplog.at_level(logging.WARNING, logger="colbert.retrieve"):
        shallow = ["--nprobe", "4", "--depth", "5", "--ndocs", "3", "--output_dir", str(tmp_path / "shallow")]
        assert colbert_retrieve.main([*common, *shallow]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "--nprobe: FAISS token-index settings, ignored" in said
    assert "--depth 5 > --ndocs 3" in said and "stop at 3 documents" in said
    per_query = collections.Counter(
        line.split("\t")[0] for line in (tmp_path / "shallow" / "ranking.tsv").read_text().splitlines()
    )
    assert len(per_query) == 4 and max(per_query.values()) == 3
    # PLAID flags on brute force, and compression without PLAID, are refused
    assert run_cli(colbert_retrieve.main, [*common, "--brute_force", "--ndocs", "4", "--output_dir", "x"]) == 2
    assert "PLAID settings" in capsys.readouterr().err
    assert (
        run_cli(
            colbert_index.main, ["--checkpoint", ckpt, *_index_args(data_files, tmp_path), "--compression", "residual"]
        )
        == 2
    )
    assert "--index_mode plaid" in capsys.readouterr().err


def test_a_version_2_index_still_loads_as_a_faiss_index(indexes, tmp_path):
    old = tmp_path / "v2"
    shutil.copytree(indexes / "faiss", old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["index_mode"]
    (old / "meta.json").write_text(json.dumps({**meta, "version": 2}))  # what version 2 wrote
    meta, store, token_index = load_index(str(old))
    assert token_index is not None and token_index.ntotal == store.num_tokens and store.codes is None


def test_reindex_builds_plaid_over_a_faiss_index_without_re_encoding(indexes, tmp_path):
    meta = reindex(str(indexes / "faiss"), str(tmp_path / "again"), PlaidSettings(ncentroids=8, niters=5))
    assert (
        meta["index_mode"] == "plaid" and meta["model_digest"] == load_index(str(indexes / "plaid"))[0]["model_digest"]
    )
    _, again, _ = load_index(str(tmp_path / "again"))
    _, direct, _ = load_index(str(indexes / "plaid"))
    assert torch.equal(again.embeddings, direct.embeddings) and torch.equal(again.codes, direct.codes)
    # from a PLAID index with the same k-means settings: its centroids, no k-means
    settings = PlaidSettings(ncentroids=8, niters=5, compression="residual")
    reindex(str(indexes / "plaid"), str(tmp_path / "lent"), settings)
    _, lent, plaid = load_index(str(tmp_path / "lent"))
    _, direct, direct_plaid = load_index(str(indexes / "residual"))
    assert torch.equal(plaid.centroids, direct_plaid.centroids) and torch.equal(lent.embeddings, direct.embeddings)
    assert not settings.same_kmeans({**settings.to_dict(), "niters": 4})
    with pytest.raises(ConfigError, match="compressed vectors"):
        reindex(str(indexes / "residual"), str(tmp_path / "no"), PlaidSettings(ncentroids=8))


def test_full_centroid_interaction_is_maxsim_over_the_tokens_centroids(indexes):
    _, store, plaid = load_index(str(indexes / "plaid"))
    scores = torch.rand(5, plaid.ncentroids)  # (Lq, C), positive: the pruned form's floor of 0 never bites
    rows = np.array([0, 3, 4, 9])
    full = full_centroid_interaction(scores, store, rows)
    by_hand = [
        scores[:, store.codes[store.offsets[r] : store.offsets[r] + store.doclens[r]].long()].amax(1).sum()
        for r in rows
    ]
    assert torch.allclose(full, torch.stack(by_hand))
    assert torch.allclose(full, centroid_interaction(scores, plaid, rows, threshold=-np.inf))


def test_bad_compression_settings_are_refused():
    with pytest.raises(ConfigError, match="--nbits must be one of"):
        PlaidSettings(compression="residual", nbits=3)
    with pytest.raises(ConfigError, match="multiple of 8; dim is 3"):
        ResidualCodec.train(torch.eye(3), np.eye(3, dtype=np.float32), np.arange(3), nbits=1)
