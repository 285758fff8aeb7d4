"""Search: end-to-end (FAISS candidates, then exact MaxSim), PLAID (centroid candidates, centroid
interaction, then exact MaxSim), exact brute force, and re-ranking a run.

All score documents with the same exact MaxSim over the stored token vectors (decoded, for a compressed
index), so with a ``faiss_depth`` that reaches every token, end-to-end retrieval returns the brute-force
ranking, and so does PLAID with ``ncells`` = every centroid, no pruning and ``ndocs`` = every document.
Rankings are ``qid -> [(pid, score)]``, best first; ties go to the smaller pid string.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from colbert.faiss_index import TokenIndex
from colbert.indexing import DocStore
from colbert.plaid import PlaidIndex, csr_gather
from colbert.scoring import maxsim_packed
from dpr.data.readers import DataFormatError

logger = logging.getLogger(__name__)

Ranking = dict[str, list[tuple[str, float]]]
# Elements of one (tokens, Nq * Lq) similarity block: ~128 MB of float32.
BLOCK_ELEMENTS = 1 << 25


def score_documents(
    q: torch.Tensor, store: DocStore, rows: np.ndarray, similarity: str, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Exact MaxSim of queries ``(Nq, Lq, dim)`` with the documents at ``rows`` ``(n,)``: ``(Nq, n)`` float32."""
    q = q.to(device=device, dtype=torch.float32)
    out = np.empty((q.shape[0], len(rows)), dtype=np.float32)  # (Nq, n)
    budget = max(1, BLOCK_ELEMENTS // (q.shape[0] * q.shape[1]))  # tokens per block
    cumulative = np.cumsum(store.doclens[rows])  # (n,)
    start = 0
    while start < len(rows):
        done = int(cumulative[start - 1]) if start else 0
        end = max(start + 1, int(np.searchsorted(cumulative, done + budget, side="right")))
        vectors, lens = store.packed(rows[start:end], device)  # (t, dim), (b,)
        out[:, start:end] = maxsim_packed(q, vectors, lens, similarity).cpu().numpy()  # (Nq, b)
        start = end
    return out


def _ranked(scores: np.ndarray, rows: np.ndarray, store: DocStore, depth: int) -> list[tuple[str, float]]:
    """The best ``depth`` of ``scores`` ``(n,)`` for documents ``rows`` ``(n,)``, ties by pid."""
    if len(rows) > depth:
        # Keep every document tied with the depth-th best so the pid tie-break stays exact.
        threshold = np.partition(scores, len(scores) - depth)[len(scores) - depth]
        keep = scores >= threshold
        scores, rows = scores[keep], rows[keep]
    pairs = sorted(zip(scores.tolist(), (store.pids[r] for r in rows), strict=True), key=lambda x: (-x[0], x[1]))
    return [(pid, score) for score, pid in pairs[:depth]]


def brute_force(
    q: torch.Tensor,
    qids: Sequence[str],
    store: DocStore,
    depth: int,
    similarity: str,
    *,
    query_batch: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Ranking:
    """Exact MaxSim of every query ``(Nq, Lq, dim)`` with every document; for small corpora."""
    all_rows = np.arange(len(store.pids))
    ranking: Ranking = {}
    for start in tqdm(range(0, len(qids), query_batch), desc="brute-force MaxSim", disable=not progress):
        scores = score_documents(q[start : start + query_batch], store, all_rows, similarity, device)  # (b, N)
        for offset, row_scores in enumerate(scores):
            ranking[qids[start + offset]] = _ranked(row_scores, all_rows, store, depth)
    return ranking


def end_to_end(
    q: torch.Tensor,
    qids: Sequence[str],
    store: DocStore,
    token_index: TokenIndex,
    *,
    depth: int,
    faiss_depth: int,
    nprobe: int,
    similarity: str,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Ranking:
    """ColBERT's end-to-end retrieval: every query token fetches its ``faiss_depth`` nearest document
    tokens; their documents are scored with exact MaxSim and the best ``depth`` kept."""
    ranking: Ranking = {}
    for i in tqdm(range(len(qids)), desc="end-to-end retrieval", disable=not progress):
        labels = token_index.search(q[i].numpy(), faiss_depth, nprobe)  # (Lq, k)
        rows = np.unique(store.emb2doc[labels[labels >= 0]])  # (n,) sorted
        scores = score_documents(q[i : i + 1], store, rows, similarity, device)[0]  # (n,)
        ranking[qids[i]] = _ranked(scores, rows, store, depth)
    return ranking


def centroid_candidates(scores: torch.Tensor, plaid: PlaidIndex, ncells: int) -> np.ndarray:
    """Documents in the ``ncells`` best centroids of each query token: ``(Lq, C)`` scores -> sorted rows ``(n,)``."""
    cells = np.unique(scores.topk(min(ncells, plaid.ncentroids), dim=1).indices.numpy())  # (m,)
    return np.unique(csr_gather(plaid.ivf_offsets, plaid.ivf_docs, cells)[0])


def centroid_interaction(scores: torch.Tensor, plaid: PlaidIndex, rows: np.ndarray, threshold: float) -> torch.Tensor:
    """PLAID's approximate MaxSim of one query with the documents ``rows`` ``(n,)`` (sorted): each document
    token stands for its centroid, and centroids no query token scores ``>= threshold`` are dropped
    (a query token left with no centroid of the document adds 0). ``scores`` ``(Lq, C)`` -> ``(n,)``.

    Walks the inverted lists of the kept centroids, not the documents' tokens: the work is the kept
    (centroid, document) pairs only.
    """
    kept = torch.nonzero(scores.amax(dim=0) >= threshold).squeeze(1).numpy()  # (k,)
    docs, which = csr_gather(plaid.ivf_offsets, plaid.ivf_docs, kept)  # (P,), (P,)
    position = np.minimum(np.searchsorted(rows, docs), len(rows) - 1)  # (P,)
    hit = rows[position] == docs  # (P,) pairs of a candidate document
    values = scores.T[torch.from_numpy(kept[which[hit]])]  # (P', Lq)
    best = torch.zeros(len(rows), scores.shape[0])  # (n, Lq): 0 for a query token that meets no kept centroid
    index = torch.from_numpy(position[hit]).unsqueeze(1).expand(-1, scores.shape[0])  # (P', Lq)
    best.scatter_reduce_(0, index, values, "amax", include_self=True)
    return best.sum(dim=1)  # (n,)


def full_centroid_interaction(scores: torch.Tensor, store: DocStore, rows: np.ndarray) -> torch.Tensor:
    """PLAID's unpruned centroid interaction: MaxSim with every token of the documents ``rows`` ``(n,)``
    replaced by its centroid; ``scores`` ``(Lq, C)`` -> ``(n,)``."""
    assert store.codes is not None
    values = scores.T[store.codes[store.tokens(rows)].long()]  # (t, Lq)
    lens = torch.from_numpy(store.doclens[rows])  # (n,)
    return torch.segment_reduce(values, "max", lengths=lens, axis=0).sum(dim=1)  # (n,)


def plaid_search(
    q: torch.Tensor,
    qids: Sequence[str],
    store: DocStore,
    plaid: PlaidIndex,
    *,
    depth: int,
    ncells: int,
    centroid_score_threshold: float,
    ndocs: int,
    similarity: str,
    query_batch: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Ranking:
    """PLAID: every query token's ``ncells`` nearest centroids give the candidate documents; pruned centroid
    interaction keeps the best ``ndocs``, full centroid interaction the best ``max(ndocs // 4, depth)`` of
    those (PLAID's stages 2 and 3); these are scored with exact MaxSim and the best ``depth`` kept.

    Centroid scores are inner products under both similarities (the vectors are unit vectors).
    """
    if ncells < 1 or ndocs < 1:
        raise ValueError(f"ncells and ndocs must be >= 1, found {ncells} and {ndocs}")
    ranking: Ranking = {}
    for start in tqdm(range(0, len(qids), query_batch), desc="PLAID retrieval", disable=not progress):
        batch = q[start : start + query_batch].float()  # (b, Lq, dim)
        all_scores = batch @ plaid.centroids.T  # (b, Lq, C)
        for offset, scores in enumerate(all_scores):
            rows = centroid_candidates(scores, plaid, ncells)  # (n,)
            if len(rows) > ndocs:
                approx = centroid_interaction(scores, plaid, rows, centroid_score_threshold)  # (n,)
                rows = np.sort(rows[approx.topk(ndocs).indices.numpy()])  # (ndocs,)
            if len(rows) > max(ndocs // 4, depth):
                approx = full_centroid_interaction(scores, store, rows)  # (n,)
                rows = np.sort(rows[approx.topk(max(ndocs // 4, depth)).indices.numpy()])  # (ndocs / 4,)
            exact = score_documents(batch[offset : offset + 1], store, rows, similarity, device)[0]  # (n,)
            ranking[qids[start + offset]] = _ranked(exact, rows, store, depth)
    return ranking


def rerank(
    q: torch.Tensor,
    qids: Sequence[str],
    candidates: Sequence[Sequence[str]],
    store: DocStore,
    similarity: str,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Ranking:
    """Re-score each query's candidate pids with exact MaxSim and sort them (all candidates are kept)."""
    ranking: Ranking = {}
    for i in tqdm(range(len(qids)), desc="re-ranking", disable=not progress):
        missing = [pid for pid in candidates[i] if pid not in store.row_of]
        if missing:
            raise DataFormatError(
                f"query {qids[i]!r}: the run's pids {missing[:5]} are not in the collection (or index) being re-ranked"
            )
        rows = np.array([store.row_of[pid] for pid in candidates[i]], dtype=np.int64)
        scores = score_documents(q[i : i + 1], store, rows, similarity, device)[0]
        ranking[qids[i]] = _ranked(scores, rows, store, len(rows))
    return ranking
