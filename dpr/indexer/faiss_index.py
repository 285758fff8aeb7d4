"""Inner-product dense indexes over FAISS, with string passage ids.

This is the only module that imports ``faiss``. A :class:`DenseIndex` maps FAISS's sequential
integer labels to the caller's string ids, searches in batches, never lets FAISS's ``-1``
padding escape, and saves / loads itself atomically. :func:`merge_topk` combines the top-k
lists of several shards.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dpr.atomic import atomic_file
from dpr.data.files import read_json_file, read_versioned_json

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
META_FILE = "meta.json"
FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivfpq", "factory:<string>")
_FACTORY_PREFIX = "factory:"


@dataclass(frozen=True)
class IndexParams:
    """Build and search settings; only the fields of the chosen kind are used.

    HNSW defaults are DPR's (512 links per node, efSearch 128, efConstruction 200). 512 links
    cost about 4 KiB of graph per vector (~90 GB for 21M passages) -- DPR's trade-off, kept so
    its recall is reproduced; pass a smaller ``hnsw_m`` (32-64) for a lighter index.
    """

    hnsw_m: int = 512
    ef_search: int = 128
    ef_construction: int = 200
    nlist: int = 1024  # IVF cells
    pq_m: int = 16  # PQ sub-quantisers; must divide the dimension
    nbits: int = 8  # bits per PQ code
    nprobe: int = 32  # IVF cells visited per query (also for IVF factory strings)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"IndexParams.{f.name} must be a positive int, found {value!r}")
        if self.nbits > 16:
            raise ValueError(f"IndexParams.nbits must be at most 16, found {self.nbits}")


def _build(dim: int, kind: str, params: IndexParams) -> faiss.Index:
    """A fresh, empty inner-product FAISS index of the given kind."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        return index
    if kind == "ivfpq":
        if dim % params.pq_m:
            raise ValueError(f"ivfpq: pq_m={params.pq_m} must divide the dimension {dim}")
        # the factory owns the coarse quantiser, so it survives this frame and write_index
        spec = f"IVF{params.nlist},PQ{params.pq_m}x{params.nbits}"
        return faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    if kind.startswith(_FACTORY_PREFIX):
        spec = kind[len(_FACTORY_PREFIX) :]
        try:
            index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"FAISS cannot build index_factory string {spec!r}: {err}") from err
        if hasattr(index, "hnsw"):
            index.hnsw.efConstruction = params.ef_construction
        return index
    raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")


def _apply_search_params(index: faiss.Index, params: IndexParams) -> None:
    """Set the query-time knobs, which are not reliably stored by ``faiss.write_index``."""
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = params.ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = params.nprobe


def _as_matrix(array: Any, name: str, dim: int | None) -> np.ndarray:
    """``array`` as a C-contiguous float32 (N, D) matrix, or a ValueError naming ``name``."""
    matrix = np.asarray(array)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, found shape {matrix.shape}")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, found dtype {matrix.dtype}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"{name} dimension {matrix.shape[1]} does not match the index dimension {dim}")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} row {int(np.argmin(finite))} holds a NaN or infinite value")
    return matrix


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, found {k!r}")


