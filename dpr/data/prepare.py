"""Turn BEIR / SQuAD data into DPR retriever samples with BM25 hard negatives, and write the files.

The pieces ``prepare_data.py`` chains together (the inputs come from :mod:`dpr.data.sources`):

- :func:`beir_queries` / :func:`squad_queries`: questions with their positive passages;
- :func:`split_by_group`: a seeded train / dev split in which no group (SQuAD: an article; BEIR: a
  question text) has questions on both sides;
- :func:`mine_hard_negatives`: the top BM25 passages that are not positives and, for QA data, hold
  no answer string (DrQA matching, on title and text); :func:`dpr_records` adds seeded random
  ``negative_ctxs`` drawn outside the positives and hard negatives;
- writers for the DPR retriever JSON, passages TSV, QA TSV, qrels TSV and BEIR queries JSONL;
- :func:`bm25_run`, :func:`answer_accuracy`: the BM25 baseline of the evaluation split.

Passage fields in the JSON: ``score`` is the BM25 score for hard negatives, the relevance grade for
positives (1 for SQuAD) and 0 for random negatives; ``title_score`` is always 0.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from dpr.atomic import atomic_file
from dpr.data.bm25 import BM25Index
from dpr.data.queries import QRELS_HEADER
from dpr.data.readers import Passage
from dpr.data.sources import QAExample
from dpr.evaluation.qa_validation import has_answer, tokenize, top_k_accuracy

logger = logging.getLogger(__name__)

_SEARCH_BATCH = 1024  # queries per bm25s call: bounds the (batch, k) result arrays
_QA_MARGIN = 2  # QA mining looks this many times deeper: many top hits hold the answer


@dataclass(frozen=True)
class Query:
    """A question, its answers (empty for BEIR), its positives (id, grade) and its split group."""

    qid: str
    question: str
    answers: tuple[str, ...]
    positives: tuple[tuple[str, int], ...]
    group: str

    @property
    def positive_ids(self) -> frozenset[str]:
        return frozenset(passage_id for passage_id, _ in self.positives)


@dataclass(frozen=True)
class NegativeConfig:
    """How many hard (BM25) and other (random) negatives each sample gets, and the seed."""

    hard_negatives: int = 30
    other_negatives: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hard_negatives < 0 or self.other_negatives < 0:
            raise ValueError(
                f"negative counts must be >= 0, found {self.hard_negatives} hard, {self.other_negatives} other"
            )


def normalize_question(text: str) -> str:
    """The form under which two questions count as the same (case and spacing ignored)."""
    return " ".join(text.lower().split())


def beir_queries(relevant: Mapping[str, Mapping[str, int]], texts: Mapping[str, str]) -> list[Query]:
    """One :class:`Query` per judged query id (sorted), its relevant docs best grade first.

    Grouped by normalised text, so two ids that ask the same thing land in the same split.
    """
    queries = []
    for qid in sorted(relevant):
        positives = tuple(sorted(relevant[qid].items(), key=lambda item: (-item[1], item[0])))
        queries.append(Query(qid, texts[qid], (), positives, normalize_question(texts[qid])))
    return queries


def squad_queries(examples: Sequence[QAExample]) -> list[Query]:
    """One :class:`Query` per SQuAD question: its own paragraph is the positive; group = article."""
    return [Query(ex.qid, ex.question, ex.answers, ((ex.positive_id, 1),), str(ex.group)) for ex in examples]


def split_by_group(queries: Sequence[Query], dev_ratio: float, seed: int) -> tuple[list[Query], list[Query]]:
    """Seeded ``(train, dev)`` split by group: ``round(n_groups * dev_ratio)`` groups go to dev.

    Groups are sorted before shuffling with ``Random(seed)``, so the split depends only on the
    groups present and the seed, not on file order. Queries keep their input order on each side.
    """
    if not 0 <= dev_ratio < 1:
        raise ValueError(f"dev_ratio must be in [0, 1), found {dev_ratio}")
    groups = sorted({query.group for query in queries})
    random.Random(seed).shuffle(groups)
    n_dev = round(len(groups) * dev_ratio)
    if dev_ratio > 0 and n_dev == 0 and len(groups) > 1:
        n_dev = 1  # a requested dev split should not silently vanish on small data
    if groups and n_dev >= len(groups):
        raise ValueError(f"dev_ratio {dev_ratio} leaves no training group out of {len(groups)}")
    dev_groups = set(groups[:n_dev])
    train = [query for query in queries if query.group not in dev_groups]
    dev = [query for query in queries if query.group in dev_groups]
    return train, dev


@functools.lru_cache(maxsize=65536)
def _answer_tokens(answer: str) -> tuple[str, ...]:
    return tuple(tokenize(answer))  # a question's answers are checked against ~100 passages


class AnswerFilter:
    """Whether a passage (title or text) contains one of a question's answers, by ``has_answer``.

    The title counts too: the encoder sees it, so an answer there makes a passage a false negative.
    ``has_answer`` re-tokenises the passage on every call, and mining asks about the same passages
    for thousands of questions (5x slower on SQuAD), so a cached token set of each passage rules
    out most passages first: an answer can only match if all its tokens occur in the passage.
    ``has_answer`` still decides every remaining case, so results are exactly its results.
    """

    def __init__(self, passages: Mapping[str, Passage], cache_size: int = 1 << 18):
        self._passages = passages
        self._token_sets: dict[str, frozenset[str]] = {}
        self._cache_size = cache_size  # bounds memory on 21M-passage corpora

    def _tokens(self, passage_id: str) -> frozenset[str]:
        tokens = self._token_sets.get(passage_id)
        if tokens is None:
            if len(self._token_sets) >= self._cache_size:
                self._token_sets.clear()
            passage = self._passages[passage_id]
            tokens = frozenset(tokenize(passage.title)) | frozenset(tokenize(passage.text))
            self._token_sets[passage_id] = tokens
        return tokens

    def __call__(self, answers: Sequence[str], passage_id: str) -> bool:
        if not answers:
            return False
        tokens = self._tokens(passage_id)
        if not any(all(t in tokens for t in _answer_tokens(answer)) for answer in answers):
            return False
        passage = self._passages[passage_id]
        return has_answer(answers, passage.text) or bool(passage.title) and has_answer(answers, passage.title)


def mine_hard_negatives(
    index: BM25Index,
    queries: Sequence[Query],
    passages: Mapping[str, Passage],
    n: int,
    show_progress: bool = False,
) -> list[list[tuple[str, float]]]:
    """Per query, up to ``n`` ``(passage_id, bm25_score)``, best first: the top BM25 passages that
    are not positives and contain none of the query's answers (queries with answers only).

    A query gets fewer than ``n`` when its top ``n + positives (x3 for QA)`` hits run out.
    """
    if n == 0:
        return [[] for _ in queries]
    contains_answer = AnswerFilter(passages)
    mined: list[list[tuple[str, float]]] = []
    batches = range(0, len(queries), _SEARCH_BATCH)
    for start in tqdm(batches, desc="BM25 hard negatives", unit="batch", disable=not show_progress):
        batch = queries[start : start + _SEARCH_BATCH]
        margin = _QA_MARGIN * n if any(query.answers for query in batch) else 0
        depth = n + max(len(query.positives) for query in batch) + margin
        for query, hits in zip(batch, index.search([q.question for q in batch], depth)):
            positives = query.positive_ids
            keep = []
            for passage_id, score in hits:
                if passage_id in positives or contains_answer(query.answers, passage_id):
                    continue
                keep.append((passage_id, score))
                if len(keep) == n:
                    break
            mined.append(keep)
    short = sum(len(row) < n for row in mined)
    if short:
        logger.info("%d of %d questions got fewer than %d hard negatives", short, len(mined), n)
    return mined


def random_negatives(
    query: Query,
    passage_ids: Sequence[str],
    contains_answer: AnswerFilter,
    exclude: set[str],
    n: int,
    seed: int,
) -> list[str]:
    """Up to ``n`` random passage ids outside ``exclude`` and (for QA) without an answer.

    Seeded per question (``Random(f"{seed}:{qid}")``), so a question's negatives do not change
    when other questions are added, removed or moved between splits.
    """
    rng = random.Random(f"{seed}:{query.qid}")
    chosen: list[str] = []
    taken = set(exclude)
    for _ in range(20 * n):  # bounded: a tiny corpus may not have n admissible passages
        if len(chosen) == n:
            break
        passage_id = passage_ids[rng.randrange(len(passage_ids))]
        if passage_id in taken:
            continue
        taken.add(passage_id)
        if not contains_answer(query.answers, passage_id):
            chosen.append(passage_id)
    return chosen


def passage_ctx(passage: Passage, score: float) -> dict:
    """One ``positive_ctxs`` / ``hard_negative_ctxs`` entry of DPR JSON (title, text, score, passage_id)."""
    return {
        "title": passage.title,
        "text": passage.text,
        "score": score,
        "title_score": 0,
        "passage_id": passage.passage_id,
    }


def dpr_records(
    queries: Sequence[Query],
    hard: Sequence[Sequence[tuple[str, float]]],
    passages: Mapping[str, Passage],
    config: NegativeConfig,
    dataset: str,
) -> Iterator[dict]:
    """DPR retriever JSON records (``passage_id`` on every passage), one per query."""
    passage_ids = list(passages)
    contains_answer = AnswerFilter(passages)
    for query, hard_row in zip(queries, hard, strict=True):
        exclude = set(query.positive_ids) | {passage_id for passage_id, _ in hard_row}
        others = random_negatives(query, passage_ids, contains_answer, exclude, config.other_negatives, config.seed)
        yield {
            "dataset": dataset,
            "question": query.question,
            "answers": list(query.answers),
            "positive_ctxs": [passage_ctx(passages[pid], grade) for pid, grade in query.positives],
            "negative_ctxs": [passage_ctx(passages[pid], 0) for pid in others],
            "hard_negative_ctxs": [passage_ctx(passages[pid], round(score, 4)) for pid, score in hard_row],
        }


# ---------------------------------------------------------------------------------------- writers


def write_dpr_json(path: str, records: Iterable[dict]) -> int:
    """Write a DPR retriever JSON list, one record a line (streamed, atomic). Returns the count."""
    count = 0
    with atomic_file(path) as out:
        out.write("[")
        for record in records:
            out.write(",\n" if count else "\n")
            out.write(json.dumps(record, ensure_ascii=False))
            count += 1
        out.write("\n]\n")
    return count


def write_passages_tsv(path: str, passages: Iterable[Passage]) -> int:
    """Write a DPR passages TSV (``id<TAB>text<TAB>title`` header, CSV quoting as DPR's files)."""
    count = 0
    with atomic_file(path) as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        for passage in passages:  # one passage per line: readers split lines, never quote across them
            writer.writerow([passage.passage_id, _one_line(passage.text), _one_line(passage.title)])
            count += 1
    return count


def _one_line(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _tsv_cell(text: str) -> str:
    # csv readers (DPR's) only treat a quote at the start of a field as quoting; quote just those
    return '"' + text.replace('"', '""') + '"' if text.startswith('"') else text


def write_qa_tsv(path: str, queries: Iterable[Query]) -> int:
    """Write a DPR QA file: ``question<TAB>["answer 1", "answer 2"]`` (a JSON list), no header."""
    count = 0
    with atomic_file(path) as out:
        for query in queries:
            out.write(f"{_tsv_cell(query.question)}\t{json.dumps(list(query.answers), ensure_ascii=False)}\n")
            count += 1
    return count


def write_qrels_tsv(path: str, qrels: Mapping[str, Mapping[str, int]]) -> int:
    """Write BEIR qrels (``query-id<TAB>corpus-id<TAB>score`` header). Returns the judgments."""
    count = 0
    with atomic_file(path) as out:
        out.write("\t".join(QRELS_HEADER) + "\n")
        for qid, docs in qrels.items():
            for doc_id, grade in docs.items():
                out.write(f"{qid}\t{doc_id}\t{grade}\n")
                count += 1
    return count


def write_queries_jsonl(path: str, queries: Iterable[Query]) -> int:
    """Write BEIR queries (``{"_id", "text"}`` a line)."""
    count = 0
    with atomic_file(path) as out:
        for query in queries:
            out.write(json.dumps({"_id": query.qid, "text": query.question}, ensure_ascii=False) + "\n")
            count += 1
    return count


# ------------------------------------------------------------------------------ BM25 baseline


def bm25_run(
    index: BM25Index, queries: Sequence[Query], depth: int, show_progress: bool = False
) -> dict[str, dict[str, float]]:
    """The BM25 run of ``queries``: query id -> passage id -> score, top ``depth``."""
    run: dict[str, dict[str, float]] = {}
    batches = range(0, len(queries), _SEARCH_BATCH)
    for start in tqdm(batches, desc="BM25 baseline", unit="batch", disable=not show_progress):
        batch = queries[start : start + _SEARCH_BATCH]
        for query, hits in zip(batch, index.search([q.question for q in batch], depth)):
            run[query.qid] = dict(hits)
    return run


def answer_accuracy(
    run: Mapping[str, Mapping[str, float]],
    queries: Sequence[Query],
    passages: Mapping[str, Passage],
    ks: Sequence[int],
) -> dict[str, float]:
    """DPR top-k accuracy: the share of questions with an answer in the text of a top-k passage.

    Passage text only (not the title), as DPR's retriever evaluation does.
    """
    hits: list[list[bool]] = []
    for query in queries:
        ranked = sorted(run.get(query.qid, {}).items(), key=lambda item: (-item[1], item[0]))
        row: list[bool] = []
        for passage_id, _ in ranked:  # only the first hit matters: stop there
            row.append(has_answer(query.answers, passages[passage_id].text))
            if row[-1]:
                break
        hits.append(row)
    if not any(hits):
        return {f"top{k}": 0.0 for k in ks}
    accuracy = top_k_accuracy(hits)  # (max row length,), non-decreasing
    return {f"top{k}": accuracy[min(k, len(accuracy)) - 1] for k in ks}
