"""Retrieval validation during ColBERT training (colbert.validation) and the best checkpoint it keeps."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from colbert import train as colbert_train
from colbert.checkpoint import prune_checkpoints, read_checkpoint_info, save_colbert
from colbert.model import build_colbert
from colbert.options import ColBERTConfig
from colbert.scoring import maxsim_all
from colbert.tokenization import ColBERTTokenizer
from colbert.train_options import ColBERTTrainConfig
from colbert.validation import read_dev, validate_retrieval
from dpr.configs import BackboneConfig, PrefixConfig
from dpr.data.readers import read_dpr_files
from dpr.models.hub import load_tokenizer
from dpr.options import ConfigError
from dpr.training.run_dir import BestRecord, update_best

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _corpus(tmp_path, dev_file: str) -> str:
    """A DPR passages TSV of every passage of the dev questions (positives, hard and random negatives)."""
    seen: dict[str, tuple[str, str]] = {}
    for sample in read_dpr_files([dev_file]):
        for p in (*sample.positive_passages, *sample.hard_negative_passages, *sample.negative_passages):
            seen[p.passage_id] = (p.text, p.title)
    path = tmp_path / "dev-passages.tsv"
    path.write_text("id\ttext\ttitle\n" + "".join(f"{pid}\t{t}\t{title}\n" for pid, (t, title) in seen.items()))
    return str(path)


def test_validation_ndcg_equals_a_hand_computed_ranking(tiny_bert_dir, tiny_dpr_files, tmp_path):
    torch.manual_seed(0)
    config = ColBERTConfig(
        backbone=BackboneConfig(tiny_bert_dir), tuning=PrefixConfig(pre_seq_len=4), doc_maxlen=32, dim=16
    )
    model = build_colbert(config).eval()
    tok = ColBERTTokenizer.from_config(load_tokenizer(tiny_bert_dir), config)
    dev = read_dev([tiny_dpr_files[1]], _corpus(tmp_path, tiny_dpr_files[1]))
    result = validate_retrieval(model, tok, dev, "ndcg@10")
    # By hand: one relevant passage per question, nDCG@10 = 1 / log2(1 + rank) within the top 10.
    q_tokens, d_tokens = tok.queries(list(dev.questions)), tok.docs(list(dev.passages))
    with torch.no_grad():
        q = model.encode_query(q_tokens["input_ids"], q_tokens["attention_mask"])
        d = model.encode_passage(d_tokens["input_ids"], d_tokens["attention_mask"]).half().float()  # stored fp16
        scores = maxsim_all(q, d, d_tokens["score_mask"])  # (Q, N)
    gains = []
    for row, qid in enumerate(dev.question_ids):
        (relevant,) = dev.qrels[qid]
        mine = scores[row, dev.ids.index(relevant)]
        tied_before = [pid < relevant for pid in dev.ids]  # ties go to the smaller pid
        rank = 1 + int(((scores[row] > mine) | ((scores[row] == mine) & torch.tensor(tied_before))).sum())
        gains.append(1 / math.log2(1 + rank) if rank <= 10 else 0.0)
    assert result.metric == "ndcg@10" and result.greater_is_better
    assert result.value == pytest.approx(sum(gains) / len(gains), abs=1e-4)
    assert 0 < result.value < 1 and result.details["questions"] == 8


def test_the_best_checkpoint_is_never_pruned(tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model = build_colbert(
        ColBERTConfig(backbone=BackboneConfig(tiny_bert_dir), tuning=PrefixConfig(pre_seq_len=4), doc_maxlen=32)
    )
    paths = [save_colbert(str(tmp_path / f"colbert-{step}"), model, step=step) for step in (1, 2, 3, 4)]
    update_best(str(tmp_path), BestRecord(paths[0], "ndcg@10", 0.5, 0, 1, 1))
    deleted = prune_checkpoints(str(tmp_path), keep=1)
    assert sorted(os.path.basename(p) for p in deleted) == ["colbert-2", "colbert-3"]
    assert os.path.isdir(paths[0]) and os.path.isdir(paths[3])


def test_validation_flags_come_together():
    with pytest.raises(ConfigError, match="--val_every .* give both"):
        ColBERTTrainConfig(triples="t.tsv", val_every=10, dev_file=("dev.json",))
    with pytest.raises(ConfigError, match="--dev_file is read for validation only"):
        ColBERTTrainConfig(triples="t.tsv", dev_file=("dev.json",), val_ctx_file="c.tsv")
    with pytest.raises(ConfigError, match="--val_metric 'nll'"):
        ColBERTTrainConfig(triples="t.tsv", val_metric="nll")


def test_cli_validates_logs_every_value_and_records_the_best(tiny_bert_dir, tiny_dpr_files, tmp_path):
    train, dev = tiny_dpr_files
    out = tmp_path / "run"
    argv = [
        *("--pretrained_model_cfg", tiny_bert_dir, "--prefix", "--pre_seq_len", "4", "--dim", "16"),
        *("--query_maxlen", "12", "--doc_maxlen", "32", "--no_progress", "--output_dir", str(out)),
        *("--dpr_train_file", train, "--bsize", "4", "--maxsteps", "4", "--lr", "1e-2", "--keep_checkpoints", "1"),
        *("--dev_file", dev, "--val_ctx_file", _corpus(tmp_path, dev), "--val_every", "2", "--val_metric", "mrr@10"),
    ]
    assert colbert_train.main(argv) == 0
    log = [json.loads(line) for line in (out / "validation_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log] == [0, 2, 4] and {r["metric"] for r in log} == {"mrr@10"}
    best = json.loads((out / "best_checkpoint.json").read_text())
    values = {f"colbert-{r['global_step']}": r["value"] for r in log}
    assert best["value"] == max(values.values()) and values[best["path"]] == best["value"]
    kept = sorted(name for name in os.listdir(out) if name.startswith("colbert-"))
    assert kept == sorted({best["path"], "colbert-4"})  # the latest and the best
    # The run folder stands for its best checkpoint wherever a checkpoint is read (index, retrieve).
    assert read_checkpoint_info(str(out)).path == str(out / best["path"])
    (out / "best_checkpoint.json").unlink()
    assert read_checkpoint_info(str(out)).path == str(out / "colbert-4")  # no record: the latest


def test_a_val_pool_keeps_only_the_dev_positives_and_first_hard_negatives(tiny_dpr_files, tmp_path):
    corpus = _corpus(tmp_path, tiny_dpr_files[1])
    whole, pooled = read_dev([tiny_dpr_files[1]], corpus), read_dev([tiny_dpr_files[1]], corpus, pool=1)
    samples = read_dpr_files([tiny_dpr_files[1]])
    expected = {p.passage_id for s in samples for p in (*s.positive_passages, *s.hard_negative_passages[:1])}
    assert set(pooled.ids) == expected and len(pooled.ids) < len(whole.ids)
    assert [whole.passages[whole.ids.index(pid)] for pid in pooled.ids] == list(pooled.passages)  # aligned
    assert (pooled.qrels, pooled.questions) == (whole.qrels, whole.questions)
    with pytest.raises(ConfigError, match="--val_pool"):
        ColBERTTrainConfig(dpr_train_file=("x.json",), val_pool=-1)


def test_the_logged_rate_counts_training_steps_not_validations(tiny_bert_dir, tiny_dpr_files, tmp_path, monkeypatch):
    """rows/s (train_log.jsonl samples_per_s) over the time spent in train_step: a fake clock gives each step one
    second and each validation a hundred, so the rate is bsize rows/s exactly when validations are left out."""
    from colbert import training

    clock = [0.0]
    monkeypatch.setattr(training, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    step, validate = training.ColBERTTrainer.train_step, training.ColBERTTrainer.validate_and_save

    def timed(seconds, method):
        def run(self):
            clock[0] += seconds
            return method(self)

        return run

    monkeypatch.setattr(training.ColBERTTrainer, "train_step", timed(1.0, step))
    monkeypatch.setattr(training.ColBERTTrainer, "validate_and_save", timed(100.0, validate))
    train, dev = tiny_dpr_files
    out = tmp_path / "run"
    argv = [
        *("--pretrained_model_cfg", tiny_bert_dir, "--prefix", "--pre_seq_len", "4", "--dim", "16"),
        *("--query_maxlen", "12", "--doc_maxlen", "32", "--no_progress", "--output_dir", str(out)),
        *("--dpr_train_file", train, "--bsize", "4", "--maxsteps", "4", "--lr", "1e-2", "--log_every", "1"),
        *("--dev_file", dev, "--val_ctx_file", _corpus(tmp_path, dev), "--val_every", "2"),
    ]
    assert colbert_train.main(argv) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["samples_per_s"] for r in log] == [4.0] * 4  # with validations counted: 4, 4, 4 / 103 * 3, ...
