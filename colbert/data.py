"""ColBERT training and retrieval data: triples, queries, collections, and triples from DPR JSON.

Formats (ColBERT v1's, plus the files of ``prepare_data.py``):

- triples TSV ``query<TAB>positive<TAB>negative`` (text), or JSONL ``[qid, pid+, pid-]`` a line with
  ``--queries`` and ``--collection``; told apart by the first character of the file (``[`` = JSONL).
- queries: ``queries.tsv`` (``qid<TAB>query``) or a BEIR ``queries.jsonl``.
- collection: ColBERT's ``collection.tsv`` (``pid<TAB>passage[<TAB>title]``, no header, no quoting),
  a DPR passages TSV (header ``id<TAB>text<TAB>title``, CSV quoting: ``prepare_data.py`` writes these)
  or a BEIR ``corpus.jsonl``.
- DPR retriever JSON: each question gives (question, first positive, hard negative) triples.

Every problem raises DataFormatError naming the file and line (or record), the value expected and the
value found. Empty documents are refused: a document without tokens cannot be scored.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from colbert.tokenization import doc_text
from dpr.atomic import atomic_file
from dpr.data.corpus import resolve_corpus_path
from dpr.data.queries import read_beir_queries
from dpr.data.readers import BiEncoderSample, DataFormatError, Passage, iter_beir_corpus, iter_passages_tsv

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Triple:
    """A training query with one positive and one negative passage."""

    query: str
    positive: Passage
    negative: Passage


def _open_text(path: str) -> TextIO:
    """UTF-8 text, gunzipped when the file starts with the gzip magic bytes."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if compressed else open(path, encoding="utf-8")


def _first_char(path: str) -> str:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                return line.lstrip()[0]
    raise DataFormatError(f"{path}: the file is empty")


def _check_doc(passage: Passage, where: str) -> Passage:
    if not passage.text.strip() and not passage.title.strip():
        raise DataFormatError(f"{where}: empty document (no text, no title); ColBERT cannot score a document "
                              f"without tokens, remove it from the file")
    return passage


# ------------------------------------------------------------------------------------- collections


def _iter_colbert_tsv(path: str) -> Iterator[tuple[str, Passage, str]]:
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) < 2 or not cells[0].strip():
                raise DataFormatError(f"{path}:{line_no}: expected 'pid<TAB>passage[<TAB>title]', "
                                      f"found {line[:80]!r}")
            pid = cells[0].strip()
            title = cells[2] if len(cells) > 2 else ""
            yield pid, Passage(text=cells[1], title=title, passage_id=pid), f"{path}:{line_no}"


def iter_collection(path: str) -> Iterator[tuple[str, Passage]]:
    """Yield ``(pid, Passage)`` in file order; duplicate pids and empty documents are errors."""
    path = resolve_corpus_path(path)
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json")) or _first_char(path) == "{":
        rows = ((pid, p, f"{path}: document {pid!r}") for pid, p in iter_beir_corpus(path))
    elif _header_is_dpr(path):
        rows = ((pid, p, f"{path}: passage {pid!r}") for pid, p in iter_passages_tsv(path))
    else:
        rows = _iter_colbert_tsv(path)
    seen: set[str] = set()
    for pid, passage, where in rows:
        if pid in seen:
            raise DataFormatError(f"{where}: pid {pid!r} appears twice in the collection")
        seen.add(pid)
        yield pid, _check_doc(passage, where)


def _header_is_dpr(path: str) -> bool:
    """True for a DPR passages TSV (first line ``id<TAB>text...``): those use CSV quoting."""
    with _open_text(path) as handle:
        first = handle.readline()
    return first.split("\t")[0].strip().lower() == "id"


def read_collection(path: str, wanted: Collection[str] | None = None) -> dict[str, Passage]:
    """``pid -> Passage`` for every pid (or only those in ``wanted``: memory stays ~ len(wanted))."""
    wanted = set(wanted) if wanted is not None else None
    found: dict[str, Passage] = {}
    for pid, passage in iter_collection(path):
        if wanted is None or pid in wanted:
            found[pid] = passage
    if not found:
        raise DataFormatError(f"{path}: no passages found" + (" with the wanted pids" if wanted else ""))
    return found


# ----------------------------------------------------------------------------------------- queries


def read_queries(path: str) -> dict[str, str]:
    """``qid -> text`` from ``queries.tsv`` (``qid<TAB>query``) or a BEIR ``queries.jsonl``."""
    if path.lower().removesuffix(".gz").endswith(".jsonl") or _first_char(path) == "{":
        return read_beir_queries(path)
    queries: dict[str, str] = {}
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) < 2 or not cells[0].strip() or not cells[1].strip():
                raise DataFormatError(f"{path}:{line_no}: expected 'qid<TAB>query', found {line[:80]!r}")
            if cells[0].strip() in queries:
                raise DataFormatError(f"{path}:{line_no}: qid {cells[0].strip()!r} appears twice")
            queries[cells[0].strip()] = cells[1]
    if not queries:
        raise DataFormatError(f"{path}: no queries found")
    return queries


# ----------------------------------------------------------------------------------------- triples


def _check_triple_line(cells: list[bytes] | list[str], path: str, line_no: int) -> None:
    if len(cells) != 3:
        raise DataFormatError(f"{path}:{line_no}: expected 3 tab-separated columns (query, positive, negative), "
                              f"found {len(cells)}")
    for column, cell in zip(("query", "positive", "negative"), cells, strict=True):
        if not cell.strip():
            raise DataFormatError(f"{path}:{line_no}: column '{column}' is empty")


