"""The layout users run: `python -m colbert.*`, the root shims, and setup.py's console_scripts targets."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setup_keyword(name: str) -> Any:
    """A literal keyword argument of the setup() call in setup.py, read without running setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    return ast.literal_eval(next(kw.value for kw in call.keywords if kw.arg == name))


def _help(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *command, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


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
    targets = dict(line.replace(" ", "").split("=") for line in _setup_keyword("entry_points")["console_scripts"])
    assert {"colbert-train", "colbert-index", "colbert-retrieve", "dpr-prepare", "dpr-download"} <= set(targets)
    for name, target in targets.items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), f"{name} = {target}"
    assert targets["colbert-train"] == "colbert.train:cli"


def test_only_the_scripts_still_needed_are_installed_as_top_level_modules():
    modules = _setup_keyword("py_modules")
    assert set(modules) <= {"train_dense_encoder", "generate_embeddings", "dense_retriever"}
    assert all((REPO / f"{module}.py").is_file() for module in modules)
