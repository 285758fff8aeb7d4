"""GradCache gives the plain step's gradients: fine-tuning, a both-sides prefix, question-side with cached passages."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import dpr_train_argv, spawn_workers, tiny_bert
from safetensors.torch import load_file

import train_dense_encoder
from dpr.configs import BiEncoderConfig, ConfigError
from dpr.data.batching import BiEncoderBatch
from dpr.device import MixedPrecision
from dpr.models.biencoder import build_biencoder_from_backbone
from dpr.options import TrainConfig
from dpr.training import trainer as trainer_module
from dpr.training.distributed import (
    DistributedContext,
    cleanup_distributed,
    global_biencoder_loss,
    init_distributed,
    wrap_ddp,
)
from dpr.training.grad_cache import grad_cache_step
from dpr.training.resume import changed_settings
from dpr.training.run_dir import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

CTX = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
B, PER_QUESTION, T = 5, 3, 12  # C = 15 passages
SCALE = 20.0


def make_model(tuning: str, dropout: float = 0.0, **kw):
    cfg = BiEncoderConfig.from_flat(
        pretrained_model_cfg="tiny",
        tuning=tuning,
        pre_seq_len=4,
        pooling="cls",
        normalize=True,
        sequence_length=32,
        prefix_hidden_size=16,
        prefix_dropout=dropout,
        **kw,
    )
    backbone = tiny_bert(0, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = build_biencoder_from_backbone(cfg, backbone)
    torch.manual_seed(1)
    with torch.no_grad():  # randomise the tuned prefix so that it matters
        for name, param in model.named_parameters():
            if param.requires_grad and "backbone" not in name:
                param.normal_(std=0.5)
    return model.train()


def make_batch(seed: int = 0) -> BiEncoderBatch:
    g = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.randint(5, 99, (n, T), generator=g)  # (n, T)
        lengths = torch.randint(3, T + 1, (n,), generator=g)  # (n,)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (n, T)
        return ids * mask, mask, torch.zeros_like(ids)

    q_ids, q_mask, q_seg = tokens(B)
    c_ids, c_mask, c_seg = tokens(B * PER_QUESTION)
    positive = torch.arange(B) * PER_QUESTION  # (B,)
    return BiEncoderBatch(q_ids, q_mask, q_seg, c_ids, c_mask, c_seg, positive)


def plain_step(model, batch, amp, passages=None, accumulation=1, ctx=CTX) -> float:
    """What BiEncoderTrainer._micro_step does without --grad_cache."""
    with amp.autocast:
        if passages is None:
            q, c = model(*batch.question_inputs(), *batch.passage_inputs())
        else:
            q, _ = model(*batch.question_inputs())
            c = passages
    loss, _ = global_biencoder_loss(q.float() * SCALE, c.float(), batch.positive_idx, ctx)
    amp.backward(loss / accumulation)
    return float(loss.detach())


def cached_step(model, batch, amp, q_chunk, p_chunk, passages=None, accumulation=1, ctx=CTX) -> float:
    return grad_cache_step(
        model,
        batch,
        scale=SCALE,
        ctx=ctx,
        amp=amp,
        accumulation=accumulation,
        q_chunk_size=q_chunk,
        p_chunk_size=p_chunk,
        passages=passages,
    )


def gradients(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def assert_same(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert expected.keys() == found.keys() and expected
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], atol=atol, rtol=1e-4, msg=name)


def fixed_passages(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_passage(*batch.passage_inputs())  # (C, D)


CASES = {
    "finetune": dict(tuning="finetune"),
    "prefix": dict(tuning="prefix"),
    "question_side": dict(tuning="finetune", tune_side="question"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("q_chunk, p_chunk", [(1, 1), (2, 4), (3, 15), (8, 32)])
def test_grad_cache_gradients_equal_the_plain_step(case, q_chunk, p_chunk):
    model, batch = make_model(**CASES[case]), make_batch()
    amp = MixedPrecision("cpu", "fp32")
    passages = fixed_passages(model, batch) if case == "question_side" else None
    plain_loss = plain_step(model, batch, amp, passages)
    expected = gradients(model)
    loss = cached_step(model, batch, amp, q_chunk, p_chunk, passages)
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    assert_same(expected, gradients(model))
    if case == "question_side":
        assert all(name.startswith("question_encoder.") for name in expected)


def test_grad_cache_composes_with_gradient_accumulation():
    model, amp = make_model("finetune"), MixedPrecision("cpu", "fp32")
    batches = [make_batch(0), make_batch(1)]
    for batch in batches:
        plain_step(model, batch, amp, accumulation=2)
    expected = gradients(model)
    for batch in batches:
        cached_step(model, batch, amp, 2, 4, accumulation=2)
    assert_same(expected, gradients(model))


@pytest.mark.parametrize("case", ["finetune", "prefix"])
def test_grad_cache_replays_dropout(case):
    """With dropout on, each chunk is re-encoded under its own RNG state: a step equals itself, and with one
    chunk per side (the plain forward's order, passages then questions) it equals the plain step."""
    model, batch, amp = make_model(CASES[case]["tuning"], dropout=0.3), make_batch(), MixedPrecision("cpu", "fp32")
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append((cached_step(model, batch, amp, 2, 4), gradients(model)))
    assert runs[0][0] == runs[1][0]
    assert_same(runs[0][1], runs[1][1], atol=0.0)

    torch.manual_seed(7)
    plain_loss = plain_step(model, batch, amp)
    expected = gradients(model)
    torch.manual_seed(7)
    loss = cached_step(model, batch, amp, B, B * PER_QUESTION)
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    assert_same(expected, gradients(model))
    torch.manual_seed(7)
    cached_step(model, batch, amp, 2, 4)  # chunked: other masks, another loss (dropout is really on)
    assert not torch.allclose(next(iter(gradients(model).values())), next(iter(expected.values())))


def test_grad_cache_with_gradient_checkpointing_replays_dropout():
    """Checkpointing saves and restores the RNG state itself: under GradCache it changes nothing."""
    batch, amp = make_batch(), MixedPrecision("cpu", "fp32")
    found = []
    for checkpointing in (False, True):
        model = make_model("finetune", dropout=0.3, gradient_checkpointing=checkpointing)
        torch.manual_seed(7)
        cached_step(model, batch, amp, 2, 4)
        found.append(gradients(model))
    assert_same(found[0], found[1])


def test_grad_cache_refusals():
    with pytest.raises(ConfigError, match="--gc_q_chunk_size"):
        TrainConfig(train_file=("x",), grad_cache=True, gc_q_chunk_size=0)
    with pytest.raises(ConfigError, match="--gc_p_chunk_size"):
        TrainConfig(train_file=("x",), grad_cache=True, gc_p_chunk_size=-1)
    with pytest.raises(ConfigError, match="--grad_cache.*--precision fp16"):
        TrainConfig(train_file=("x",), grad_cache=True, precision="fp16")


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)  # two processes on two cores
    ctx = init_distributed(no_cuda=True)
    finished = False
    try:
        result = _ddp_observe(ctx)  # the DDP wrapper lives only in there (see cleanup_distributed)
        finished = True
    finally:
        cleanup_distributed(synchronize=finished)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _ddp_observe(ctx: DistributedContext) -> dict[str, Any]:
    """Per rank: the plain DDP step's gradients and GradCache's, over two accumulated micro-batches."""
    model = wrap_ddp(make_model("finetune"), ctx)
    amp = MixedPrecision("cpu", "fp32")
    batches = [make_batch(2 * ctx.rank), make_batch(2 * ctx.rank + 1)]  # each rank its own questions
    result: dict[str, Any] = {}
    for name, step in (("plain", plain_step), ("cached", lambda m, b, a, **kw: cached_step(m, b, a, 2, 4, **kw))):
        losses = [step(model, batch, amp, accumulation=2, ctx=ctx) for batch in batches]
        result[name] = {"losses": losses, "grads": {n: g.flatten().tolist() for n, g in gradients(model).items()}}
    return result


