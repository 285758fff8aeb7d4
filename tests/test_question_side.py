"""Question-side tuning: passages keep the base model's vectors, so an index built before training stays valid."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import generate_embeddings
import train_dense_encoder
from dpr.configs import BiEncoderConfig
from dpr.embeddings_io import EmbeddingsError, check_identity, encoder_digest, find_shards
from dpr.identity import EncoderIdentity
from dpr.models.checkpoint_format import load_biencoder
from dpr.models.encoder import TunedEncoder
from dpr.models.serialization import backbone_fingerprint
from dpr.options import ConfigError
from dpr.training import trainer as trainer_module
from dpr.training.run_dir import list_checkpoints


@pytest.fixture
def passages_tsv(tmp_path, tiny_dpr_files) -> str:
    """Every passage of the tiny train/dev files as a DPR passages TSV (ids = passage_id)."""
    rows = {}
    for path in tiny_dpr_files:
        for sample in json.load(open(path)):
            for key in ("positive_ctxs", "hard_negative_ctxs", "negative_ctxs"):
                for p in sample[key]:
                    rows[p["passage_id"]] = (p["text"], p["title"])
    path = tmp_path / "passages.tsv"
    path.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}\t{h}\n" for i, (t, h) in rows.items()))
    return str(path)


def train(model_dir, files, out, *extra) -> str:
    train_file, dev_file = files
    assert (
        train_dense_encoder.main(
            [
                "--pretrained_model_cfg",
                model_dir,
                "--train_file",
                train_file,
                "--dev_file",
                dev_file,
                "--output_dir",
                out,
                "--batch_size",
                "4",
                "--sequence_length",
                "32",
                "--learning_rate",
                "0.05",
                "--num_train_epochs",
                "2",
                "--prefix",
                "--pre_seq_len",
                "4",
                "--seed",
                "1",
                *extra,
            ]
        )
        == 0
    )
    return list_checkpoints(out, "dpr_biencoder")[-1][1]


def embed(ctx_file, out, *model_flags) -> np.ndarray:
    assert (
        generate_embeddings.main(
            ["--ctx_file", ctx_file, "--out_file", out, "--sequence_length", "32", "--no_progress", *model_flags]
        )
        == 0
    )
    return np.concatenate([shard.vectors() for shard in find_shards([out + "_*"])])


def identity(model):
    """The passage identity rebuilt from its parts (not via ``model.passage_identity()``)."""
    return EncoderIdentity.of_config(
        model.config.passage_config(), backbone_fingerprint(model.backbone), encoder_digest(model.ctx_encoder)
    )


def test_question_side_training_leaves_passage_vectors_bit_identical(
    tmp_path, tiny_bert_dir, tiny_dpr_files, passages_tsv
):
    before = embed(passages_tsv, str(tmp_path / "base"), "--pretrained_model_cfg", tiny_bert_dir)
    ckpt = train(tiny_bert_dir, tiny_dpr_files, str(tmp_path / "q"), "--tune_side", "question")
    after = embed(passages_tsv, str(tmp_path / "after"), "--model_file", ckpt)
    assert np.array_equal(before, after)
    assert set(load_file(os.path.join(ckpt, "model.safetensors"))) == {"question_encoder.prefix.embedding.weight"}
    # The index built BEFORE training is accepted for the question-side checkpoint ...
    model, _ = load_biencoder(ckpt)
    base_shard = find_shards([str(tmp_path / "base") + "_*"])[0]
    check_identity(base_shard, identity(model), ckpt)
    stored = json.load(open(os.path.join(ckpt, "config.json")))["passage_encoder"]
    assert stored["digest"] == base_shard.header.encoder_digest
    # ... and refused for a checkpoint whose passage side was tuned too.
    both, _ = load_biencoder(train(tiny_bert_dir, tiny_dpr_files, str(tmp_path / "both")))
    with pytest.raises(EmbeddingsError, match="made by another encoder"):
        check_identity(base_shard, identity(both), "both")


def test_training_steps_never_run_the_passage_encoder(tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch):
    calls = {"in_step": False, "ctx_forwards": 0}
    original_step, original_forward = trainer_module.BiEncoderTrainer._micro_step, TunedEncoder.forward

    def step(self, *args):
        calls["in_step"] = True
        try:
            return original_step(self, *args)
        finally:
            calls["in_step"] = False

    def forward(self, *args, **kwargs):
        if calls["in_step"] and self.prefix is None:  # the passage side has no prefix
            calls["ctx_forwards"] += 1
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_micro_step", step)
    monkeypatch.setattr(TunedEncoder, "forward", forward)
    train(tiny_bert_dir, tiny_dpr_files, str(tmp_path / "q"), "--tune_side", "question")
    assert calls["ctx_forwards"] == 0


def test_vectors_read_from_an_existing_index_train_like_encoded_ones(
    tmp_path, tiny_bert_dir, tiny_dpr_files, passages_tsv
):
    embed(passages_tsv, str(tmp_path / "base"), "--pretrained_model_cfg", tiny_bert_dir)
    encoded = train(tiny_bert_dir, tiny_dpr_files, str(tmp_path / "a"), "--tune_side", "question")
    from_index = train(
        tiny_bert_dir,
        tiny_dpr_files,
        str(tmp_path / "b"),
        "--tune_side",
        "question",
        "--ctx_embeddings",
        str(tmp_path / "base") + "_*",
    )
    a, b = (load_file(os.path.join(p, "model.safetensors")) for p in (encoded, from_index))
    torch.testing.assert_close(
        a["question_encoder.prefix.embedding.weight"], b["question_encoder.prefix.embedding.weight"], atol=1e-5, rtol=0
    )


def test_an_index_of_another_passage_encoder_is_refused_for_the_cache(
    tmp_path, tiny_bert_dir, tiny_dpr_files, passages_tsv, capsys
):
    from dpr.cli import run_cli

    embed(passages_tsv, str(tmp_path / "other"), "--pretrained_model_cfg", "bert-tiny")
    train_file, dev_file = tiny_dpr_files
    code = run_cli(
        train_dense_encoder.main,
        [
            "--pretrained_model_cfg",
            tiny_bert_dir,
            "--train_file",
            train_file,
            "--output_dir",
            str(tmp_path / "o"),
            "--prefix",
            "--tune_side",
            "question",
            "--sequence_length",
            "32",
            "--ctx_embeddings",
            str(tmp_path / "other") + "_*",
        ],
    )
    assert code == 2 and "made by another encoder" in capsys.readouterr().err


def test_question_side_config_errors():
    with pytest.raises(ConfigError, match="--tune_side question keeps the passage encoder fixed"):
        BiEncoderConfig.from_flat(tuning="prefix", tune_side="question", projection_dim=16)
    cfg = BiEncoderConfig.from_flat(tuning="prefix", tune_side="question", pre_seq_len=32, pooling="mean")
    assert cfg.passage_config() == BiEncoderConfig.from_flat(pooling="mean")
