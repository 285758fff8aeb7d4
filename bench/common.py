"""Helpers the bench scripts share. A script imports this as ``common`` (its own folder is on sys.path), after
putting the repository root on sys.path for ``dpr``."""

from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Any

from dpr.atomic import atomic_file


def write_results(path: str | None, results: dict[str, Any]) -> None:
    """Write a script's results as indented JSON to ``path`` (its --json flag), atomically; nothing if unset."""
    if path:
        with atomic_file(path) as handle:
            json.dump(results, handle, indent=2)


def header(threads: int) -> str:
    """One line naming the machine, the library versions and the date, printed before any number."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    return (
        f"# {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), "
        f"transformers {transformers.__version__}, python {platform.python_version()}, "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}"
    )