class DenseIndex:
    """An inner-product index over (N, D) float32 vectors with string ids.

    ``kind`` is ``"flat"`` (exact), ``"hnsw"``, ``"ivfpq"`` or ``"factory:<string>"`` (any
    FAISS ``index_factory`` string, built with the inner-product metric). Kinds that need
    training (ivfpq, IVF factory strings) train on the vectors of the first :meth:`add` unless
    :meth:`train` was called on a sample first.
    """

    def __init__(self, dim: int, kind: str = "flat", params: IndexParams | None = None) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, found {dim!r}")
        self._params = params or IndexParams()
        self._kind = kind
        self._index = _build(dim, kind, self._params)
        _apply_search_params(self._index, self._params)
        self._ids: list[str] = []
        self._id_set: set[str] = set()

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def params(self) -> IndexParams:
        return self._params

    @property
    def ids(self) -> Sequence[str]:
        """The ids in insertion order (position i is FAISS label i)."""
        return tuple(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"DenseIndex(kind={self._kind!r}, dim={self.dim}, count={len(self)})"

    def train(self, vectors: np.ndarray) -> None:
        """Train the coarse quantiser / codebooks on ``vectors`` (T, D); no-op for flat/hnsw."""
        if self._index.is_trained:
            logger.debug("%r needs no training", self)
            return
        sample = _as_matrix(vectors, "training vectors", self.dim)
        if self._kind == "ivfpq":
            needed = max(self._params.nlist, 2**self._params.nbits)
            if len(sample) < needed:
                raise ValueError(
                    f"ivfpq needs at least max(nlist={self._params.nlist}, "
                    f"2**nbits={2**self._params.nbits}) = {needed} training vectors, "
                    f"found {len(sample)}"
                )
        logger.info("training %s index on %d vectors", self._kind, len(sample))
        try:
            self._index.train(sample)
        except RuntimeError as err:
            raise ValueError(f"training the {self._kind} index on {len(sample)} vectors failed: {err}") from err

    def add(self, vectors: np.ndarray, ids: Sequence[str]) -> None:
        """Append ``vectors`` (N, D) under ``ids`` (N unique strings, unique across calls)."""
        matrix = _as_matrix(vectors, "vectors", self.dim)
        if isinstance(ids, str):
            raise ValueError("ids must be a sequence of strings, found a single string")
        ids = list(ids)
        if len(ids) != len(matrix):
            raise ValueError(f"got {len(ids)} ids for {len(matrix)} vectors; counts must match")
        new: set[str] = set()
        for position, pid in enumerate(ids):
            if not isinstance(pid, str):
                raise ValueError(f"id at position {position} must be a str, found {pid!r}")
            if pid in new or pid in self._id_set:
                raise ValueError(f"duplicate id {pid!r} at position {position}")
            new.add(pid)
        if not ids:
            return
        if not self._index.is_trained:
            self.train(matrix)
        self._index.add(matrix)
        self._ids.extend(ids)
        self._id_set |= new
        logger.debug("added %d vectors; %r", len(ids), self)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 1024) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k by inner product for each query.

        queries: (Q, D). Returns scores (Q, min(k, N)) float32, best first, and the ids, one
        list per query. An approximate index may find fewer than min(k, N) results for a
        query: that row's id list is shorter and its trailing scores are -inf.
        """
        _check_k(k)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, found {batch_size!r}")
        if len(self) == 0:
            raise ValueError("cannot search an empty index: add vectors first")
        matrix = _as_matrix(queries, "queries", self.dim)
        k_eff = min(int(k), len(self))
        if hasattr(self._index, "hnsw"):
            # HNSW keeps at most efSearch candidates: a smaller efSearch than k leaves empty slots.
            self._index.hnsw.efSearch = max(self._params.ef_search, k_eff)
        all_scores = np.empty((len(matrix), k_eff), dtype=np.float32)  # (Q, k_eff)
        all_ids: list[list[str]] = []
        for start in range(0, len(matrix), batch_size):
            scores, labels = self._index.search(matrix[start : start + batch_size], k_eff)
            all_scores[start : start + len(scores)] = self._drop_padding(scores, labels, all_ids)
        return all_scores, all_ids

    def _drop_padding(self, scores: np.ndarray, labels: np.ndarray, out_ids: list[list[str]]) -> np.ndarray:
        """Map labels (B, k) to ids (appended to ``out_ids``); -1 slots become -inf scores."""
        missing = labels < 0  # (B, k) FAISS pads with -1 when it found fewer than k
        if missing.any():
            logger.warning("%d result slots were empty (approximate search)", int(missing.sum()))
            # valid slots first, keeping their order, so ids[i][j] pairs with scores[i, j]
            order = np.argsort(missing, axis=1, kind="stable")
            labels = np.take_along_axis(labels, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
            scores[np.take_along_axis(missing, order, axis=1)] = -np.inf
        out_ids.extend([self._ids[j] for j in row if j >= 0] for row in labels.tolist())
        return scores

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write index, ids and metadata into ``directory``, each file atomically.

        meta.json is written last and records the count, so :meth:`load` detects a save that
        was interrupted between files.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / INDEX_FILE, "wb") as handle:
            # streamed through the handle: no second in-memory copy of a large index
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(handle.write))
        with atomic_file(folder / IDS_FILE) as handle:
            json.dump(self._ids, handle, ensure_ascii=False)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self._kind,
            "dim": self.dim,
            "count": len(self),
            "params": asdict(self._params),
        }
        with atomic_file(folder / META_FILE) as handle:
            json.dump(meta, handle, indent=2)
        logger.info("saved %r to %s", self, folder)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DenseIndex:
        """Read an index written by :meth:`save`, checking the three files agree."""
        folder = Path(directory)
        meta = read_versioned_json(
            folder / META_FILE,
            max_version=FORMAT_VERSION,
            min_version=FORMAT_VERSION,
            version_key="format_version",
            required=("format_version", "kind", "dim", "count", "params"),
        )
        try:
            params = IndexParams(**meta["params"])
        except TypeError as err:
            raise ValueError(f"{folder / META_FILE}: bad params: {err}") from err
        ids, id_set = _checked_ids(read_json_file(folder / IDS_FILE), folder / IDS_FILE)
        index = faiss.read_index(str(folder / INDEX_FILE))
        count, dim = meta["count"], meta["dim"]
        if not (len(ids) == index.ntotal == count) or index.d != dim:
            raise ValueError(
                f"{folder}: files disagree (meta count={count} dim={dim}, {IDS_FILE} holds "
                f"{len(ids)} ids, {INDEX_FILE} holds {index.ntotal} vectors of dim {index.d}); "
                "was a save interrupted?"
            )
        loaded = cls.__new__(cls)  # bypass __init__: the FAISS index already exists
        loaded._params, loaded._kind, loaded._index = params, str(meta["kind"]), index
        loaded._ids, loaded._id_set = ids, id_set
        _apply_search_params(index, params)
        return loaded


def _checked_ids(ids: Any, path: Path) -> tuple[list[str], set[str]]:
    """The saved ids, re-validated: a list of unique strings."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{path}: expected a JSON list of strings")
    id_set = set(ids)
    if len(id_set) != len(ids):
        raise ValueError(f"{path}: holds {len(ids) - len(id_set)} duplicate ids")
    return ids, id_set


