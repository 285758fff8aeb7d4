"""Prepare a BEIR dataset or SQuAD v1.1 for DPR: :func:`prepare_beir` and :func:`prepare_squad`.

Each writes into ``out_dir`` (NAME = ``name``, default the BEIR folder name or "squad1"):

  NAME-train.json, NAME-dev.json   DPR retriever JSON, split by ``dev_ratio`` (seeded; SQuAD by article)
  NAME-passages.tsv                the corpus evaluation retrieves from (id, text, title)
  NAME-EVAL-qrels.tsv, NAME-EVAL-queries.jsonl   evaluation questions (BEIR format; EVAL = the eval split
                                   for BEIR, "test" for SQuAD), plus NAME-test-qa.tsv for SQuAD
  NAME-EVAL-bm25.trec, NAME-EVAL-bm25.json       the BM25 baseline run and its metrics
  bm25-*/                          saved BM25 indexes; prepare_manifest.json: what was made from what

and returns a :class:`PreparedData` naming those paths. A rerun skips every stage whose outputs exist
and whose inputs and settings are unchanged (:mod:`dpr.data.manifest`; ``overwrite`` redoes all). The
pieces each stage chains together are in :mod:`dpr.data.prepare`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpr.atomic import atomic_file
from dpr.data import prepare as prep
from dpr.data.bm25 import BM25Config, BM25Index, passage_text, resolve_config
from dpr.data.manifest import MANIFEST, Manifest, StageReport, fingerprint
from dpr.data.sources import load_beir_corpus, load_beir_queries, load_judgments, load_squad
from dpr.evaluation.metrics import DEFAULT_KS, evaluate_run, write_trec_run
from dpr.options import ConfigError

logger = logging.getLogger(__name__)

QA_KS = (1, 5, 20, 100)


@dataclass(frozen=True)
class PrepareSettings:
    """What both sources share: the dev split, the negatives, BM25, and how reruns behave."""

    dev_ratio: float = 0.1
    negatives: prep.NegativeConfig = field(default_factory=prep.NegativeConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    bm25_depth: int = 100  # depth of the BM25 baseline run
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.dev_ratio < 1:
            raise ConfigError(f"dev_ratio must be in [0, 1), found {self.dev_ratio}")
        if self.bm25_depth < 1:
            raise ConfigError(f"bm25_depth must be >= 1, found {self.bm25_depth}")


@dataclass(frozen=True)
class PreparedData:
    """The files a preparation wrote (paths under ``out_dir``; None for a split it was not asked for)."""

    out_dir: str
    name: str
    passages: str
    train: str | None
    dev: str | None
    eval_split: str | None
    eval_qrels: str | None
    eval_queries: str | None
    eval_qa: str | None  # SQuAD only: the QA TSV (question, answers) of the evaluation questions
    bm25_run: str | None
    bm25_metrics: str | None
    stages: tuple[StageReport, ...]

    @property
    def manifest(self) -> str:
        return os.path.join(self.out_dir, MANIFEST)


def _bm25_index(
    manifest: Manifest,
    stage: str,
    source: dict[str, Any],
    cfg: BM25Config,
    passages: Callable[[], dict],
    show_progress: bool,
) -> Callable[[], BM25Index]:
    """A loader of the BM25 index over ``passages()``: built once, saved, reloaded on reruns."""
    folder = os.path.join(manifest.out_dir, stage)

    @functools.cache
    def load() -> BM25Index:
        state: dict[str, BM25Index] = {}

        def build() -> dict[str, Any]:
            pairs = [(pid, passage_text(p)) for pid, p in passages().items()]
            state["index"] = BM25Index.build(pairs, cfg, show_progress)
            state["index"].save(folder)
            return {"passages": len(pairs)}

        manifest.run(stage, {"source": source, "bm25": cfg.to_dict()}, [stage], build)
        return state.get("index") or BM25Index.load(folder)

    return load


def _write_json(path: str, value: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(value, handle, indent=1)
        handle.write("\n")


class _Job:
    """What both sources share: settings (BM25 resolved), the manifest, writing the train / dev split."""

    def __init__(self, out_dir: str, name: str, settings: PrepareSettings):
        self.out_dir, self.name = out_dir, name
        # keyed by the stemmer BM25 really uses, so installing PyStemmer later redoes the BM25 stages
        self.settings = dataclasses.replace(settings, bm25=resolve_config(settings.bm25))
        self.cfg, self.progress = self.settings.bm25, settings.progress
        os.makedirs(out_dir, exist_ok=True)
        self.manifest = Manifest(out_dir, settings.overwrite)

    def path(self, file_name: str) -> str:
        return os.path.join(self.out_dir, file_name)

    def write_splits(self, queries: list[prep.Query], passages: dict, index: Callable[[], BM25Index]) -> dict[str, Any]:
        """Split ``queries`` (seeded, by group), mine negatives, write NAME-train.json / NAME-dev.json."""
        neg = self.settings.negatives
        train, dev = prep.split_by_group(queries, self.settings.dev_ratio, neg.seed)
        counts: dict[str, Any] = {}
        for split, part in (("train", train), ("dev", dev)):
            hard = prep.mine_hard_negatives(index(), part, passages, neg.hard_negatives, self.progress)
            records = prep.dpr_records(part, hard, passages, neg, self.name)
            counts[split] = prep.write_dpr_json(self.path(f"{self.name}-{split}.json"), records)
            counts[f"{split}_hard_negatives_mean"] = round(sum(map(len, hard)) / max(len(hard), 1), 2)
        return counts

    def split_params(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            **inputs,
            "dev_ratio": self.settings.dev_ratio,
            "negatives": dataclasses.asdict(self.settings.negatives),
            "bm25": self.cfg.to_dict(),
        }

    def result(self, has_train: bool, eval_split: str | None, eval_outputs: dict[str, str]) -> PreparedData:
        """The paths this job wrote; ``eval_outputs`` maps qrels / queries / qa / run / metrics to file names."""
        train, dev = (self.path(f"{self.name}-{split}.json") if has_train else None for split in ("train", "dev"))
        evals = {
            kind: self.path(eval_outputs[kind]) if kind in eval_outputs else None
            for kind in ("qrels", "queries", "qa", "run", "metrics")
        }
        return PreparedData(
            out_dir=self.out_dir,
            name=self.name,
            passages=self.path(f"{self.name}-passages.tsv"),
            train=train,
            dev=dev,
            eval_split=eval_split,
            eval_qrels=evals["qrels"],
            eval_queries=evals["queries"],
            eval_qa=evals["qa"],
            bm25_run=evals["run"],
            bm25_metrics=evals["metrics"],
            stages=tuple(self.manifest.report),
        )


class _BeirJob(_Job):
    """BEIR folder -> passages TSV, train / dev JSON (train split), qrels + BM25 baseline (eval split)."""

    def __init__(
        self,
        beir_dir: str,
        out_dir: str,
        name: str | None,
        train_split: str | None,
        eval_split: str | None,
        strict: bool,
        settings: PrepareSettings,
    ):
        corpus_path = os.path.join(beir_dir, "corpus.jsonl")
        queries_path = os.path.join(beir_dir, "queries.jsonl")
        splits = [s for s in (train_split, eval_split) if s is not None]
        qrels = {s: os.path.join(beir_dir, "qrels", f"{s}.tsv") for s in splits}
        for path in [corpus_path, queries_path, *qrels.values()]:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path}: no such file (a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv)"
                )
        super().__init__(out_dir, name or os.path.basename(os.path.normpath(beir_dir)), settings)
        self.train_split, self.eval_split = train_split, eval_split
        self.corpus = functools.cache(lambda: load_beir_corpus(corpus_path))
        self.texts = functools.cache(lambda: load_beir_queries(queries_path)[0])
        self.judged = functools.cache(lambda s: load_judgments(qrels[s], self.corpus(), self.texts(), strict))
        self.fps = {
            "corpus": fingerprint(corpus_path),
            "queries": fingerprint(queries_path),
            "strict": strict,
            **{f"qrels_{s}": fingerprint(path) for s, path in qrels.items()},
        }
        self.index = _bm25_index(
            self.manifest, "bm25-corpus", self.fps["corpus"], self.cfg, lambda: self.corpus().passages, self.progress
        )

    def run(self) -> PreparedData:
        out = f"{self.name}-passages.tsv"
        self.manifest.run(
            "passages",
            {"corpus": self.fps["corpus"]},
            [out],
            lambda: {
                "passages": prep.write_passages_tsv(self.path(out), self.corpus().passages.values()),
                "blank_documents_skipped": len(self.corpus().empty_ids),
            },
        )
        if self.train_split is not None:
            self.manifest.run(
                "train",
                self.split_params(self.fps),
                [f"{self.name}-train.json", f"{self.name}-dev.json"],
                self.make_train,
            )
        if self.eval_split is not None:
            params = {key: self.fps[key] for key in ("corpus", "queries", "strict", f"qrels_{self.eval_split}")}
            self.manifest.run(
                "eval",
                {**params, "depth": self.settings.bm25_depth, "bm25": self.cfg.to_dict()},
                list(self.eval_outputs().values()),
                self.make_eval,
            )
        outputs = self.eval_outputs() if self.eval_split is not None else {}
        return self.result(self.train_split is not None, self.eval_split, outputs)

    def make_train(self) -> dict[str, Any]:
        judged = self.judged(self.train_split)
        queries = prep.beir_queries(judged.relevant, self.texts())
        counts = {"no_positive": len(judged.all_judged) - len(queries)}
        if self.eval_split is not None:  # no evaluation question may be trained on, by id or by text
            held_out = self.judged(self.eval_split).all_judged
            held_texts = {prep.normalize_question(self.texts()[qid]) for qid in held_out}
            kept = [q for q in queries if q.qid not in held_out and q.group not in held_texts]
            counts["dropped_in_eval_split"] = len(queries) - len(kept)
            queries = kept
        return {**counts, **self.write_splits(queries, self.corpus().passages, self.index)}

    def eval_outputs(self) -> dict[str, str]:
        kinds = {"qrels": "qrels.tsv", "queries": "queries.jsonl", "run": "bm25.trec", "metrics": "bm25.json"}
        return {key: f"{self.name}-{self.eval_split}-{kind}" for key, kind in kinds.items()}

    def make_eval(self) -> dict[str, Any]:
        held_out = self.judged(self.eval_split).all_judged  # as judged, missing docs too: BEIR counts them
        queries = [prep.Query(qid, self.texts()[qid], (), (), qid) for qid in held_out]
        paths = {key: self.path(name) for key, name in self.eval_outputs().items()}
        counts = {
            "queries": prep.write_queries_jsonl(paths["queries"], queries),
            "judgments": prep.write_qrels_tsv(paths["qrels"], held_out),
        }
        depth = self.settings.bm25_depth
        run = prep.bm25_run(self.index(), queries, depth, self.progress)
        write_trec_run(run, paths["run"], "bm25")
        metrics = evaluate_run(held_out, run, [k for k in DEFAULT_KS if k <= depth])
        _write_json(
            paths["metrics"],
            {
                "retriever": "bm25",
                "bm25": self.cfg.to_dict(),
                "split": self.eval_split,
                "depth": depth,
                **counts,
                "metrics": metrics,
            },
        )
        return {**counts, **{k: metrics[k] for k in ("nDCG@10", "R@100") if k in metrics}}


class _SquadJob(_Job):
    """SQuAD: ``squad_file`` -> train / dev JSON (split by article); ``eval_file`` -> corpus, QA file, baseline."""

    def __init__(self, squad_file: str, eval_file: str, out_dir: str, name: str | None, settings: PrepareSettings):
        for path in (squad_file, eval_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such file")
        super().__init__(out_dir, name or "squad1", settings)
        self.squad_file, self.eval_file = squad_file, eval_file
        self.train_set = functools.cache(lambda: load_squad(squad_file))
        self.eval_set = functools.cache(lambda: load_squad(eval_file))
        self.fps = {"squad_file": fingerprint(squad_file), "eval_file": fingerprint(eval_file)}
        self.train_index = _bm25_index(
            self.manifest,
            "bm25-train",
            self.fps["squad_file"],
            self.cfg,
            lambda: self.train_set().passages,
            self.progress,
        )
        self.eval_index = _bm25_index(
            self.manifest, "bm25-eval", self.fps["eval_file"], self.cfg, lambda: self.eval_set().passages, self.progress
        )

    def run(self) -> PreparedData:
        out = f"{self.name}-passages.tsv"
        self.manifest.run(
            "passages",
            {"eval_file": self.fps["eval_file"]},
            [out],
            lambda: {"passages": prep.write_passages_tsv(self.path(out), self.eval_set().passages.values())},
        )
        self.manifest.run(
            "train", self.split_params(self.fps), [f"{self.name}-train.json", f"{self.name}-dev.json"], self.make_train
        )
        self.manifest.run(
            "eval",
            {"eval_file": self.fps["eval_file"], "depth": self.settings.bm25_depth, "bm25": self.cfg.to_dict()},
            list(self.eval_outputs().values()),
            self.make_eval,
        )
        return self.result(True, "test", self.eval_outputs())

    def make_train(self) -> dict[str, Any]:
        # an article in both files would put test questions' passages and answers into training
        eval_titles = set(self.eval_set().titles)
        overlap = {a for a, title in enumerate(self.train_set().titles) if title in eval_titles}
        if overlap:
            logger.warning(
                "%d articles of %s are also in %s: their questions are left out of training",
                len(overlap),
                self.squad_file,
                self.eval_file,
            )
        queries = [q for q in prep.squad_queries(self.train_set().examples) if int(q.group) not in overlap]
        if not queries:
            raise ConfigError(
                f"no training question left: every article of {self.squad_file} is also in {self.eval_file}"
            )
        counts = {"articles_dropped_in_eval_file": len(overlap)}
        return {**counts, **self.write_splits(queries, self.train_set().passages, self.train_index)}

    def eval_outputs(self) -> dict[str, str]:
        kinds = {
            "qa": "qa.tsv",
            "qrels": "qrels.tsv",
            "queries": "queries.jsonl",
            "run": "bm25.trec",
            "metrics": "bm25.json",
        }
        return {key: f"{self.name}-test-{kind}" for key, kind in kinds.items()}

    def make_eval(self) -> dict[str, Any]:
        queries = prep.squad_queries(self.eval_set().examples)
        paths = {key: self.path(name) for key, name in self.eval_outputs().items()}
        qrels = {q.qid: dict(q.positives) for q in queries}
        counts = {
            "questions": prep.write_qa_tsv(paths["qa"], queries),
            "judgments": prep.write_qrels_tsv(paths["qrels"], qrels),
        }
        prep.write_queries_jsonl(paths["queries"], queries)
        depth = self.settings.bm25_depth
        run = prep.bm25_run(self.eval_index(), queries, depth, self.progress)
        write_trec_run(run, paths["run"], "bm25")
        accuracy = prep.answer_accuracy(run, queries, self.eval_set().passages, [k for k in QA_KS if k <= depth])
        metrics = evaluate_run(qrels, run, [k for k in (*DEFAULT_KS, 20) if k <= depth])
        _write_json(
            paths["metrics"],
            {
                "retriever": "bm25",
                "bm25": self.cfg.to_dict(),
                "depth": depth,
                **counts,
                "answer_accuracy": accuracy,
                "metrics": metrics,
            },
        )
        return {**counts, **accuracy, **{k: metrics[k] for k in ("R@20", "nDCG@10") if k in metrics}}


def prepare_beir(
    beir_dir: str,
    out_dir: str,
    *,
    name: str | None = None,
    train_split: str | None = "train",
    eval_split: str | None = "test",
    strict: bool = False,
    settings: PrepareSettings = PrepareSettings(),
) -> PreparedData:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) -> DPR files in ``out_dir``.

    ``train_split`` gives NAME-train.json / NAME-dev.json (None: skip), ``eval_split`` the evaluation
    files and BM25 baseline (None: skip). ``strict``: a qrels id missing from the corpus or queries is
    an error, not a counted skip.
    """
    if train_split is not None and train_split == eval_split:
        raise ConfigError(f"train_split and eval_split are both {eval_split!r}: training on the evaluation questions")
    return _BeirJob(beir_dir, out_dir, name, train_split, eval_split, strict, settings).run()


def prepare_squad(
    squad_file: str,
    eval_file: str,
    out_dir: str,
    *,
    name: str | None = None,
    settings: PrepareSettings = PrepareSettings(),
) -> PreparedData:
    """SQuAD v1.1: ``squad_file`` -> train / dev JSON (split by article, no article of ``eval_file``);
    ``eval_file`` -> the corpus (its paragraphs), QA / qrels / queries files and the BM25 baseline."""
    return _SquadJob(squad_file, eval_file, out_dir, name, settings).run()
