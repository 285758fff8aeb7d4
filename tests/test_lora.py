"""LoRA: only its deltas train, a new one is the identity, sides, checkpoints, tasks, merging, flags, ColBERT."""

from __future__ import annotations

import argparse
import copy
import os

import numpy as np
import pytest
import torch
from helpers import tiny_bert
from safetensors.torch import load_file
from test_tasks import PASSAGES, QUESTIONS, make_checkpoint

from colbert import index as colbert_index
from colbert import retrieve as colbert_retrieve
from colbert import train as colbert_train
from colbert.checkpoint import load_colbert
from colbert.model import build_colbert_from_backbone, merge_lora
from colbert.options import ColBERTConfig
from dpr.configs import (
    ARCHITECTURE_FIELDS,
    BiEncoderConfig,
    ConfigError,
    LoraConfig,
    apply_overrides,
    check_agrees,
    tuning_from_dict,
)
from dpr.device import quantize_int8
from dpr.encoding import encode_texts
from dpr.identity import EncoderIdentity
from dpr.models.biencoder import build_biencoder, build_biencoder_from_backbone
from dpr.models.checkpoint_format import load_biencoder
from dpr.models.encoder import parameter_counts
from dpr.models.hub import load_tokenizer
from dpr.models.lora import LoraError, lora_router, merged_backbone
from dpr.options import add_encoder_params, add_tuning_params, encoder_config_from_args
from dpr.retrieval import InferenceModelConfig, TaskEncoder, load_inference_model
from dpr.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(seed: int = 0, **kw) -> torch.nn.Module:
    """A LoRA bi-encoder (rank 4) on a tiny random BERT with dropout, fresh from the builder."""
    cfg = BiEncoderConfig.from_flat(
        pretrained_model_cfg="tiny", tuning="lora", lora_r=4, pooling="cls", sequence_length=32, **kw
    )
    return build_biencoder_from_backbone(cfg, tiny_bert(seed, hidden_dropout_prob=0.1))


