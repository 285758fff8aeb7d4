"""Readers for DPR retriever data (JSON / JSONL, optionally gzipped), passage TSVs and BEIR corpora.

Every problem with the content of a file raises :class:`DataFormatError` naming the file, the record
(1-based) or line, the field, what was expected and what was found. Gzip is detected from the magic
bytes, so a compressed file is read whatever its suffix.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import itertools
import json
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from dpr.errors import UserError
from dpr.options import parse_upsample_rates  # noqa: F401  (re-exported: flag parsing lives in options)

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_PASSAGE_ID_FIELDS = ("passage_id", "psg_id")  # DPR sets use either name
_MISSING = object()  # marks a field absent from a record (distinct from an explicit null)


@dataclass(frozen=True)
class Passage:
    """One passage; ``passage_id`` is always a string (ids are often ints in the files)."""

    text: str
    title: str = ""
    passage_id: str | None = None


@dataclass(frozen=True)
class BiEncoderSample:
    """One DPR training question with its positive, random negative and hard negative passages."""

    question: str
    answers: tuple[str, ...]
    positive_passages: tuple[Passage, ...]
    negative_passages: tuple[Passage, ...]
    hard_negative_passages: tuple[Passage, ...]
    dataset: str = ""


class DataFormatError(UserError, ValueError):
    """A data file does not hold what it should; the message says where and what."""


def _describe(value: Any) -> str:
    """A short human description of a JSON value for error messages."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = repr(value)
        return f"the string {shown[:60] + '...' if len(shown) > 60 else shown}"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:8]}"
    return type(value).__name__


@dataclass(frozen=True)
class _Location:
    """Where a record lives, to build error messages."""

    path: str
    record: int
    line: int | None = None

    def error(self, field: str, expected: str, found: Any) -> DataFormatError:
        line = f" (line {self.line})" if self.line is not None else ""
        return DataFormatError(
            f"{self.path}: record {self.record}{line}, field '{field}': "
            f"expected {expected}, found {_describe(found)}"
        )


# ---------------------------------------------------------------------------- files and patterns


def _open_text(path: str) -> TextIO:
    """Open ``path`` as UTF-8 text, decompressing when it starts with the gzip magic bytes."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    if compressed:
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


@contextlib.contextmanager
def _decoding_errors(path: str) -> Iterator[None]:
    """Turn undecodable bytes or a broken gzip stream into a DataFormatError naming the file."""
    try:
        yield
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataFormatError(f"{path}: not UTF-8 text (plain or gzipped): {err}") from err


def expand_patterns(patterns: str | Sequence[str]) -> list[str]:
    """Expand glob patterns (``~`` and ``**`` allowed) into files, sorted within each pattern.

    An existing file is taken literally even if its name holds glob characters. A pattern that
    matches no file raises FileNotFoundError naming it.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    return [path for pattern in patterns for path in _expand_pattern(pattern)]


def _expand_pattern(pattern: str) -> list[str]:
    expanded = os.path.expanduser(pattern)
    if expanded and os.path.isfile(expanded):
        return [expanded]
    matches = sorted(m for m in glob.glob(expanded, recursive=True) if os.path.isfile(m))
    if not matches:
        raise FileNotFoundError(f"no file matches the pattern {pattern!r}")
    return matches


# ------------------------------------------------------------------------- DPR retriever records


def _parse_passage(obj: Any, loc: _Location, field: str, ctx_field: str) -> Passage:
    if not isinstance(obj, dict):
        raise loc.error(field, "a passage object", obj)
    text = obj.get(ctx_field, _MISSING)
    if not isinstance(text, str):
        raise loc.error(f"{field}.{ctx_field}", "a string", text)
    # With ctx_field="title" the title *is* the passage text; repeating it as a title would
    # feed it to the encoder twice.
    title = "" if ctx_field == "title" else obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise loc.error(f"{field}.title", "a string", title)
    passage_id = None
    for key in _PASSAGE_ID_FIELDS:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise loc.error(f"{field}.{key}", "a string or integer id", value)
        passage_id = str(value)
        break
    return Passage(text=text, title=title, passage_id=passage_id)


