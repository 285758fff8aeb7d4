"""Dense hard negatives: from a question's dense ranking to its ``hard_negative_ctxs`` (the model-free part).

``prepare_data.py mine`` ranks the corpus for each training question with a dense model
(:mod:`dpr.mining` encodes and searches); this module decides, question by question, which ranked
passages become hard negatives, with the controls of sentence-transformers' ``mine_hard_negatives``:

1. the question's positives are never candidates (all of them, by passage id), and ranks count the
   ranking WITHOUT them: rank 0 is the best non-positive passage;
2. only ranks ``[range_min, range_max)`` are candidates (skip the top few, which are often unlabelled
   positives; look no deeper than ``range_max``);
3. a candidate scoring within a margin of the positive is dropped as a likely false negative:
   ``score > positive - absolute_margin`` or ``score > positive - |positive| * relative_margin``
   (= ``positive * (1 - relative_margin)`` for the usual positive score; subtracting ``|positive|``
   keeps "a margin below the positive" true for negative scores too, as sentence-transformers does
   since its issue #3819). With several positives the lowest score counts: a passage that outscores a
   known positive is as likely relevant as that positive;
4. of the candidates left, ``num_negatives`` are kept: the best (``top``) or a seeded random sample
   (``random``, per question ``Random(f"{seed}:{question}")``, so a question's negatives do not depend on
   the other questions), written best first.

Unlike sentence-transformers, ranks are positions in the model's ranking, not among the candidates that
survived the margins, so ``range_min`` skips the same passages whatever the margins. Every examined
candidate (a non-positive of rank < ``range_max``) ends in exactly one of :data:`FATES`, so the summary's
counts add up. Records are read raw and written back with every field kept; only ``hard_negative_ctxs``
is replaced (entries as the BM25 ones of :mod:`dpr.data.prepare`: title, text, score, title_score,
passage_id).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dpr.configs import ConfigError
from dpr.data import readers
from dpr.data.files import DataFormatError
from dpr.data.prepare import passage_ctx
from dpr.data.readers import Passage

SAMPLING_STRATEGIES = ("top", "random")
# What became of each examined candidate, in the order the rules apply.
FATES = ("below_range_min", "absolute_margin", "relative_margin", "not_sampled", "kept")
# Why a question got no hard negatives (it is still written, with an empty list).
NO_POSITIVE = "no_positive"
NOT_IN_CORPUS = "positives_not_in_corpus"


@dataclass(frozen=True)
class MiningSettings:
    """Which ranked passages become hard negatives (``prepare_data.py mine``'s selection flags)."""

    num_negatives: int = 30  # at most this many per question
    range_min: int = 0  # skip the best range_min non-positive passages
    range_max: int = 100  # look no deeper than this rank (non-positives)
    absolute_margin: float | None = None  # drop score > positive - absolute_margin
    relative_margin: float | None = None  # drop score > positive - |positive| * relative_margin
    sampling_strategy: str = "top"  # top | random
    seed: int = 0  # random sampling

    def __post_init__(self) -> None:
        bounds = (("num_negatives", 1), ("range_min", 0), ("range_max", 1))
        problems = [
            f"--{name} must be >= {low}, found {getattr(self, name)}"
            for name, low in bounds
            if getattr(self, name) < low
        ]
        if self.range_max <= self.range_min:
            problems.append(f"--range_max must be > --range_min ({self.range_min}), found {self.range_max}")
        elif self.num_negatives > self.range_max - self.range_min:
            problems.append(
                f"--num_negatives {self.num_negatives} can never be met from ranks [{self.range_min}, "
                f"{self.range_max}): only {self.range_max - self.range_min} candidates; lower --num_negatives or "
                f"--range_min, or raise --range_max"
            )
        if self.absolute_margin is not None and not 0 <= self.absolute_margin < math.inf:
            problems.append(f"--absolute_margin must be a number >= 0, found {self.absolute_margin}")
        if self.relative_margin is not None and not 0 <= self.relative_margin <= 1:
            problems.append(f"--relative_margin must be in [0, 1], found {self.relative_margin}")
        if self.sampling_strategy not in SAMPLING_STRATEGIES:
            problems.append(
                f"--sampling_strategy must be one of {SAMPLING_STRATEGIES}, found {self.sampling_strategy!r}"
            )
        if problems:
            raise ConfigError("; ".join(problems))

    def threshold(self, positive_score: float) -> tuple[float, float]:
        """(absolute, relative) limits for ``positive_score``: a candidate scoring above one is dropped."""
        absolute = math.inf if self.absolute_margin is None else positive_score - self.absolute_margin
        relative = (
            math.inf if self.relative_margin is None else positive_score - abs(positive_score) * self.relative_margin
        )
        return absolute, relative

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MiningQuery:
    """What mining needs of one record: its question and positive passages (empty: none, not mined)."""

    question: str
    positives: tuple[Passage, ...]

    def positive_ids(self) -> frozenset[str]:
        return frozenset(p.passage_id for p in self.positives if p.passage_id is not None)

    def status(self, corpus_ids: Collection[str]) -> str | None:
        """None when the question can be mined, else why not (:data:`NO_POSITIVE`, :data:`NOT_IN_CORPUS`).

        Every positive must be in the corpus under its id: one that is not could be in it under another
        id (another corpus version), and it could not be kept out of the negatives.
        """
        if not self.positives:
            return NO_POSITIVE
        if any(p.passage_id is None or p.passage_id not in corpus_ids for p in self.positives):
            return NOT_IN_CORPUS
        return None


@dataclass(frozen=True)
class Selection:
    """One question's hard negatives and what became of the candidates it examined."""

    negatives: tuple[tuple[str, float], ...]  # (passage_id, score), best first
    positive_score: float  # the lowest of its positives' scores
    positives_retrieved: int  # its positives among the retrieved passages (never candidates)
    fates: Mapping[str, int]  # FATES -> count; the sum is the candidates examined


def select_negatives(
    hits: Sequence[tuple[str, float]],
    positive_ids: Collection[str],
    positive_score: float,
    settings: MiningSettings,
    key: str,
) -> Selection:
    """The hard negatives of one question from its dense ranking ``hits`` ((passage_id, score), best first).

    ``hits`` must reach rank ``range_max`` of the non-positives (search ``range_max + len(positive_ids)``);
    ``key`` (the question) seeds random sampling.
    """
    ranked = [(pid, score) for pid, score in hits if pid not in positive_ids]
    positives_retrieved = len(hits) - len(ranked)
    ranked = ranked[: settings.range_max]
    fates = dict.fromkeys(FATES, 0)
    fates["below_range_min"] = min(len(ranked), settings.range_min)
    absolute, relative = settings.threshold(positive_score)
    survivors = []
    for pid, score in ranked[settings.range_min :]:
        if score > absolute:
            fates["absolute_margin"] += 1
        elif score > relative:
            fates["relative_margin"] += 1
        else:
            survivors.append((pid, score))
    chosen = _sample(survivors, settings, key)
    fates["kept"], fates["not_sampled"] = len(chosen), len(survivors) - len(chosen)
    return Selection(tuple(chosen), positive_score, positives_retrieved, fates)


def _sample(survivors: list[tuple[str, float]], settings: MiningSettings, key: str) -> list[tuple[str, float]]:
    n = settings.num_negatives
    if settings.sampling_strategy == "top" or len(survivors) <= n:
        return survivors[:n]
    rng = random.Random(f"{settings.seed}:{key}")
    return [survivors[i] for i in sorted(rng.sample(range(len(survivors)), n))]  # sorted: still best first


# ------------------------------------------------------------------------------------ records


def iter_records(paths: Sequence[str]) -> Iterator[tuple[dict, MiningQuery]]:
    """Every record of the DPR JSON / JSONL files in order: raw (written back with all its fields) and the
    part mining needs. Malformed records are DataFormatErrors naming file, record and field (as training's)."""
    for path in paths:
        for record, location in readers.iter_json_records(path):
            sample = readers.parse_record(record, location, "text")
            positives = () if sample is None else sample.positive_passages
            yield record, MiningQuery(record["question"], positives)


def mined_records(
    paths: Sequence[str], selections: Sequence[Selection | None], passages: Mapping[str, Passage]
) -> Iterator[dict]:
    """The records of ``paths`` again, each with ``hard_negative_ctxs`` replaced by its selection's (None: [])."""
    count = 0
    for count, (record, _) in enumerate(iter_records(paths), start=1):
        if count > len(selections):
            break
        selection = selections[count - 1]
        negatives = () if selection is None else selection.negatives
        yield {
            **record,
            "hard_negative_ctxs": [passage_ctx(passages[pid], round(score, 4)) for pid, score in negatives],
        }
    if count != len(selections):
        raise DataFormatError(
            f"{', '.join(paths)}: the input changed while mining ({len(selections)} records when it started, "
            f"{'more' if count > len(selections) else count} now)"
        )


# ------------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class MiningSummary:
    """What mining kept and dropped. ``questions`` = mined + no_positive + positives_not_in_corpus;
    ``candidates["examined"]`` = the sum of the FATES counts; ``candidates["kept"]`` = hard negatives written."""

    questions: dict[str, int]
    candidates: dict[str, int]
    per_question: dict[str, float]  # hard negatives per mined question: mean, min, max
    scores: dict[str, float | None]  # means over mined questions: positive score, kept score, positive - kept

    @classmethod
    def of(cls, statuses: Sequence[str | None], selections: Sequence[Selection | None], wanted: int) -> MiningSummary:
        """From each record's status (None: mined) and selection (``wanted``: --num_negatives)."""
        mined = [s for s in selections if s is not None]
        fates = {fate: sum(s.fates[fate] for s in mined) for fate in FATES}
        kept = [len(s.negatives) for s in mined]
        kept_scores = [score for s in mined for _, score in s.negatives]
        gaps = [s.positive_score - score for s in mined for _, score in s.negatives]  # per question, unlike the means
        questions = {
            "total": len(statuses),
            "mined": len(mined),
            NO_POSITIVE: sum(s == NO_POSITIVE for s in statuses),
            NOT_IN_CORPUS: sum(s == NOT_IN_CORPUS for s in statuses),
            "fewer_than_num_negatives": sum(n < wanted for n in kept),
        }
        candidates = {
            "examined": sum(fates.values()),
            **fates,
            "positives_retrieved": sum(s.positives_retrieved for s in mined),
        }
        return cls(
            questions,
            candidates,
            {"mean": _mean(kept) or 0.0, "min": min(kept, default=0), "max": max(kept, default=0)},
            {
                "positive_mean": _mean([s.positive_score for s in mined]),
                "kept_mean": _mean(kept_scores),
                "kept_gap_mean": _mean(gaps),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The printed summary."""
        q, c = self.questions, self.candidates
        examined = max(c["examined"], 1)
        shown = ", ".join(f"{fate} {c[fate]} ({c[fate] / examined:.1%})" for fate in FATES)
        lines = [
            f"questions: {q['total']}, mined {q['mined']}; kept with no hard negatives: {q[NO_POSITIVE]} without a "
            f"positive, {q[NOT_IN_CORPUS]} whose positives are not all in the corpus",
            f"candidates examined: {c['examined']}: {shown}; positives retrieved (excluded): "
            f"{c['positives_retrieved']}",
            f"hard negatives per mined question: mean {self.per_question['mean']:.2f}, min "
            f"{self.per_question['min']}, max {self.per_question['max']}; {q['fewer_than_num_negatives']} mined "
            f"questions got fewer than --num_negatives",
        ]
        scores = self.scores
        if scores["kept_mean"] is not None:
            lines.append(
                f"mean score: positives {scores['positive_mean']:.4f}, hard negatives {scores['kept_mean']:.4f} "
                f"(positive - hard negative within a question: {scores['kept_gap_mean']:.4f})"
            )
        return lines


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
