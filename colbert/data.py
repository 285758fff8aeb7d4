"""ColBERT training and retrieval data: triples, queries, collections, and triples from DPR JSON.

Formats (ColBERT v1's, plus the files of ``prepare_data.py``):

- triples TSV ``query<TAB>positive<TAB>negative`` (text), or JSONL ``[qid, pid+, pid-]`` a line with
  ``--queries`` and ``--collection``; told apart by the name (``.tsv``/``.txt`` vs ``.jsonl``/``.json``,
  before any ``.gz``), else by the first line (JSONL only if it parses as a list of 3 ids). A file that
  mixes the two forms is an error naming the first line of the other form.
- queries: ``queries.tsv`` (``qid<TAB>query``) or a BEIR ``queries.jsonl``.
- collection: ColBERT's ``collection.tsv`` (``pid<TAB>passage[<TAB>title]``, no header, no quoting),
  a DPR passages TSV (header ``id<TAB>text<TAB>title``, CSV quoting: ``prepare_data.py`` writes these)
  or a BEIR ``corpus.jsonl``.
- DPR retriever JSON: each question gives (question, first positive, hard negative) triples.

Every problem raises DataFormatError naming the file and line (or record), the value expected and the
value found; the triples file is checked whole (UTF-8, columns, ids) before training starts. Empty
documents are refused: a document without tokens cannot be scored.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from colbert.tokenization import doc_text
from dpr.atomic import atomic_file
from dpr.data.corpus import resolve_corpus_path
from dpr.data.files import decoding_errors, open_binary
from dpr.data.queries import read_beir_queries
from dpr.data.readers import BiEncoderSample, DataFormatError, Passage, iter_beir_corpus, iter_passages_tsv

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Triple:
    """A training query with one positive and one negative passage."""

    query: str
    positive: Passage
    negative: Passage

    @property
    def passages(self) -> tuple[Passage, Passage]:
        return self.positive, self.negative


def _decode(raw: bytes, path: str, line_no: int) -> str:
    """One line as text without its line break; a byte that is not UTF-8 is an error naming the line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(
            f"{path}:{line_no}: expected UTF-8 text, found byte {raw[err.start : err.start + 1]!r} "
            f"at column {err.start + 1}; convert the file to UTF-8 (e.g. iconv -f latin1 "
            f"-t utf-8)"
        ) from err
    if line_no == 1:
        line = line.removeprefix("\ufeff")  # a byte-order mark is no part of the first field
    return line.rstrip("\r\n")


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 (optionally gzipped) file."""
    with open_binary(path) as handle, decoding_errors(path):  # a broken gzip stream names the file
        for line_no, raw in enumerate(handle, start=1):
            yield line_no, _decode(raw, path, line_no)


def _first_line(path: str) -> str:
    for _, line in _lines(path):
        if line.strip():
            return line.strip()
    raise DataFormatError(f"{path}: the file is empty")


def _first_char(path: str) -> str:
    return _first_line(path)[0]


def check_doc(passage: Passage, where: str) -> Passage:
    """``passage``, or DataFormatError naming ``where`` when it has no text and no title."""
    if not passage.text.strip() and not passage.title.strip():
        raise DataFormatError(
            f"{where}: empty document (no text, no title); ColBERT cannot score a document "
            f"without tokens, remove it from the file"
        )
    return passage


# ------------------------------------------------------------------------------------- collections


def _iter_colbert_tsv(path: str) -> Iterator[tuple[str, Passage, str]]:
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 2 or not cells[0].strip():
            raise DataFormatError(f"{path}:{line_no}: expected 'pid<TAB>passage[<TAB>title]', found {line[:80]!r}")
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
        yield pid, check_doc(passage, where)


def _header_is_dpr(path: str) -> bool:
    """True for a DPR passages TSV (first line ``id<TAB>text...``): those use CSV quoting."""
    first = next(_lines(path), (0, ""))[1]
    return first.split("\t")[0].strip().lower() == "id"


def _collect(path: str, wanted: Collection[str] | None) -> tuple[dict[str, Passage], list[str]]:
    """``(pid -> Passage for the wanted pids, the file's first 3 pids)``: memory stays ~ len(wanted)."""
    wanted = set(wanted) if wanted is not None else None
    found: dict[str, Passage] = {}
    sample: list[str] = []
    for pid, passage in iter_collection(path):
        if len(sample) < 3:
            sample.append(pid)
        if wanted is None or pid in wanted:
            found[pid] = passage
    return found, sample


def read_collection(path: str, wanted: Collection[str] | None = None) -> dict[str, Passage]:
    """``pid -> Passage`` for every pid (or only those in ``wanted``: memory stays ~ len(wanted))."""
    found, _ = _collect(path, wanted)
    if not found:
        raise DataFormatError(f"{path}: no passages found" + (" with the wanted pids" if wanted else ""))
    return found


# ----------------------------------------------------------------------------------------- queries


def read_queries(path: str) -> dict[str, str]:
    """``qid -> text`` from ``queries.tsv`` (``qid<TAB>query``) or a BEIR ``queries.jsonl``."""
    if path.lower().removesuffix(".gz").endswith(".jsonl") or _first_char(path) == "{":
        return read_beir_queries(path)
    queries: dict[str, str] = {}
    for line_no, line in _lines(path):
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


_TEXT_SUFFIXES = (".tsv", ".txt")
_ID_SUFFIXES = (".jsonl", ".json")
_TEXT_FORM = "a text triple 'query<TAB>positive<TAB>negative'"
_ID_FORM = "a JSON list [qid, pid+, pid-]"


def _id_row(line: str) -> tuple[str, str, str] | None:
    """The ids of a line holding a JSON ``[qid, pid+, pid-]`` list (ids as strings or ints), else None."""
    if not line.lstrip().startswith("["):
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if (
        not isinstance(row, list)
        or len(row) != 3
        or any(isinstance(x, bool) or not isinstance(x, (str, int)) for x in row)
    ):
        return None
    return str(row[0]), str(row[1]), str(row[2])


def triples_format(path: str) -> tuple[str, str]:
    """``("text" | "ids", why)``: by the file name, else by the first non-blank line (why says which)."""
    name = path.lower().removesuffix(".gz")
    if name.endswith(_TEXT_SUFFIXES):
        return "text", f"its name ends in {name[name.rindex('.') :]}"
    if name.endswith(_ID_SUFFIXES):
        return "ids", f"its name ends in {name[name.rindex('.') :]}"
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        if _id_row(line) is not None:  # a text query may start with '[': only a whole id list counts
            return "ids", f"line {line_no} is {_ID_FORM}"
        if len(line.split("\t")) == 3:
            return "text", f"line {line_no} is {_TEXT_FORM}"
        hint = "; DPR JSON goes to --dpr_train_file" if line.lstrip().startswith(("[", "{")) else ""
        raise DataFormatError(f"{path}:{line_no}: expected {_TEXT_FORM} or {_ID_FORM}, found {line[:80]!r}{hint}")
    raise DataFormatError(f"{path}: the file is empty")


def _text_triple(line: str, path: str, line_no: int, why: str) -> list[str]:
    """The three columns of a text triple line (checked: count, none empty)."""
    cells = line.split("\t")
    if len(cells) != 3:
        if _id_row(line) is not None:
            raise DataFormatError(
                f"{path}:{line_no}: found {_ID_FORM}, but the file holds text triples ({why}); "
                f"a triples file holds one form: use .jsonl for id triples"
            )
        raise DataFormatError(
            f"{path}:{line_no}: expected 3 tab-separated columns (query, positive, negative), "
            f"found {len(cells)}: {line[:80]!r}"
        )
    for column, cell in zip(("query", "positive", "negative"), cells, strict=True):
        if not cell.strip():
            raise DataFormatError(f"{path}:{line_no}: column '{column}' is empty")
    return cells


class TsvTriples(Sequence[Triple]):
    """Text triples of an uncompressed TSV, read on demand: only the line offsets stay in memory.

    MS MARCO's ``triples.train.small.tsv`` has ~40M lines (tens of GB of text); 8 bytes per triple is
    what it costs here. Every line is decoded and checked once when the file is opened, so a bad line
    fails before training starts, not at the step that reaches it.
    """

    def __init__(self, path: str, why: str = "its name") -> None:
        self.path = path
        offsets, position = [], 0
        with open(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                line = _decode(raw, path, line_no)
                if line.strip():
                    _text_triple(line, path, line_no, why)
                    offsets.append(position)
                position += len(raw)
        self.offsets = np.array(offsets, dtype=np.int64)  # (N,)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Triple:  # type: ignore[override]
        with open(self.path, "rb") as handle:
            handle.seek(int(self.offsets[index]))
            raw = handle.readline()
        try:
            line = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
        except UnicodeDecodeError as err:  # checked when opened: the file changed since
            raise DataFormatError(
                f"{self.path}: triple {index + 1} is not UTF-8 text (the file changed during training?): {err}"
            ) from err
        query, positive, negative = line.split("\t")
        return Triple(query, Passage(positive), Passage(negative))


def _tsv_triples(path: str, why: str) -> Sequence[Triple]:
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    if not compressed:
        return TsvTriples(path, why)
    triples = []  # gzip cannot seek cheaply: read the (smaller) file into memory
    for line_no, line in _lines(path):
        if line.strip():
            query, positive, negative = _text_triple(line, path, line_no, why)
            triples.append(Triple(query, Passage(positive), Passage(negative)))
    return triples


def _id_triples(path: str, why: str) -> list[tuple[int, str, str, str]]:
    """``(line, qid, pid+, pid-)`` from a JSONL file of ``[qid, pid+, pid-]`` lists."""
    rows = []
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        ids = _id_row(line)
        if ids is None:
            raise DataFormatError(f"{path}:{line_no}: {_id_line_problem(line, why)}")
        rows.append((line_no, *ids))
    return rows


def _id_line_problem(line: str, why: str) -> str:
    """What is wrong with a line of an id triples file that is no ``[qid, pid+, pid-]`` list."""
    if len(line.split("\t")) == 3 and not line.lstrip().startswith(("[", "{")):
        return (
            f"found {_TEXT_FORM}, but the file holds id triples ({why}); a triples file holds one form: "
            f"use .tsv for text triples"
        )
    if line.strip() in ("[", "[{") or line.lstrip().startswith("[{"):
        return f"expected {_ID_FORM} a line, found a JSON array of objects: DPR JSON goes to --dpr_train_file"
    try:
        json.loads(line)
    except json.JSONDecodeError as err:
        return f"malformed JSON ({err.msg}), expected {_ID_FORM}: {line.strip()[:80]!r}"
    return f"expected {_ID_FORM} (ids as strings or ints), found {line.strip()[:80]!r}"


def _resolve_ids(
    path: str,
    rows: Sequence[tuple[int, str, str, str]],
    queries: dict[str, str],
    queries_path: str,
    collection: dict[str, Passage],
    collection_path: str,
    pid_sample: Sequence[str],
) -> list[Triple]:
    triples = []
    for line_no, qid, pos, neg in rows:
        if qid not in queries:
            sample = ", ".join(repr(q) for q in itertools.islice(queries, 3))
            raise DataFormatError(
                f"{path}:{line_no}: qid {qid!r} is not in the queries file {queries_path} "
                f"(its qids look like {sample}); the queries do not match the triples"
            )
        for pid in (pos, neg):
            if pid not in collection:
                sample = ", ".join(repr(p) for p in pid_sample)
                raise DataFormatError(
                    f"{path}:{line_no}: pid {pid!r} is not in the collection {collection_path} "
                    f"(its pids look like {sample}); the collection does not match the triples"
                )
        triples.append(Triple(queries[qid], collection[pos], collection[neg]))
    return triples


def read_triples(path: str, queries_path: str | None = None, collection_path: str | None = None) -> Sequence[Triple]:
    """Text triples (TSV), or id triples (JSONL) resolved through the queries and the collection.

    The whole file is checked here (encoding, columns, ids), so a bad line fails before training.
    """
    form, why = triples_format(path)
    if form == "text":
        if queries_path or collection_path:
            logger.warning("%s holds text triples (%s): --queries and --collection are not used", path, why)
        triples = _tsv_triples(path, why)
    else:
        if not queries_path or not collection_path:
            raise DataFormatError(f"{path} holds [qid, pid+, pid-] triples ({why}): pass --queries and --collection")
        rows = _id_triples(path, why)
        collection, pid_sample = _collect(collection_path, {pid for row in rows for pid in row[2:]})
        triples = _resolve_ids(
            path, rows, read_queries(queries_path), queries_path, collection, collection_path, pid_sample
        )
    if not triples:
        raise DataFormatError(f"{path}: no triples found")
    logger.info("%s: %d triples", path, len(triples))
    return triples


def dpr_rows(
    samples: Sequence[BiEncoderSample], hard_negatives: int
) -> tuple[list[tuple[str, Passage, tuple[Passage, ...]]], int]:
    """``(question, first positive, its first hard_negatives negatives)`` of DPR samples, and the count skipped.

    The negatives are the hard negatives (BM25 or mined hits without the answer), else the random
    ``negative_ctxs``; questions with no positive or no negative at all are skipped and counted. Empty
    passages are errors.
    """
    rows = []
    skipped = 0
    for number, sample in enumerate(samples, start=1):
        negatives = (sample.hard_negative_passages or sample.negative_passages)[:hard_negatives]
        if not sample.positive_passages or not negatives:
            skipped += 1
            continue
        where = f"DPR sample {number} ({sample.question[:40]!r})"
        positive = check_doc(sample.positive_passages[0], f"{where}, positive")
        rows.append((sample.question, positive, tuple(check_doc(n, f"{where}, negative") for n in negatives)))
    return rows, skipped


def triples_from_dpr(samples: Sequence[BiEncoderSample], hard_negatives: int = 1) -> tuple[list[Triple], int]:
    """Triples (question, first positive, negative) from DPR samples, one per negative of :func:`dpr_rows`;
    returns ``(triples, skipped)``."""
    rows, skipped = dpr_rows(samples, hard_negatives)
    return [
        Triple(question, positive, negative) for question, positive, negatives in rows for negative in negatives
    ], skipped


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
