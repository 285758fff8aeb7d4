"""Evaluation questions: DPR QA files (``question<TAB>answers``) and BEIR queries with their qrels.

Answers are parsed as JSON, else as a Python list literal with ``ast.literal_eval`` (never ``eval``).
Every problem raises :class:`DataFormatError` naming the file and line.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass

from dpr.data.files import DataFormatError, decoding_errors, iter_tsv_rows, open_text, parse_json, split_tsv_line
from dpr.evaluation.qa_validation import parse_answers

logger = logging.getLogger(__name__)

QRELS_HEADER = ("query-id", "corpus-id", "score")  # BEIR qrels TSV


@dataclass(frozen=True)
class QAPair:
    """One open-domain QA question with its gold answers (strings or, for --match regex, patterns)."""

    question: str
    answers: tuple[str, ...]
    line: int


def read_qa_tsv(path: str) -> list[QAPair]:
    """Read a DPR QA file (``nq-test.csv`` is really TSV): ``question<TAB>["answer 1", "answer 2"]``.

    One question per line, split on tabs (further columns are ignored); a field wholly in double quotes
    with inner quotes doubled, as CSV writers (and DPR's files) quote, is unquoted, any other quote is
    literal. A line without an answers column, or whose answers list is empty or unparsable, raises
    DataFormatError naming ``path:line``.
    """
    pairs = [_qa_pair(cells, path, line_no) for line_no, cells in iter_tsv_rows(path)]
    if not pairs:
        raise DataFormatError(f"{path}: no questions found (empty QA file)")
    return pairs


def _qa_pair(row: list[str], path: str, line: int) -> QAPair:
    question = row[0].strip()
    if not question:
        raise DataFormatError(f"{path}:{line}: column 1: expected a question, found an empty string")
    if len(row) < 2 or not row[1].strip():
        raise DataFormatError(
            f"{path}:{line}: expected 'question<TAB>answers', found no answers column after {question[:60]!r}"
        )
    try:
        answers = parse_answers(row[1], path, line)
    except ValueError as err:  # parse_answers names path:line already
        raise DataFormatError(str(err)) from err
    except RecursionError as err:  # json.loads of a runaway '[' nesting
        raise DataFormatError(f"{path}:{line}: answers nested too deeply to read, found {row[1][:40]!r}...") from err
    return QAPair(question, tuple(answers), line)


def beir_paths(folder: str, split: str) -> tuple[str, str]:
    """``(queries.jsonl, qrels/<split>.tsv)`` of a BEIR folder, or the ``NAME-<split>-queries.jsonl`` /
    ``NAME-<split>-qrels.tsv`` pair that prepare_data.py writes; FileNotFoundError naming what is absent."""
    queries = os.path.join(folder, "queries.jsonl")
    qrels = os.path.join(folder, "qrels", f"{split}.tsv")
    if not os.path.isfile(queries):
        prepared = sorted(glob.glob(os.path.join(glob.escape(folder), f"*-{split}-queries.jsonl")))
        if len(prepared) == 1:
            return prepared[0], prepared[0][: -len("queries.jsonl")] + "qrels.tsv"
        if len(prepared) > 1:
            raise FileNotFoundError(
                f"BEIR folder {folder}: no queries.jsonl, and several prepared query files "
                f"for split {split!r}: {[os.path.basename(p) for p in prepared]}"
            )
    for path in (queries, qrels):
        if not os.path.isfile(path):
            splits = (
                sorted(f[:-4] for f in os.listdir(os.path.join(folder, "qrels")) if f.endswith(".tsv"))
                if os.path.isdir(os.path.join(folder, "qrels"))
                else []
            )
            extra = f" (splits found: {', '.join(splits)})" if splits and path == qrels else ""
            raise FileNotFoundError(f"BEIR folder {folder}: {path} does not exist{extra}")
    return queries, qrels


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """Relevance judgments as ``query id -> doc id -> grade``: the one qrels reader of the project.

    Two layouts, told apart by the first non-blank line: BEIR's ``query-id<TAB>corpus-id<TAB>score`` (a header
    line naming those columns is optional, and refused in another order: BEIR's columns are positional) and
    TREC / MS MARCO's ``qid 0 docid grade`` (whitespace separated). UTF-8, optionally gzipped; blank lines
    are skipped. Every problem (not UTF-8, a wrong column count, a score that is not an integer, the same pair
    judged twice with different grades, no judgment at all) raises DataFormatError naming ``path:line``.
    """
    qrels: dict[str, dict[str, int]] = {}
    trec: bool | None = None
    with open_text(path, newline="\n") as handle, decoding_errors(path):
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if trec is None:
                trec = len(line.split()) == 4 and len(line.split("\t")) != 3
                if not trec and line_no == 1 and _is_qrels_header(split_tsv_line(line), path):
                    continue
            if trec:
                qid, doc_id, score_text = _trec_qrels_row(line, path, line_no)
            else:
                qid, doc_id, score_text = _beir_qrels_row(line, path, line_no)
            try:
                score = int(score_text)
            except ValueError as err:
                raise DataFormatError(f"{path}:{line_no}: score must be an integer, found {score_text!r}") from err
            previous = qrels.setdefault(qid, {}).setdefault(doc_id, score)
            if previous != score:
                raise DataFormatError(f"{path}:{line_no}: ({qid!r}, {doc_id!r}) judged {score}, but {previous} earlier")
    if not qrels:
        raise DataFormatError(f"{path}: no judgments found")
    return qrels


def _is_qrels_header(cells: list[str], path: str) -> bool:
    """True for BEIR's header line; DataFormatError for its column names in another order."""
    names = tuple(cell.strip() for cell in cells)
    if names == QRELS_HEADER:
        return True
    if sorted(n.lower() for n in names) == sorted(QRELS_HEADER):
        raise DataFormatError(
            f"{path}:1: header: expected the columns {', '.join(QRELS_HEADER)} in "
            f"this order (BEIR qrels columns are positional), found {', '.join(names)}"
        )
    return False


def _beir_qrels_row(line: str, path: str, line_no: int) -> tuple[str, str, str]:
    columns = split_tsv_line(line)
    if len(columns) != 3:
        raise DataFormatError(
            f"{path}:{line_no}: expected 3 tab-separated columns "
            f"(query-id, corpus-id, score), found {len(columns)}: {line.rstrip()[:80]!r}"
        )
    qid, doc_id, score = (c.strip() for c in columns)
    return qid, doc_id, score


def _trec_qrels_row(line: str, path: str, line_no: int) -> tuple[str, str, str]:
    cells = line.split()
    if len(cells) != 4:
        raise DataFormatError(f"{path}:{line_no}: expected 'qid 0 docid relevance', found {line.strip()[:80]!r}")
    return cells[0], cells[2], cells[3]


def read_beir_queries(path: str, only: Collection[str] | None = None) -> dict[str, str]:
    """``query id -> text`` from a BEIR ``queries.jsonl``, keeping only ids in ``only`` when given.

    A query id in ``only`` that the file lacks raises DataFormatError (it would silently score 0).
    """
    queries: dict[str, str] = {}
    with open_text(path) as handle, decoding_errors(path):
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            obj = parse_json(line, f"{path}:{line_no}")
            qid, text = (obj.get("_id"), obj.get("text")) if isinstance(obj, dict) else (None, None)
            if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not isinstance(text, str):
                raise DataFormatError(
                    f'{path}:{line_no}: expected {{"_id": ..., "text": "..."}}, found {line.strip()[:80]!r}'
                )
            if only is None or str(qid) in only:
                queries[str(qid)] = text
    if only is not None:
        missing = sorted(set(only) - set(queries))
        if missing:
            raise DataFormatError(f"{path}: {len(missing)} judged query ids have no query text (e.g. {missing[:5]})")
    if not queries:
        raise DataFormatError(f"{path}: no queries found")
    return queries
