"""Configs per concern: round trips, format 1 (flat) readers, one config per tuning method, flag aliases,
the passage format reaching every encoder and every identity, and the retriever interface."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import pytest
import torch

from colbert.model import ColBERT, build_colbert
from colbert.options import ColBERTConfig
from dpr.configs import (
    AdapterConfig,
    BackboneConfig,
    BiEncoderConfig,
    BitFitConfig,
    ConfigError,
    FinetuneConfig,
    HeadConfig,
    LoraConfig,
    PassageFormat,
    PrefixConfig,
    PromptConfig,
    SidesConfig,
    tuning_from_dict,
    tuning_from_flat,
)
from dpr.data.readers import Passage
from dpr.embeddings_io import EmbeddingsError, ShardHeader, check_identity, read_shard, write_shard
from dpr.encoding import encode_texts
from dpr.identity import EncoderIdentity
from dpr.models.biencoder import BiEncoder, build_biencoder
from dpr.models.checkpoint_format import CheckpointError, load_biencoder, read_checkpoint_info
from dpr.models.hub import load_tokenizer
from dpr.models.retriever import RetrieverModel
from dpr.options import add_encoder_params, add_training_params, add_tuning_params, encoder_overrides_from_args
from dpr.retrieval import TaskEncoder
from dpr.training.checkpoint import save_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "format_v1")
PASSAGES = [Passage("Water boils at one hundred degrees.", "Water"), Passage("Bees make honey.", "Bees")]


def test_every_method_round_trips_through_its_nested_and_flat_forms():
    for tuning in (
        FinetuneConfig(),
        BitFitConfig(),
        PrefixConfig(pre_seq_len=4, prefix_mlp=True, prefix_hidden_size=16),
        PromptConfig(pre_seq_len=3, prompt_encoder="lstm", prompt_init_text="find the answer"),
        AdapterConfig(adapter_size=8),
        LoraConfig(lora_r=4, lora_alpha=12.0, lora_dropout=0.0, lora_target=("query", "output.dense")),
    ):
        config = BiEncoderConfig(
            backbone=BackboneConfig("bert-tiny", sequence_length=64),
            tuning=tuning,
            head=HeadConfig(pooling="mean", normalize=True),
            passages=PassageFormat("concat", insert_title=False),
        )
        stored = json.loads(json.dumps(config.to_dict()))
        assert stored["tuning"]["method"] == tuning.method
        assert BiEncoderConfig.from_dict(stored) == config
        assert BiEncoderConfig.from_flat(config.to_flat()) == config
        assert BiEncoderConfig.from_dict(config.to_flat()) == config  # the flat form is format 1's


def test_a_format_1_flat_dict_reads_as_the_nested_config():
    flat = {  # dpr_question_side_adapter/config.json of format 1
        "adapter_size": 4,
        "do_lower_case": False,
        "dropout": 0.1,
        "gradient_checkpointing": False,
        "normalize": False,
        "pooling": "cls",
        "pre_seq_len": 8,
        "prefix_dropout": 0.1,
        "prefix_hidden_size": 512,
        "prefix_mlp": False,
        "pretrained_model_cfg": "bert-tiny",
        "projection_dim": 0,
        "prompt_encoder": "none",
        "prompt_init_text": None,
        "sequence_length": 32,
        "share_encoder": False,
        "title_mode": "pair",
        "tune_side": "question",
        "tuning": "adapter",
    }
    expected = BiEncoderConfig(
        # format 1 had one dropout for hidden states and attention: the run trained with 0.1 on both
        backbone=BackboneConfig("bert-tiny", sequence_length=32, attention_dropout=0.1),
        tuning=AdapterConfig(adapter_size=4),
        head=HeadConfig(pooling="cls", normalize=False),
        passages=PassageFormat("pair"),
        sides=SidesConfig(tune_side="question"),
    )
    assert BiEncoderConfig.from_dict(flat) == expected
    assert read_checkpoint_info(os.path.join(FIXTURES, "dpr_question_side_adapter")).encoder == expected


def test_one_config_per_method_keeps_only_its_own_fields():
    assert tuning_from_flat({"tuning": "adapter", "adapter_size": 4, "pre_seq_len": 3}) == AdapterConfig(4)
    assert tuning_from_flat({}) == FinetuneConfig()
    assert PrefixConfig().to_dict() == {
        "method": "prefix",
        "pre_seq_len": 8,
        "prefix_mlp": False,
        "prefix_hidden_size": 512,
        "prefix_dropout": 0.1,
    }
    assert FinetuneConfig() != BitFitConfig()  # no fields, still different methods
    assert PromptConfig(pre_seq_len=3).virtual_tokens == 3 and PrefixConfig(pre_seq_len=3).virtual_tokens == 0
    assert BiEncoderConfig(tuning=PrefixConfig()).with_settings(pre_seq_len=2).tuning == PrefixConfig(pre_seq_len=2)


def test_bad_configs_name_the_flag_or_key():
    with pytest.raises(ConfigError, match="--share_encoder applies to fine-tuning and --bitfit, not --prefix"):
        BiEncoderConfig(tuning=PrefixConfig(), sides=SidesConfig(share_encoder=True))
    with pytest.raises(ConfigError, match="--tune_side question keeps the passage encoder fixed"):
        BiEncoderConfig(head=HeadConfig(projection_dim=8), sides=SidesConfig(tune_side="question"))
    with pytest.raises(ConfigError, match="--gradient_checkpointing cannot be combined with --adapter"):
        BiEncoderConfig(backbone=BackboneConfig(gradient_checkpointing=True), tuning=AdapterConfig())
    with pytest.raises(ConfigError, match="--pre_seq_len must be >= 1 for --prompt"):
        PromptConfig(pre_seq_len=0)
    with pytest.raises(ConfigError, match="--title_mode 'both' is not one of auto, pair, concat"):
        PassageFormat(title_mode="both")
    with pytest.raises(ConfigError, match=r"tuning mode 'ia3' is not one of .*, adapter, lora$"):
        tuning_from_dict({"method": "ia3"})
    with pytest.raises(ConfigError, match=r"ckpt/config.json: unknown prefix tuning config keys \['adapter_size'\]"):
        tuning_from_dict({"method": "prefix", "adapter_size": 4}, "ckpt/config.json")
    nested = BiEncoderConfig().to_dict()
    with pytest.raises(ConfigError, match=r"c.json: unknown head config keys \['pool'\]"):
        BiEncoderConfig.from_dict({**nested, "head": {"pool": "cls"}}, "c.json")
    with pytest.raises(ConfigError, match=r"c.json: unknown encoder config keys \['pre_seq_length'\]"):
        BiEncoderConfig.from_dict({"pre_seq_length": 4}, "c.json")


def test_a_newer_checkpoint_version_is_refused(tmp_path):
    folder = str(tmp_path / "ckpt")
    shutil.copytree(os.path.join(FIXTURES, "dpr_prefix"), folder)
    path = os.path.join(folder, "config.json")
    stored = json.load(open(path))
    json.dump({**stored, "version": 3}, open(path, "w"))
    with pytest.raises(CheckpointError, match=r"config.json: version 3 is newer than this code \(2\)"):
        read_checkpoint_info(folder)


def _train_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_encoder_params(parser)
    add_tuning_params(parser)
    add_training_params(parser)
    return parser.parse_args(["--train_file", "t.json", *argv])


def test_fix_ctx_encoder_is_tune_side_question():
    assert encoder_overrides_from_args(_train_flags(["--fix_ctx_encoder"]))["tune_side"] == "question"
    assert encoder_overrides_from_args(_train_flags(["--fix_ctx_encoder", "--tune_side", "question"])) == {
        "tune_side": "question"
    }
    with pytest.raises(ConfigError, match="--fix_ctx_encoder means --tune_side question"):
        encoder_overrides_from_args(_train_flags(["--fix_ctx_encoder", "--tune_side", "both"]))
    assert encoder_overrides_from_args(_train_flags(["--no_title"])) == {"insert_title": False}
    assert "insert_title" not in encoder_overrides_from_args(_train_flags([]))


@pytest.fixture(scope="module")
def no_title_checkpoint(tiny_bert_dir, tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = BiEncoderConfig.from_flat(
        pretrained_model_cfg=tiny_bert_dir, tuning="prefix", pre_seq_len=4, sequence_length=32, insert_title=False
    )
    model = build_biencoder(config)
    with torch.no_grad():
        model.question_encoder.prefix.embedding.weight.normal_(std=0.3)
        model.ctx_encoder.prefix.embedding.weight.normal_(std=0.3)
    return save_checkpoint(str(tmp_path_factory.mktemp("nt") / "ckpt"), model)


def test_no_title_reaches_the_task_encoder(no_title_checkpoint, tiny_bert_dir):
    model, info = load_biencoder(no_title_checkpoint)
    assert info.encoder.passages.insert_title is False
    tokenizer = load_tokenizer(tiny_bert_dir)
    common = dict(max_length=32, batch_size=2)
    without = encode_texts(model, tokenizer, PASSAGES, "passage", insert_title=False, **common)
    with_titles = encode_texts(model, tokenizer, PASSAGES, "passage", insert_title=True, **common)
    assert not np.allclose(without, with_titles)
    encoder = TaskEncoder.from_checkpoints({"nt": no_title_checkpoint})
    np.testing.assert_allclose(encoder.encode(PASSAGES, "nt", "passage"), without, atol=1e-6, rtol=0)


def _shard(tmp_path, model: BiEncoder) -> str:
    identity, passage_config = model.passage_identity(), model.config.passage_config()
    header = ShardHeader(
        encoder=passage_config.to_dict(),
        backbone=dict(identity.backbone),
        encoder_digest=identity.digest,
        checkpoint=None,
        dim=4,
        count=1,
        dtype="float32",
        shard_id=0,
        num_shards=1,
        start=0,
        end=1,
        total_passages=1,
        ctx_file="/c.tsv",
        insert_title=passage_config.passages.insert_title,
    )
    return write_shard(str(tmp_path / "emb_0"), np.zeros((1, 4), np.float32), ["p1"], header)


def test_no_title_is_part_of_the_shard_identity(no_title_checkpoint, tmp_path):
    model, _ = load_biencoder(no_title_checkpoint)
    shard = read_shard(_shard(tmp_path, model))
    check_identity(shard, model.passage_identity(), no_title_checkpoint)  # the same model: accepted
    titled, _ = load_biencoder(no_title_checkpoint, {"insert_title": True})
    with pytest.raises(EmbeddingsError, match="another encoder than the query encoder .*: insert_title: False -> True"):
        check_identity(shard, titled.passage_identity(), no_title_checkpoint)
    # A version 2 header kept --no_title beside a flat config: it is part of that shard's identity too.
    old = dict(shard.header.to_dict(), version=2, encoder=model.config.passage_config().to_flat())
    del old["encoder"]["insert_title"]
    assert ShardHeader(**old).identity() == model.passage_identity()


def test_identity_diff_is_one_readable_line_per_difference():
    base = EncoderIdentity(
        {"tuning": "prefix", "pre_seq_len": 8}, {"hidden_size": 128}, "a" * 64, {"title_mode": "pair"}
    )
    other = EncoderIdentity(
        {"tuning": "prefix", "pre_seq_len": 4}, {"hidden_size": 64}, "b" * 64, {"title_mode": "concat"}
    )
    assert base.diff(base) == []
    assert base.diff(other) == ["pre_seq_len: 8 -> 4", "title_mode: pair -> concat", "backbone hidden_size: 128 -> 64"]
    adapter = EncoderIdentity({"tuning": "adapter", "adapter_size": 64}, {"hidden_size": 128}, "a" * 64)
    assert base.diff(adapter)[:1] == ["tuning: prefix -> adapter"]  # not pre_seq_len: 8 -> None
    same_but_weights = EncoderIdentity(base.settings, base.backbone, "c" * 64, base.passages)
    assert base.diff(same_but_weights) == ["passage-encoder weights differ (digest aaaaaaaaaaaa -> cccccccccccc)"]


def test_colbert_config_reads_format_1_and_composes_backbone_and_tuning():
    stored = json.load(open(os.path.join(FIXTURES, "colbert_prefix", "config.json")))["colbert"]
    config = ColBERTConfig.from_dict(stored)
    assert isinstance(config.tuning, PrefixConfig) and config.tuning.pre_seq_len == stored["encoder"]["pre_seq_len"]
    assert config.backbone.sequence_length == max(config.query_maxlen, config.doc_maxlen)
    assert ColBERTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert not hasattr(config, "head") and not hasattr(config, "sides")  # nothing to force or refuse


def test_both_retriever_models_offer_the_common_interface(tiny_bert_dir):
    biencoder = build_biencoder(BiEncoderConfig.from_flat(pretrained_model_cfg=tiny_bert_dir, sequence_length=32))
    colbert = build_colbert(
        ColBERTConfig(backbone=BackboneConfig(tiny_bert_dir), tuning=PrefixConfig(pre_seq_len=2), doc_maxlen=16)
    )
    for model in (biencoder, colbert):
        assert isinstance(model, RetrieverModel)
    ids = torch.tensor([[101, 2000, 2001, 102]])
    mask = torch.ones_like(ids)
    assert biencoder.compute_similarity(
        biencoder.encode_query(ids, mask), biencoder.encode_passage(ids, mask)
    ).shape == (1, 1)
    q, d = colbert.encode_query(ids, mask), colbert.encode_passage(ids, mask)
    assert isinstance(colbert, ColBERT) and colbert.compute_similarity(q, d, mask.bool()).shape == (1, 1)
