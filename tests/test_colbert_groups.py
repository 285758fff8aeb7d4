"""Rows with several negatives (colbert.groups) and their loss (colbert.losses.group_loss)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from colbert.data import Triple
from colbert.groups import Group, groups_from_dpr, pools_from_dpr
from colbert.losses import group_loss
from colbert.model import build_colbert
from colbert.options import ColBERTConfig
from colbert.scoring import maxsim_all
from colbert.tokenization import ColBERTTokenizer
from colbert.train_options import DEFAULT_POOL, ColBERTTrainConfig
from colbert.training import ColBERTTrainer, batch_loss
from dpr.configs import BackboneConfig, tuning_from_flat
from dpr.data.readers import Passage, read_dpr_files
from dpr.models.hub import load_tokenizer
from dpr.options import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _nll(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(s) for s in row))


def test_group_loss_by_hand():
    scores = torch.tensor([[3.0, 1.0, 0.0, 2.5, -1.0], [0.5, 4.0, 1.0, 2.0, 1.5]])  # (2, 5)
    sizes = torch.tensor([3, 2])  # query 0: columns 0-2 (positive 0); query 1: columns 3-4 (positive 3)
    own = (_nll([3.0, 1.0, 0.0], 0) + _nll([2.0, 1.5], 0)) / 2
    every = (_nll(scores[0].tolist(), 0) + _nll(scores[1].tolist(), 3)) / 2
    assert group_loss(scores, sizes).item() == pytest.approx(own, rel=1e-6)
    assert group_loss(scores, sizes, in_batch_negatives=True).item() == pytest.approx(every, rel=1e-6)
    outside = scores.clone()
    outside[0, 3:] = float("-inf")
    outside[1, :3] = 99.0  # not query 1's candidates: ignored
    assert group_loss(outside, sizes).item() == pytest.approx(own, rel=1e-6)


def test_group_loss_refuses_sizes_that_do_not_fit():
    with pytest.raises(ValueError, match="adding up to C"):
        group_loss(torch.zeros(2, 5), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="a positive and a negative"):
        group_loss(torch.zeros(2, 5), torch.tensor([4, 1]))


def test_groups_from_dpr_keep_each_questions_negatives_in_one_row(tiny_dpr_files):
    samples = read_dpr_files([tiny_dpr_files[0]])
    groups, skipped = groups_from_dpr(samples, 2)
    assert skipped == 0 and len(groups) == len(samples) == 24
    first = groups[0]
    assert first.query == samples[0].question and first.positive == samples[0].positive_passages[0]
    assert first.negatives == tuple(samples[0].hard_negative_passages[:2])
    assert {len(g.negatives) for g in groups_from_dpr(samples, 10)[0]} == {3}  # all there are
    with pytest.raises(ConfigError, match="--group_negatives .* --dpr_train_file"):
        ColBERTTrainConfig(triples="t.tsv", group_negatives=True)


WORDS = ["river", "castle", "violin", "glacier", "copper", "tiger", "harbor", "meteor", "orchid", "saddle"]


def _model(model_dir: str, tuning: str = "prefix"):
    torch.manual_seed(0)
    flat = dict(tuning=tuning, pre_seq_len=4, prefix_dropout=0.0)
    config = ColBERTConfig(
        backbone=BackboneConfig(model_dir, dropout=0.0, attention_dropout=0.0),
        tuning=tuning_from_flat(flat),
        query_maxlen=8,
        doc_maxlen=16,
        dim=16,
    )
    model = build_colbert(config)
    return model, ColBERTTokenizer.from_config(load_tokenizer(model_dir), config)


def _groups(count: int, negatives: int) -> list[Group]:
    def doc(i: int) -> Passage:
        return Passage(f"{WORDS[i % 10]} {WORDS[(3 * i + 1) % 10]} {WORDS[(7 * i + 2) % 10]} {i}")

    return [
        Group(f"query {WORDS[q]}", doc(q), tuple(doc(10 + q * negatives + k) for k in range(negatives)))
        for q in range(count)
    ]


@pytest.mark.parametrize("in_batch", [False, True])
def test_groups_of_one_negative_give_the_triples_loss(tiny_bert_dir, in_batch):
    model, tok = _model(tiny_bert_dir)
    model.eval()
    groups = _groups(3, 1)
    triples = [Triple(g.query, g.positive, g.negatives[0]) for g in groups]
    with torch.no_grad():
        as_groups = batch_loss(model, tok, groups, in_batch_negatives=in_batch)
        as_triples = batch_loss(model, tok, triples, in_batch_negatives=in_batch)
    assert as_groups.item() == pytest.approx(as_triples.item(), rel=1e-5)


def test_the_own_group_loss_equals_the_dense_scores_masked(tiny_bert_dir):
    model, tok = _model(tiny_bert_dir)
    model.eval()
    groups = _groups(3, 2)
    docs = tok.docs([p for g in groups for p in g.passages])
    queries = tok.queries([g.query for g in groups])
    with torch.no_grad():
        loss = batch_loss(model, tok, groups)
        q, d = model(queries["input_ids"], queries["attention_mask"], docs["input_ids"], docs["attention_mask"])
        dense = group_loss(maxsim_all(q, d, docs["score_mask"]), torch.tensor([3, 3, 3]))
    assert loss.item() == pytest.approx(dense.item(), rel=1e-5)


def test_a_tiny_model_learns_to_rank_each_positive_first(tiny_bert_dir, tmp_path):
    # Fine-tuned: a random tiny BERT's prefix alone barely moves the loss; this test is about the loss's
    # signs and masks (a flipped sign ranks the positives last), not about prefix tuning.
    model, tok = _model(tiny_bert_dir, "finetune")
    groups = _groups(4, 3)
    cfg = ColBERTTrainConfig(
        dpr_train_file=("unused.json",),
        group_negatives=True,
        in_batch_negatives=True,
        output_dir=str(tmp_path),
        bsize=4,
        lr=1e-3,
        lr_schedule="constant",
        maxsteps=50,
        save_every=1000,
        seed=0,
    )
    docs = tok.docs([p for g in groups for p in g.passages])  # 16 documents, query i's positive at 4 * i
    queries = tok.queries([g.query for g in groups])

    def best() -> list[int]:
        model.eval()
        with torch.no_grad():
            q, d = model(queries["input_ids"], queries["attention_mask"], docs["input_ids"], docs["attention_mask"])
            return maxsim_all(q, d, docs["score_mask"]).argmax(dim=1).tolist()  # (4, 16) -> (4,)

    assert best() != [0, 4, 8, 12]  # untrained: not yet
    trainer = ColBERTTrainer(cfg, model, tok, groups, torch.device("cpu"))
    for _ in range(cfg.maxsteps):
        trainer.train_step()
    assert best() == [0, 4, 8, 12]


def test_cli_trains_on_groups_of_dpr_questions(tiny_bert_dir, tiny_dpr_files, tmp_path):
    from colbert import train as colbert_train

    argv = [
        *("--pretrained_model_cfg", tiny_bert_dir, "--prefix", "--pre_seq_len", "4", "--dim", "16"),
        *("--query_maxlen", "12", "--doc_maxlen", "32", "--no_progress", "--output_dir", str(tmp_path / "run")),
        *("--dpr_train_file", tiny_dpr_files[0], "--group_negatives", "--hard_negatives", "3"),
        *("--bsize", "4", "--maxsteps", "2", "--in_batch_negatives"),
    ]
    assert colbert_train.main(argv) == 0
    stored = json.loads((tmp_path / "run" / "colbert-2" / "config.json").read_text())["training"]
    assert stored["group_negatives"] and stored["hard_negatives"] == 3 and stored["linear_init"] == "pca"


def test_pools_draw_their_negatives_afresh_each_step_without_replacement(tiny_dpr_files):
    samples = read_dpr_files([tiny_dpr_files[0]])  # 3 hard negatives a question
    pools, skipped = pools_from_dpr(samples, pool_size=3, hard_negatives=2, group=True)
    assert skipped == 0 and len(pools) == 24 and pools[0].negatives == tuple(samples[0].hard_negative_passages)
    draws = [pools[0].draw(np.random.default_rng([0, step]), 2, group=True) for step in range(20)]
    assert all(isinstance(g, Group) and len(set(g.negatives)) == 2 for g in draws)
    assert all(set(g.negatives) <= set(pools[0].negatives) for g in draws)
    assert len({g.negatives for g in draws}) > 1  # not the same pair every step
    assert {n for g in draws for n in g.negatives} == set(pools[0].negatives)  # every negative gets its turn
    again = pools[0].draw(np.random.default_rng([0, 7]), 2, group=True)
    assert again == draws[7]  # the same seed draws the same row: a resumed run trains on the same negatives
    assert len(pools[0].draw(np.random.default_rng(0), 10, group=True).negatives) == 3  # at most the pool
    triple = pools[0].draw(np.random.default_rng(0), 2, group=False)
    assert isinstance(triple, Triple) and triple.negative in pools[0].negatives
    # triples mode: one pool row per --hard_negatives, as the fixed triples are one per negative
    assert len(pools_from_dpr(samples, 3, 2, group=False)[0]) == 48
    assert len(pools_from_dpr(samples, 1, 1, group=True)[0][0].negatives) == 1  # pool of the first one


def test_the_trainer_draws_pool_rows_by_seed_step_and_position(tiny_bert_dir, tiny_dpr_files, tmp_path):
    model, tok = _model(tiny_bert_dir)
    pools, _ = pools_from_dpr(read_dpr_files([tiny_dpr_files[0]]), 3, 2, group=True)
    cfg = ColBERTTrainConfig(
        dpr_train_file=("unused.json",),
        negative_pool=3,
        hard_negatives=2,
        group_negatives=True,
        output_dir=str(tmp_path),
        bsize=4,
        maxsteps=3,
        seed=5,
    )
    trainer = ColBERTTrainer(cfg, model, tok, pools, torch.device("cpu"))
    first = trainer.micro_batches()
    assert all(isinstance(row, Group) and len(row.negatives) == 2 for batch in first for row in batch)
    assert trainer.micro_batches() == first  # deterministic for a step
    trainer.step = 1
    assert trainer.micro_batches() != first
    with pytest.raises(ConfigError, match="--negative_pool .* --dpr_train_file"):
        ColBERTTrainConfig(triples="t.tsv", negative_pool=5)
    assert ColBERTTrainConfig(dpr_train_file=("x.json",)).to_dict()["negative_pool"] == DEFAULT_POOL  # resolved
    assert ColBERTTrainConfig(triples="t.tsv").negative_pool == 0  # a triples file's rows are fixed
    with pytest.raises(ConfigError, match="--negative_pool must be >= 0"):
        ColBERTTrainConfig(dpr_train_file=("x.json",), negative_pool=-1)
