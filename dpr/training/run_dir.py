"""The training output folder: finding the latest checkpoint, recording the best one, pruning the rest.

``best_checkpoint.json`` names the best checkpoint by the current validation metric (lower is better
for NLL and average rank) with its value, epoch and step. Checkpoints other than the best and the
``keep`` most recent are deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass

from dpr.atomic import atomic_file
from dpr.training.checkpoint import BEST_FILE, CheckpointError, read_checkpoint_info

logger = logging.getLogger(__name__)

HISTORY_FILE = "validation_log.jsonl"


@dataclass(frozen=True)
class BestRecord:
    path: str
    metric: str
    value: float
    epoch: int
    iteration: int
    global_step: int


def list_checkpoints(output_dir: str, prefix: str) -> list[tuple[int, str]]:
    """(global_step, path) of the readable checkpoints named ``<prefix>.<epoch>.<iteration>``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    pattern = re.compile(re.escape(prefix) + r"\.\d+\.\d+$")
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if pattern.match(name) and os.path.isdir(path):
            try:
                found.append((read_checkpoint_info(path).position.global_step, path))
            except (CheckpointError, ValueError, TypeError) as err:
                logger.warning("ignoring unreadable checkpoint %s: %s", path, err)
    return sorted(found)


def latest_checkpoint(output_dir: str, prefix: str) -> str | None:
    found = list_checkpoints(output_dir, prefix)
    return found[-1][1] if found else None


def read_best(output_dir: str) -> BestRecord | None:
    path = os.path.join(output_dir, BEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return BestRecord(**json.load(handle))


def update_best(output_dir: str, candidate: BestRecord) -> bool:
    """Record ``candidate`` if it beats the best of the same metric (or the metric changed)."""
    best = read_best(output_dir)
    if best is not None and best.metric == candidate.metric and best.value <= candidate.value \
            and os.path.isdir(best.path):
        return False
    with atomic_file(os.path.join(output_dir, BEST_FILE)) as handle:
        json.dump(asdict(candidate), handle, indent=2)
    logger.info("new best checkpoint %s (%s %.4f)", candidate.path, candidate.metric, candidate.value)
    return True


def prune_checkpoints(output_dir: str, prefix: str, keep: int) -> list[str]:
    """Delete checkpoints other than the best and the ``max(keep, 1)`` most recent; return what was deleted."""
    best = read_best(output_dir)
    protected = {os.path.abspath(best.path)} if best is not None else set()
    found = [path for _, path in list_checkpoints(output_dir, prefix)]
    protected.update(os.path.abspath(p) for p in found[-max(keep, 1):])   # the latest is needed to resume
    deleted = [p for p in found if os.path.abspath(p) not in protected]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("deleted old checkpoint %s", path)
    return deleted


def append_history(output_dir: str, record: dict[str, object]) -> None:
    """Append one validation result to ``validation_log.jsonl`` (the training curve)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, HISTORY_FILE), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
