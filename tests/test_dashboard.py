"""Watching training: train_log.jsonl across a crash and resume, TensorBoard scalars, the curves PNG, model cards."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

import pytest
from helpers import colbert_train_argv, dpr_train_argv

import train_dense_encoder
from colbert import train as colbert_train
from colbert import training as colbert_training
from colbert.checkpoint import list_checkpoints as colbert_checkpoints
from colbert.checkpoint import load_colbert
from dpr.models.checkpoint_format import CARD_FILE, load_biencoder
from dpr.models.encoder import parameter_counts
from dpr.training import trainer as trainer_module
from dpr.training.dashboard import CURVES_FILE, TENSORBOARD_DIR, TRAIN_LOG, DashboardError, read_train_log
from dpr.training.run_dir import list_checkpoints, read_best

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# 24 questions / batch 4 = 6 batches an epoch; validation (and a checkpoint) after batches 3 and 6.
DPR_RUN = (
    *("--batch_size", "4", "--dev_batch_size", "4", "--sequence_length", "32", "--seed", "3"),
    *("--prefix", "--pre_seq_len", "4", "--learning_rate", "0.01", "--num_train_epochs", "1"),
    *("--eval_per_epoch", "2", "--warmup_steps", "1", "--log_batch_step", "1", "--keep_checkpoints", "5"),
)
PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def _dpr(model_dir, files, out, *extra) -> int:
    train, dev = files
    return train_dense_encoder.main(dpr_train_argv(model_dir, train, dev, str(out), *DPR_RUN, *extra))


def _crash_before(monkeypatch, position: tuple[int, int]) -> None:
    """Make the DPR loop die (as a kill would) when it reaches batch ``position`` = (epoch, iteration)."""
    original = trainer_module.BiEncoderTrainer._micro_step

    def dying(self, epoch, samples, iteration):
        if (epoch, iteration) == position:
            raise KeyboardInterrupt
        return original(self, epoch, samples, iteration)

    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_micro_step", dying)


def _crash_and_resume(monkeypatch, tiny_bert_dir, files, out, *extra) -> None:
    """Checkpoint 0.3, a train line for batch 4 after it, killed in batch 5; then the same command again."""
    with monkeypatch.context() as patch:
        _crash_before(patch, (0, 4))
        with pytest.raises(KeyboardInterrupt):
            _dpr(tiny_bert_dir, files, out, *extra)
    assert [os.path.basename(p) for _, p in list_checkpoints(str(out), "dpr_biencoder")] == ["dpr_biencoder.0.3"]
    assert [(r["epoch"], r["iteration"]) for r in read_train_log(str(out))][-1] == (0, 4)  # past the checkpoint
    assert _dpr(tiny_bert_dir, files, out, *extra) == 0


def _measured(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in records]  # the rate is wall-clock


def test_train_log_after_a_crash_and_resume_equals_an_uninterrupted_runs(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch
):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    assert _dpr(tiny_bert_dir, tiny_dpr_files, full, "--tensorboard", "off") == 0
    _crash_and_resume(monkeypatch, tiny_bert_dir, tiny_dpr_files, crashed, "--tensorboard", "off")
    expected, resumed = read_train_log(str(full)), read_train_log(str(crashed))
    positions = [(r["epoch"], r["iteration"]) for r in resumed]
    assert positions == [(0, i) for i in range(1, 7)]  # every batch once: batch 4 not repeated, none lost
    assert [r["step"] for r in resumed] == list(range(1, 7))  # one optimizer step a batch
    assert _measured(resumed) == _measured(expected)  # the resume is exact, so the losses are the same
    assert all(r["samples_per_s"] > 0 for r in resumed) and resumed[0]["lr"] > 0 == resumed[-1]["lr"]  # decayed to 0
    assert not os.path.exists(crashed / TENSORBOARD_DIR)


def test_tensorboard_scalars_survive_a_resume_without_repeated_steps(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _crash_and_resume(monkeypatch, tiny_bert_dir, tiny_dpr_files, out, "--tensorboard", "on")
    events = EventAccumulator(str(out / TENSORBOARD_DIR))
    events.Reload()
    assert {"train/loss", "train/lr", "train/loss_mean", "train/samples_per_s", "val/nll"} <= set(
        events.Tags()["scalars"]
    )
    # Both processes wrote events; the batch-4 scalars of the crashed one are purged, not shown twice.
    assert len([name for name in os.listdir(out / TENSORBOARD_DIR) if "tfevents" in name]) == 2
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
    logged = read_train_log(str(out))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in logged])
    history = [json.loads(line) for line in (out / "validation_log.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("val/nll")] == [h["global_step"] for h in history] == [3, 6]
    assert [e.value for e in events.Scalars("val/nll")] == pytest.approx([h["value"] for h in history])


def test_curves_png_and_model_card_of_a_dpr_run(tmp_path, tiny_bert_dir, tiny_dpr_files):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    out = tmp_path / "run"
    assert _dpr(tiny_bert_dir, tiny_dpr_files, out, "--tensorboard", "off") == 0
    png = out / CURVES_FILE
    assert png.read_bytes()[:8] == PNG_HEADER
    height, width, channels = matplotlib_image.imread(str(png)).shape
    assert height > 100 and width > 100 and channels in (3, 4)

    best = read_best(str(out))
    for _, path in list_checkpoints(str(out), "dpr_biencoder"):
        card = open(os.path.join(path, CARD_FILE), encoding="utf-8").read()
        model, info = load_biencoder(path)  # README.md beside the weights changes nothing in loading
        trainable, total = parameter_counts(model)
        assert f"# {os.path.basename(path)}" in card and "| tuning mode | `prefix` |" in card
        assert f"| trainable parameters | {trainable:,} of {total:,} (" in card
        assert "| pre_seq_len | 4 |" in card  # the tuning config, field by field
        assert f"| validation | nll {info.validation['value']:.4f} at this checkpoint |" in card
        assert "train: `tiny-train.json` (24 samples)" in card and "dev: `tiny-dev.json` (8 samples)" in card
        assert f"load_biencoder({path!r})" in card and f"--model_file {path}" in card
        assert "export_peft.py export" in card  # a prefix checkpoint exports to PEFT
        assert "| precision | fp32 |" in card
    last_card = open(os.path.join(best.path, CARD_FILE), encoding="utf-8").read()
    assert f"| best so far | nll {best.value:.4f} (`{os.path.basename(best.path)}`) |" in last_card


def test_tensorboard_on_without_the_package_fails_before_training(tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    with pytest.raises(DashboardError, match="--tensorboard on needs the tensorboard package.*pip install"):
        _dpr(tiny_bert_dir, tiny_dpr_files, out, "--tensorboard", "on")
    assert not os.path.exists(out / TRAIN_LOG) and not list_checkpoints(str(out), "dpr_biencoder")


def test_without_tensorboard_and_matplotlib_auto_trains_and_says_so(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch, caplog
):
    for name in ("tensorboard", "torch.utils.tensorboard", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="dpr.training.dashboard"):
        assert _dpr(tiny_bert_dir, tiny_dpr_files, out) == 0  # --tensorboard auto
    assert not os.path.exists(out / TENSORBOARD_DIR) and not os.path.exists(out / CURVES_FILE)
    assert len(read_train_log(str(out))) == 6
    skipped = [r for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(skipped) == 1  # said once, not at every validation


def test_colbert_run_logs_resumes_and_writes_cards(tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch):
    from test_colbert_validation import _corpus

    train, dev = tiny_dpr_files
    out = tmp_path / "colbert"
    argv = colbert_train_argv(
        tiny_bert_dir,
        "unused",
        str(out),
        *("--bsize", "4", "--lr", "1e-2", "--maxsteps", "6", "--save_every", "2", "--log_every", "1"),
        *("--dev_file", dev, "--val_ctx_file", _corpus(tmp_path, dev), "--val_every", "4", "--val_metric", "mrr@10"),
        *("--keep_checkpoints", "5", "--resume"),
    )
    argv[argv.index("--triples") : argv.index("--triples") + 2] = ["--dpr_train_file", train]
    original = colbert_training.ColBERTTrainer.train_step

    def dying(self):
        if self.step == 3:  # checkpoint colbert-2 and the train line of step 3 exist; step 4 never ends
            raise KeyboardInterrupt
        return original(self)

    with monkeypatch.context() as patch:
        patch.setattr(colbert_training.ColBERTTrainer, "train_step", dying)
        with pytest.raises(KeyboardInterrupt):
            colbert_train.main(argv)
    assert [r["step"] for r in read_train_log(str(out))] == [1, 2, 3]
    assert colbert_train.main(argv) == 0  # --resume: from colbert-2
    logged = read_train_log(str(out))
    assert [r["step"] for r in logged] == list(range(1, 7))  # step 3 once, as logged again after the resume
    assert all({"loss", "loss_mean", "lr", "linear_lr", "samples_per_s"} <= set(r) for r in logged)

    best = read_best(str(out))
    for step, path in colbert_checkpoints(str(out)):
        card = open(os.path.join(path, CARD_FILE), encoding="utf-8").read()
        model, _ = load_colbert(path)
        trainable, total = parameter_counts(model)
        assert "| model | ColBERT |" in card and "| tuning mode | `prefix` |" in card
        assert f"| trainable parameters | {trainable:,} of {total:,} (" in card
        assert f"optimizer step {step} of 6" in card and f"load_colbert({path!r})" in card
        assert "train: `tiny-train.json` (24 triples)" in card
        assert ("| validation | mrr@10 " in card) == (step in (0, 4, 6))  # validated steps only
    assert f"(`{os.path.basename(best.path)}`)" in open(os.path.join(best.path, CARD_FILE)).read()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / CURVES_FILE).read_bytes()[:8] == PNG_HEADER
    if importlib.util.find_spec("tensorboard") is not None:  # --tensorboard auto
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out / TENSORBOARD_DIR))
        events.Reload()
        assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
        assert [e.step for e in events.Scalars("val/mrr@10")] == [0, 4, 6]