class TsvTriples(Sequence[Triple]):
    """Text triples of an uncompressed TSV, read on demand: only the line offsets stay in memory.

    MS MARCO's ``triples.train.small.tsv`` has ~40M lines (tens of GB of text); 8 bytes per triple is
    what it costs here. Every line is checked once when the file is opened, so a bad line fails early.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        offsets, position = [], 0
        with open(path, "rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                body = line.rstrip(b"\r\n")
                if body.strip():
                    _check_triple_line(body.split(b"\t"), path, line_no)
                    offsets.append(position)
                position += len(line)
        self.offsets = np.array(offsets, dtype=np.int64)                                  # (N,)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Triple:  # type: ignore[override]
        with open(self.path, "rb") as handle:
            handle.seek(int(self.offsets[index]))
            line = handle.readline()
        try:
            query, positive, negative = line.decode("utf-8").rstrip("\r\n").split("\t")
        except UnicodeDecodeError as err:
            raise DataFormatError(f"{self.path}: triple {index + 1} is not UTF-8 text: {err}") from err
        return Triple(query, Passage(positive), Passage(negative))


def _tsv_triples(path: str) -> Sequence[Triple]:
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    if not compressed:
        return TsvTriples(path)
    triples = []                       # gzip cannot seek cheaply: read the (smaller) file into memory
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            cells = line.rstrip("\r\n").split("\t")
            if line.strip():
                _check_triple_line(cells, path, line_no)
                triples.append(Triple(cells[0], Passage(cells[1]), Passage(cells[2])))
    return triples


def _id_triples(path: str) -> list[tuple[int, str, str, str]]:
    """``(line, qid, pid+, pid-)`` from a JSONL file of ``[qid, pid+, pid-]`` lists."""
    rows = []
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{line_no}: malformed JSON: {err.msg}") from err
            if (not isinstance(row, list) or len(row) != 3
                    or any(isinstance(x, bool) or not isinstance(x, (str, int)) for x in row)):
                raise DataFormatError(f"{path}:{line_no}: expected [qid, pid+, pid-] (ids as strings or "
                                      f"ints), found {line.strip()[:80]!r}")
            rows.append((line_no, str(row[0]), str(row[1]), str(row[2])))
    return rows


def _resolve_ids(path: str, rows: Sequence[tuple[int, str, str, str]], queries: dict[str, str],
                 queries_path: str, collection: dict[str, Passage], collection_path: str) -> list[Triple]:
    triples = []
    for line_no, qid, pos, neg in rows:
        if qid not in queries:
            raise DataFormatError(f"{path}:{line_no}: qid {qid!r} is not in the queries file {queries_path}")
        for pid in (pos, neg):
            if pid not in collection:
                sample = ", ".join(repr(p) for p in itertools.islice(collection, 3))
                raise DataFormatError(f"{path}:{line_no}: pid {pid!r} is not in the collection {collection_path} "
                                      f"(its pids look like {sample}); the collection does not match the triples")
        triples.append(Triple(queries[qid], collection[pos], collection[neg]))
    return triples


def read_triples(path: str, queries_path: str | None = None,
                 collection_path: str | None = None) -> Sequence[Triple]:
    """Text triples (TSV), or id triples (JSONL) resolved through the queries and the collection."""
    if _first_char(path) != "[":
        if queries_path or collection_path:
            logger.warning("%s holds text triples: --queries and --collection are not used", path)
        triples = _tsv_triples(path)
    else:
        if not queries_path or not collection_path:
            raise DataFormatError(f"{path} holds [qid, pid+, pid-] triples: pass --queries and --collection")
        rows = _id_triples(path)
        collection = read_collection(collection_path, {pid for row in rows for pid in row[2:]})
        triples = _resolve_ids(path, rows, read_queries(queries_path), queries_path, collection, collection_path)
    if not triples:
        raise DataFormatError(f"{path}: no triples found")
    logger.info("%s: %d triples", path, len(triples))
    return triples


def triples_from_dpr(samples: Sequence[BiEncoderSample], hard_negatives: int = 1) -> tuple[list[Triple], int]:
    """Triples (question, first positive, negative) from DPR samples; returns ``(triples, skipped)``.

    Each question gives one triple per hard negative, up to ``hard_negatives`` (BM25 hits without the
    answer); questions without hard negatives use their random ``negative_ctxs``; questions with no
    negative at all are skipped and counted. Empty passages are errors.
    """
    triples: list[Triple] = []
    skipped = 0
    for number, sample in enumerate(samples, start=1):
        negatives = (sample.hard_negative_passages or sample.negative_passages)[:hard_negatives]
        if not sample.positive_passages or not negatives:
            skipped += 1
            continue
        where = f"DPR sample {number} ({sample.question[:40]!r})"
        positive = _check_doc(sample.positive_passages[0], f"{where}, positive")
        for negative in negatives:
            triples.append(Triple(sample.question, positive, _check_doc(negative, f"{where}, negative")))
    return triples, skipped


def _tsv_safe(text: str) -> str:
    # Tabs and line breaks inside a text would shift the columns of a triples TSV.
    return " ".join(text.split())


def write_triples_tsv(triples: Sequence[Triple], path: str) -> int:
    """Write text triples ``query<TAB>positive<TAB>negative`` atomically (titles as ``title | text``)."""
    with atomic_file(path) as out:
        for t in triples:
            out.write(f"{_tsv_safe(t.query)}\t{_tsv_safe(doc_text(t.positive))}\t{_tsv_safe(doc_text(t.negative))}\n")
    logger.info("wrote %d triples to %s", len(triples), path)
    return len(triples)
