"""Runs that diverge, restart, change settings or find damaged files: a clear error or an exact resume,
never a silently wrong run folder. Includes SIGKILL at the most fragile moments of a checkpoint."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import pytest
import torch
from helpers import dpr_train_argv

import train_dense_encoder
from dpr.cli import run_cli
from dpr.training import trainer as trainer_module
from dpr.training.resume import ResumeError
from dpr.training.run_dir import list_checkpoints, read_best
from dpr.training.trainer import TrainingDivergedError
from dpr.training.validation import ValidationResult

sys.path.append(os.path.join(os.path.dirname(__file__), "..", "bench"))
import kill_resume  # noqa: E402

COMMON = (
    "--prefix",
    "--pre_seq_len",
    "4",
    "--batch_size",
    "4",
    "--dev_batch_size",
    "4",
    "--sequence_length",
    "32",
    "--seed",
    "3",
    "--learning_rate",
    "0.01",
    "--log_batch_step",
    "100",
    "--keep_checkpoints",
    "10",
)


def argv(model_dir, train, dev, out, *extra):
    return dpr_train_argv(model_dir, train, dev, out, *COMMON, *extra)


def names(out) -> list[str]:
    return [os.path.basename(p) for _, p in list_checkpoints(out, "dpr_biencoder")]


def error_line(capsys) -> str:
    """The CLI's one-line error (a progress bar cut short may also be on stderr)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")][-1]


def log_of(out) -> str:
    return open(os.path.join(out, "validation_log.jsonl")).read()


def crash_at(monkeypatch, when):
    """Make the run raise KeyboardInterrupt (a Ctrl-C) when it reaches batch ``when`` = (epoch, iteration)."""
    original = trainer_module.BiEncoderTrainer._micro_step

    def step(self, epoch, samples, iteration):
        if (epoch, iteration) == when:
            raise KeyboardInterrupt
        return original(self, epoch, samples, iteration)

    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_micro_step", step)
    return lambda: monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_micro_step", original)


def poison_loss(monkeypatch, from_call):
    calls, real = [0], trainer_module.global_biencoder_loss

    def loss(*args):
        calls[0] += 1
        value, correct = real(*args)
        return (value * math.nan if calls[0] >= from_call else value), correct

    monkeypatch.setattr(trainer_module, "global_biencoder_loss", loss)


def poison_weights(monkeypatch, at_step):
    real = trainer_module.BiEncoderTrainer._optimizer_step

    def step(self):
        real(self)
        if self.position.global_step == at_step:
            with torch.no_grad():
                self.trainable[0].fill_(math.inf)

    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_optimizer_step", step)


def poison_validation(monkeypatch, values):
    values = iter(values)
    monkeypatch.setattr(
        trainer_module.BiEncoderTrainer, "validate", lambda self: ValidationResult("nll", next(values), {})
    )


@pytest.mark.parametrize("what", ["loss", "weights", "validation"])
def test_a_diverging_run_stops_naming_where_and_keeps_its_last_good_checkpoint(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch, capsys, what
):
    train, dev = tiny_dpr_files
    out = str(tmp_path / "run")
    # 6 batches, validation after batches 2 and 5: the first checkpoint (0.3) is good, then it goes wrong.
    if what == "loss":
        poison_loss(monkeypatch, from_call=4)
        where = "epoch 0, batch 3 (optimizer step 3): the training loss is nan"
    elif what == "weights":
        poison_weights(monkeypatch, at_step=4)
        where = "epoch 0, batch 3 (optimizer step 4): the tuned weights are no longer finite"
    else:
        poison_validation(monkeypatch, [1.0, math.nan, math.nan])
        where = "epoch 0, batch 5 (optimizer step 6): the validation nll is nan"
    with pytest.raises(TrainingDivergedError, match=r"diverged at " + where.replace("(", r"\(").replace(")", r"\)")):
        train_dense_encoder.main(
            argv(tiny_bert_dir, train, dev, out, "--num_train_epochs", "1", "--eval_per_epoch", "2")
        )
    assert names(out) == ["dpr_biencoder.0.3"]
    best = read_best(out)
    assert best.path == os.path.join(out, "dpr_biencoder.0.3") and math.isfinite(best.value)
    assert [json.loads(line)["iteration"] for line in log_of(out).splitlines()] == [3]
    # The CLI says it in one line, naming the checkpoint that is kept and what to try.
    assert (
        run_cli(
            train_dense_encoder.main,
            argv(tiny_bert_dir, train, dev, out, "--num_train_epochs", "1", "--eval_per_epoch", "2"),
        )
        == 2
    )
    err = error_line(capsys)
    assert err.startswith("error: training diverged") and "dpr_biencoder.0.3 is kept" in err
    assert "--learning_rate" in err


