"""BM25 over passages (title + text) through the maintained ``bm25s`` library.

This is the only module that imports ``bm25s`` (and the optional PyStemmer): both are imported
lazily, so the rest of the package works without them and a missing install is one clear error.

Scoring is bm25s's "lucene" BM25 with k1 = 1.5, b = 0.75 and English stop words (bm25s's defaults),
optionally with the Snowball English stemmer (PyStemmer); measured quality is in BENCHMARKS.md. When
PyStemmer is not installed the index falls back to no stemming with a warning, and records which stemmer
it really used.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from dpr.atomic import atomic_directory
from dpr.data.files import read_versioned_json
from dpr.data.readers import Passage
from dpr.errors import UserError

logger = logging.getLogger(__name__)

STEMMERS = ("english", "none")
_META_FILE = "dpr_bm25_meta.json"  # our ids + settings, beside bm25s's own files
_META_VERSION = 1


class MissingDependencyError(UserError, ImportError):
    """An optional package needed for this step is not installed; the message says what to install."""


@dataclass(frozen=True)
class BM25Config:
    """BM25 settings. ``stemmer`` is "english" (Snowball, needs PyStemmer) or "none"."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stemmer: str = "english"
    stopwords: str = "en"

    def __post_init__(self) -> None:
        if self.stemmer not in STEMMERS:
            raise ValueError(f"stemmer must be one of {STEMMERS}, found {self.stemmer!r}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, found k1={self.k1}, b={self.b}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as err:
        raise MissingDependencyError("BM25 needs the bm25s package, which is not installed: pip install bm25s") from err
    return bm25s


def _stemmer(language: str) -> Any:
    """A PyStemmer stemmer for ``language``, or None for "none"."""
    if language == "none":
        return None
    import Stemmer  # PyStemmer; resolve_config has checked it is importable

    return Stemmer.Stemmer(language).stemWords


def resolve_config(config: BM25Config) -> BM25Config:
    """``config`` with the stemmer it will really use: "none" when PyStemmer is missing.

    Stemming changes every score, so callers that cache results keyed by the settings (the
    prepare_data manifest) must key them by this resolved config, not the requested one.
    """
    if config.stemmer == "none" or _have_pystemmer():
        return config
    return replace(config, stemmer="none")


@functools.cache
def _have_pystemmer() -> bool:
    # cached so the warning appears once per process, not once per index
    try:
        import Stemmer  # noqa: F401
    except ImportError:
        logger.warning(
            "PyStemmer is not installed: BM25 runs without stemming, which usually scores lower "
            "(see BENCHMARKS.md); pip install PyStemmer"
        )
        return False
    return True


def passage_text(passage: Passage) -> str:
    """What BM25 indexes for a passage: its title, then its text (DPR encodes both)."""
    return f"{passage.title} {passage.text}" if passage.title else passage.text


class BM25Index:
    """A bm25s index whose rows are passages with string ids.

    Build with :meth:`build`, query with :meth:`search`, persist with :meth:`save` / :meth:`load`
    (bm25s's own numpy + JSON files, never pickles).
    """

    def __init__(self, retriever: Any, passage_ids: Sequence[str], config: BM25Config):
        self._retriever = retriever
        self.passage_ids: list[str] = list(passage_ids)
        self.config = config

    def __len__(self) -> int:
        return len(self.passage_ids)

    @classmethod
    def build(
        cls,
        passages: Sequence[tuple[str, str]],
        config: BM25Config = BM25Config(),
        show_progress: bool = False,
    ) -> BM25Index:
        """Index ``passages``: ``(passage_id, text)`` pairs, text usually :func:`passage_text`."""
        if not passages:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        bm25s = _bm25s()
        config = resolve_config(config)
        ids = [passage_id for passage_id, _ in passages]
        tokens = bm25s.tokenize(
            [text for _, text in passages],
            stopwords=config.stopwords,
            stemmer=_stemmer(config.stemmer),
            show_progress=show_progress,
        )
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokens, show_progress=show_progress)
        logger.info("BM25 index: %d passages, %d terms, stemmer %s", len(ids), len(tokens.vocab), config.stemmer)
        return cls(retriever, ids, config)

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> list[list[tuple[str, float]]]:
        """The top ``k`` passages of each query, best first, as ``(passage_id, score)``.

        Only passages sharing a term with the query are returned (score > 0), so a row can be
        shorter than ``k``; a query with no known term gets an empty row.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, found {k}")
        if not queries:
            return []
        bm25s = _bm25s()
        tokens = bm25s.tokenize(
            list(queries),
            stopwords=self.config.stopwords,
            stemmer=_stemmer(self.config.stemmer),
            return_ids=False,
            show_progress=False,
        )
        rows, scores = self._retriever.retrieve(tokens, k=min(k, len(self)), show_progress=show_progress)
        # rows, scores: (n_queries, k) passage row numbers and float32 scores, best first
        return [
            [(self.passage_ids[int(row)], float(score)) for row, score in zip(r, s) if score > 0]
            for r, s in zip(rows, scores)
        ]

    def save(self, folder: str) -> None:
        """Write the index to ``folder`` (replaced atomically: complete or absent after a crash)."""
        with atomic_directory(folder) as tmp:
            self._retriever.save(tmp, show_progress=False)
            meta = {"version": _META_VERSION, "config": self.config.to_dict(), "passage_ids": self.passage_ids}
            with open(os.path.join(tmp, _META_FILE), "w", encoding="utf-8") as handle:
                json.dump(meta, handle)

    @classmethod
    def load(cls, folder: str) -> BM25Index:
        """Load an index written by :meth:`save`."""
        meta_path = os.path.join(folder, _META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{folder}: not a saved BM25 index (no {_META_FILE})")
        meta = read_versioned_json(
            meta_path, max_version=_META_VERSION, min_version=_META_VERSION, required=("config", "passage_ids")
        )
        config = BM25Config(**meta["config"])
        if config.stemmer != "none":
            resolved = resolve_config(config)
            if resolved != config:
                raise MissingDependencyError(
                    f"{folder} was built with the {config.stemmer} stemmer: pip install PyStemmer to query it"
                )
        retriever = _bm25s().BM25.load(folder, show_progress=False)
        return cls(retriever, meta["passage_ids"], config)