def _parse_passages(
    record: dict, key: str, loc: _Location, ctx_field: str, required: bool
) -> tuple[Passage, ...]:
    value = record.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise loc.error(key, "a list of passages", value)
        return ()
    if not isinstance(value, list):
        raise loc.error(key, "a list of passages", value)
    return tuple(_parse_passage(p, loc, f"{key}[{i}]", ctx_field) for i, p in enumerate(value))


def _parse_record(record: Any, loc: _Location, ctx_field: str) -> BiEncoderSample | None:
    """Build a sample from one record; None when it has no positive passage."""
    if not isinstance(record, dict):
        raise loc.error("<record>", "a JSON object", record)
    question = record.get("question", _MISSING)
    if not isinstance(question, str):
        raise loc.error("question", "a string", question)
    answers = record.get("answers", [])
    answers = [] if answers is None else answers
    if not isinstance(answers, list):
        raise loc.error("answers", "a list of strings", answers)
    for i, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise loc.error(f"answers[{i}]", "a string", answer)
    dataset = record.get("dataset", "")
    dataset = "" if dataset is None else dataset
    if not isinstance(dataset, str):
        raise loc.error("dataset", "a string", dataset)
    positives = _parse_passages(record, "positive_ctxs", loc, ctx_field, required=True)
    if not positives:
        return None
    return BiEncoderSample(
        question=question,
        answers=tuple(answers),
        positive_passages=positives,
        negative_passages=_parse_passages(record, "negative_ctxs", loc, ctx_field, False),
        hard_negative_passages=_parse_passages(record, "hard_negative_ctxs", loc, ctx_field, False),
        dataset=dataset,
    )


def _iter_json_records(path: str) -> Iterator[tuple[Any, _Location]]:
    """Yield ``(record, location)`` from a JSON list file or a JSONL file (sniffed from content).

    A file whose first non-blank character is ``[`` is one JSON list; anything else is JSONL.
    """
    with _open_text(path) as handle, _decoding_errors(path):
        head: list[str] = []
        for line in handle:
            head.append(line)
            if line.strip():
                break
        if head and head[-1].lstrip().startswith("["):
            yield from _json_list_records(path, "".join(head) + handle.read())
        else:
            yield from _jsonl_records(path, itertools.chain(head, handle))


def _json_list_records(path: str, text: str) -> Iterator[tuple[Any, _Location]]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            f"{path}: line {err.lineno} column {err.colno}: malformed JSON: {err.msg}"
        ) from err
    for index, record in enumerate(records, start=1):
        yield record, _Location(path, index)


def _jsonl_records(path: str, lines: Iterator[str]) -> Iterator[tuple[Any, _Location]]:
    index = 0
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        index += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(
                f"{path}: line {line_no} (record {index}): malformed JSON: {err.msg}"
            ) from err
        yield record, _Location(path, index, line_no)


def read_dpr_file(path: str, ctx_field: str = "text") -> tuple[list[BiEncoderSample], int]:
    """Read one DPR retriever JSON / JSONL file (optionally gzipped).

    ``ctx_field`` names the passage field used as the passage text. Returns
    ``(samples, n_skipped)``, where samples without any positive passage are skipped and counted.
    """
    if not ctx_field:
        raise ValueError("ctx_field must name a passage field, found an empty string")
    samples: list[BiEncoderSample] = []
    skipped = 0
    for record, loc in _iter_json_records(path):
        sample = _parse_record(record, loc, ctx_field)
        if sample is None:
            skipped += 1
        else:
            samples.append(sample)
    logger.info("%s: %d samples, %d skipped without a positive", path, len(samples), skipped)
    return samples, skipped


