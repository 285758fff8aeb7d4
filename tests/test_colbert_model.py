"""ColBERT model, tokenization, training and checkpoints on a tiny random BERT with BERT-tiny's vocabulary."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from colbert.checkpoint import load_colbert, read_checkpoint_info, save_colbert
from colbert.data import Triple
from colbert.model import build_colbert
from colbert.options import ColBERTConfig, colbert_config_from_args
from colbert.scoring import maxsim
from colbert.tokenization import ColBERTTokenizer
from colbert.train_options import ColBERTTrainConfig
from colbert.training import ColBERTTrainer, batch_indices, batch_loss, lr_factor
from dpr.configs import BackboneConfig, PrefixConfig, tuning_from_flat
from dpr.data.readers import Passage
from dpr.models.hub import load_tokenizer
from dpr.models.serialization import CheckpointMismatchError
from dpr.options import ConfigError

TOPICS = [
    "paris is the capital of france",
    "the nile flows through egypt",
    "mozart composed the magic flute",
    "everest is the highest mountain",
    "penguins live in antarctica",
    "copper conducts electricity",
    "shakespeare wrote hamlet",
    "tokyo is a large city",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: these tiny models run on one thread


def config(model_dir: str, tuning: str = "prefix", **kw) -> ColBERTConfig:
    flat = dict(pretrained_model_cfg=model_dir, tuning=tuning, pre_seq_len=4, dropout=0.0, prefix_dropout=0.0)
    return ColBERTConfig(
        backbone=BackboneConfig(model_dir, dropout=0.0),
        tuning=tuning_from_flat(flat),
        query_maxlen=12,
        doc_maxlen=32,
        dim=16,
        **kw,
    )


@pytest.fixture(scope="module")
def tok(tiny_bert_dir):
    return load_tokenizer(tiny_bert_dir)


def make(model_dir: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_colbert(config(model_dir, **kw))


def test_query_augmentation_pads_with_mask_tokens_that_are_scored(tiny_bert_dir, tok):
    model = make(tiny_bert_dir).eval()
    ct = ColBERTTokenizer.from_config(tok, model.config)
    q = ct.queries(["capital of france"])
    real = int(q["attention_mask"].sum())
    ids = q["input_ids"][0].tolist()
    assert ids[:2] == [tok.cls_token_id, tok.convert_tokens_to_ids("[unused0]")] and ids[real - 1] == tok.sep_token_id
    assert len(ids) == 12 and ids[real:] == [tok.mask_token_id] * (12 - real)  # [MASK] padding
    assert q["attention_mask"][0, real:].sum() == 0
    d = ct.docs([Passage("paris is the capital of france")])
    with torch.no_grad():
        qv = model.encode_query(q["input_ids"], q["attention_mask"])  # (1, 12, 16)
        dv = model.encode_passage(d["input_ids"], d["attention_mask"])
    full = maxsim(qv, dv, d["score_mask"]).item()
    real_only = maxsim(qv[:, :real], dv, d["score_mask"]).item()
    masked_part = maxsim(qv[:, real:], dv, d["score_mask"]).item()
    assert full == pytest.approx(real_only + masked_part, abs=1e-5)
    assert abs(masked_part) > 1e-3  # the [MASK] vectors contribute to the score
    assert torch.allclose(qv.norm(dim=-1), torch.ones(1, 12), atol=1e-5)


def test_documents_get_markers_and_punctuation_is_not_scored(tiny_bert_dir, tok):
    ct = ColBERTTokenizer(tok, query_maxlen=8, doc_maxlen=32, mask_punctuation=True)
    d = ct.docs([Passage("hello, world.", title="greeting"), Passage("a")])
    ids, score = d["input_ids"][0].tolist(), d["score_mask"][0].tolist()
    assert ids[1] == tok.convert_tokens_to_ids("[unused1]")
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[2:4] == ["greeting", "|"]
    assert [p for p, s in zip(pieces, score, strict=True) if not s] == ["|", ",", "."]
    assert d["attention_mask"][1].tolist() == [1, 1, 1, 1] + [0] * (len(ids) - 4)
    assert not d["score_mask"][1, 4:].any()


def test_a_document_encodes_the_same_alone_and_padded_in_a_batch(tiny_bert_dir, tok):
    model = make(tiny_bert_dir).eval()
    ct = ColBERTTokenizer.from_config(tok, model.config)
    docs = [Passage(TOPICS[0] + " and more words here"), Passage("egypt")]
    batch = ct.docs(docs)
    alone = ct.docs(docs[1:])
    with torch.no_grad():
        together = model.encode_passage(batch["input_ids"], batch["attention_mask"])
        single = model.encode_passage(alone["input_ids"], alone["attention_mask"])
    n = int(alone["attention_mask"].sum())
    assert torch.allclose(together[1, :n], single[0, :n], atol=1e-5)


def triples() -> list[Triple]:
    return [
        Triple(f"question about {t.split()[-1]}", Passage(t), Passage(TOPICS[(i + 3) % len(TOPICS)]))
        for i, t in enumerate(TOPICS)
    ]


def train_cfg(tmp_path, **kw) -> ColBERTTrainConfig:
    values = dict(
        triples="unused.tsv", output_dir=str(tmp_path), bsize=4, accum=2, lr=1e-2, maxsteps=12, save_every=1000, seed=1
    )
    return ColBERTTrainConfig(**{**values, **kw})


def test_training_lowers_the_loss_and_changes_only_prefix_and_projection(tiny_bert_dir, tok, tmp_path):
    model = make(tiny_bert_dir)
    ct = ColBERTTokenizer.from_config(tok, model.config)
    data = triples()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.eval()
    with torch.no_grad():
        loss_before = batch_loss(model, ct, data).item()
    # A random tiny BERT's prefix alone learns slowly: the projection trains at the prefix's rate here, and
    # the rate stays (a linear decay would halve the 12 steps' learning).
    trainer = ColBERTTrainer(
        train_cfg(tmp_path, linear_lr=1e-2, lr_schedule="constant"), model, ct, data, torch.device("cpu")
    )
    trainer.run(progress=False)
    model.eval()
    with torch.no_grad():
        loss_after = batch_loss(model, ct, data).item()
    assert loss_after < loss_before - 0.1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"encoder.prefix.embedding.weight", "linear.weight"} == set(model.tuned_names)
    assert (tmp_path / "colbert-12" / "model.safetensors").exists()


def test_resume_continues_exactly(tiny_bert_dir, tok, tmp_path):
    # A run that stopped after its step-2 checkpoint (a crash) and is started again from it ends where the
    # run that never stopped ends: data order, dropout seeds, optimizer moments and the lr schedule continue.
    data = triples()
    straight = make(tiny_bert_dir)
    ct = ColBERTTokenizer.from_config(tok, straight.config)
    cfg = train_cfg(tmp_path / "a", maxsteps=4, save_every=2)
    ColBERTTrainer(cfg, straight, ct, data, torch.device("cpu")).run(progress=False)
    resumed, info = load_colbert(str(tmp_path / "a" / "colbert-2"))
    state = torch.load(tmp_path / "a" / "colbert-2" / "training_state.pt", weights_only=True)
    cfg_b = dataclasses.replace(cfg, output_dir=str(tmp_path / "b"))
    ColBERTTrainer(cfg_b, resumed, ct, data, torch.device("cpu"), info.step, state).run(progress=False)
    assert info.step == 2
    for name, param in straight.named_parameters():
        assert torch.allclose(param, dict(resumed.named_parameters())[name], atol=1e-6), name


def test_batch_indices_cover_every_triple_once_per_epoch():
    stream = [i for step in range(5) for i in batch_indices(step, 3, 5, seed=0)]  # 15 = 3 epochs of 5
    for epoch in range(3):
        assert sorted(stream[epoch * 5 : (epoch + 1) * 5]) == list(range(5))
    assert batch_indices(2, 3, 5, seed=0) == stream[6:9]


def test_checkpoint_round_trip_reproduces_vectors_and_config(tiny_bert_dir, tok, tmp_path):
    model = make(tiny_bert_dir, seed=5, similarity="l2", mask_punctuation=True).eval()
    path = save_colbert(str(tmp_path / "colbert-7"), model, step=7)
    stored = json.loads((tmp_path / "colbert-7" / "config.json").read_text())
    assert (
        stored["colbert"]["tuning"]["method"] == "prefix"
        and stored["colbert"]["tuning"]["pre_seq_len"] == 4
        and stored["colbert"]["dim"] == 16
    )
    loaded, info = load_colbert(path)
    loaded.eval()
    assert info.step == 7 and loaded.config == model.config
    ct = ColBERTTokenizer.from_config(tok, model.config)
    q, d = ct.queries(TOPICS[:2]), ct.docs([Passage(t) for t in TOPICS[2:5]])
    with torch.no_grad():
        assert torch.equal(
            model.encode_query(q["input_ids"], q["attention_mask"]),
            loaded.encode_query(q["input_ids"], q["attention_mask"]),
        )
        assert torch.equal(
            model.encode_passage(d["input_ids"], d["attention_mask"]),
            loaded.encode_passage(d["input_ids"], d["attention_mask"]),
        )


def _flags(**given) -> argparse.Namespace:
    names = (
        "pretrained_model_cfg",
        "do_lower_case",
        "tuning",
        "pre_seq_len",
        "prefix_mlp",
        "prefix_hidden_size",
        "prefix_dropout",
        "prompt_encoder",
        "prompt_init_text",
        "adapter_size",
        "query_maxlen",
        "doc_maxlen",
        "dim",
        "similarity",
        "mask_punctuation",
    )
    return argparse.Namespace(**{name: given.get(name) for name in names})


def test_flags_that_contradict_a_checkpoint_name_both_values(tiny_bert_dir, tmp_path):
    model = make(tiny_bert_dir)
    path = save_colbert(str(tmp_path / "colbert-0"), model)
    with pytest.raises(ConfigError, match=r"--pre_seq_len is 8 .*pre_seq_len=4"):
        load_colbert(path, {"pre_seq_len": 8})
    with pytest.raises(ConfigError, match=r"--doc_maxlen is 180 .*doc_maxlen=32"):
        load_colbert(path, {"doc_maxlen": 180})
    with pytest.raises(ConfigError, match=r"tuning mode .*'finetune'.*'prefix'"):
        load_colbert(path, {"tuning": "finetune"})
    loaded, _ = load_colbert(path, {"dim": 16, "pre_seq_len": 4})  # agreeing flags are fine
    assert loaded.config == model.config
    assert read_checkpoint_info(path).config.backbone.sequence_length == 32


def test_weights_that_do_not_fit_are_refused(tiny_bert_dir, tmp_path):
    path = save_colbert(str(tmp_path / "colbert-0"), make(tiny_bert_dir))
    cfg_file = tmp_path / "colbert-0" / "config.json"
    stored = json.loads(cfg_file.read_text())
    stored["colbert"]["dim"] = 8  # config edited by hand
    cfg_file.write_text(json.dumps(stored))
    with pytest.raises(CheckpointMismatchError, match="linear.weight"):
        load_colbert(path)


def test_config_defaults_and_validation(tiny_bert_dir):
    cfg = colbert_config_from_args(_flags(pretrained_model_cfg=tiny_bert_dir, tuning="prefix", doc_maxlen=64))
    assert (cfg.query_maxlen, cfg.doc_maxlen, cfg.dim, cfg.similarity) == (32, 64, 128, "cosine")
    assert cfg.backbone.sequence_length == 64 and cfg.tuning == PrefixConfig()
    assert ColBERTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="--similarity"):
        dataclasses.replace(cfg, similarity="dot")
    with pytest.raises(ConfigError, match="divisible"):
        ColBERTTrainConfig(triples="t.tsv", bsize=6, accum=4)
    with pytest.raises(ConfigError, match="exactly one"):
        ColBERTTrainConfig()


def test_linear_lr_defaults_to_lr_capped_at_1e_4_and_is_stored_resolved():
    assert ColBERTTrainConfig(triples="t.tsv", lr=1e-2).linear_lr == 1e-4  # prefix tuning: capped
    assert ColBERTTrainConfig(triples="t.tsv", lr=3e-6).linear_lr == 3e-6  # fine-tuning: one rate
    assert ColBERTTrainConfig(triples="t.tsv", lr=1e-2, linear_lr=5e-3).to_dict()["linear_lr"] == 5e-3
    assert ColBERTTrainConfig(triples="t.tsv", lr=1e-2).to_dict()["linear_lr"] == 1e-4
    with pytest.raises(ConfigError, match="--linear_lr"):
        ColBERTTrainConfig(triples="t.tsv", linear_lr=0.0)


def test_one_step_moves_the_projection_by_linear_lr_and_the_prefix_by_lr(tiny_bert_dir, tok, tmp_path):
    model = make(tiny_bert_dir)
    ct = ColBERTTokenizer.from_config(tok, model.config)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = train_cfg(tmp_path, lr=1e-2, linear_lr=1e-4, accum=1)
    trainer = ColBERTTrainer(cfg, model, ct, triples(), torch.device("cpu"))
    trainer.train_step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters() if p.requires_grad}
    # Adam's first step moves every weight with a gradient by the learning rate (m / sqrt(v) = +-1).
    assert moved["linear.weight"] == pytest.approx(1e-4, rel=1e-3)
    assert moved["encoder.prefix.embedding.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [1e-2, 1e-4]


def test_an_optimizer_state_with_one_group_continues_with_the_moments_of_each_parameter(tiny_bert_dir, tok, tmp_path):
    model = make(tiny_bert_dir)
    ct = ColBERTTokenizer.from_config(tok, model.config)
    trainer = ColBERTTrainer(
        train_cfg(tmp_path, accum=1, lr_schedule="constant"), model, ct, triples(), torch.device("cpu")
    )
    trainer.train_step()
    # What a run saved before --linear_lr: the same moments, one group over model.parameters() order.
    old = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for param in (p for p in model.parameters() if p.requires_grad):
        old.state[param] = {k: v.clone() for k, v in trainer.optimizer.state[param].items()}
    state = {"optimizer": old.state_dict(), "scheduler": trainer.scheduler.state_dict(), "scaler": None}
    state["scheduler"]["base_lrs"] = [1e-2]
    resumed = ColBERTTrainer(
        train_cfg(tmp_path, accum=1, lr_schedule="constant"), model, ct, triples(), torch.device("cpu"), 1, state
    )
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [1e-2, 1e-4]
    for param in (p for p in model.parameters() if p.requires_grad):
        assert torch.equal(resumed.optimizer.state[param]["exp_avg"], trainer.optimizer.state[param]["exp_avg"])
    resumed.train_step()  # the moved state steps


def test_the_learning_rate_warms_up_then_decays_linearly_to_zero_or_stays_constant():
    linear = lr_factor(warmup=2, maxsteps=6, schedule="linear")
    assert [linear(s) for s in range(7)] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25, 0.0])
    constant = lr_factor(warmup=2, maxsteps=6, schedule="constant")
    assert [constant(s) for s in range(7)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1])
    assert lr_factor(0, 4, "linear")(0) == 1.0  # no warmup: the first step takes the full rate
    with pytest.raises(ConfigError, match="--lr_schedule"):
        ColBERTTrainConfig(triples="t.tsv", lr_schedule="cosine")


def test_a_resumed_run_continues_the_decay_where_it_stopped(tiny_bert_dir, tok, tmp_path):
    model = make(tiny_bert_dir)
    ct = ColBERTTokenizer.from_config(tok, model.config)
    cfg = train_cfg(tmp_path, maxsteps=4, lr_schedule="linear")
    trainer = ColBERTTrainer(cfg, model, ct, triples(), torch.device("cpu"))
    trainer.train_step()
    state = {"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(), "scaler": None}
    resumed = ColBERTTrainer(cfg, model, ct, triples(), torch.device("cpu"), 1, state)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([cfg.lr * 3 / 4, cfg.linear_lr * 3 / 4])
