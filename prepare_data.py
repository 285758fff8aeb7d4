#!/usr/bin/env python3
"""Convert a BEIR dataset or SQuAD v1.1 into DPR training data, a passages TSV, evaluation files and a
BM25 baseline.

  python prepare_data.py beir --beir_dir ../shared/data/scifact --out_dir data/scifact \\
      --train_split train --eval_split test --dev_ratio 0.1 --hard_negatives 30 --other_negatives 30
  python prepare_data.py squad --squad_file train-v1.1.json --eval_file dev-v1.1.json --out_dir data/squad1

Writes into --out_dir (NAME = --name, default the BEIR folder name or "squad1"):
  NAME-train.json, NAME-dev.json   DPR retriever JSON, split by --dev_ratio (seeded; SQuAD by article)
  NAME-passages.tsv                the corpus evaluation retrieves from (id, text, title)
  NAME-EVAL-qrels.tsv, NAME-EVAL-queries.jsonl   evaluation questions (BEIR format; EVAL = --eval_split
                                   for BEIR, "test" for SQuAD), plus NAME-test-qa.tsv for SQuAD
  NAME-EVAL-bm25.trec, NAME-EVAL-bm25.json       the BM25 baseline run and its metrics
  bm25-*/                          saved BM25 indexes; prepare_manifest.json: what was made from what
A rerun skips every stage whose outputs exist and whose inputs and settings are unchanged (--overwrite
redoes all).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from dpr.atomic import atomic_file
from dpr.cli import run_cli, setup_logging
from dpr.data import prepare as prep
from dpr.data.bm25 import BM25Config, BM25Index, passage_text, resolve_config
from dpr.data.sources import load_beir_corpus, load_beir_queries, load_judgments, load_squad
from dpr.evaluation.metrics import DEFAULT_KS, evaluate_run, write_trec_run
from dpr.options import ConfigError

logger = logging.getLogger("prepare_data")

MANIFEST = "prepare_manifest.json"
_MANIFEST_VERSION = 1
QA_KS = (1, 5, 20, 100)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    beir = sub.add_parser("beir", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    beir.add_argument("--beir_dir", required=True)
    beir.add_argument("--train_split", default="train", help="qrels split for train/dev ('none': skip)")
    beir.add_argument("--eval_split", default="test", help="qrels split to evaluate on ('none': skip)")
    beir.add_argument("--strict", action="store_true",
                      help="a qrels id missing from the corpus or queries is an error, not a counted skip")
    squad = sub.add_parser("squad", help="SQuAD v1.1 JSON: paragraphs are passages")
    squad.add_argument("--squad_file", required=True, help="questions for train/dev (split by article)")
    squad.add_argument("--eval_file", required=True, help="evaluation questions; its paragraphs are the corpus")
    for group in (beir, squad):
        group.add_argument("--out_dir", required=True)
        group.add_argument("--name", default=None, help="file name prefix and the JSON 'dataset' field")
        group.add_argument("--dev_ratio", type=float, default=0.1)
        group.add_argument("--hard_negatives", type=int, default=30)
        group.add_argument("--other_negatives", type=int, default=30)
        group.add_argument("--seed", type=int, default=0)
        group.add_argument("--bm25_depth", type=int, default=100, help="BM25 baseline run depth")
        group.add_argument("--bm25_k1", type=float, default=1.5)
        group.add_argument("--bm25_b", type=float, default=0.75)
        group.add_argument("--bm25_stemmer", choices=("english", "none"), default="english")
        group.add_argument("--overwrite", action="store_true", help="redo every stage")
        group.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


# --------------------------------------------------------------------------------- stage manifest


def fingerprint(path: str) -> dict[str, Any]:
    """What identifies an input file's content cheaply: path, size, modification time."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class Manifest:
    """Which stage made which outputs from which parameters: a rerun skips stages that match."""

    def __init__(self, out_dir: str, overwrite: bool):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, MANIFEST)
        self.overwrite = overwrite
        self.stages: dict[str, Any] = {}
        self.report: list[tuple[str, bool, list[str], dict[str, Any]]] = []
        if os.path.isfile(self.path):
            try:
                with open(self.path, encoding="utf-8") as handle:
                    loaded = json.load(handle)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                logger.warning("%s is unreadable (%s): every stage runs again", self.path, err)
                loaded = {}
            if isinstance(loaded, dict) and loaded.get("version") == _MANIFEST_VERSION:
                self.stages = loaded.get("stages", {})

    def run(self, stage: str, params: dict[str, Any], outputs: list[str],
            make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``make()`` (which writes ``outputs`` and returns counts) unless a matching run is recorded."""
        params = json.loads(json.dumps(params))  # the form it takes in the file, for comparison
        entry = self.stages.get(stage)
        paths = [os.path.join(self.out_dir, name) for name in outputs]
        if (not self.overwrite and entry and entry.get("params") == params
                and entry.get("outputs") == outputs and all(os.path.exists(p) for p in paths)):
            logger.info("stage %s: outputs exist with the same inputs and settings, reused", stage)
            self.report.append((stage, True, outputs, entry.get("counts", {})))
            return entry.get("counts", {})
        self.stages.pop(stage, None)
        self._save()  # forget the old record first: a crash mid-stage must not leave it valid
        started = time.perf_counter()
        counts = make()
        logger.info("stage %s done in %.1f s", stage, time.perf_counter() - started)
        self.stages[stage] = {"params": params, "outputs": outputs, "counts": counts}
        self._save()
        self.report.append((stage, False, outputs, counts))
        return counts

    def _save(self) -> None:
        with atomic_file(self.path) as handle:
            json.dump({"version": _MANIFEST_VERSION, "stages": self.stages}, handle, indent=1)


def _bm25_index(manifest: Manifest, stage: str, source: dict[str, Any], cfg: BM25Config,
                passages: Callable[[], dict], show_progress: bool) -> Callable[[], BM25Index]:
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


# ---------------------------------------------------------------------------------------- jobs


class _Job:
    """What both sources share: settings, the manifest, writing the train / dev split."""

    def __init__(self, args: argparse.Namespace, manifest: Manifest, neg: prep.NegativeConfig,
                 cfg: BM25Config, progress: bool, name: str):
        self.args, self.manifest, self.neg, self.cfg, self.progress = args, manifest, neg, cfg, progress
        self.name = name

    def path(self, file_name: str) -> str:
        return os.path.join(self.args.out_dir, file_name)

    def write_splits(self, queries: list[prep.Query], passages: dict,
                     index: Callable[[], BM25Index]) -> dict[str, Any]:
        """Split ``queries`` (seeded, by group), mine negatives, write NAME-train.json / NAME-dev.json."""
        train, dev = prep.split_by_group(queries, self.args.dev_ratio, self.neg.seed)
        counts: dict[str, Any] = {}
        for split, part in (("train", train), ("dev", dev)):
            hard = prep.mine_hard_negatives(index(), part, passages, self.neg.hard_negatives, self.progress)
            records = prep.dpr_records(part, hard, passages, self.neg, self.name)
            counts[split] = prep.write_dpr_json(self.path(f"{self.name}-{split}.json"), records)
            counts[f"{split}_hard_negatives_mean"] = round(sum(map(len, hard)) / max(len(hard), 1), 2)
        return counts

    def split_params(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {**inputs, "dev_ratio": self.args.dev_ratio, "negatives": dataclasses.asdict(self.neg),
                "bm25": self.cfg.to_dict()}


def _write_json(path: str, value: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(value, handle, indent=1)
        handle.write("\n")


class BeirJob(_Job):
    """BEIR folder -> passages TSV, train / dev JSON (train split), qrels + BM25 baseline (eval split)."""

    def __init__(self, args: argparse.Namespace, *rest: Any):
        super().__init__(args, *rest, name=args.name or os.path.basename(os.path.normpath(args.beir_dir)))
        self.splits = [s for s in (args.train_split, args.eval_split) if s != "none"]
        corpus_path = os.path.join(args.beir_dir, "corpus.jsonl")
        queries_path = os.path.join(args.beir_dir, "queries.jsonl")
        qrels = {s: os.path.join(args.beir_dir, "qrels", f"{s}.tsv") for s in self.splits}
        for path in [corpus_path, queries_path, *qrels.values()]:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such file (a BEIR folder holds corpus.jsonl, queries.jsonl "
                                        "and qrels/<split>.tsv)")
        self.corpus = functools.cache(lambda: load_beir_corpus(corpus_path))
        self.texts = functools.cache(lambda: load_beir_queries(queries_path)[0])
        self.judged = functools.cache(lambda s: load_judgments(qrels[s], self.corpus(), self.texts(), args.strict))
        self.fps = {"corpus": fingerprint(corpus_path), "queries": fingerprint(queries_path), "strict": args.strict,
                    **{f"qrels_{s}": fingerprint(path) for s, path in qrels.items()}}
        self.index = _bm25_index(self.manifest, "bm25-corpus", self.fps["corpus"], self.cfg,
                                 lambda: self.corpus().passages, self.progress)

    def run(self) -> None:
        out = f"{self.name}-passages.tsv"
        self.manifest.run("passages", {"corpus": self.fps["corpus"]}, [out], lambda: {
            "passages": prep.write_passages_tsv(self.path(out), self.corpus().passages.values()),
            "blank_documents_skipped": len(self.corpus().empty_ids)})
        if self.args.train_split != "none":
            self.manifest.run("train", self.split_params(self.fps),
                              [f"{self.name}-train.json", f"{self.name}-dev.json"], self.make_train)
        if self.args.eval_split != "none":
            split = self.args.eval_split
            params = {key: self.fps[key] for key in ("corpus", "queries", "strict", f"qrels_{split}")}
            self.manifest.run("eval", {**params, "depth": self.args.bm25_depth, "bm25": self.cfg.to_dict()},
                              self.eval_outputs(), self.make_eval)

    def make_train(self) -> dict[str, Any]:
        judged = self.judged(self.args.train_split)
        queries = prep.beir_queries(judged.relevant, self.texts())
        counts = {"no_positive": len(judged.all_judged) - len(queries)}
        if self.args.eval_split != "none":  # no evaluation question may be trained on, by id or by text
            held_out = self.judged(self.args.eval_split).all_judged
            held_texts = {prep.normalize_question(self.texts()[qid]) for qid in held_out}
            kept = [q for q in queries if q.qid not in held_out and q.group not in held_texts]
            counts["dropped_in_eval_split"] = len(queries) - len(kept)
            queries = kept
        return {**counts, **self.write_splits(queries, self.corpus().passages, self.index)}

    def eval_outputs(self) -> list[str]:
        kinds = ("qrels.tsv", "queries.jsonl", "bm25.trec", "bm25.json")
        return [f"{self.name}-{self.args.eval_split}-{kind}" for kind in kinds]

    def make_eval(self) -> dict[str, Any]:
        held_out = self.judged(self.args.eval_split).all_judged  # as judged, missing docs too: BEIR counts them
        queries = [prep.Query(qid, self.texts()[qid], (), (), qid) for qid in held_out]
        qrels_path, queries_path, run_path, metrics_path = map(self.path, self.eval_outputs())
        counts = {"queries": prep.write_queries_jsonl(queries_path, queries),
                  "judgments": prep.write_qrels_tsv(qrels_path, held_out)}
        run = prep.bm25_run(self.index(), queries, self.args.bm25_depth, self.progress)
        write_trec_run(run, run_path, "bm25")
        metrics = evaluate_run(held_out, run, [k for k in DEFAULT_KS if k <= self.args.bm25_depth])
        _write_json(metrics_path, {"retriever": "bm25", "bm25": self.cfg.to_dict(), "split": self.args.eval_split,
                                   "depth": self.args.bm25_depth, **counts, "metrics": metrics})
        return {**counts, **{k: metrics[k] for k in ("nDCG@10", "R@100") if k in metrics}}


class SquadJob(_Job):
    """SQuAD: --squad_file -> train / dev JSON (split by article); --eval_file -> corpus, QA file, baseline."""

    def __init__(self, args: argparse.Namespace, *rest: Any):
        super().__init__(args, *rest, name=args.name or "squad1")
        for path in (args.squad_file, args.eval_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such file")
        self.train_set = functools.cache(lambda: load_squad(args.squad_file))
        self.eval_set = functools.cache(lambda: load_squad(args.eval_file))
        self.fps = {"squad_file": fingerprint(args.squad_file), "eval_file": fingerprint(args.eval_file)}
        self.train_index = _bm25_index(self.manifest, "bm25-train", self.fps["squad_file"], self.cfg,
                                       lambda: self.train_set().passages, self.progress)
        self.eval_index = _bm25_index(self.manifest, "bm25-eval", self.fps["eval_file"], self.cfg,
                                      lambda: self.eval_set().passages, self.progress)

    def run(self) -> None:
        out = f"{self.name}-passages.tsv"
        self.manifest.run("passages", {"eval_file": self.fps["eval_file"]}, [out], lambda: {
            "passages": prep.write_passages_tsv(self.path(out), self.eval_set().passages.values())})
        self.manifest.run("train", self.split_params(self.fps),
                          [f"{self.name}-train.json", f"{self.name}-dev.json"], self.make_train)
        self.manifest.run("eval", {"eval_file": self.fps["eval_file"], "depth": self.args.bm25_depth,
                                   "bm25": self.cfg.to_dict()}, self.eval_outputs(), self.make_eval)

    def make_train(self) -> dict[str, Any]:
        # an article in both files would put test questions' passages and answers into training
        eval_titles = set(self.eval_set().titles)
        overlap = {a for a, title in enumerate(self.train_set().titles) if title in eval_titles}
        if overlap:
            logger.warning("%d articles of %s are also in %s: their questions are left out of training",
                           len(overlap), self.args.squad_file, self.args.eval_file)
        queries = [q for q in prep.squad_queries(self.train_set().examples) if int(q.group) not in overlap]
        if not queries:
            raise ConfigError(f"no training question left: every article of {self.args.squad_file} "
                              f"is also in {self.args.eval_file}")
        counts = {"articles_dropped_in_eval_file": len(overlap)}
        return {**counts, **self.write_splits(queries, self.train_set().passages, self.train_index)}

    def eval_outputs(self) -> list[str]:
        kinds = ("qa.tsv", "qrels.tsv", "queries.jsonl", "bm25.trec", "bm25.json")
        return [f"{self.name}-test-{kind}" for kind in kinds]

    def make_eval(self) -> dict[str, Any]:
        queries = prep.squad_queries(self.eval_set().examples)
        qa_path, qrels_path, queries_path, run_path, metrics_path = map(self.path, self.eval_outputs())
        qrels = {q.qid: dict(q.positives) for q in queries}
        counts = {"questions": prep.write_qa_tsv(qa_path, queries), "judgments": prep.write_qrels_tsv(qrels_path, qrels)}
        prep.write_queries_jsonl(queries_path, queries)
        depth = self.args.bm25_depth
        run = prep.bm25_run(self.eval_index(), queries, depth, self.progress)
        write_trec_run(run, run_path, "bm25")
        accuracy = prep.answer_accuracy(run, queries, self.eval_set().passages, [k for k in QA_KS if k <= depth])
        metrics = evaluate_run(qrels, run, [k for k in (*DEFAULT_KS, 20) if k <= depth])
        _write_json(metrics_path, {"retriever": "bm25", "bm25": self.cfg.to_dict(), "depth": depth, **counts,
                                   "answer_accuracy": accuracy, "metrics": metrics})
        return {**counts, **accuracy, **{k: metrics[k] for k in ("R@20", "nDCG@10") if k in metrics}}


# ------------------------------------------------------------------------------------------- main


def _print_report(manifest: Manifest) -> None:
    for stage, reused, outputs, counts in manifest.report:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in counts.items())
        print(f"{'reused' if reused else 'wrote '} {stage:12s} {', '.join(outputs)}: {shown}")
    print(f"outputs in {os.path.abspath(manifest.out_dir)}")


def _check_args(args: argparse.Namespace) -> None:
    problems = [f"--{flag} must be >= {low}, found {getattr(args, flag)}"
                for flag, low in (("hard_negatives", 0), ("other_negatives", 0), ("bm25_depth", 1))
                if getattr(args, flag) < low]
    if not 0 <= args.dev_ratio < 1:
        problems.append(f"--dev_ratio must be in [0, 1), found {args.dev_ratio}")
    if args.source == "beir" and args.train_split == args.eval_split != "none":
        problems.append(f"--train_split and --eval_split are both {args.eval_split!r}: training on the "
                        "evaluation questions")
    if problems:
        raise ConfigError("; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    _check_args(args)
    neg = prep.NegativeConfig(args.hard_negatives, args.other_negatives, args.seed)
    cfg = resolve_config(BM25Config(k1=args.bm25_k1, b=args.bm25_b, stemmer=args.bm25_stemmer))
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each index build at DEBUG
    logger.info("settings: %s", json.dumps(vars(args), sort_keys=True))
    os.makedirs(args.out_dir, exist_ok=True)
    manifest = Manifest(args.out_dir, args.overwrite)
    started = time.perf_counter()
    job = BeirJob if args.source == "beir" else SquadJob
    job(args, manifest, neg, cfg, not args.no_progress).run()
    _print_report(manifest)
    logger.info("done in %.1f s", time.perf_counter() - started)
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
