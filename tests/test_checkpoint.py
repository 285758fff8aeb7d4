"""Checkpoint folders: exact round trip, tuned weights only, conflicting flags, atomic writes."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from helpers import tiny_bert
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

from dpr.atomic import atomic_directory
from dpr.configs import BiEncoderConfig
from dpr.models.biencoder import build_biencoder
from dpr.models.checkpoint_format import CheckpointError, TrainingPosition, load_biencoder, read_checkpoint_info
from dpr.models.serialization import CheckpointMismatchError
from dpr.options import ConfigError, add_encoder_params, add_tuning_params, encoder_overrides_from_args
from dpr.training.checkpoint import load_training_state, save_checkpoint


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tiny-bert"))
    tiny_bert(seed=0).save_pretrained(path)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_encoder_params(parser)
    add_tuning_params(parser)
    return parser.parse_args(argv)


def overrides(argv: list[str]) -> dict:
    """The flag-named settings the command line ``argv`` types (what load_biencoder takes)."""
    return encoder_overrides_from_args(parse(argv))


def tokens():
    ids = torch.tensor([[2, 17, 33, 41, 3], [2, 8, 3, 0, 0]])
    return ids, (ids > 0).long(), torch.zeros_like(ids)


def perturb(model):
    with torch.no_grad():
        for name in model.tuned_names:
            dict(model.named_parameters())[name].add_(torch.randn_like(dict(model.named_parameters())[name]) * 0.3)


@pytest.mark.parametrize("tuning", ["prefix", "prompt", "adapter", "lora", "bitfit", "finetune"])
def test_save_load_reproduces_embeddings_exactly(tmp_path, tiny_model_dir, tuning):
    cfg = BiEncoderConfig.from_flat(
        pretrained_model_cfg=tiny_model_dir,
        tuning=tuning,
        pre_seq_len=4,
        sequence_length=32,
        prefix_mlp=True,
        projection_dim=8,
        adapter_size=4,
    )
    model = build_biencoder(cfg).eval()
    perturb(model)
    path = save_checkpoint(str(tmp_path / "ckpt"), model, position=TrainingPosition(2, 5, 40))
    loaded, info = load_biencoder(path)
    loaded.eval()
    ids, mask, seg = tokens()
    with torch.no_grad():
        assert torch.equal(model.encode_query(ids, mask, seg), loaded.encode_query(ids, mask, seg))
        assert torch.equal(model.encode_passage(ids, mask, seg), loaded.encode_passage(ids, mask, seg))
    assert info.position == TrainingPosition(2, 5, 40)
    assert info.encoder == model.config and info.encoder.head.pooling == "cls"  # 'auto' stored resolved
    stored = load_file(os.path.join(path, "model.safetensors"))
    assert set(stored) == set(model.tuned_names)
    if tuning != "finetune" and tuning != "bitfit":
        assert not any(".backbone." in name for name in stored)


def test_prefix_checkpoint_of_bert_base_size_is_a_few_megabytes(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "bert-base-shaped")
    BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(path)  # 12 layers, hidden 768
    model = build_biencoder(BiEncoderConfig.from_flat(pretrained_model_cfg=path, tuning="prefix", pre_seq_len=64))
    ckpt = save_checkpoint(str(tmp_path / "ckpt"), model)
    size = os.path.getsize(os.path.join(ckpt, "model.safetensors"))
    # 2 sides x 64 positions x 12 layers x 2 (key, value) x 768 floats x 4 bytes = 9.4 MB
    assert 9_000_000 < size < 10_000_000


def test_optimizer_and_scheduler_state_round_trip_without_pickle(tmp_path, tiny_model_dir):
    model = build_biencoder(
        BiEncoderConfig.from_flat(
            pretrained_model_cfg=tiny_model_dir, tuning="prefix", pre_seq_len=4, sequence_length=32
        )
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 1.0 / (step + 1))
    ids, mask, seg = tokens()
    model.encode_query(ids, mask, seg).sum().backward()
    optim.step()
    sched.step()
    path = save_checkpoint(str(tmp_path / "ckpt"), model, optimizer=optim, scheduler=sched)
    state = load_training_state(path)
    fresh = torch.optim.AdamW(params, lr=1e-3)
    fresh.load_state_dict(state["optimizer"])
    for a, b in zip(optim.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert state["scheduler"]["last_epoch"] == 1


def test_flags_that_contradict_the_checkpoint_raise_naming_both_values(tmp_path, tiny_model_dir):
    prefix = build_biencoder(
        BiEncoderConfig.from_flat(
            pretrained_model_cfg=tiny_model_dir, tuning="prefix", pre_seq_len=4, sequence_length=32
        )
    )
    prefix_path = save_checkpoint(str(tmp_path / "prefix"), prefix)
    with pytest.raises(ConfigError, match=r"--pre_seq_len is 16 but .* pre_seq_len=4"):
        load_biencoder(prefix_path, overrides(["--pre_seq_len", "16"]))
    finetune = build_biencoder(BiEncoderConfig.from_flat(pretrained_model_cfg=tiny_model_dir, sequence_length=32))
    finetune_path = save_checkpoint(str(tmp_path / "finetune"), finetune)
    with pytest.raises(ConfigError, match=r"tuning mode .* is 'prefix' but .* tuning='finetune'"):
        load_biencoder(finetune_path, overrides(["--prefix"]))
    # Repeating the stored values, or changing what does not alter the network, is fine.
    model, _ = load_biencoder(prefix_path, overrides(["--prefix", "--pre_seq_len", "4", "--sequence_length", "16"]))
    assert model.config.backbone.sequence_length == 16 and model.config.tuning.pre_seq_len == 4


def test_two_modes_at_once_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        parse(["--prefix", "--bitfit"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_not_a_checkpoint_and_tampered_files_are_refused(tmp_path, tiny_model_dir):
    with pytest.raises(CheckpointError, match="no config.json"):
        read_checkpoint_info(str(tmp_path))
    model = build_biencoder(
        BiEncoderConfig.from_flat(
            pretrained_model_cfg=tiny_model_dir, tuning="prefix", pre_seq_len=4, sequence_length=32
        )
    )
    path = save_checkpoint(str(tmp_path / "ckpt"), model)
    weights = os.path.join(path, "model.safetensors")
    state = load_file(weights)
    state["question_encoder.backbone.embeddings.word_embeddings.weight"] = torch.zeros(99, 32)
    save_file(state, weights)
    with pytest.raises(CheckpointMismatchError, match="unexpected"):
        load_biencoder(path)
    config_path = os.path.join(path, "config.json")
    config = json.load(open(config_path))
    config["backbone"]["hidden_size"] = 768
    json.dump(config, open(config_path, "w"))
    with pytest.raises(CheckpointMismatchError, match="hidden_size: checkpoint 768, backbone 32"):
        load_biencoder(path)


def test_a_crash_while_writing_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(str(target)) as tmp:
        (tmp_path / "ckpt-probe").write_text("")
        open(os.path.join(tmp, "a.txt"), "w").write("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(str(target)) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write("new")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ckpt-probe"]  # no temp leftovers


def test_a_training_output_folder_means_its_best_checkpoint(tmp_path, tiny_model_dir):
    model = build_biencoder(
        BiEncoderConfig.from_flat(
            pretrained_model_cfg=tiny_model_dir, tuning="prefix", pre_seq_len=4, sequence_length=32
        )
    )
    best = save_checkpoint(str(tmp_path / "run" / "dpr_biencoder.1.5"), model)
    save_checkpoint(str(tmp_path / "run" / "dpr_biencoder.2.5"), build_biencoder(model.config))
    (tmp_path / "run" / "best_checkpoint.json").write_text(json.dumps({"path": best}))
    assert read_checkpoint_info(str(tmp_path / "run")).path == best
    loaded, _ = load_biencoder(str(tmp_path / "run"))
    assert torch.equal(
        dict(loaded.named_parameters())["question_encoder.prefix.embedding.weight"],
        dict(model.named_parameters())["question_encoder.prefix.embedding.weight"],
    )
    with pytest.raises(CheckpointError, match="nor a training output folder"):
        read_checkpoint_info(str(tmp_path))


def test_damaged_weights_and_training_state_are_clear_errors_naming_the_file(tmp_path, tiny_model_dir):
    model = build_biencoder(
        BiEncoderConfig.from_flat(
            pretrained_model_cfg=tiny_model_dir, tuning="prefix", pre_seq_len=4, sequence_length=32
        )
    )
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    path = save_checkpoint(str(tmp_path / "ckpt"), model, optimizer=optim)
    weights, state = os.path.join(path, "model.safetensors"), os.path.join(path, "training_state.pt")
    for damage in (lambda b: b[: len(b) // 2], lambda b: b"not a file of this kind" * 3, lambda b: b""):
        for name in (weights, state):
            good = open(name, "rb").read()
            open(name, "wb").write(damage(good))
            with pytest.raises(CheckpointError, match=f"{name} is damaged") as caught:
                load_biencoder(path) if name == weights else load_training_state(path)
            assert "weights_only" not in str(caught.value)  # never advise unpickling code
            open(name, "wb").write(good)
    torch.save(["a list, not a state dict"], state)
    with pytest.raises(CheckpointError, match="expected a dict of optimizer and scheduler state, found list"):
        load_training_state(path)