def test_non_finite_float_flags_are_refused_up_front(tmp_path, tiny_bert_dir, tiny_dpr_files, capsys):
    train, dev = tiny_dpr_files
    for value in ("inf", "nan"):
        assert (
            run_cli(
                train_dense_encoder.main, argv(tiny_bert_dir, train, dev, str(tmp_path / "o"), "--learning_rate", value)
            )
            == 2
        )
        assert f"--learning_rate must be a finite number, got {value}" in capsys.readouterr().err


def test_a_latest_checkpoint_without_training_state_is_an_error_not_a_silent_restart(
    tmp_path, tiny_bert_dir, tiny_dpr_files, capsys
):
    train, dev = tiny_dpr_files
    out = str(tmp_path / "run")
    args = argv(tiny_bert_dir, train, dev, out, "--num_train_epochs", "2", "--eval_per_epoch", "1")
    assert train_dense_encoder.main(args) == 0
    os.remove(os.path.join(out, "dpr_biencoder.1.6", "training_state.pt"))
    assert run_cli(train_dense_encoder.main, args) == 2
    err = capsys.readouterr().err
    assert f"{os.path.join(out, 'dpr_biencoder.1.6')} is the latest checkpoint" in err and "no training_state.pt" in err
    assert "delete that folder to resume from the checkpoint before it" in err
    assert names(out) == ["dpr_biencoder.0.6", "dpr_biencoder.1.6"]  # nothing was pruned or overwritten


def test_a_restart_of_a_run_started_from_model_file_resumes_it_exactly(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch, capsys
):
    train, dev = tiny_dpr_files
    assert (
        train_dense_encoder.main(
            argv(tiny_bert_dir, train, dev, str(tmp_path / "a"), "--num_train_epochs", "1", "--eval_per_epoch", "1")
        )
        == 0
    )
    weights_only = str(tmp_path / "weights-only")  # a checkpoint without training state
    shutil.copytree(str(tmp_path / "a" / "dpr_biencoder.0.6"), weights_only)
    os.remove(os.path.join(weights_only, "training_state.pt"))

    def run(out, *extra):
        return train_dense_encoder.main(
            argv(
                tiny_bert_dir,
                train,
                dev,
                out,
                "--model_file",
                weights_only,
                "--num_train_epochs",
                "2",
                "--eval_per_epoch",
                "2",
                *extra,
            )
        )

    unbroken, crashed = str(tmp_path / "unbroken"), str(tmp_path / "crashed")
    assert run(unbroken) == 0
    restore = crash_at(monkeypatch, (1, 1))
    with pytest.raises(KeyboardInterrupt):
        run(crashed)
    restore()
    assert names(crashed) == ["dpr_biencoder.0.3", "dpr_biencoder.0.6"]
    assert run(crashed) == 0  # the same command: resumes at epoch 1
    assert log_of(crashed) == log_of(unbroken)  # no restart from scratch, no duplicated lines
    assert (
        names(crashed)
        == names(unbroken)
        == ["dpr_biencoder.0.3", "dpr_biencoder.0.6", "dpr_biencoder.1.3", "dpr_biencoder.1.6"]
    )
    assert kill_resume.compare_runs(unbroken, crashed)["max_abs_delta"] == 0.0
    assert json.load(open(os.path.join(crashed, "dpr_biencoder.1.6", "config.json")))["training"][
        "init_checkpoint"
    ] == os.path.realpath(weights_only)
    # Another --model_file than the one this output folder's run started from: refused, not ignored.
    other = str(tmp_path / "a" / "dpr_biencoder.0.6")
    flags = ("--model_file", other, "--num_train_epochs", "2", "--eval_per_epoch", "2")
    assert run_cli(train_dense_encoder.main, argv(tiny_bert_dir, train, dev, crashed, *flags)) == 2
    assert f"already holds a run started from {os.path.realpath(weights_only)}, not from" in capsys.readouterr().err
    # An older checkpoint of the output folder itself: refused too (the later ones would be pruned).
    flags = ("--model_file", os.path.join(crashed, "dpr_biencoder.0.6"), "--num_train_epochs", "2")
    with pytest.raises(ResumeError, match="is an older checkpoint of --output_dir"):
        train_dense_encoder.main(argv(tiny_bert_dir, train, dev, crashed, *flags))


