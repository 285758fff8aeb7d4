"""Retrieval-metric validation (--val_metric ndcg@10 / mrr@10 / recall@100 over --val_ctx_file): the best
checkpoint is the highest, the metrics match a hand computation, training logs and selects by them, and
settings that cannot validate are refused naming the flags."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from helpers import dpr_train_argv
from reference import brute_force_topk

import train_dense_encoder
from dpr.configs import BiEncoderConfig, ConfigError
from dpr.data.readers import Passage, read_dpr_files
from dpr.encoding import encode_texts
from dpr.models.biencoder import build_biencoder
from dpr.models.hub import load_tokenizer
from dpr.options import TrainConfig
from dpr.training import trainer as trainer_module
from dpr.training import validation as validation_module
from dpr.training.distributed import DistributedContext
from dpr.training.passage_cache import PassageVectorCache, all_passages
from dpr.training.resume import changed_settings
from dpr.training.run_dir import best_record, list_checkpoints, read_best, read_history, update_best
from dpr.training.validation import (
    DevRetrieval,
    ValidationResult,
    fixed_corpus_vectors,
    read_dev_retrieval,
    retrieval_metrics,
    validate_retrieval,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = DistributedContext(0, 1, 0, torch.device("cpu"), True)
SMALL_RUN = ("--batch_size", "4", "--dev_batch_size", "4", "--sequence_length", "32", "--seed", "3")


@pytest.fixture
def dev_corpus(tmp_path, tiny_dpr_files) -> str:
    """A BEIR corpus.jsonl: every dev passage, and the positives of the first 6 training questions."""
    train, dev = (json.load(open(path)) for path in tiny_dpr_files)
    found = [p for s in dev for key in ("positive_ctxs", "hard_negative_ctxs", "negative_ctxs") for p in s[key]]
    found += [s["positive_ctxs"][0] for s in train[:6]]
    rows = {p["passage_id"]: {"_id": p["passage_id"], "title": p["title"], "text": p["text"]} for p in found}
    path = tmp_path / "dev-corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows.values()))
    return str(path)


def _candidate(run_dir, result: ValidationResult, step: int):
    """The best-checkpoint candidate of a checkpoint folder saved at ``step`` with ``result``."""
    path = os.path.join(str(run_dir), f"dpr_biencoder.0.{step}")
    os.makedirs(path)
    record = {"metric": result.metric, "value": result.value, "epoch": 0, "iteration": step, "global_step": step}
    return best_record(path, record)


def test_a_metric_where_higher_is_better_keeps_the_highest_as_best(tmp_path):
    values = (0.3, 0.5, 0.4)
    ndcg, nll = tmp_path / "ndcg", tmp_path / "nll"
    kept = [
        update_best(str(ndcg), _candidate(ndcg, ValidationResult("ndcg@10", v, {}), i)) for i, v in enumerate(values)
    ]
    assert kept == [True, True, False]
    assert read_best(str(ndcg)).value == 0.5 and json.load(open(ndcg / "best_checkpoint.json"))["greater_is_better"]
    # The same values as a loss: the lowest stays best.
    kept = [update_best(str(nll), _candidate(nll, ValidationResult("nll", v, {}), i)) for i, v in enumerate(values)]
    assert kept == [True, False, False] and read_best(str(nll)).value == 0.3
    assert json.load(open(nll / "best_checkpoint.json"))["greater_is_better"] is False
    # A resumed run validating by another metric: its first value replaces the best of the old one.
    assert update_best(str(ndcg), _candidate(ndcg, ValidationResult("nll", 9.0, {}), 7))
    assert read_best(str(ndcg)).metric == "nll"


def _known_ranking() -> tuple[DevRetrieval, torch.Tensor, torch.Tensor]:
    """150 one-hot passages; question i's scores rank passage ``order[i][r]`` at rank r + 1."""
    n = 150
    ids = tuple(f"d{j}" for j in range(n))
    order = [np.random.default_rng(i).permutation(n) for i in range(3)]
    q = torch.zeros(3, n)
    for i, ranked in enumerate(order):
        q[i, torch.from_numpy(ranked)] = torch.arange(n, 0, -1, dtype=torch.float32)  # rank 1 scores n
    relevant_ranks = ((3,), (1, 12), (120,))  # 1-based
    qrels = {str(i): {ids[order[i][r - 1]]: 1 for r in ranks} for i, ranks in enumerate(relevant_ranks)}
    passages = tuple(Passage(text=f"passage {j}", passage_id=pid) for j, pid in enumerate(ids))
    dev = DevRetrieval("known", ids, passages, ("0", "1", "2"), ("a", "b", "c"), qrels)
    return dev, q, torch.eye(n)


