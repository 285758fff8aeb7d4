"""Passage corpora for embedding and retrieval: a DPR passages TSV or a BEIR ``corpus.jsonl``.

The format is taken from the name (``.tsv``/``.csv`` vs ``.jsonl``/``.json``, with or without ``.gz``),
else sniffed from the first character of the (decompressed) content: ``{`` is BEIR JSONL. A BEIR
folder may be given instead of its ``corpus.jsonl``. Corpora are streamed, never loaded whole: a shard
keeps only its own rows, a lookup only the ids asked for.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
from collections.abc import Collection, Iterator
from typing import Literal

from dpr.data.readers import DataFormatError, Passage, iter_beir_corpus, iter_passages_tsv

logger = logging.getLogger(__name__)

CorpusFormat = Literal["tsv", "beir"]
_TSV_SUFFIXES = (".tsv", ".csv", ".txt")
_BEIR_SUFFIXES = (".jsonl", ".json")


def resolve_corpus_path(path: str) -> str:
    """``path`` itself, or ``<path>/corpus.jsonl`` for a BEIR folder; FileNotFoundError if neither."""
    if os.path.isdir(path):
        corpus = os.path.join(path, "corpus.jsonl")
        if not os.path.isfile(corpus):
            raise FileNotFoundError(f"{path} is a folder without corpus.jsonl; pass a passages TSV or a "
                                    f"BEIR corpus.jsonl")
        return corpus
    if not os.path.isfile(path):
        raise FileNotFoundError(f"passage file {path} does not exist")
    return path


def _first_char(path: str) -> str:
    """The first non-blank character of the file (gzip decompressed), or '' for an empty file."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    with opener(path, "rb") as handle:
        head = handle.read(4096)
    return head.decode("utf-8", errors="replace").lstrip()[:1]


def detect_corpus_format(path: str) -> CorpusFormat:
    """'beir' for a BEIR corpus.jsonl, 'tsv' for a DPR passages TSV (by suffix, else by content)."""
    name = path.lower().removesuffix(".gz")
    if name.endswith(_BEIR_SUFFIXES):
        return "beir"
    if name.endswith(_TSV_SUFFIXES):
        return "tsv"
    return "beir" if _first_char(path) == "{" else "tsv"


def iter_corpus(path: str) -> Iterator[tuple[str, Passage]]:
    """Yield ``(passage_id, Passage)`` in file order from a passages TSV or a BEIR corpus."""
    path = resolve_corpus_path(path)
    if detect_corpus_format(path) == "beir":
        return iter_beir_corpus(path)
    return iter_passages_tsv(path)


def count_passages(path: str, limit: int | None = None) -> int:
    """Number of passages (at most ``limit``). Parses every row, so a bad row fails here, early."""
    rows = iter_corpus(path)
    if limit is not None:
        rows = itertools.islice(rows, limit)
    return sum(1 for _ in rows)


def read_passage_range(path: str, start: int, end: int) -> tuple[list[str], list[Passage]]:
    """The ids and passages of rows ``[start, end)`` (0-based, file order) of the corpus."""
    ids: list[str] = []
    passages: list[Passage] = []
    for passage_id, passage in itertools.islice(iter_corpus(path), start, end):
        ids.append(passage_id)
        passages.append(passage)
    if len(ids) != end - start:
        raise DataFormatError(f"{resolve_corpus_path(path)}: expected rows {start}..{end - 1}, the file "
                              f"ended after {start + len(ids)} rows (did it change while reading?)")
    return ids, passages


def read_corpus(path: str, limit: int | None = None) -> tuple[list[str], list[Passage]]:
    """The first ``limit`` (default all) ids and passages in one pass; DataFormatError if there are none."""
    rows = iter_corpus(path)
    if limit is not None:
        rows = itertools.islice(rows, limit)
    pairs = list(rows)
    if not pairs:
        raise DataFormatError(f"{resolve_corpus_path(path)}: no passages found (empty corpus)")
    return [pid for pid, _ in pairs], [passage for _, passage in pairs]


def lookup_passages(path: str, wanted: Collection[str]) -> dict[str, Passage]:
    """The passages whose ids are in ``wanted``, read in one streaming pass (memory ~ len(wanted)).

    Raises DataFormatError naming the file and a few of the ids it does not hold.
    """
    wanted = set(wanted)
    found: dict[str, Passage] = {}
    for passage_id, passage in iter_corpus(path):
        if passage_id in wanted:
            found[passage_id] = passage
            if len(found) == len(wanted):
                break
    missing = sorted(wanted - set(found))
    if missing:
        raise DataFormatError(f"{resolve_corpus_path(path)}: {len(missing)} retrieved passage ids are not in "
                              f"this file (e.g. {missing[:5]}); is --ctx_file the corpus the embeddings "
                              f"were made from?")
    return found