def read_dpr_files(
    patterns: Sequence[str],
    upsample_rates: Sequence[int] | None = None,
    ctx_field: str = "text",
) -> list[BiEncoderSample]:
    """Read all files matched by ``patterns``; pattern ``i``'s samples repeat ``rates[i]`` times.

    Files come pattern by pattern, sorted within a pattern. ``upsample_rates`` (default all 1)
    needs one positive int per pattern.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("no data file pattern given")
    rates = [1] * len(patterns) if upsample_rates is None else list(upsample_rates)
    if len(rates) != len(patterns):
        raise ValueError(
            f"got {len(rates)} upsample rates {rates} for {len(patterns)} file patterns "
            f"{list(patterns)}: give one rate per pattern"
        )
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
        raise ValueError(f"upsample rates must be positive integers, found {rates}")
    samples: list[BiEncoderSample] = []
    for pattern, rate in zip(patterns, rates):
        pattern_samples: list[BiEncoderSample] = []
        for path in _expand_pattern(pattern):
            pattern_samples.extend(read_dpr_file(path, ctx_field)[0])
        samples.extend(pattern_samples * rate)
        logger.info("pattern %r: %d samples x%d", pattern, len(pattern_samples), rate)
    logger.info("%d samples in total", len(samples))
    return samples


# --------------------------------------------------------------------------------- passage corpora


def iter_passages_tsv(path: str) -> Iterator[tuple[str, Passage]]:
    """Yield ``(passage_id, Passage)`` from a DPR passages TSV (``psgs_w100.tsv``, may be gzipped).

    The header ``id<TAB>text<TAB>title`` (any column order, title optional) is used when present;
    without it the columns are id, text, title. Fields use CSV quoting, as DPR's files do.
    """
    with _open_text(path) as handle, _decoding_errors(path):
        reader = csv.reader(handle, delimiter="\t")
        columns: dict[str, int] | None = None
        try:
            for row in reader:
                if not row:
                    continue
                if columns is None:
                    columns = _tsv_columns(row, path, reader.line_num)
                    if row[0].strip().lower() == "id":
                        continue
                yield _tsv_passage(row, columns, path, reader.line_num)
        except csv.Error as err:
            raise DataFormatError(f"{path}:{reader.line_num}: malformed TSV: {err}") from err


def _tsv_columns(first_row: list[str], path: str, line: int) -> dict[str, int]:
    """Column positions from the header, or id, text[, title] when the file has no header."""
    if first_row[0].strip().lower() != "id":
        return {"id": 0, "text": 1, "title": 2} if len(first_row) >= 3 else {"id": 0, "text": 1}
    names = [name.strip().lower() for name in first_row]
    if "text" not in names:
        raise DataFormatError(
            f"{path}:{line}: header: expected columns id, text[, title], found {first_row}"
        )
    return {name: names.index(name) for name in ("id", "text", "title") if name in names}


def _tsv_passage(
    row: list[str], columns: dict[str, int], path: str, line: int
) -> tuple[str, Passage]:
    needed = max(columns.values()) + 1
    if len(row) < needed:
        names = ", ".join(sorted(columns, key=columns.__getitem__))
        raise DataFormatError(
            f"{path}:{line}: expected {needed} tab-separated columns ({names}), found {len(row)}"
        )
    passage_id = row[columns["id"]].strip()
    if not passage_id:
        raise DataFormatError(f"{path}:{line}: column 'id': expected a passage id, found ''")
    title = row[columns["title"]] if "title" in columns else ""
    return passage_id, Passage(text=row[columns["text"]], title=title, passage_id=passage_id)


def iter_beir_corpus(path: str) -> Iterator[tuple[str, Passage]]:
    """Yield ``(doc_id, Passage)`` from a BEIR ``corpus.jsonl`` (``{"_id", "title", "text"}``)."""
    with _open_text(path) as handle, _decoding_errors(path):
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{line_no}: malformed JSON: {err.msg}") from err
            passage = _beir_passage(obj, f"{path}:{line_no}")
            yield passage.passage_id, passage


def _beir_passage(obj: Any, where: str) -> Passage:
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a JSON object, found {_describe(obj)}")
    doc_id = obj.get("_id", _MISSING)
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise DataFormatError(f"{where}: field '_id': expected a string, found {_describe(doc_id)}")
    title = obj.get("title")
    title = "" if title is None else title
    for field, value in (("text", obj.get("text", _MISSING)), ("title", title)):
        if not isinstance(value, str):
            raise DataFormatError(
                f"{where}: field '{field}': expected a string, found {_describe(value)}"
            )
    return Passage(text=obj["text"], title=title, passage_id=str(doc_id))
