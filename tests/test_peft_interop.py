"""PEFT interop: our prefix <-> PEFT prefix-tuning adapter folders; PEFT-loaded vectors agree with ours."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_tasks import PASSAGES, make_checkpoint

from dpr.cli import run_cli
from dpr.commands.export_peft import main
from dpr.configs import LoraConfig
from dpr.data.batching import tokenize_questions
from dpr.encoding import encode_texts
from dpr.models.checkpoint_format import load_biencoder
from dpr.models.encoder import cache_argument
from dpr.models.hub import load_backbone, load_tokenizer
from dpr.models.peft_interop import PeftAdapterError, peft_position_ids
from dpr.models.prefix import prefix_cache
from dpr.models.serialization import CheckpointMismatchError
from dpr.training.peft_export import export_checkpoint, import_adapters


@pytest.fixture(scope="module")
def peft():
    """PEFT itself, only for the tests that load our folders in it (export/import needs no PEFT)."""
    return pytest.importorskip("peft")


# PEFT 0.21's own prefix forward still passes past_key_values (transformers 5.24 warns); ours does not.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning"),
    pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
]

QUESTIONS = ["what is the capital of france?", "who wrote hamlet, the long play about a danish prince?"]
P = 4  # make_checkpoint's pre_seq_len


@pytest.fixture(scope="module")
def exported(tiny_bert_dir, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Plain and --prefix_mlp checkpoints, each exported side by side to PEFT folders."""
    root = tmp_path_factory.mktemp("peft")
    out = {}
    for kind, extra in (("plain", {}), ("mlp", {"prefix_mlp": True, "prefix_hidden_size": 16})):
        ckpt = make_checkpoint(str(root / kind), tiny_bert_dir, "prefix", 11, **extra)
        out[kind] = {
            "ckpt": ckpt,
            "question": export_checkpoint(ckpt, str(root / f"{kind}_q"), "question"),
            "passage": export_checkpoint(ckpt, str(root / f"{kind}_p"), "passage"),
        }
    return out


def _questions(tiny_bert_dir) -> dict[str, torch.Tensor]:
    return tokenize_questions(load_tokenizer(tiny_bert_dir), QUESTIONS, 32)  # (2, T) each


def _peft_model(peft, tiny_bert_dir, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that the model has no base_model_name_or_path card
        return peft.PeftModel.from_pretrained(load_backbone(tiny_bert_dir), folder).eval()


def test_exported_folder_has_peft_s_own_keys_and_shapes(peft, exported, tiny_bert_dir):
    folder = exported["plain"]["question"]
    config = json.loads(open(os.path.join(folder, "adapter_config.json")).read())
    assert config["peft_type"] == "PREFIX_TUNING" and config["task_type"] == "FEATURE_EXTRACTION"
    assert (
        config["num_virtual_tokens"],
        config["num_layers"],
        config["token_dim"],
        config["num_attention_heads"],
        config["prefix_projection"],
    ) == (P, 2, 32, 4, False)
    ours = load_file(os.path.join(folder, "adapter_model.safetensors"))
    # what PEFT itself saves for this backbone and config: same key names, same shapes
    made = peft.get_peft_model(
        load_backbone(tiny_bert_dir), peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=P)
    )
    theirs = peft.get_peft_model_state_dict(made)
    assert (
        {k: tuple(v.shape) for k, v in ours.items()}
        == {k: tuple(v.shape) for k, v in theirs.items()}
        == {"prompt_embeddings": (P, 2 * 2 * 32)}
    )
    stored = load_file(os.path.join(exported["plain"]["ckpt"], "model.safetensors"))
    assert torch.equal(ours["prompt_embeddings"], stored["question_encoder.prefix.embedding.weight"])


@pytest.mark.parametrize("kind", ["plain", "mlp"])
def test_peft_loaded_prefix_gives_our_vectors_once_positions_agree(peft, exported, tiny_bert_dir, kind):
    model, _ = load_biencoder(exported[kind]["ckpt"])
    model.eval()
    batch = _questions(tiny_bert_dir)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    peft_model = _peft_model(peft, tiny_bert_dir, exported[kind]["question"])
    with torch.no_grad():
        ours = model.question_encoder.token_states(ids, mask)  # (2, T, 32)
        # PEFT's default: no position_ids, so BERT numbers the real tokens P .. P+T-1
        default = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (2, T, 32)
        shifted = model.backbone(
            input_ids=ids,
            attention_mask=torch.cat([mask.new_ones(2, P), mask], 1),
            position_ids=torch.arange(ids.shape[1]).expand_as(ids) + P,
            **{cache_argument(type(model.backbone)): prefix_cache(model.question_encoder.prefix(2))},
        ).last_hidden_state
        # with peft_position_ids PEFT's tokens sit at 0 .. T-1, as ours do
        aligned = peft_model(
            input_ids=ids, attention_mask=mask, position_ids=peft_position_ids(ids, P)
        ).last_hidden_state
    assert torch.equal(default, shifted)
    assert (default - ours).abs().max() > 1e-2  # the documented difference is real
    assert torch.equal(aligned, ours)
    assert torch.equal(aligned[:, 0], model.encode_query(ids, mask))  # cls pooling, no projection


