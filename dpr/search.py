"""Questions -> top-k passages from embedding shards (the library behind ``dense_retriever.py``).

:func:`retrieve` encodes the questions with one encoder, checks it is the one the shards were made with,
and searches every index group (:func:`dpr.retrieval.search_groups`). :func:`retrieve_tasks` does the
same for several task encoders on one backbone with ONE index search over all tasks' questions.
Results are typed (:class:`Retrieval`); evaluating them is :mod:`dpr.evaluation.evaluate`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpr import retrieval
from dpr.data.readers import Passage
from dpr.embeddings_io import EmbeddingsError, EmbeddingShard, check_identity, find_shards
from dpr.encoding import encode_texts
from dpr.evaluation.evaluate import QuerySet
from dpr.indexer.faiss_index import IndexParams
from dpr.options import ConfigError
from dpr.retrieval import InferenceModel, TaskEncoder
from dpr.routing import AUTO

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivfpq")


def check_index_type(value: str) -> str:
    """``value`` if it is flat, hnsw, ivfpq or factory:<FAISS index_factory string>, else ConfigError."""
    if value in INDEX_KINDS or (value.startswith("factory:") and len(value) > len("factory:")):
        return value
    raise ConfigError(f"expected flat, hnsw, ivfpq or factory:<string>, found {value!r}")


@dataclass(frozen=True)
class RetrieveConfig:
    """How questions are encoded and searched (dense_retriever.py's retrieval flags)."""

    n_docs: int = 200  # passages per question
    batch_size: int = 32  # questions per encoder batch
    index_type: str = "flat"  # flat | hnsw | ivfpq | factory:<string>
    index_params: IndexParams = field(default_factory=IndexParams)
    index_buffer: int = 50000  # vectors added to the index per call
    num_index_shards: int = 1  # index groups searched in turn and merged
    save_or_load_index: bool = False  # load the index if saved, else build and save it
    index_path: str | None = None  # its folder (default <embeddings prefix>_index_<type>)
    progress: bool = False

    def __post_init__(self) -> None:
        check_index_type(self.index_type)
        for name in ("n_docs", "batch_size", "index_buffer", "num_index_shards"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('n_docs', 'n-docs')} must be >= 1, found {getattr(self, name)}")

    def index_dir(self, shards: Sequence[EmbeddingShard]) -> str | None:
        """Where the index is saved / loaded, None when it is built in memory only."""
        if not self.save_or_load_index:
            return None
        return self.index_path or retrieval.default_index_dir(shards, self.index_type)


@dataclass(frozen=True)
class SearchStats:
    """What was searched, and how long it took (index build or load included)."""

    index_type: str
    groups: int
    passages: int
    shards: tuple[str, ...]
    ctx_file: str
    corpus_digest: str | None
    queries: int
    search_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The metrics JSON fields."""
        return {
            "index_type": self.index_type,
            "passages": self.passages,
            "shards": list(self.shards),
            "ctx_file": self.ctx_file,
            "corpus_digest": self.corpus_digest,
            "search_seconds": self.search_seconds,
        }

    def describe(self) -> str:
        return (
            f"searched {self.passages} passages in {len(self.shards)} shard(s) with a {self.index_type} index "
            f"({self.groups} group(s)) for {self.queries} queries in {self.search_seconds:.2f} s, "
            f"{self.queries / max(self.search_seconds, 1e-9):.1f} queries/s (index build/load included)"
        )


@dataclass(frozen=True)
class Retrieval:
    """One encoder's run: per question its best-first passages."""

    scores: np.ndarray = field(repr=False)  # (Q, k) float32, best first; -inf pads rows an ANN index cut short
    ids: list[list[str]] = field(repr=False)  # per question its passage ids, best first (≤ k)
    encoder: str  # the checkpoint path, or "base model <name>"
    stats: SearchStats

    def to_dict(self) -> dict[str, Any]:
        """The metrics JSON fields: the search's, and the encoder."""
        return {**self.stats.to_dict(), "encoder": self.encoder}


def open_shards(
    patterns: str | Sequence[str], queries: QuerySet | None = None, allow_partial: bool = False
) -> list[EmbeddingShard]:
    """The embedding shards; for BEIR ``queries``, judged doc ids they lack are counted before any encoding."""
    shards = find_shards(patterns, allow_partial=allow_partial)
    if queries is not None and queries.mode == "beir":
        corpus = f"the {sum(s.header.count for s in shards)} embedded passages of {shards[0].header.ctx_file}"
        queries.check_corpus({pid for s in shards for pid in s.ids()}, corpus)
    return shards


def _check_dim(shards: Sequence[EmbeddingShard], queries: np.ndarray, what: str) -> None:
    if queries.shape[1] != shards[0].header.dim:
        raise EmbeddingsError(
            f"{shards[0].meta_path}: passages have dimension {shards[0].header.dim}, {what} gives {queries.shape[1]}"
        )


def search(
    shards: Sequence[EmbeddingShard], queries: np.ndarray, cfg: RetrieveConfig
) -> tuple[np.ndarray, list[list[str]], SearchStats]:
    """Build (or load) the index of every shard group once and search ``queries`` (Q, D) in it.

    Returns scores (Q, k) float32, best first, the ids per query, and what was searched.
    """
    began = time.perf_counter()
    scores, ids = retrieval.search_groups(
        retrieval.group_shards(shards, cfg.num_index_shards),
        queries,
        cfg.n_docs,
        cfg.index_type,
        cfg.index_params,
        cfg.index_buffer,
        cfg.index_dir(shards),
    )
    stats = SearchStats(
        cfg.index_type,
        cfg.num_index_shards,
        sum(s.header.count for s in shards),
        tuple(s.path for s in shards),
        shards[0].header.ctx_file,
        shards[0].header.corpus_digest,
        len(queries),
        time.perf_counter() - began,
    )
    return scores, ids, stats


def retrieve(
    loaded: InferenceModel,
    shards: Sequence[EmbeddingShard],
    questions: Sequence[str],
    cfg: RetrieveConfig = RetrieveConfig(),
) -> Retrieval:
    """Encode ``questions`` with ``loaded`` and search ``shards``; refuses shards of another passage encoder."""
    check_identity(shards[0], loaded.identity(), loaded.checkpoint)
    config = loaded.model.config
    vectors = encode_texts(
        loaded.model,
        loaded.tokenizer,
        list(questions),
        "question",
        max_length=config.backbone.sequence_length,
        batch_size=cfg.batch_size,
        device=loaded.device,
        precision=loaded.precision,
        progress=cfg.progress,
    )  # (Q, D)
    _check_dim(shards, vectors, "the query encoder")
    scores, ids, stats = search(shards, vectors, cfg)
    return Retrieval(scores, ids, loaded.describe(), stats)


def retrieve_tasks(
    encoder: TaskEncoder,
    shards: Sequence[EmbeddingShard],
    questions: Sequence[str],
    cfg: RetrieveConfig = RetrieveConfig(),
) -> dict[str, Retrieval]:
    """Encode ``questions`` with every task of ``encoder``, search ONE index for all; one Retrieval per task.

    Every task's passage encoder is checked against the shards before anything is encoded or searched.
    The tasks' results share one :class:`SearchStats` (its ``queries`` counts all tasks' questions).
    """
    for task in encoder.tasks:  # all before any search: one wrong task must not cost a long run
        check_identity(shards[0], encoder.identity(task), encoder.checkpoint(task))
    per_task = []
    for task in encoder.tasks:
        vectors = encoder.encode(
            list(questions), task, "question", batch_size=cfg.batch_size, progress=cfg.progress
        )  # (Q, D)
        _check_dim(shards, vectors, f"task {task!r}")
        per_task.append(vectors)
    # One search over all tasks' queries (T*Q, D): the index is built or loaded once, not once per task.
    scores, ids, stats = search(shards, np.concatenate(per_task), cfg)
    q = len(questions)
    return {
        task: Retrieval(scores[i * q : (i + 1) * q], ids[i * q : (i + 1) * q], encoder.checkpoint(task), stats)
        for i, task in enumerate(encoder.tasks)
    }


@dataclass(frozen=True)
class RoutedRetrieval:
    """A routed run (``--task auto``): one Retrieval, and per question the task it was encoded with."""

    retrieval: Retrieval
    routes: list[str]  # per question a task name or dpr.routing.BASE_ROUTE

    def counts(self) -> dict[str, int]:
        """Questions per route, in the order the routes first occur."""
        counts: dict[str, int] = {}
        for route in self.routes:
            counts[route] = counts.get(route, 0) + 1
        return counts


def retrieve_routed(
    encoder: TaskEncoder,
    shards: Sequence[EmbeddingShard],
    questions: Sequence[str],
    cfg: RetrieveConfig = RetrieveConfig(),
) -> RoutedRetrieval:
    """Encode each question with the task it is routed to (or the base model) and search ONE index.

    Only question-side tasks (``--tune_side question``: passages encoded by the base model) share one
    index, so a both-sides task is refused; every task's passage encoder is checked against the shards.
    """
    both = [t for t in encoder.tasks if encoder.model(t).config.sides.tune_side != "question"]
    if both:
        raise ConfigError(
            f"--task {AUTO}: task(s) {both} tune the passage side too, so a query routed to one must be searched "
            f"in that task's own index; routing over one index needs question-side tasks (--tune_side question)"
        )
    for task in encoder.tasks:
        check_identity(shards[0], encoder.identity(task), encoder.checkpoint(task))
    vectors, routes = encoder.encode(
        list(questions), AUTO, "question", batch_size=cfg.batch_size, progress=cfg.progress, return_routes=True
    )  # (Q, D)
    _check_dim(shards, vectors, "the routed query encoders")
    scores, ids, stats = search(shards, vectors, cfg)
    names = ", ".join(f"{t}={encoder.checkpoint(t)}" for t in encoder.tasks)
    return RoutedRetrieval(Retrieval(scores, ids, f"routed ({names})", stats), routes)


def retrieved_passages(
    shards: Sequence[EmbeddingShard], rows: Sequence[Sequence[str]], ctx_file: str | None = None
) -> dict[str, Passage]:
    """The passages of the retrieved id ``rows``, from ``ctx_file`` (default: the corpus the shards were
    made from), which must be the version that was encoded (checked against the shards' corpus digest)."""
    return retrieval.lookup_corpus_passages(
        ctx_file or shards[0].header.ctx_file, {pid for row in rows for pid in row}, shards[0]
    )


def metrics_record(queries: QuerySet, n_docs: int, content: Mapping[str, Any]) -> dict[str, Any]:
    """dense_retriever's metrics JSON: mode, query count, depth, then ``content`` (search and metrics)."""
    return {"mode": queries.mode, "queries": len(queries.texts), "n_docs": n_docs, **content}