def test_retrieval_metrics_equal_a_hand_computation_on_a_known_ranking():
    dev, q, c = _known_ranking()
    scores = retrieval_metrics(dev, q, c)
    ndcg = [1 / math.log2(4), 1 / (1 + 1 / math.log2(3)), 0.0]  # rank 12 and 120 are past the cut-off
    assert scores["nDCG@10"] == pytest.approx(sum(ndcg) / 3)
    assert scores["MRR@10"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert scores["R@100"] == pytest.approx((1 + 1 + 0) / 3)
    assert scores["R@10"] == pytest.approx((1 + 0.5 + 0) / 3)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bert-tiny")


def _model(**settings):
    torch.manual_seed(0)
    return build_biencoder(
        BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny", tuning="prefix", sequence_length=32, **settings)
    )


def _hand_mrr10(dev: DevRetrieval, q: np.ndarray, c: np.ndarray) -> float:
    _, ranked = brute_force_topk(q, c, dev.ids, 10)
    total = 0.0
    for qid, row in zip(dev.question_ids, ranked):
        total += next((1 / rank for rank, pid in enumerate(row, 1) if pid in dev.qrels[qid]), 0.0)
    return total / len(dev.question_ids)


def test_validation_of_a_model_equals_a_brute_force_reference(tiny_dpr_files, dev_corpus, tokenizer):
    model = _model()
    dev = read_dev_retrieval(dev_corpus, read_dpr_files([tiny_dpr_files[1]]), 100)
    encoding = dict(max_length=32, batch_size=4, insert_title=True)
    result = validate_retrieval(model, dev, tokenizer, metric="mrr@10", ctx=CPU, **encoding)
    q = encode_texts(model, tokenizer, list(dev.questions), "question", **encoding)
    c = encode_texts(model, tokenizer, list(dev.passages), "passage", **encoding)
    assert result.metric == "mrr@10" and result.greater_is_better
    assert result.value == result.details["MRR@10"] == pytest.approx(_hand_mrr10(dev, q, c), abs=1e-6)
    assert result.details["questions"] == 8 and result.details["passages"] == len(dev.ids)


def test_question_side_dev_vectors_reuse_the_cache_and_equal_a_fresh_encoding(tiny_dpr_files, dev_corpus, tokenizer):
    model = _model(tune_side="question")
    train = read_dpr_files([tiny_dpr_files[0]])
    dev = read_dev_retrieval(dev_corpus, read_dpr_files([tiny_dpr_files[1]]), 100)
    cache = PassageVectorCache.encode(model, tokenizer, train, batch_size=4, insert_title=True, device="cpu")
    looked_up = []
    lookup = cache.lookup
    cache.lookup = lambda passages: looked_up.extend(passages) or lookup(passages)
    encoding = dict(max_length=32, batch_size=4, insert_title=True)
    vectors = fixed_corpus_vectors(model, tokenizer, dev, cache, all_passages(train), CPU, **encoding)
    assert len(looked_up) == 6  # the training positives in the corpus; the dev passages are encoded
    fresh = encode_texts(model, tokenizer, list(dev.passages), "passage", **encoding)
    torch.testing.assert_close(vectors, torch.from_numpy(fresh), atol=1e-5, rtol=1e-5)


def _train(model_dir, files, corpus, out, *extra) -> None:
    train, dev = files
    flags = ("--prefix", "--learning_rate", "0.05", "--num_train_epochs", "2", "--eval_per_epoch", "2")
    flags += ("--keep_checkpoints", "10", "--val_metric", "ndcg@10", "--val_ctx_file", corpus)
    assert train_dense_encoder.main(dpr_train_argv(model_dir, train, dev, out, *SMALL_RUN, *flags, *extra)) == 0


@pytest.mark.parametrize("tune_side", ["question", "both"])
def test_training_logs_ndcg_and_keeps_the_highest(tmp_path, tiny_dpr_files, dev_corpus, tune_side):
    encoded = []
    real = validation_module.encode_split

    def recording(model, tokenizer, items, side, ctx, **encoding):
        encoded.append(side)
        return real(model, tokenizer, items, side, ctx, **encoding)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validation_module, "encode_split", recording)
        out = str(tmp_path / "run")
        # The real BERT-tiny: a random tiny BERT ranks every dev passage alike (nDCG 0 throughout).
        _train("bert-tiny", tiny_dpr_files, dev_corpus, out, "--tune_side", tune_side)
    history = read_history(out)
    assert [h["metric"] for h in history] == ["ndcg@10"] * 4 and all(h["greater_is_better"] for h in history)
    assert all(h["value"] == h["nDCG@10"] and {"MRR@10", "R@100"} <= set(h) for h in history)
    best = read_best(out)
    values = [h["value"] for h in history]
    assert len(set(values)) > 1  # else any rule would pick the first
    first_highest = history[values.index(max(values))]
    assert best.metric == "ndcg@10" and best.value == max(values) and best.global_step == first_highest["global_step"]
    # Question side: the fixed passage side's corpus vectors are made once, before training; both sides: at
    # every validation. The questions are encoded at every validation either way.
    assert encoded.count("question") == 4
    assert encoded.count("passage") == (1 if tune_side == "question" else 4)


