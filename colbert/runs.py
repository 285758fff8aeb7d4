"""Rankings in and out: ``ranking.tsv``, top-k runs to re-rank, and qrels.

- ``ranking.tsv``: ``qid<TAB>pid<TAB>rank<TAB>score`` (ColBERT's output; rank from 1).
- Runs to re-rank (``--topk``): a TREC run (``qid Q0 pid rank score tag``, e.g. ``prepare_data.py``'s BM25
  run), a ``ranking.tsv`` (score optional) or ColBERT's ``top1000`` TSV (``qid<TAB>pid<TAB>query<TAB>passage``).
- qrels: BEIR ``query-id<TAB>corpus-id<TAB>score`` (header optional) or TREC / MS MARCO ``qid 0 pid rel``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from dpr.atomic import atomic_file
from dpr.data.queries import read_qrels as read_qrels  # the one qrels reader; colbert.retrieve imports it here
from dpr.data.readers import DataFormatError

logger = logging.getLogger(__name__)

Ranking = Mapping[str, Sequence[tuple[str, float]]]  # qid -> [(pid, score)], best first


def write_ranking_tsv(ranking: Ranking, path: str) -> int:
    """Write ``qid pid rank score`` lines (tab-separated) atomically; returns the line count."""
    lines = 0
    with atomic_file(path) as out:
        for qid, rows in ranking.items():
            for rank, (pid, score) in enumerate(rows, start=1):
                out.write(f"{qid}\t{pid}\t{rank}\t{score!r}\n")
                lines += 1
    logger.info("wrote %d lines for %d queries to %s", lines, len(ranking), path)
    return lines


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _run_row(cells: list[str], path: str, line_no: int) -> tuple[str, str]:
    """``(qid, pid)`` of one line of a TREC run, a ranking.tsv or a top1000 TSV."""
    if len(cells) == 6 and _is_int(cells[3]):  # qid Q0 pid rank score tag
        return cells[0], cells[2]
    if len(cells) in (3, 4) and _is_int(cells[2]):  # qid pid rank [score]
        return cells[0], cells[1]
    if len(cells) == 4:  # qid pid query passage
        return cells[0], cells[1]
    raise DataFormatError(
        f"{path}:{line_no}: expected a TREC run line (qid Q0 pid rank score tag), "
        f"'qid<TAB>pid<TAB>rank[<TAB>score]' or 'qid<TAB>pid<TAB>query<TAB>passage', "
        f"found {len(cells)} columns"
    )


def read_topk(path: str) -> dict[str, list[str]]:
    """``qid -> pids`` to re-rank, in file order, without duplicates."""
    topk: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cells = line.split("\t") if "\t" in line else line.split()
            qid, pid = _run_row([c.strip() for c in cells], path, line_no)
            if (qid, pid) not in seen:
                seen.add((qid, pid))
                topk.setdefault(qid, []).append(pid)
    if not topk:
        raise DataFormatError(f"{path}: no rankings found")
    logger.info("%s: %d queries, %d candidates", path, len(topk), len(seen))
    return topk