def test_grad_cache_under_ddp_equals_the_plain_ddp_step(tmp_path):
    spawn_workers(_ddp_worker, tmp_path, 2)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    reference = results[0]["plain"]
    for res in results:
        assert res["cached"]["losses"] == pytest.approx(reference["losses"], abs=1e-6)
        for which in ("plain", "cached"):  # every rank holds the same averaged gradients
            grads = {n: torch.tensor(g) for n, g in res[which]["grads"].items()}
            assert_same({n: torch.tensor(g) for n, g in reference["grads"].items()}, grads)


def test_grad_cache_training_run_matches_the_plain_run(tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch):
    """Through the CLI and the trainer: the same checkpoint weights, and --grad_cache recorded in its config."""
    train, dev = tiny_dpr_files
    calls = []
    monkeypatch.setattr(trainer_module, "grad_cache_step", lambda *a, **k: calls.append(1) or grad_cache_step(*a, **k))
    common = ("--prefix", "--dropout", "0", "--prefix_dropout", "0", "--batch_size", "4", "--dev_batch_size", "4")
    common += ("--sequence_length", "32", "--num_train_epochs", "1", "--learning_rate", "0.001", "--seed", "3")
    cached = ("--grad_cache", "--gc_q_chunk_size", "3", "--gc_p_chunk_size", "5")
    weights, last = {}, {}
    for name, extra in (("plain", ()), ("cached", cached)):
        out = str(tmp_path / name)
        assert train_dense_encoder.main(dpr_train_argv(tiny_bert_dir, train, dev, out, *common, *extra)) == 0
        _, last[name] = list_checkpoints(out, "dpr_biencoder")[-1]
        weights[name] = load_file(os.path.join(last[name], "model.safetensors"))
    assert len(calls) == 6  # 24 questions / batch 4, all of the second run's steps
    assert_same(weights["plain"], weights["cached"])
    config = json.load(open(os.path.join(last["cached"], "config.json")))
    assert config["training"]["grad_cache"] is True and config["training"]["gc_p_chunk_size"] == 5


def test_runs_that_predate_grad_cache_ran_without_it():
    cfg = TrainConfig(train_file=("x",))
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("grad_cache", "gc_q_chunk_size", "gc_p_chunk_size")}
    assert changed_settings(old, cfg) == []
    assert changed_settings(old, dataclasses.replace(cfg, grad_cache=True)) == ["grad_cache: False -> True"]


def test_grad_cache_under_bf16_autocast_is_close_to_the_plain_step():
    model, batch, amp = make_model("finetune"), make_batch(), MixedPrecision("cpu", "bf16")
    plain_step(model, batch, amp)
    expected = gradients(model)
    cached_step(model, batch, amp, 2, 4)
    found = gradients(model)
    for name in expected:  # bf16 rounding: compare relative to the gradient's size
        assert (found[name] - expected[name]).norm() <= 0.05 * expected[name].norm() + 1e-6, name
