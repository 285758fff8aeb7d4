"""The run folder on its own (no training): best record, pruning, repair after a kill, output dir checks,
and which changed settings block a resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest

from dpr.models.checkpoint_format import FORMAT, read_checkpoint_info, resolve_checkpoint
from dpr.options import TrainConfig
from dpr.training.resume import changed_settings
from dpr.training.run_dir import (
    HISTORY_FILE,
    BestRecord,
    OutputDirError,
    append_history,
    best_record,
    check_output_dir,
    list_checkpoints,
    prune_checkpoints,
    read_best,
    read_history,
    repair_run_dir,
    update_best,
)

PREFIX = "dpr_biencoder"


def fake_checkpoint(run, epoch: int, iteration: int, step: int, value: float | None = None) -> str:
    """A checkpoint folder as list_checkpoints sees it: config.json only (no weights needed here)."""
    path = os.path.join(str(run), f"{PREFIX}.{epoch}.{iteration}")
    os.makedirs(path)
    validation = (
        None
        if value is None
        else {
            "metric": "nll",
            "value": value,
            "epoch": epoch,
            "iteration": iteration,
            "global_step": step,
            "train_loss": 1.5,
        }
    )
    with open(os.path.join(path, "config.json"), "w") as handle:
        json.dump(
            {
                "format": FORMAT,
                "version": 1,
                "encoder": {},
                "backbone": {},
                "validation": validation,
                "position": {"epoch": epoch, "iteration": iteration, "global_step": step},
            },
            handle,
        )
    return path


def record_of(path: str) -> BestRecord:
    return best_record(path, read_checkpoint_info(path).validation)


def test_a_nan_validation_never_becomes_the_best_nor_gets_the_good_best_pruned(tmp_path):
    good = fake_checkpoint(tmp_path, 0, 3, 2, 1.0)
    assert update_best(str(tmp_path), record_of(good))
    nan = fake_checkpoint(tmp_path, 0, 6, 4)
    assert not update_best(str(tmp_path), BestRecord(nan, "nll", math.nan, 0, 6, 4))
    assert not update_best(str(tmp_path), BestRecord(nan, "nll", math.inf, 0, 6, 4))
    fake_checkpoint(tmp_path, 1, 3, 6)
    prune_checkpoints(str(tmp_path), PREFIX, keep=1)
    assert read_best(str(tmp_path)).path == good and os.path.isdir(good)
    # A best file that an older version wrote with NaN is replaced by the first finite value.
    (tmp_path / "best_checkpoint.json").write_text(
        json.dumps({**json.load(open(tmp_path / "best_checkpoint.json")), "value": math.nan})
    )
    assert update_best(str(tmp_path), BestRecord(good, "nll", 2.0, 0, 3, 2))


def test_the_best_record_names_the_folder_so_any_working_directory_finds_it(tmp_path, monkeypatch):
    run = tmp_path / "a" / "run"
    run.mkdir(parents=True)
    best = fake_checkpoint(run, 0, 3, 2, 1.0)
    update_best(str(run), record_of(best))
    assert json.load(open(run / "best_checkpoint.json"))["path"] == f"{PREFIX}.0.3"
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("a/run") == os.path.join("a/run", f"{PREFIX}.0.3")
    # Files written by older versions: a path relative to the training's cwd, or absolute.
    for old in (f"run/{PREFIX}.0.3", f"/elsewhere/run/{PREFIX}.0.3/"):
        (run / "best_checkpoint.json").write_text(
            json.dumps({**json.load(open(run / "best_checkpoint.json")), "path": old})
        )
        assert read_best(str(run)).path == os.path.join(str(run), f"{PREFIX}.0.3")
        fake_checkpoint(run, 0, 6 + len(old), 4)
        fake_checkpoint(run, 1, 6 + len(old), 5)
        prune_checkpoints(str(run), PREFIX, keep=1)  # from another cwd: the best must survive
        assert os.path.isdir(best)


def test_checkpoints_are_ordered_by_step_then_position_not_by_name(tmp_path):
    fake_checkpoint(tmp_path, 0, 10, 5)
    fake_checkpoint(tmp_path, 0, 9, 5)
    fake_checkpoint(tmp_path, 0, 3, 2)
    assert [os.path.basename(p) for _, p in list_checkpoints(str(tmp_path), PREFIX)] == [
        f"{PREFIX}.0.3",
        f"{PREFIX}.0.9",
        f"{PREFIX}.0.10",
    ]


def test_a_kill_after_the_checkpoint_is_repaired_from_the_checkpoints(tmp_path):
    run = str(tmp_path)
    first = fake_checkpoint(tmp_path, 0, 3, 2, 2.0)
    append_history(run, read_checkpoint_info(first).validation)
    update_best(run, record_of(first))
    second = fake_checkpoint(tmp_path, 0, 6, 4, 1.0)  # killed before its log line and best record
    with open(tmp_path / HISTORY_FILE, "a") as handle:
        handle.write('{"metric": "nll", "val')  # ... or half-way through the log line
    repair_run_dir(run, PREFIX)
    assert read_history(run) == [read_checkpoint_info(first).validation, read_checkpoint_info(second).validation]
    assert read_best(run).path == second
    log = (tmp_path / HISTORY_FILE).read_text()
    repair_run_dir(run, PREFIX)  # a second repair changes nothing
    assert (tmp_path / HISTORY_FILE).read_text() == log and log.endswith("\n")
    # Killed between the log line and the best record: the log is complete, the best is behind.
    third = fake_checkpoint(tmp_path, 1, 3, 6, 0.5)
    append_history(run, read_checkpoint_info(third).validation)
    repair_run_dir(run, PREFIX)
    assert read_best(run).path == third and len(read_history(run)) == 3
    os.remove(tmp_path / "best_checkpoint.json")  # lost altogether: rebuilt from all checkpoints
    repair_run_dir(run, PREFIX)
    assert read_best(run).path == third


def test_a_torn_last_log_line_is_cut_before_the_next_append(tmp_path):
    append_history(str(tmp_path), {"value": 1.0})
    with open(tmp_path / HISTORY_FILE, "a") as handle:
        handle.write('{"val')
    append_history(str(tmp_path), {"value": 2.0})
    assert (tmp_path / HISTORY_FILE).read_text() == '{"value": 1.0}\n{"value": 2.0}\n'


def test_an_output_dir_that_cannot_be_written_is_refused_at_once(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(OutputDirError, match=f"--output_dir {a_file} is a file"):
        check_output_dir(str(a_file))
    with pytest.raises(OutputDirError, match="is not a writable folder"):
        check_output_dir(str(a_file / "run"))
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # root ignores chmod: simulate a read-only folder
    with pytest.raises(OutputDirError, match="Permission denied"):
        check_output_dir(str(tmp_path / "ro"))


def test_changed_settings_name_each_difference_and_ignore_what_cannot_change_the_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stored = json.loads(json.dumps(TrainConfig(train_file=(str(tmp_path / "t.json"),), learning_rate=0.01).to_dict()))
    same = TrainConfig(
        train_file=("t.json",),
        learning_rate=0.01,
        output_dir="elsewhere",
        log_batch_step=7,
        keep_checkpoints=9,
        no_cuda=True,
        init_checkpoint="/x",
    )
    assert changed_settings(stored, same) == []  # also: a relative spelling of the same file
    other = TrainConfig(train_file=("u.json",), learning_rate=0.02, batch_size=8, adam_betas=(0.9, 0.99))
    assert changed_settings(stored, other) == [
        f"train_file: [{tmp_path / 't.json'}] -> [u.json]",
        "batch_size: 16 -> 8",
        "learning_rate: 0.01 -> 0.02",
        "adam_betas: [0.9, 0.999] -> [0.9, 0.99]",
    ]
    del stored["precision"]  # a setting newer than the checkpoint: what it ran with then (fp32, before auto)
    assert changed_settings(stored, dataclasses.replace(same, precision="fp32")) == []
    assert changed_settings(stored, TrainConfig(train_file=("t.json",), learning_rate=0.01, precision="bf16")) == [
        "precision: 'fp32' -> 'bf16'"
    ]