def merge_topk(
    results: Sequence[tuple[np.ndarray, Sequence[Sequence[str]]]], k: int
) -> tuple[np.ndarray, list[list[str]]]:
    """Merge per-shard top-k lists into a global top-k.

    results: one (scores (Q, k_i), ids) pair per shard, as returned by :meth:`DenseIndex.search`
    (a row's id list may be shorter than k_i; its extra score slots are ignored). Returns
    scores (Q, min(k, longest merged row)) and ids. Ties keep shard order, then in-shard rank,
    so merging contiguous shards of one corpus reproduces a single index's order. An id that
    appears in two shards for the same query is an error: shards must be disjoint.
    """
    _check_k(k)
    if not results:
        raise ValueError("merge_topk needs at least one shard result")
    n_queries = len(results[0][1])
    results = [(np.asarray(scores, dtype=np.float32), ids) for scores, ids in results]
    for shard, (scores, ids) in enumerate(results):
        if np.ndim(scores) != 2 or len(scores) != n_queries or len(ids) != n_queries:
            raise ValueError(
                f"shard {shard}: expected scores (Q={n_queries}, k_i) and {n_queries} id lists, "
                f"found scores shape {np.shape(scores)} and {len(ids)} id lists"
            )
    rows = [_merge_row(results, q, k) for q in range(n_queries)]
    width = max((len(ids_q) for _, ids_q in rows), default=0)
    merged_scores = np.full((n_queries, width), -np.inf, dtype=np.float32)  # (Q, width)
    merged_ids: list[list[str]] = []
    for q, (scores_q, ids_q) in enumerate(rows):
        merged_scores[q, : len(scores_q)] = scores_q
        merged_ids.append(ids_q)
    return merged_scores, merged_ids


def _merge_row(
    results: Sequence[tuple[np.ndarray, Sequence[Sequence[str]]]], query: int, k: int
) -> tuple[np.ndarray, list[str]]:
    """Best ``k`` of one query's candidates over all shards; stable, so ties keep input order."""
    scores: list[float] = []
    ids: list[str] = []
    for shard, (shard_scores, shard_ids) in enumerate(results):
        row_ids = list(shard_ids[query])
        if len(row_ids) > shard_scores.shape[1]:
            raise ValueError(f"shard {shard}, query {query}: more ids than score columns")
        scores.extend(np.asarray(shard_scores[query, : len(row_ids)], np.float64).tolist())
        ids.extend(row_ids)
    if len(set(ids)) != len(ids):
        dup = next(pid for pid in ids if ids.count(pid) > 1)
        raise ValueError(f"query {query}: id {dup!r} was returned by more than one shard")
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return np.asarray(scores)[order], [ids[i] for i in order]