@pytest.mark.parametrize("kind", ["plain", "mlp"])
def test_round_trip_ours_peft_ours(exported, tiny_bert_dir, tmp_path, kind):
    paths = exported[kind]
    back = import_adapters(paths["question"], str(tmp_path / "back"), paths["passage"])
    original, info = load_biencoder(paths["ckpt"])
    restored, restored_info = load_biencoder(back)
    before = load_file(os.path.join(paths["ckpt"], "model.safetensors"))
    after = load_file(os.path.join(back, "model.safetensors"))
    if kind == "plain":  # the prefix weights themselves come back bit for bit, with the same config
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        assert restored_info.encoder == info.encoder
        assert restored.passage_identity() == original.passage_identity()  # so its old index stays valid
    else:  # the MLP's output comes back as a plain prefix
        assert not restored_info.encoder.tuning.prefix_mlp
        assert torch.equal(
            after["question_encoder.prefix.embedding.weight"],
            original.question_encoder.prefix.trans(original.question_encoder.prefix.embedding.weight),
        )
    tokenizer = load_tokenizer(tiny_bert_dir)
    for items, side in ((QUESTIONS, "question"), (PASSAGES, "passage")):
        a = encode_texts(original, tokenizer, items, side, max_length=32, batch_size=4)
        b = encode_texts(restored, tokenizer, items, side, max_length=32, batch_size=4)
        assert (a == b).all(), f"{side} vectors differ after the round trip"


@pytest.mark.parametrize("projection", [False, True])
def test_adapter_saved_by_peft_imports(peft, tiny_bert_dir, tmp_path, projection):
    torch.manual_seed(3)
    made = peft.get_peft_model(
        load_backbone(tiny_bert_dir),
        peft.PrefixTuningConfig(
            task_type="FEATURE_EXTRACTION", num_virtual_tokens=P, prefix_projection=projection, encoder_hidden_size=16
        ),
    )
    made.save_pretrained(str(tmp_path / "adapter"))
    assert (
        main(
            [
                "import",
                "--question_adapter",
                str(tmp_path / "adapter"),
                "--out_dir",
                str(tmp_path / "ckpt"),
                "--pretrained_model_cfg",
                tiny_bert_dir,
                "--sequence_length",
                "32",
            ]
        )
        == 0
    )
    model, info = load_biencoder(str(tmp_path / "ckpt"))
    model.eval()
    assert info.encoder.tuning.pre_seq_len == P and info.encoder.head.pooling == "cls"
    batch = _questions(tiny_bert_dir)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    peft_model = _peft_model(peft, tiny_bert_dir, str(tmp_path / "adapter"))
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, attention_mask=mask, position_ids=peft_position_ids(ids, P))
        assert torch.equal(theirs.last_hidden_state[:, 0], model.encode_query(ids, mask))
        assert torch.equal(model.encode_passage(ids, mask), model.encode_query(ids, mask))  # symmetric default