def test_the_trainer_keeps_the_checkpoint_with_the_highest_ndcg(tmp_path, tiny_bert_dir, tiny_dpr_files, dev_corpus):
    values = iter([0.2, 0.6, 0.4, 0.1])  # the second validation is the best; the last the lowest
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            trainer_module, "validate_retrieval", lambda *a, **k: ValidationResult("ndcg@10", next(values), {})
        )
        out = str(tmp_path / "run")
        _train(tiny_bert_dir, tiny_dpr_files, dev_corpus, out, "--keep_checkpoints", "1")
    best = read_best(out)
    assert best.value == 0.6 and os.path.basename(best.path) == "dpr_biencoder.0.6"
    names = sorted(os.path.basename(p) for _, p in list_checkpoints(out, "dpr_biencoder"))
    assert names == ["dpr_biencoder.0.6", "dpr_biencoder.1.6"]  # best + latest


def test_the_default_is_dprs_schedule_nll_then_average_rank():
    cfg = TrainConfig(train_file=("t.json",), val_av_rank_start_epoch=2)
    assert [cfg.val_metric_at(epoch) for epoch in range(4)] == ["nll", "nll", "average_rank", "average_rank"]
    assert TrainConfig(train_file=("t.json",), val_metric="average_rank").val_metric_at(0) == "average_rank"


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"val_metric": "ndcg@10", "val_ctx_file": "c.tsv"}, "give --dev_file"),
        ({"val_metric": "mrr@10", "dev_file": ("d.json",)}, "needs --val_ctx_file"),
        ({"val_ctx_file": "c.tsv", "dev_file": ("d.json",)}, "--val_metric nll does not read it"),
        (
            {
                "val_metric": "recall@100",
                "val_ctx_file": "c.tsv",
                "dev_file": ("d.json",),
                "val_av_rank_start_epoch": 1,
            },
            "--val_av_rank_start_epoch",
        ),
        ({"val_metric": "map@5"}, "--val_metric 'map@5' is not one of"),
    ],
)
def test_validation_settings_that_cannot_work_are_refused_naming_the_flags(settings, named):
    with pytest.raises(ConfigError, match=named):
        TrainConfig(train_file=("t.json",), **settings)


def test_a_retrieval_metric_without_a_corpus_is_a_one_line_cli_error(tmp_path, tiny_bert_dir, tiny_dpr_files, capsys):
    from dpr.cli import run_cli

    train, dev = tiny_dpr_files
    argv = dpr_train_argv(tiny_bert_dir, train, dev, str(tmp_path / "o"), "--val_metric", "ndcg@10")
    assert run_cli(train_dense_encoder.main, argv) == 2
    assert "--val_metric ndcg@10 needs --val_ctx_file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")  # refused before anything was written


def test_dev_positives_missing_from_the_corpus_are_counted_and_none_is_an_error(tmp_path, tiny_dpr_files, caplog):
    dev = read_dpr_files([tiny_dpr_files[1]])
    half = tmp_path / "half.tsv"  # the positives of dev questions 0, 2, 4 and 6, and a hard negative of each
    rows = [p for s in dev[::2] for p in (s.positive_passages[0], s.hard_negative_passages[0])]
    half.write_text("".join(f"{p.passage_id}\t{p.text}\t{p.title}\n" for p in rows))
    with caplog.at_level(logging.WARNING, logger="dpr.training.validation"):
        judged = read_dev_retrieval(str(half), dev, 100)
    assert judged.question_ids == ("0", "2", "4", "6") and len(judged.ids) == 8
    assert judged.qrels["2"] == {dev[2].positive_passages[0].passage_id: 1}
    assert any("4 --dev_file positive passages are not in" in r.getMessage() for r in caplog.records)
    none = tmp_path / "none.tsv"
    none.write_text("".join(f"{p.passage_id}\t{p.text}\t{p.title}\n" for s in dev for p in s.hard_negative_passages))
    with pytest.raises(ConfigError, match="--val_ctx_file .*none.tsv holds none of the positive passage ids"):
        read_dev_retrieval(str(none), dev, 100)


def test_runs_that_predate_val_metric_resume_unchanged_and_a_changed_metric_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = TrainConfig(train_file=(str(tmp_path / "t.json"),), dev_file=(str(tmp_path / "d.json"),))
    old = {k: v for k, v in json.loads(json.dumps(base.to_dict())).items() if k not in ("val_metric", "val_ctx_file")}
    assert changed_settings(old, base) == []  # they ran with nll and no dev corpus
    ndcg = dataclasses.replace(base, val_metric="ndcg@10", val_ctx_file=str(tmp_path / "c.tsv"))
    assert changed_settings(old, ndcg) == [
        "val_metric: 'nll' -> 'ndcg@10'",
        f"val_ctx_file: None -> '{tmp_path}/c.tsv'",
    ]
    # The same corpus spelled relative to the working directory is no change.
    assert changed_settings(ndcg.to_dict(), dataclasses.replace(ndcg, val_ctx_file="c.tsv")) == []