def randomise(model: torch.nn.Module, side: str = "", seed: int = 1) -> None:
    """Random LoRA deltas (B is zero when new) on the parameters whose names start with ``side``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora." in name and name.startswith(side):
                param.normal_(std=0.3)


def batch(lengths=(7, 3), seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, 99, (n,), generator=gen)
        mask[row, :n] = 1
    return ids, mask


def plain_cls(backbone, ids, mask) -> torch.Tensor:
    return backbone(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]  # (B, H)


def test_a_new_lora_is_the_identity_and_targets_every_named_linear_layer():
    model = make().eval()
    model.apply(lambda module: None)  # nn.Module.apply reaches every submodule (no LoRA method shadows it)
    ids, mask = batch()
    with torch.no_grad():
        plain = plain_cls(model.backbone, ids, mask)
        assert torch.equal(model.encode_query(ids, mask), plain)
        assert torch.equal(model.encode_passage(ids, mask), plain)
    # query, key, value and the three "dense" layers (attention output, intermediate, output) of both layers
    paths = model.question_encoder.lora.paths
    assert len(paths) == 2 * 6 and {p.rsplit(".", 1)[-1] for p in paths} == {"query", "key", "value", "dense"}
    assert "encoder.layer.1.intermediate.dense" in paths and "encoder.layer.0.attention.output.dense" in paths


def test_only_lora_parameters_get_gradients_and_one_step_changes_the_vectors():
    model = make().train()
    backbone_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    tuned = set(model.tuned_names)
    assert tuned and all(".lora.deltas." in name for name in tuned)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = batch()
    with torch.no_grad():
        before = model.eval().encode_query(ids, mask)
    model.train()
    torch.manual_seed(0)
    q, c = model(ids, mask, None, ids, mask, None)
    (q @ c.T).logsumexp(1).sum().backward()
    for name, param in model.named_parameters():
        if name in tuned:
            assert param.grad is not None, name
            if name.endswith(".B.weight"):  # A's first gradient is zero: it flows through B = 0
                assert param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    optim.step()
    for name, param in model.backbone.named_parameters():
        assert torch.equal(param, backbone_before[name]), name
    with torch.no_grad():
        after = model.eval().encode_query(ids, mask)
    assert (after - before).abs().max() > 1e-4


def test_sides_own_their_deltas_on_one_shared_backbone():
    model = make().eval()
    q, c = model.question_encoder, model.ctx_encoder
    assert q.backbone is c.backbone and q.lora is not c.lora
    backbone_size = sum(p.numel() for p in model.backbone.parameters())
    tuned_size = sum(p.numel() for n, p in model.named_parameters() if n in set(model.tuned_names))
    # rank 4 on 2 layers x (q, k, v, attention output: 32 -> 32; intermediate 32 -> 37; output 37 -> 32), 2 sides
    assert tuned_size == 2 * 2 * 4 * (4 * (32 + 32) + (32 + 37) + (37 + 32))
    assert parameter_counts(model) == (tuned_size, backbone_size + tuned_size)
    randomise(model, "question_encoder")
    ids, mask = batch()
    with torch.no_grad():
        plain = plain_cls(model.backbone, ids, mask)
        assert (model.encode_query(ids, mask) - plain).abs().max() > 1e-3
        assert torch.equal(model.encode_passage(ids, mask), plain)  # the passage deltas are still zero
        assert torch.equal(plain_cls(model.backbone, ids, mask), plain)  # nothing stays active after a call


def test_tune_side_question_keeps_the_base_passage_encoder_and_share_encoder_is_refused():
    model = make(tune_side="question").eval()
    assert model.ctx_encoder.lora is None and model.ctx_encoder.backbone is model.backbone
    assert all(name.startswith("question_encoder.lora.") for name in model.tuned_names)
    randomise(model)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(model.encode_passage(ids, mask), plain_cls(model.backbone, ids, mask))
        assert (model.encode_query(ids, mask) - model.encode_passage(ids, mask)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="--share_encoder applies to fine-tuning and --bitfit, not --lora"):
        BiEncoderConfig.from_flat(tuning="lora", share_encoder=True)


def test_save_load_gives_identical_vectors_and_stores_only_the_deltas(tmp_path, tiny_bert_dir):
    config = BiEncoderConfig.from_flat(
        pretrained_model_cfg=tiny_bert_dir, tuning="lora", lora_target=("query", "value"), sequence_length=32
    )
    model = build_biencoder(config)
    randomise(model)
    path = save_checkpoint(str(tmp_path / "ckpt"), model)
    loaded, info = load_biencoder(path)
    assert info.encoder.tuning == LoraConfig(lora_target=("query", "value"))
    stored = load_file(os.path.join(path, "model.safetensors"))
    assert set(stored) == set(loaded.tuned_names) and len(stored) == 2 * 2 * 2 * 2  # sides, layers, q/v, A/B
    assert not any(".backbone." in name for name in stored)
    tokenizer = load_tokenizer(tiny_bert_dir)
    model.eval(), loaded.eval()
    for items, side in ((QUESTIONS, "question"), (PASSAGES, "passage")):
        a = encode_texts(model, tokenizer, items, side, max_length=32, batch_size=2)
        b = encode_texts(loaded, tokenizer, items, side, max_length=32, batch_size=2)
        assert np.abs(a).max() > 0
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="--lora_r is 4 but .* was trained with lora_r=8"):
        load_biencoder(path, {"lora_r": 4})


def test_two_lora_tasks_share_the_backbone_and_keep_their_own_vectors(tmp_path, tiny_bert_dir):
    checkpoints = {
        "a": make_checkpoint(str(tmp_path / "a"), tiny_bert_dir, "lora", 1),
        "b": make_checkpoint(str(tmp_path / "b"), tiny_bert_dir, "lora", 2, lora_r=2, lora_target=("value",)),
        "p": make_checkpoint(str(tmp_path / "p"), tiny_bert_dir, "prefix", 3),
    }
    encoder = TaskEncoder.from_checkpoints(checkpoints)
    tokenizer = load_tokenizer(tiny_bert_dir)
    library = encoder.library
    for task in checkpoints:
        model = library.model(task)
        assert model.question_encoder.backbone is library.backbone and model.ctx_encoder.backbone is library.backbone
    for _ in range(2):  # interleaved: a switch leaves nothing behind
        for task, path in checkpoints.items():
            alone, _ = load_biencoder(path)
            alone.eval()
            for items, side in ((QUESTIONS, "question"), (PASSAGES, "passage")):
                expected = encode_texts(alone, tokenizer, items, side, max_length=32, batch_size=2)
                found = encoder.encode(items, task=task, side=side, batch_size=2)
                np.testing.assert_allclose(found, expected, atol=1e-6, rtol=0)
    vectors = [encoder.encode(QUESTIONS, task=t) for t in checkpoints]
    assert all(np.abs(x - y).max() > 1e-3 for i, x in enumerate(vectors) for y in vectors[i + 1 :])


def test_merged_backbone_equals_the_hooked_model_and_leaves_the_shared_one_alone():
    model = make().eval()
    randomise(model)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    ids, mask = batch(lengths=(9, 4, 6))
    merged = merged_backbone(model.question_encoder)
    assert merged is not model.backbone and not any(k.startswith("_dpr_") for k in merged.__dict__)
    assert all(not m._forward_hooks for m in merged.modules())  # a plain BertModel: no hooks copied over
    with torch.no_grad():
        hooked = model.question_encoder.token_states(ids, mask)  # (3, T, 32)
        plain = merged(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(plain[mask.bool()], hooked[mask.bool()], atol=1e-5, rtol=0)
        assert (plain - model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max() > 1e-3
    for name, param in model.backbone.named_parameters():
        assert torch.equal(param, before[name]), name
    with pytest.raises(LoraError, match="merged_backbone needs a --lora encoder; this one is finetune"):
        merged_backbone(make(tune_side="question").ctx_encoder)


def test_merge_lora_for_inference_gives_the_same_vectors_and_identity(tmp_path, tiny_bert_dir):
    path = make_checkpoint(str(tmp_path / "ckpt"), tiny_bert_dir, "lora", 7, projection_dim=8)
    hooked = load_inference_model(InferenceModelConfig(model_file=path, precision="fp32"))
    merged = load_inference_model(InferenceModelConfig(model_file=path, precision="fp32", merge_lora=True))
    assert merged.model.question_encoder.lora is None and merged.model.question_encoder.projection is not None
    assert merged.model.question_encoder.backbone is not merged.model.ctx_encoder.backbone
    assert merged.identity() == hooked.identity()  # indexes made by either are searched by the other
    for items, side in ((QUESTIONS, "question"), (PASSAGES, "passage")):
        a = encode_texts(hooked.model, hooked.tokenizer, items, side, max_length=32, batch_size=2)
        b = encode_texts(merged.model, merged.tokenizer, items, side, max_length=32, batch_size=2)
        assert a.shape == (3, 8)
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="--merge_lora folds the LoRA deltas of one --model_file"):
        InferenceModelConfig(merge_lora=True)
    prefix = make_checkpoint(str(tmp_path / "prefix"), tiny_bert_dir, "prefix", 8)
    with pytest.raises(LoraError, match="--merge_lora applies to --lora checkpoints; this one is prefix"):
        load_inference_model(InferenceModelConfig(model_file=prefix, merge_lora=True))


def _encoder_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_encoder_params(parser)
    add_tuning_params(parser)
    return parser.parse_args(argv)


def test_flags_build_the_config_and_it_survives_json():
    args = _encoder_args("--lora --lora_r 4 --lora_alpha 8 --lora_dropout 0 --lora_target query,value".split())
    config = encoder_config_from_args(args)
    assert config.tuning == LoraConfig(lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_target=("query", "value"))
    assert config.tuning.scale == 2.0 and config.frozen_backbone
    # a checkpoint's JSON holds a list and may hold an int alpha: read back as the same value
    stored = {"method": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target": ["query", "value"]}
    assert tuning_from_dict(stored) == config.tuning
    assert BiEncoderConfig.from_dict(config.to_dict()) == config
    assert BiEncoderConfig.from_flat(config.to_flat()) == config


def test_the_order_of_lora_target_names_is_not_a_contradiction():
    """``--lora_target value,query`` adapts the same layers as ``query,value``: flags, tasks and indexes agree."""
    stored = BiEncoderConfig.from_flat(pretrained_model_cfg="tiny", tuning="lora", lora_target="query,value")
    check_agrees({"lora_target": ("value", "query")}, stored.to_flat(), ARCHITECTURE_FIELDS, "ckpt")
    assert apply_overrides(stored, {"lora_target": ("value", "query")}, "ckpt").tuning.lora_target == (
        "value",
        "query",
    )
    with pytest.raises(ConfigError, match="--lora_target is .*'key'.* but ckpt was trained"):
        check_agrees({"lora_target": ("query", "key")}, stored.to_flat(), ARCHITECTURE_FIELDS, "ckpt")
    ours = EncoderIdentity({"tuning": "lora", "lora_target": ["query", "value"]}, {}, "d")
    assert ours.diff(EncoderIdentity({"tuning": "lora", "lora_target": ["value", "query"]}, {}, "d")) == []
    assert ours.diff(EncoderIdentity({"tuning": "lora", "lora_target": ["query"]}, {}, "d")) == [
        "lora_target: ['query', 'value'] -> ['query']"
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lora_r": 0}, "--lora_r must be an integer >= 1, got 0"),
        ({"lora_r": -2}, "--lora_r must be an integer >= 1, got -2"),
        ({"lora_alpha": 0.0}, "--lora_alpha must be a finite number > 0, got 0.0"),
        ({"lora_alpha": -1.0}, "--lora_alpha must be a finite number > 0"),
        ({"lora_alpha": float("nan")}, "--lora_alpha must be a finite number > 0, got nan"),
        ({"lora_dropout": 1.0}, r"dropout must be in \[0, 1\): --lora_dropout 1.0"),
        ({"lora_dropout": -0.1}, r"dropout must be in \[0, 1\): --lora_dropout -0.1"),
        ({"lora_target": ()}, "--lora_target needs module names"),
        ({"gradient_checkpointing": True}, "--gradient_checkpointing cannot be combined with --lora"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        BiEncoderConfig.from_flat(tuning="lora", **settings)


def test_an_unknown_target_lists_the_linear_layer_names():
    with pytest.raises(
        LoraError,
        match="--lora_target qkv matches no linear layer of this BertModel; its linear "
        "layers are named dense, key, query, value",
    ):
        make(lora_target=("query", "qkv"))
    assert make(lora_target=("attention.output.dense",)).question_encoder.lora.paths == (
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.1.attention.output.dense",
    )
    with pytest.raises(SystemExit):  # argparse: "expected names separated by commas"
        _encoder_args(["--lora", "--lora_target", "query,,value"])


def test_colbert_trains_one_step_with_lora(tiny_bert_dir, tmp_path):
    triples = tmp_path / "triples.tsv"
    triples.write_text("".join(f"question {i}\tpassage about item {i}\tsomething else {i}\n" for i in range(8)))
    out = str(tmp_path / "run")
    argv = ["--pretrained_model_cfg", tiny_bert_dir, "--lora", "--lora_r", "4", "--lr", "1e-2", "--triples"]
    argv += [str(triples), "--query_maxlen", "12", "--doc_maxlen", "32", "--dim", "16", "--output_dir", out]
    assert colbert_train.main([*argv, "--no_progress", "--bsize", "4", "--maxsteps", "1"]) == 0
    model, info = load_colbert(os.path.join(out, "colbert-1"))
    assert info.config.tuning == LoraConfig(lora_r=4)
    tuned = set(model.tuned_names)
    assert "linear.weight" in tuned and all(n == "linear.weight" or ".lora.deltas." in n for n in tuned)
    b_weights = [p for n, p in model.named_parameters() if n.endswith(".B.weight")]
    assert b_weights and any(p.abs().max() > 0 for p in b_weights)  # B left zero: the step trained it
    # --merge_lora for ColBERT: the same token vectors and index identity from a plain backbone copy
    model.eval()
    merged = merge_lora(model)
    assert merged.encoder.lora is None and merged.backbone is not model.backbone
    assert merged.identity() == model.identity()
    ids, mask = batch()
    with torch.no_grad():
        for side in ("encode_query", "encode_passage"):
            ours, theirs = getattr(merged, side)(ids, mask), getattr(model, side)(ids, mask)
            assert (ours - theirs).abs().max() < 1e-5
    path = model.encoder.lora.paths[0]  # the deltas went into the copy's weights, not into the shared backbone
    assert (merged.backbone.get_submodule(path).weight - model.backbone.get_submodule(path).weight).abs().max() > 0
    with pytest.raises(LoraError, match="--merge_lora applies to --lora checkpoints; this one is prefix"):
        merge_lora(
            build_colbert_from_backbone(
                ColBERTConfig.from_flat({"tuning": "prefix", "dim": 16, "doc_maxlen": 32}), tiny_bert(0)
            )
        )


def test_merge_lora_is_a_flag_of_the_embedding_and_retrieval_clis():
    from dpr.commands import embed, retrieve
    from dpr.inference_options import inference_config_from_args

    base = {embed: ["--ctx_file", "c.tsv", "--out_file", "o"], retrieve: ["--encoded_ctx_file", "e_*"]}
    for command, argv in base.items():
        given = command.build_parser().parse_args([*argv, "--model_file", "ckpt", "--merge_lora"])
        assert inference_config_from_args(given).merge_lora
        assert not inference_config_from_args(command.build_parser().parse_args(argv)).merge_lora
    colbert_argv = {colbert_index: ["--collection", "c.tsv", "--index_root", "r", "--index_name", "n"]}
    colbert_argv[colbert_retrieve] = ["--queries", "q.tsv", "--output_dir", "o"]
    for command, argv in colbert_argv.items():
        assert command.build_parser().parse_args([*argv, "--checkpoint", "ckpt", "--merge_lora"]).merge_lora
        assert not command.build_parser().parse_args(argv).merge_lora


def test_a_deep_copy_and_int8_quantization_keep_applying_the_deltas():
    model = make().eval()
    randomise(model)
    ids, mask = batch()
    copied = copy.deepcopy(model)  # what quantize_int8 does first
    assert copied.backbone is not model.backbone
    int8 = quantize_int8(model)
    with torch.no_grad():
        expected = model.encode_query(ids, mask)
        plain = plain_cls(model.backbone, ids, mask)
        assert torch.equal(copied.encode_query(ids, mask), expected)
        with lora_router(model.backbone).use(model.question_encoder.lora):  # the original's active set ...
            assert torch.equal(plain_cls(copied.backbone, ids, mask), plain)  # ... is not the copy's
        error = (int8.encode_query(ids, mask) - expected).abs().max()
    assert error < 0.2 * (expected - plain).abs().max()  # int8 rounding, well below the deltas' effect
