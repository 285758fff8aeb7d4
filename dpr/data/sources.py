"""Load the inputs of data preparation -- a BEIR folder or a SQuAD v1.1 file -- with the checks a user needs.

Bad input either raises :class:`DataFormatError` naming the file and the line (or JSON key path), or
is skipped, counted and logged where a user would rather keep going:

- duplicate corpus / query / question ids: error (which copy is right cannot be guessed);
- a document (title and text) or query that is blank: skipped and counted (nothing to encode);
- a qrels judgment whose document or query is not in the corpus / queries file: skipped, counted,
  logged with examples -- a handful of stale judgments should not block a whole dataset -- unless
  ``strict`` is set, which makes it an error naming ``path:line``. A split left with no usable
  judgment is always an error (wrong folder or corpus);
- a SQuAD file whose ``version`` is not 1.1: error naming the version found (v2.0 adds unanswerable
  questions, which have no positive passage); a question without an answer: skipped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dpr.data.files import DataFormatError, decoding_errors, open_text, parse_json
from dpr.data.queries import read_qrels
from dpr.data.readers import Passage, iter_beir_corpus

logger = logging.getLogger(__name__)

SQUAD_VERSION = "1.1"


def _jsonl_lines(path: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for every non-blank line of a JSONL file."""
    with open_text(path) as handle, decoding_errors(path):
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                yield line_no, parse_json(line, f"{path}:{line_no}")


def _lines_with_id(path: str, doc_id: str) -> list[int]:
    # only on the error path: iter_beir_corpus does not report line numbers, so look them up
    return [n for n, obj in _jsonl_lines(path) if isinstance(obj, dict) and str(obj.get("_id")) == doc_id]


# ------------------------------------------------------------------------------------------ BEIR


@dataclass
class BeirCorpus:
    """A BEIR corpus: passages by id in file order, and the ids of blank documents skipped."""

    passages: dict[str, Passage]
    empty_ids: set[str] = field(default_factory=set)


def load_beir_corpus(path: str) -> BeirCorpus:
    """Read ``corpus.jsonl``; duplicate ids raise, blank documents are skipped and counted."""
    corpus = BeirCorpus(passages={})
    for doc_id, passage in iter_beir_corpus(path):
        if doc_id in corpus.passages or doc_id in corpus.empty_ids:
            lines = _lines_with_id(path, doc_id)
            raise DataFormatError(f"{path}:{lines[-1]}: duplicate document id {doc_id!r} (also on line {lines[0]})")
        if passage.text.strip() or passage.title.strip():
            corpus.passages[doc_id] = passage
        else:
            corpus.empty_ids.add(doc_id)
    if corpus.empty_ids:
        logger.warning(
            "%s: skipped %d documents with neither title nor text (e.g. %s)",
            path,
            len(corpus.empty_ids),
            sorted(corpus.empty_ids)[:5],
        )
    if not corpus.passages:
        raise DataFormatError(f"{path}: no document with text found")
    logger.info("%s: %d documents", path, len(corpus.passages))
    return corpus


def load_beir_queries(path: str) -> tuple[dict[str, str], int]:
    """Read ``queries.jsonl`` (``{"_id", "text"}``) -> ``(id -> text, blank queries skipped)``."""
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    blank = 0
    for line_no, obj in _jsonl_lines(path):
        where = f"{path}:{line_no}"
        if not isinstance(obj, dict):
            raise DataFormatError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        qid, text = obj.get("_id"), obj.get("text")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise DataFormatError(f"{where}: field '_id': expected a string, found {qid!r}")
        if not isinstance(text, str):
            raise DataFormatError(f"{where}: field 'text': expected a string, found {text!r}")
        qid = str(qid)
        if qid in first_line:
            raise DataFormatError(f"{where}: duplicate query id {qid!r} (also on line {first_line[qid]})")
        first_line[qid] = line_no
        if text.strip():
            queries[qid] = " ".join(text.split())  # one line: the text goes into TSV / JSON files
        else:
            blank += 1
    if blank:
        logger.warning("%s: skipped %d blank queries", path, blank)
    return queries, blank


@dataclass
class Judgments:
    """The usable relevant judgments of one qrels split and what was dropped from it."""

    relevant: dict[str, dict[str, int]]  # query id -> doc id -> grade (> 0), both known
    all_judged: dict[str, dict[str, int]]  # every judgment of a known query, as in the file
    missing_docs: int = 0
    missing_queries: int = 0
    empty_docs: int = 0


def load_judgments(path: str, corpus: BeirCorpus, queries: dict[str, str], strict: bool = False) -> Judgments:
    """Read qrels ``path`` and keep the relevant (grade > 0) judgments whose ids are known."""
    qrels = read_qrels(path)
    found = Judgments(relevant={}, all_judged={})
    missing_examples: list[tuple[str, str]] = []
    for qid, docs in qrels.items():
        if qid not in queries:
            found.missing_queries += 1
            _missing(path, qid, None, strict)
            continue
        found.all_judged[qid] = dict(docs)
        for doc_id, grade in docs.items():
            if doc_id in corpus.empty_ids:
                found.empty_docs += 1
            elif doc_id not in corpus.passages:
                found.missing_docs += 1
                missing_examples.append((qid, doc_id))
                _missing(path, qid, doc_id, strict)
            elif grade > 0:
                found.relevant.setdefault(qid, {})[doc_id] = grade
    if found.missing_docs or found.missing_queries or found.empty_docs:
        logger.warning(
            "%s: skipped %d judgments of documents not in the corpus (e.g. %s), %d of "
            "blank documents, %d queries not in the queries file",
            path,
            found.missing_docs,
            missing_examples[:3],
            found.empty_docs,
            found.missing_queries,
        )
    if not found.relevant:
        raise DataFormatError(
            f"{path}: no relevant judgment names a query and a document that exist: is this the qrels of this corpus?"
        )
    return found


