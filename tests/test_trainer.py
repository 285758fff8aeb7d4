"""The training loop: loss falls, only prefix weights change, exact resume, best checkpoint kept."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import dpr_train_argv
from safetensors.torch import load_file

import train_dense_encoder
from dpr.training import trainer as trainer_module
from dpr.training.run_dir import list_checkpoints, read_best
from dpr.training.trainer import eval_points, linear_schedule, optimizer_steps_per_epoch

SMALL_RUN = ("--batch_size", "4", "--dev_batch_size", "4", "--sequence_length", "32", "--seed", "3")


def argv(model_dir, train, dev, out, *extra):
    return dpr_train_argv(model_dir, train, dev, out, *SMALL_RUN, "--log_batch_step", "3", *extra)


def prefix_weights(path: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(path, "model.safetensors"))


def test_prefix_training_lowers_the_dev_loss_and_changes_only_prefix_weights(tmp_path, tiny_bert_dir, tiny_dpr_files):
    train, _ = tiny_dpr_files
    out = str(tmp_path / "run")
    # Validate on the training questions so that "loss went down" measures what training optimised.
    # The real BERT-tiny: a random tiny BERT maps every text to nearly the same [CLS] vector.
    rc = train_dense_encoder.main(
        argv(
            "bert-tiny",
            train,
            train,
            out,
            "--prefix",
            "--pre_seq_len",
            "4",
            "--learning_rate",
            "0.01",
            "--num_train_epochs",
            "6",
            "--warmup_steps",
            "0",
            "--eval_per_epoch",
            "1",
            "--keep_checkpoints",
            "10",
            "--dropout",
            "0",
        )
    )
    assert rc == 0
    found = list_checkpoints(out, "dpr_biencoder")
    assert len(found) == 6
    for _, path in found:
        config = json.load(open(os.path.join(path, "config.json")))
        assert set(prefix_weights(path)) == {
            "question_encoder.prefix.embedding.weight",
            "ctx_encoder.prefix.embedding.weight",
        }
        assert config["version"] == 2 and config["encoder"]["tuning"]["method"] == "prefix"
    best = read_best(out)
    assert best is not None and best.metric == "nll"
    history = [json.loads(line) for line in open(os.path.join(out, "validation_log.jsonl"))]
    assert [h["metric"] for h in history] == ["nll"] * 6
    assert history[-1]["value"] < 0.8 * history[0]["value"]
    assert best.value == min(h["value"] for h in history)
    first = prefix_weights(found[0][1])
    last = prefix_weights(found[-1][1])
    assert not torch.equal(
        first["question_encoder.prefix.embedding.weight"], last["question_encoder.prefix.embedding.weight"]
    )


def test_interrupted_run_resumes_to_the_same_weights_and_data_order(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch
):
    train, dev = tiny_dpr_files
    common = (
        "--prefix",
        "--pre_seq_len",
        "4",
        "--learning_rate",
        "0.01",
        "--num_train_epochs",
        "2",
        "--eval_per_epoch",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--hard_negatives",
        "2",
        "--warmup_steps",
        "2",
        "--keep_checkpoints",
        "10",
        "--train_rolling_loss_step",
        "5",
    )
    seen: list[tuple[int, int, tuple[str, ...]]] = []
    original = trainer_module.BiEncoderTrainer._micro_step

    def recording(self, epoch, samples, iteration):
        seen.append((epoch, iteration, tuple(s.question for s in samples)))
        return original(self, epoch, samples, iteration)

    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_micro_step", recording)
    full = str(tmp_path / "full")
    assert train_dense_encoder.main(argv(tiny_bert_dir, train, dev, full, *common)) == 0
    uninterrupted = list(seen)

    seen.clear()
    crashed = str(tmp_path / "crashed")

    def crash_after_first_checkpoint(self, epoch, samples, iteration):
        if (epoch, iteration) == (0, 4):  # checkpoint 0.3 exists; batch 4 is never finished
            raise KeyboardInterrupt
        return recording(self, epoch, samples, iteration)

    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_micro_step", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_dense_encoder.main(argv(tiny_bert_dir, train, dev, crashed, *common))
    assert [os.path.basename(p) for _, p in list_checkpoints(crashed, "dpr_biencoder")] == ["dpr_biencoder.0.3"]
    seen[:] = [record for record in seen if record[:2] < (0, 3)]  # batch 3's update was lost in the crash
    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_micro_step", recording)
    assert train_dense_encoder.main(argv(tiny_bert_dir, train, dev, crashed, *common)) == 0  # resumes

    assert seen == uninterrupted  # same batches in the same order, none repeated
    final_full = prefix_weights(list_checkpoints(full, "dpr_biencoder")[-1][1])
    final_resumed = prefix_weights(list_checkpoints(crashed, "dpr_biencoder")[-1][1])
    for name in final_full:  # bit for bit, not merely close
        assert float((final_resumed[name] - final_full[name]).abs().max()) == 0.0
    # The training curve too: train_loss is the mean of a rolling window the checkpoint must carry.
    log = [open(os.path.join(out, "validation_log.jsonl")).read() for out in (full, crashed)]
    assert log[0] == log[1] and log[0].count("\n") == 4


def test_best_checkpoint_survives_pruning(tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch):
    train, dev = tiny_dpr_files
    out = str(tmp_path / "run")
    values = iter([3.0, 1.0, 2.0, 2.5])  # the second validation is the best

    def fake_validate(self):
        from dpr.training.validation import ValidationResult

        return ValidationResult("nll", next(values), {})

    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "validate", fake_validate)
    flags = ("--prefix", "--num_train_epochs", "2", "--eval_per_epoch", "2", "--keep_checkpoints", "1")
    assert train_dense_encoder.main(argv(tiny_bert_dir, train, dev, out, *flags)) == 0
    names = sorted(os.path.basename(p) for _, p in list_checkpoints(out, "dpr_biencoder"))
    best = read_best(out)
    assert best.value == 1.0 and os.path.basename(best.path) == "dpr_biencoder.0.6"
    assert names == ["dpr_biencoder.0.6", "dpr_biencoder.1.6"]  # best + latest; the other two are gone


def test_fix_ctx_encoder_trains_the_question_side_only(tmp_path, tiny_bert_dir, tiny_dpr_files):
    train, dev = tiny_dpr_files
    out = str(tmp_path / "run")
    flags = ("--prefix", "--fix_ctx_encoder", "--learning_rate", "0.05", "--num_train_epochs", "1")
    flags += ("--keep_checkpoints", "5", "--eval_per_epoch", "2")
    assert train_dense_encoder.main(argv(tiny_bert_dir, train, dev, out, *flags)) == 0
    # DPR's --fix_ctx_encoder is --tune_side question: the passage side is the untouched base model, so
    # the checkpoints hold the question prefix only (no frozen random passage prefix).
    (_, first), (_, last) = list_checkpoints(out, "dpr_biencoder")
    a, b = prefix_weights(first), prefix_weights(last)
    assert set(a) == set(b) == {"question_encoder.prefix.embedding.weight"}
    assert not torch.equal(a["question_encoder.prefix.embedding.weight"], b["question_encoder.prefix.embedding.weight"])
    config = json.load(open(os.path.join(last, "config.json")))
    assert config["encoder"]["sides"]["tune_side"] == "question"


def test_gradients_are_clipped_once_per_optimizer_step(tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch):
    train, _ = tiny_dpr_files
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or real(*a, **k))
    # 24 questions / batch 4 = 6 micro-batches per epoch, accumulation 3 -> 2 optimizer steps.
    flags = ("--bitfit", "--gradient_accumulation_steps", "3", "--num_train_epochs", "1")
    assert train_dense_encoder.main(argv(tiny_bert_dir, train, train, str(tmp_path / "r"), *flags)) == 0
    assert len(calls) == 2


def test_schedule_and_step_accounting():
    assert eval_points(10, 3) == {3, 6, 9} and eval_points(4, 10) == {0, 1, 2, 3}
    assert optimizer_steps_per_epoch(10, 4, {4, 9}) == 4  # steps after batches 3, 4, 8 and 9
    param = torch.nn.Parameter(torch.zeros(1))
    optim = torch.optim.SGD([param], lr=1.0)
    sched = linear_schedule(optim, warmup=2, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        optim.step()
        sched.step()
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])


def test_bad_training_flags_are_one_line_errors(tmp_path, tiny_bert_dir, tiny_dpr_files, capsys):
    train, dev = tiny_dpr_files
    from dpr.cli import run_cli

    code = run_cli(
        train_dense_encoder.main, argv(tiny_bert_dir, str(tmp_path / "missing-*.json"), dev, str(tmp_path / "o"))
    )
    assert code == 2 and "missing-*.json" in capsys.readouterr().err
    code = run_cli(train_dense_encoder.main, argv(tiny_bert_dir, train, dev, str(tmp_path / "o"), "--batch_size", "0"))
    assert code == 2 and "--batch_size must be >= 1" in capsys.readouterr().err