def test_resuming_with_other_settings_is_refused_unless_allowed_and_then_honoured(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch
):
    train, dev = tiny_dpr_files
    out = str(tmp_path / "run")
    base = ("--num_train_epochs", "2", "--eval_per_epoch", "1", "--warmup_steps", "2")
    restore = crash_at(monkeypatch, (1, 0))
    with pytest.raises(KeyboardInterrupt):
        train_dense_encoder.main(argv(tiny_bert_dir, train, dev, out, *base))
    restore()
    changed = argv(tiny_bert_dir, train, dev, out, *base, "--learning_rate", "0.02", "--hard_negatives", "2")
    with pytest.raises(
        ResumeError,
        match=r"learning_rate: 0\.01 -> 0\.02; hard_negatives: 1 -> 2\. .*"
        r"--allow_changed_settings",
    ):
        train_dense_encoder.main(changed)
    seen = {}
    real = trainer_module.BiEncoderTrainer._restore

    def restore_and_look(self, state):
        real(self, state)
        seen.update(
            lrs=[g["lr"] for g in self.optimizer.param_groups],
            base=list(self.scheduler.base_lrs),
            step=self.scheduler.last_epoch,
            total=self.total_steps,
        )

    monkeypatch.setattr(trainer_module.BiEncoderTrainer, "_restore", restore_and_look)
    assert train_dense_encoder.main(changed + ["--allow_changed_settings", "--log_batch_step", "7"]) == 0
    # The new learning rate, at the stored point of the schedule (warmup 2, then linear decay to 0).
    assert seen["base"] == [0.02] and seen["step"] == 6 and seen["total"] == 12
    assert seen["lrs"] == [pytest.approx(0.02 * (12 - 6) / (12 - 2))]
    saved = json.load(open(os.path.join(out, "dpr_biencoder.1.6", "config.json")))["training"]
    assert saved["learning_rate"] == 0.02 and saved["hard_negatives"] == 2
    # Settings that cannot change the result never block.
    assert train_dense_encoder.main(changed + ["--keep_checkpoints", "3", "--log_batch_step", "5"]) == 0


def test_a_best_checkpoint_survives_a_resume_from_another_working_directory(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch
):
    train, dev = tiny_dpr_files
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    poison_validation(monkeypatch, [3.0, 1.0, 2.0, 2.5])  # the second validation (0.6) is the best
    args = ("--num_train_epochs", "2", "--eval_per_epoch", "2", "--keep_checkpoints", "1")
    monkeypatch.chdir(tmp_path / "a")
    restore = crash_at(monkeypatch, (1, 1))
    with pytest.raises(KeyboardInterrupt):
        train_dense_encoder.main(argv(tiny_bert_dir, train, dev, "run", *args))
    restore()
    monkeypatch.chdir(tmp_path / "b")
    out = str(tmp_path / "a" / "run")
    assert train_dense_encoder.main(argv(tiny_bert_dir, train, dev, out, *args)) == 0
    assert names(out) == ["dpr_biencoder.0.6", "dpr_biencoder.1.6"]
    assert read_best(out).path == os.path.join(out, "dpr_biencoder.0.6") and read_best(out).value == 1.0
    from dpr.training.checkpoint import read_checkpoint_info

    assert read_checkpoint_info("../a/run").path == os.path.join("../a/run", "dpr_biencoder.0.6")


