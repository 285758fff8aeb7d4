"""Readers for DPR retriever data (JSON / JSONL, optionally gzipped), passage TSVs and BEIR corpora.

Every problem with the content of a file raises :class:`DataFormatError` naming the file, the record
(1-based) or line, the field, what was expected and what was found. Gzip is detected from the magic
bytes, so a compressed file is read whatever its suffix.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dpr.data.files import DataFormatError, decoding_errors, iter_tsv_rows, open_text, parse_json
from dpr.options import parse_upsample_rates  # noqa: F401  (re-exported: flag parsing lives in options)

logger = logging.getLogger(__name__)

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
            f"{self.path}: record {self.record}{line}, field '{field}': expected {expected}, found {_describe(found)}"
        )


# ---------------------------------------------------------------------------- files and patterns


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


def _parse_passages(record: dict, key: str, loc: _Location, ctx_field: str, required: bool) -> tuple[Passage, ...]:
    value = record.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise loc.error(key, "a list of passages", value)
        return ()
    if not isinstance(value, list):
        raise loc.error(key, "a list of passages", value)
    return tuple(_parse_passage(p, loc, f"{key}[{i}]", ctx_field) for i, p in enumerate(value))


def parse_record(record: Any, loc: _Location, ctx_field: str) -> BiEncoderSample | None:
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


def iter_json_records(path: str) -> Iterator[tuple[Any, _Location]]:
    """Yield ``(record, location)`` from a JSON list file or a JSONL file (sniffed from content).

    A file whose first non-blank character is ``[`` is one JSON list; anything else is JSONL.
    """
    with open_text(path) as handle, decoding_errors(path):
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
    records = parse_json(text, path, at_position=True)
    for index, record in enumerate(records, start=1):
        yield record, _Location(path, index)


def _jsonl_records(path: str, lines: Iterator[str]) -> Iterator[tuple[Any, _Location]]:
    index = 0
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        index += 1
        record = parse_json(line, f"{path}: line {line_no} (record {index})")
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
    for record, loc in iter_json_records(path):
        sample = parse_record(record, loc, ctx_field)
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
    needs one positive int per pattern. A pattern that matches no file raises FileNotFoundError; files
    that hold no usable sample at all (no record, or none with a positive passage) raise
    DataFormatError naming them, so the result is never empty. A pattern with no usable sample among
    others that have some is logged as a warning.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("no data file pattern given")
    rates = _check_rates(patterns, upsample_rates)
    files = [_expand_pattern(pattern) for pattern in patterns]  # every pattern must match, checked first
    samples: list[BiEncoderSample] = []
    skipped = 0
    for pattern, paths, rate in zip(patterns, files, rates):
        pattern_samples: list[BiEncoderSample] = []
        for path in paths:
            file_samples, file_skipped = read_dpr_file(path, ctx_field)
            pattern_samples.extend(file_samples)
            skipped += file_skipped
        if not pattern_samples:
            logger.warning("pattern %r: no usable sample in %s", pattern, paths)
        samples.extend(pattern_samples * rate)
        logger.info("pattern %r: %d samples x%d", pattern, len(pattern_samples), rate)
    if not samples:
        raise _no_samples_error(patterns, [path for paths in files for path in paths], skipped)
    logger.info("%d samples in total", len(samples))
    return samples


def _no_samples_error(patterns: Sequence[str], paths: list[str], skipped: int) -> DataFormatError:
    found = f"{skipped} records, none with a positive passage" if skipped else "no record (empty list or file)"
    return DataFormatError(
        f"no usable samples in {', '.join(paths)} (patterns {list(patterns)}): "
        f"expected at least one record with a positive passage, found {found}"
    )


def _check_rates(patterns: Sequence[str], upsample_rates: Sequence[int] | None) -> list[int]:
    rates = [1] * len(patterns) if upsample_rates is None else list(upsample_rates)
    if len(rates) != len(patterns):
        raise ValueError(
            f"got {len(rates)} upsample rates {rates} for {len(patterns)} file patterns "
            f"{list(patterns)}: give one rate per pattern"
        )
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
        raise ValueError(f"upsample rates must be positive integers, found {rates}")
    return rates


# --------------------------------------------------------------------------------- passage corpora


_TSV_COLUMNS = ("id", "text", "title")


def iter_passages_tsv(path: str) -> Iterator[tuple[str, Passage]]:
    """Yield ``(passage_id, Passage)`` from a DPR passages TSV (``psgs_w100.tsv``, may be gzipped)."""
    for _, passage_id, passage in iter_passages_tsv_lines(path):
        yield passage_id, passage


def iter_passages_tsv_lines(path: str) -> Iterator[tuple[int, str, Passage]]:
    """Yield ``(line number, passage_id, Passage)`` from a DPR passages TSV (may be gzipped).

    One passage per line, fields split on every tab: the file is not read as CSV, so a stray double
    quote stays part of its text. A field wholly enclosed in double quotes with inner quotes doubled
    (how DPR's ``psgs_w100.tsv`` and CSV writers quote) is unquoted. A first line naming the columns
    ``id``, ``text`` and optionally ``title`` (any order, any case; other columns are ignored) is
    the header; without one the columns are id, text[, title]. Every line must have as many fields
    as the header (or the first line); an empty id is an error.
    """
    columns: dict[str, int] | None = None
    width = 0
    for line_no, cells in iter_tsv_rows(path):
        if columns is None:
            header = _tsv_header(cells, path, line_no)
            columns = header if header is not None else _tsv_default_columns(cells, path, line_no)
            width = len(cells)
            if header is not None:
                continue
        yield (line_no, *_tsv_passage(cells, columns, width, f"{path}:{line_no}"))


def _tsv_header(cells: list[str], path: str, line: int) -> dict[str, int] | None:
    """Column positions when ``cells`` is a header (first cell ``id``, or two known names), else None."""
    names = [cell.strip().lower() for cell in cells]
    known = [name for name in names if name in _TSV_COLUMNS]
    if names[0] != "id" and len(known) < 2:
        return None  # a data line: passage ids and texts are not column names
    if "id" not in known or "text" not in known or len(set(known)) != len(known):
        raise DataFormatError(
            f"{path}:{line}: header: expected the columns id, text and optionally "
            f"title, once each in any order, found {cells}"
        )
    return {name: names.index(name) for name in _TSV_COLUMNS if name in names}


def _tsv_default_columns(cells: list[str], path: str, line: int) -> dict[str, int]:
    if len(cells) not in (2, 3):
        raise DataFormatError(
            f"{path}:{line}: expected a header or 2 or 3 tab-separated columns (id, text[, title]), found {len(cells)}"
        )
    return dict(zip(_TSV_COLUMNS, range(len(cells))))


def _tsv_passage(cells: list[str], columns: dict[str, int], width: int, where: str) -> tuple[str, Passage]:
    if len(cells) != width:
        names = ", ".join(sorted(columns, key=columns.__getitem__))
        raise DataFormatError(
            f"{where}: expected {width} tab-separated columns ({names}), found {len(cells)}{_quote_hint(cells)}"
        )
    passage_id = cells[columns["id"]].strip()
    if not passage_id:
        raise DataFormatError(f"{where}: column 'id': expected a passage id, found ''")
    title = cells[columns["title"]] if "title" in columns else ""
    return passage_id, Passage(text=cells[columns["text"]], title=title, passage_id=passage_id)


def _quote_hint(cells: list[str]) -> str:
    if any(cell.startswith('"') and not cell.endswith('"') for cell in cells):
        return " (a field opens a double quote it does not close: fields are never quoted across tabs or lines)"
    return ""


def iter_beir_corpus(path: str) -> Iterator[tuple[str, Passage]]:
    """Yield ``(doc_id, Passage)`` from a BEIR ``corpus.jsonl`` (``{"_id", "title", "text"}``)."""
    for _, doc_id, passage in iter_beir_corpus_lines(path):
        yield doc_id, passage


def iter_beir_corpus_lines(path: str) -> Iterator[tuple[int, str, Passage]]:
    """Yield ``(line number, doc_id, Passage)`` from a BEIR ``corpus.jsonl`` (may be gzipped)."""
    with open_text(path) as handle, decoding_errors(path):
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            passage = _beir_passage(parse_json(line, where), where)
            yield line_no, passage.passage_id, passage


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
            raise DataFormatError(f"{where}: field '{field}': expected a string, found {_describe(value)}")
    return Passage(text=obj["text"], title=title, passage_id=str(doc_id))