def test_bad_input_is_named(exported, tiny_bert_dir, tmp_path, capsys):
    prompt = make_checkpoint(str(tmp_path / "prompt"), tiny_bert_dir, "prompt", 12)
    with pytest.raises(PeftAdapterError, match="needs a --prefix or --lora encoder; this one is prompt"):
        export_checkpoint(prompt, str(tmp_path / "x"))
    projected = make_checkpoint(str(tmp_path / "proj"), tiny_bert_dir, "prefix", 13, projection_dim=8)
    assert run_cli(main, ["export", "--model_file", projected, "--out_dir", str(tmp_path / "y")]) == 2
    assert "--projection_dim 8 layer after pooling" in capsys.readouterr().err and not (tmp_path / "y").exists()
    # an adapter for another backbone (bert-tiny: hidden 128) onto tiny_bert_dir (hidden 32)
    big = export_checkpoint(make_checkpoint(str(tmp_path / "big"), "bert-tiny", "prefix", 14), str(tmp_path / "bq"))
    with pytest.raises(
        CheckpointMismatchError, match="bq was trained on another backbone .*hidden_size: checkpoint 128, backbone 32"
    ):
        import_adapters(big, str(tmp_path / "z"), pretrained_model_cfg=tiny_bert_dir)
    os.remove(os.path.join(big, "dpr_encoder.json"))  # a plain PEFT folder: its own fields are checked
    with pytest.raises(
        PeftAdapterError,
        match="bq/adapter_config.json does not fit this encoder .*hidden_size: adapter 128, encoder 32",
    ):
        import_adapters(big, str(tmp_path / "z"), pretrained_model_cfg=tiny_bert_dir, sequence_length=32)
    folder = tmp_path / "ia3"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "task_type": "FEATURE_EXTRACTION"}))
    save_file({"x": torch.zeros(1)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(PeftAdapterError, match=r"adapter_config.json: peft_type 'IA3', expected 'PREFIX_TUNING'"):
        import_adapters(str(folder), str(tmp_path / "z"))
    os.remove(folder / "adapter_model.safetensors")
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(PeftAdapterError, match="adapter_model.safetensors: missing .*a pickle, which is never loaded"):
        import_adapters(str(folder), str(tmp_path / "z"))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    config = json.loads(open(os.path.join(exported["plain"]["question"], "adapter_config.json")).read())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "num_virtual_tokens": 6}))
    save_file({"prompt_embeddings": torch.zeros(P, 128)}, str(wrong / "adapter_model.safetensors"))
    with pytest.raises(
        PeftAdapterError,
        match=r"prompt_embeddings has shape \(4, 128\), adapter_config.json "
        r"implies \(6, 128\)",
    ):
        import_adapters(str(wrong), str(tmp_path / "z"))
    assert not (tmp_path / "z").exists()


# LoRA: our --lora deltas <-> PEFT LORA adapter folders (dpr.models.peft_lora).


def _lora_folders(tiny_bert_dir, root) -> dict[str, str]:
    ckpt = make_checkpoint(str(root / "lora"), tiny_bert_dir, "lora", 21, lora_r=4, lora_alpha=8.0)
    return {
        "ckpt": ckpt,
        "question": export_checkpoint(ckpt, str(root / "lora_q"), "question"),
        "passage": export_checkpoint(ckpt, str(root / "lora_p"), "passage"),
    }


@pytest.fixture(scope="module")
def lora_exported(tiny_bert_dir, tmp_path_factory) -> dict[str, str]:
    return _lora_folders(tiny_bert_dir, tmp_path_factory.mktemp("peft_lora"))


def test_lora_export_has_peft_s_own_keys_and_shapes(peft, lora_exported, tiny_bert_dir):
    folder = lora_exported["question"]
    config = json.loads(open(os.path.join(folder, "adapter_config.json")).read())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == (
        "LORA",
        "FEATURE_EXTRACTION",
        4,
        8,
    )
    assert len(config["target_modules"]) == 12 and "encoder.layer.1.output.dense" in config["target_modules"]
    ours = load_file(os.path.join(folder, "adapter_model.safetensors"))
    made = peft.get_peft_model(
        load_backbone(tiny_bert_dir),
        peft.LoraConfig(
            task_type="FEATURE_EXTRACTION", r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"]
        ),
    )
    theirs = peft.get_peft_model_state_dict(made)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert ours["base_model.model.encoder.layer.0.intermediate.dense.lora_B.weight"].shape == (37, 4)
    stored = load_file(os.path.join(lora_exported["ckpt"], "model.safetensors"))
    assert torch.equal(
        ours["base_model.model.encoder.layer.1.attention.self.key.lora_A.weight"],
        stored["question_encoder.lora.deltas.encoder__layer__1__attention__self__key.A.weight"],
    )


@pytest.mark.parametrize("pooler", [False, True])
def test_peft_loaded_lora_gives_our_vectors(peft, lora_exported, tiny_bert_dir, pooler):
    from transformers import BertModel

    model, _ = load_biencoder(lora_exported["ckpt"])
    model.eval()
    batch = _questions(tiny_bert_dir)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for side, encoder in (("question", model.question_encoder), ("passage", model.ctx_encoder)):
        # exact target paths: a BertModel with a pooler gets no LoRA on pooler.dense
        base = BertModel.from_pretrained(tiny_bert_dir) if pooler else load_backbone(tiny_bert_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = peft.PeftModel.from_pretrained(base, lora_exported[side]).eval()
        with torch.no_grad():
            theirs = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (2, T, 32)
            ours = encoder.token_states(ids, mask)
            plain = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        assert (ours[real] - plain[real]).abs().max() > 1e-2  # the deltas do something
        torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=0)


