"""Passage corpora for embedding and retrieval: a DPR passages TSV or a BEIR ``corpus.jsonl``.

The format is taken from the name (``.tsv``/``.csv`` vs ``.jsonl``/``.json``, with or without ``.gz``),
else sniffed from the first character of the (decompressed) content: ``{`` is BEIR JSONL. A BEIR
folder may be given instead of its ``corpus.jsonl``. Corpora are streamed, never loaded whole: a shard
keeps only its own rows, a lookup only the ids asked for.
"""

from __future__ import annotations

import itertools
import logging
import os
from array import array
from collections.abc import Callable, Collection, Iterator
from typing import Literal

import numpy as np

from dpr.data.files import open_binary
from dpr.data.readers import DataFormatError, Passage, iter_beir_corpus_lines, iter_passages_tsv_lines

logger = logging.getLogger(__name__)

CorpusFormat = Literal["tsv", "beir"]
_TSV_SUFFIXES = (".tsv", ".csv", ".txt")
_BEIR_SUFFIXES = (".jsonl", ".json")


def resolve_corpus_path(path: str) -> str:
    """``path`` itself, or ``<path>/corpus.jsonl`` for a BEIR folder; FileNotFoundError if neither."""
    if os.path.isdir(path):
        corpus = os.path.join(path, "corpus.jsonl")
        if not os.path.isfile(corpus):
            raise FileNotFoundError(
                f"{path} is a folder without corpus.jsonl; pass a passages TSV or a BEIR corpus.jsonl"
            )
        return corpus
    if not os.path.isfile(path):
        raise FileNotFoundError(f"passage file {path} does not exist")
    return path


def _first_char(path: str) -> str:
    """The first non-blank character of the file (gzip decompressed), or '' for an empty file."""
    with open_binary(path) as handle:
        head = handle.read(4096)
    return head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")[:1]


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
    return ((passage_id, passage) for _, passage_id, passage in iter_corpus_lines(path))


def iter_corpus_lines(path: str) -> Iterator[tuple[int, str, Passage]]:
    """Yield ``(line number, passage_id, Passage)`` in file order from a passages TSV or a BEIR corpus."""
    path = resolve_corpus_path(path)
    if detect_corpus_format(path) == "beir":
        return iter_beir_corpus_lines(path)
    return iter_passages_tsv_lines(path)


def iter_unique_passages(path: str, limit: int | None = None) -> Iterator[tuple[str, Passage]]:
    """The first ``limit`` (default all) rows of :func:`iter_corpus`, checked for repeated ids.

    Once the last row is yielded, a passage id that occurred twice raises DataFormatError naming the
    id and both lines, so a caller that reads the rows to the end (counting or loading them before
    encoding) never embeds a corpus with ambiguous ids. Memory: one 64-bit hash per row (21M
    Wikipedia passages: 170 MB), not the ids; only when two hashes agree is the file read again to
    tell a real repeat from a hash collision.
    """
    hashes = array("q")
    for passage_id, passage in itertools.islice(iter_corpus(path), limit):
        hashes.append(hash(passage_id))
        yield passage_id, passage
    ordered = np.sort(np.frombuffer(hashes, dtype=np.int64)) if hashes else np.empty(0, np.int64)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.size:
        _raise_on_repeated_id(path, set(repeated.tolist()), limit)


def _raise_on_repeated_id(path: str, suspects: set[int], limit: int | None) -> None:
    first_line: dict[str, int] = {}
    for line_no, passage_id, _ in itertools.islice(iter_corpus_lines(path), limit):
        if hash(passage_id) not in suspects:
            continue
        if passage_id in first_line:
            raise DataFormatError(
                f"{resolve_corpus_path(path)}:{line_no}: duplicate passage id "
                f"{passage_id!r} (first on line {first_line[passage_id]}): every "
                f"passage needs its own id"
            )
        first_line[passage_id] = line_no


def read_passage_range(path: str, start: int, end: int) -> tuple[list[str], list[Passage]]:
    """The ids and passages of rows ``[start, end)`` (0-based, file order) of the corpus."""
    ids: list[str] = []
    passages: list[Passage] = []
    for passage_id, passage in itertools.islice(iter_corpus(path), start, end):
        ids.append(passage_id)
        passages.append(passage)
    if len(ids) != end - start:
        raise DataFormatError(
            f"{resolve_corpus_path(path)}: expected rows {start}..{end - 1}, the file "
            f"ended after {start + len(ids)} rows (did it change while reading?)"
        )
    return ids, passages


def read_corpus(path: str, limit: int | None = None) -> tuple[list[str], list[Passage]]:
    """The first ``limit`` (default all) ids and passages in one pass.

    DataFormatError if there are none, or if a passage id occurs twice (naming it and both lines).
    """
    pairs = list(iter_unique_passages(path, limit))
    if not pairs:
        raise DataFormatError(f"{resolve_corpus_path(path)}: no passages found (empty corpus)")
    return [pid for pid, _ in pairs], [passage for _, passage in pairs]


def lookup_passages(
    path: str,
    wanted: Collection[str],
    *,
    visit_rows: int = 0,
    visit: Callable[[str, Passage], None] | None = None,
) -> dict[str, Passage]:
    """The passages whose ids are in ``wanted``, read in one streaming pass (memory ~ len(wanted)).

    ``visit`` (e.g. a digest's ``update``) sees each of the first ``visit_rows`` rows in file order; the pass
    stops once every wanted id is found and those rows were visited.

    Raises DataFormatError naming the file and a few of the ids it does not hold.
    """
    wanted = set(wanted)
    found: dict[str, Passage] = {}
    visited = 0
    for passage_id, passage in iter_corpus(path):
        if visit is not None and visited < visit_rows:
            visit(passage_id, passage)
            visited += 1
        if passage_id in wanted:
            found[passage_id] = passage
        if len(found) == len(wanted) and (visit is None or visited >= visit_rows):
            break
    missing = sorted(wanted - set(found))
    if missing:
        raise DataFormatError(
            f"{resolve_corpus_path(path)}: {len(missing)} retrieved passage ids are not in "
            f"this file (e.g. {missing[:5]}); is --ctx_file the corpus the embeddings "
            f"were made from?"
        )
    return found
