"""``python -m dpr.export``: one command for every way out; bad input is one ``error:`` line and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_tasks import make_checkpoint

from dpr.cli import run_cli
from dpr.commands import export_peft
from dpr.commands.export import main
from dpr.models.checkpoint_format import load_biencoder
from dpr.training.peft_export import export_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def prefix_checkpoint(tiny_bert_dir, tmp_path_factory) -> str:
    return make_checkpoint(str(tmp_path_factory.mktemp("cli") / "prefix"), tiny_bert_dir, "prefix", 31)


def test_runs_as_a_module_and_lists_every_format():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dpr.export", "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "python -m dpr.export" in result.stdout
    assert "{peft,sentence-transformers,import}" in result.stdout


def test_peft_export_calls_the_same_code_as_export_peft(prefix_checkpoint, tmp_path, capsys):
    assert (
        run_cli(
            main, ["peft", "--model_file", prefix_checkpoint, "--side", "passage", "--out_dir", str(tmp_path / "a")]
        )
        == 0
    )
    assert (
        run_cli(
            export_peft.main,
            ["export", "--model_file", prefix_checkpoint, "--side", "passage", "--out_dir", str(tmp_path / "b")],
        )
        == 0
    )
    direct = export_checkpoint(prefix_checkpoint, str(tmp_path / "c"), "passage")
    tensors = [
        load_file(os.path.join(d, "adapter_model.safetensors"))["prompt_embeddings"]
        for d in (tmp_path / "a", tmp_path / "b", direct)
    ]
    assert torch.equal(tensors[0], tensors[2]) and torch.equal(tensors[1], tensors[2])
    # and back: import peft gives a checkpoint whose passage prefix is the exported one
    assert (
        run_cli(main, ["import", "peft", "--question_adapter", str(tmp_path / "a"), "--out_dir", str(tmp_path / "ck")])
        == 0
    )
    model, _ = load_biencoder(str(tmp_path / "ck"))
    assert torch.equal(model.ctx_encoder.prefix.embedding.weight.detach(), tensors[0])
    assert "checkpoint ->" in capsys.readouterr().out


def test_sentence_transformers_export_writes_a_folder(tiny_bert_dir, tmp_path, capsys):
    checkpoint = make_checkpoint(str(tmp_path / "ft"), tiny_bert_dir, "bitfit", 32)
    out = tmp_path / "st"
    assert (
        run_cli(
            main, ["sentence-transformers", "--model_file", checkpoint, "--side", "question", "--out_dir", str(out)]
        )
        == 0
    )
    assert (out / "modules.json").is_file() and (out / "model.safetensors").is_file()
    assert f"-> {out}" in capsys.readouterr().out
    argv = ["sentence-transformers", "--model_file", checkpoint, "--out_dir", checkpoint]
    assert run_cli(main, argv) == 2
    assert _error_lines(capsys) == [
        f"error: --out_dir {checkpoint} is the checkpoint itself; writing there would replace it"
    ]
    assert load_biencoder(checkpoint)  # untouched


@pytest.mark.parametrize("fmt", ["peft", "sentence-transformers"])
def test_bad_side_is_one_line(fmt, prefix_checkpoint, tmp_path, capsys):
    argv = [fmt, "--model_file", prefix_checkpoint, "--side", "answer", "--out_dir", str(tmp_path / "x")]
    assert run_cli(main, argv) == 2
    assert _error_lines(capsys) == ["error: --side must be question or passage, found 'answer'"]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt", ["peft", "sentence-transformers"])
def test_missing_checkpoint_is_one_line(fmt, tmp_path, capsys):
    argv = [fmt, "--model_file", str(tmp_path / "nowhere"), "--out_dir", str(tmp_path / "x")]
    assert run_cli(main, argv) == 2
    (line,) = _error_lines(capsys)
    assert "nowhere is not a checkpoint folder" in line
    assert not (tmp_path / "x").exists()


def test_mode_that_cannot_be_exported_is_one_line(prefix_checkpoint, tiny_bert_dir, tmp_path, capsys):
    argv = ["sentence-transformers", "--model_file", prefix_checkpoint, "--out_dir", str(tmp_path / "x")]
    assert run_cli(main, argv) == 2
    (line,) = _error_lines(capsys)
    assert "a --prefix encoder adds key/value prefixes" in line and "python -m dpr.export peft" in line
    finetune = make_checkpoint(str(tmp_path / "ft"), tiny_bert_dir, "finetune", 33)
    assert run_cli(main, ["peft", "--model_file", finetune, "--out_dir", str(tmp_path / "y")]) == 2
    (line,) = _error_lines(capsys)
    assert "PEFT export needs a --prefix or --lora encoder; this one is finetune" in line
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