def test_lora_round_trip_ours_peft_ours(lora_exported, tiny_bert_dir, tmp_path):
    back = import_adapters(lora_exported["question"], str(tmp_path / "back"), lora_exported["passage"])
    original, info = load_biencoder(lora_exported["ckpt"])
    restored, restored_info = load_biencoder(back)
    before = load_file(os.path.join(lora_exported["ckpt"], "model.safetensors"))
    after = load_file(os.path.join(back, "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert restored_info.encoder == info.encoder
    assert restored.passage_identity() == original.passage_identity()
    tokenizer = load_tokenizer(tiny_bert_dir)
    for items, side in ((QUESTIONS, "question"), (PASSAGES, "passage")):
        a = encode_texts(original, tokenizer, items, side, max_length=32, batch_size=4)
        b = encode_texts(restored, tokenizer, items, side, max_length=32, batch_size=4)
        assert (a == b).all(), f"{side} vectors differ after the round trip"


@pytest.mark.parametrize("layers", [None, [1]])
def test_lora_adapter_saved_by_peft_imports(peft, tiny_bert_dir, tmp_path, layers):
    torch.manual_seed(4)
    lora = peft.LoraConfig(
        task_type="FEATURE_EXTRACTION",
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["query", "value"],
        layers_to_transform=layers,
    )
    made = peft.get_peft_model(load_backbone(tiny_bert_dir), lora)
    with torch.no_grad():
        for name, param in made.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.3)  # PEFT's B starts at zero: the identity would prove nothing
    made.save_pretrained(str(tmp_path / "adapter"))
    argv = ["import", "--question_adapter", str(tmp_path / "adapter"), "--out_dir", str(tmp_path / "ckpt")]
    assert main([*argv, "--pretrained_model_cfg", tiny_bert_dir, "--sequence_length", "32"]) == 0
    model, info = load_biencoder(str(tmp_path / "ckpt"))
    model.eval()
    assert info.encoder.tuning == LoraConfig(lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_target=("query", "value"))
    batch = _questions(tiny_bert_dir)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    made.eval()
    with torch.no_grad():
        theirs = made(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        torch.testing.assert_close(model.encode_query(ids, mask), theirs, atol=1e-5, rtol=0)
        assert torch.equal(model.encode_passage(ids, mask), model.encode_query(ids, mask))  # symmetric default
        plain = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        assert (theirs - plain).abs().max() > 1e-2
    if layers == [1]:  # the layer PEFT left out is the identity here
        delta = model.question_encoder.lora.delta("encoder.layer.0.attention.self.query")
        assert not delta.B.weight.any()


def test_bad_lora_input_is_named(lora_exported, exported, tiny_bert_dir, tmp_path):
    folder = tmp_path / "dora"
    folder.mkdir()
    config = json.loads(open(os.path.join(lora_exported["question"], "adapter_config.json")).read())
    weights = load_file(os.path.join(lora_exported["question"], "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(PeftAdapterError, match="dora/adapter_config.json: use_dora True is not supported here"):
        import_adapters(str(folder), str(tmp_path / "z"))
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 2}))
    with pytest.raises(PeftAdapterError, match=r"expected \(r, in\) and \(out, r\) with r = 2"):
        import_adapters(str(folder), str(tmp_path / "z"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_magnitude_vector"
    save_file({**weights, key: torch.ones(32)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(PeftAdapterError, match="lora_magnitude_vector' is not a LoRA weight of a linear layer"):
        import_adapters(str(folder), str(tmp_path / "z"))
    with pytest.raises(PeftAdapterError, match="are adapters of different types: use one type"):
        import_adapters(lora_exported["question"], str(tmp_path / "z"), exported["plain"]["passage"])
    projected = make_checkpoint(str(tmp_path / "proj"), tiny_bert_dir, "lora", 22, projection_dim=8)
    with pytest.raises(PeftAdapterError, match="--projection_dim 8 layer after pooling"):
        export_checkpoint(projected, str(tmp_path / "y"))
    question_side = make_checkpoint(str(tmp_path / "qs"), tiny_bert_dir, "lora", 23, tune_side="question")
    with pytest.raises(PeftAdapterError, match="needs a --prefix or --lora encoder; this one is finetune"):
        export_checkpoint(question_side, str(tmp_path / "y"), "passage")  # the fixed base passage encoder
    assert not (tmp_path / "z").exists() and not (tmp_path / "y").exists()
