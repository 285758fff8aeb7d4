"""The layout users run: `python -m colbert.*`, the root shims, and setup.py's console_scripts targets."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _help(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *command, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("module", ["colbert.train", "colbert.index", "colbert.retrieve", "colbert.triples"])
def test_colbert_clis_run_as_modules(module):
    result = _help("-m", module)
    assert result.returncode == 0, result.stderr
    assert f"python -m {module}" in result.stdout


@pytest.mark.parametrize("script", ["prepare_data.py", "export_peft.py"])
def test_root_shims_forward_to_the_package_clis(script):
    result = _help(script)  # download_data.py is run as a script in test_download_data.py
    assert result.returncode == 0, result.stderr
    assert f"python {script}" in result.stdout


def test_console_scripts_targets_import():
    targets = _pyproject()["project"]["scripts"]
    assert {"colbert-train", "colbert-index", "colbert-retrieve", "dpr-prepare", "dpr-download"} <= set(targets)
    for name, target in targets.items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), f"{name} = {target}"
    assert targets["colbert-train"] == "colbert.train:cli"


def test_no_top_level_module_is_installed():
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    assert "py-modules" not in setuptools_cfg
    assert setuptools_cfg["packages"]["find"]["include"] == ["dpr", "dpr.*", "colbert", "colbert.*"]


@pytest.mark.parametrize("script", ["train_dense_encoder.py", "generate_embeddings.py", "dense_retriever.py"])
def test_root_dpr_scripts_forward_to_the_package_clis(script):
    result = _help(script)
    assert result.returncode == 0, result.stderr
    assert "--model_file" in result.stdout