def test_damaged_checkpoint_files_are_one_line_errors_naming_them(
    tmp_path, tiny_bert_dir, tiny_dpr_files, monkeypatch, capsys
):
    train, dev = tiny_dpr_files
    out = str(tmp_path / "run")
    args = argv(tiny_bert_dir, train, dev, out, "--num_train_epochs", "2", "--eval_per_epoch", "1")
    restore = crash_at(monkeypatch, (1, 0))
    with pytest.raises(KeyboardInterrupt):
        train_dense_encoder.main(args)
    restore()
    latest = os.path.join(out, "dpr_biencoder.0.6")
    for name in ("model.safetensors", "training_state.pt"):
        path = os.path.join(latest, name)
        good = open(path, "rb").read()
        open(path, "wb").write(good[: len(good) // 2])
        assert run_cli(train_dense_encoder.main, args) == 2
        err = error_line(capsys)
        assert err.startswith(f"error: {path} is damaged") and "weights_only" not in err
        assert f"delete the folder {latest}" in err
        open(path, "wb").write(good)
    assert train_dense_encoder.main(args) == 0


def test_unusable_data_and_output_dirs_are_refused_before_anything_is_built(tmp_path, tiny_dpr_files, capsys):
    train, dev = tiny_dpr_files
    no_positive = tmp_path / "no-positive.json"
    no_positive.write_text(json.dumps([{"question": "q", "positive_ctxs": [], "hard_negative_ctxs": []}]))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    missing_model = str(tmp_path / "no-such-model")  # never reached: the data is checked first
    # (The readers may say it first; either way the message names the file.)
    cases = [
        (str(no_positive), dev, str(no_positive)),
        (train, str(no_positive), str(no_positive)),
        (str(empty), dev, str(empty)),
        (train, str(tmp_path / "dev-*.json"), "no file matches the pattern"),
    ]
    for train_file, dev_file, named in cases:
        assert run_cli(train_dense_encoder.main, argv(missing_model, train_file, dev_file, str(tmp_path / "o"))) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err and ("no usable sample" in err or "matches" in err)
    a_file = tmp_path / "out-file"
    a_file.write_text("")
    assert run_cli(train_dense_encoder.main, argv(missing_model, str(tmp_path / "missing.json"), dev, str(a_file))) == 2
    assert f"error: --output_dir {a_file} is a file, not a folder" in capsys.readouterr().err


def test_sigkill_at_the_fragile_moments_of_a_checkpoint_resumes_to_identical_results(
    tmp_path, tiny_bert_dir, tiny_dpr_files
):
    """Real SIGKILLs: inside the checkpoint write, between its rename and its log line, half-way through
    the log line, between the log line and the best record; the run then finishes as if never killed.
    bench/kill_resume.py does the same with random kills, many rounds."""
    train, dev = tiny_dpr_files
    context = kill_resume.forkserver()
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    kill_resume.run_until_done(
        context, kill_resume.training_argv(tiny_bert_dir, train, dev, reference), reference + ".log", []
    )
    kills = [kill_resume.Kill(point) for point in ("in_checkpoint", "after_checkpoint", "torn_log", "before_best")]
    codes, landed = kill_resume.run_until_done(
        context, kill_resume.training_argv(tiny_bert_dir, train, dev, killed), killed + ".log", kills
    )
    assert codes == [-9, -9, -9, -9, 0]
    assert landed == [
        "inside a checkpoint write",
        "between a checkpoint and its log line",
        "inside a log line",
        "elsewhere",
    ]
    result = kill_resume.compare_runs(reference, killed)
    assert result == {"same_files": True, "max_abs_delta": 0.0, "same_log": True, "same_best": True, "log_lines": 4}