def _missing(path: str, qid: str, doc_id: str | None, strict: bool) -> None:
    """Under ``strict``, raise naming the qrels line of the unknown query / document."""
    if not strict:
        return
    column, value = (1, doc_id) if doc_id is not None else (0, qid)
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            cells = [cell.strip() for cell in line.rstrip("\r\n").split("\t")]
            if len(cells) == 3 and cells[column] == value and cells[0] == qid:
                break
        else:
            line_no = 0
    what = (
        f"corpus-id {doc_id!r} is not in the corpus"
        if doc_id is not None
        else f"query-id {qid!r} is not in the queries file"
    )
    raise DataFormatError(f"{path}:{line_no}: {what} (drop --strict to skip such judgments)")


# ----------------------------------------------------------------------------------------- SQuAD


@dataclass(frozen=True)
class QAExample:
    """One question with its answers, its gold passage and its group (SQuAD: the article index)."""

    qid: str
    question: str
    answers: tuple[str, ...]
    positive_id: str
    group: int


@dataclass
class SquadSet:
    """Paragraphs as passages (id ``<article>-<paragraph>``, title = article title) and questions."""

    passages: dict[str, Passage]
    examples: list[QAExample]
    titles: list[str]
    skipped: dict[str, int]


def _get(obj: Any, key: str, kind: type, path: str, where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise DataFormatError(
            f"{path}: {where}.{key}: expected {kind.__name__}, found "
            f"{type(value).__name__ if value is not None else 'nothing'}"
        )
    return value


def load_squad(path: str) -> SquadSet:
    """Read a SQuAD v1.1 JSON file; structural errors name the JSON key path (``data[3].title``)."""
    with open_text(path) as handle, decoding_errors(path):
        document = parse_json(handle.read(), path, at_position=True)
    if not isinstance(document, dict):
        raise DataFormatError(f"{path}: expected a SQuAD JSON object, found {type(document).__name__}")
    version = document.get("version")
    if version is None:
        logger.warning("%s: no 'version' field; reading it as SQuAD %s", path, SQUAD_VERSION)
    elif str(version).lstrip("v") != SQUAD_VERSION:
        raise DataFormatError(
            f"{path}: expected SQuAD version {SQUAD_VERSION}, found version "
            f"{version!r}: only v1.1 questions all have an answer in their paragraph"
        )
    squad = SquadSet(
        passages={}, examples=[], titles=[], skipped={"empty_paragraphs": 0, "blank_questions": 0, "unanswered": 0}
    )
    seen: dict[str, str] = {}
    for a, article in enumerate(_get(document, "data", list, path, "<root>")):
        title = " ".join(_get(article, "title", str, path, f"data[{a}]").split())
        squad.titles.append(title)
        for p, paragraph in enumerate(_get(article, "paragraphs", list, path, f"data[{a}]")):
            _add_paragraph(squad, paragraph, a, p, title, path, seen)
    for reason, count in squad.skipped.items():
        if count:
            logger.warning("%s: skipped %d %s", path, count, reason.replace("_", " "))
    if not squad.examples:
        raise DataFormatError(f"{path}: no answerable question found")
    logger.info(
        "%s: %d articles, %d paragraphs, %d questions",
        path,
        len(squad.titles),
        len(squad.passages),
        len(squad.examples),
    )
    return squad


def _add_paragraph(
    squad: SquadSet, paragraph: Any, a: int, p: int, title: str, path: str, seen: dict[str, str]
) -> None:
    where = f"data[{a}].paragraphs[{p}]"
    context = _get(paragraph, "context", str, path, where)
    qas = _get(paragraph, "qas", list, path, where)
    if not context.strip():
        squad.skipped["empty_paragraphs"] += 1
        squad.skipped["blank_questions"] += len(qas)  # their positive is gone
        return
    passage_id = f"{a}-{p}"
    squad.passages[passage_id] = Passage(text=context, title=title, passage_id=passage_id)
    for q, qa in enumerate(qas):
        at = f"{where}.qas[{q}]"
        raw_id = qa.get("id") if isinstance(qa, dict) else None
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise DataFormatError(f"{path}: {at}.id: expected a question id, found {raw_id!r}")
        qid = str(raw_id)
        if qid in seen:
            raise DataFormatError(f"{path}: {at}: duplicate question id {qid!r} (also at {seen[qid]})")
        seen[qid] = at
        question = " ".join(_get(qa, "question", str, path, at).split())
        answers: list[str] = []
        for n, answer in enumerate(_get(qa, "answers", list, path, at)):
            text = " ".join(_get(answer, "text", str, path, f"{at}.answers[{n}]").split())
            if text and text not in answers:  # SQuAD dev repeats the same span per annotator
                answers.append(text)
        if not question:
            squad.skipped["blank_questions"] += 1
        elif not answers:
            squad.skipped["unanswered"] += 1
        else:
            squad.examples.append(QAExample(qid, question, tuple(answers), passage_id, a))
