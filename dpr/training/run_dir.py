"""The training output folder: finding the latest checkpoint, recording the best one, pruning the rest.

``best_checkpoint.json`` names the best checkpoint (its folder name inside the run folder) by the current
validation metric with its value, epoch, step and ``greater_is_better`` (for its readers: the direction
follows from the metric's name, ``dpr.options.VAL_METRICS``: lower is better for NLL and average rank,
higher for the retrieval metrics);
``validation_log.jsonl`` holds every validation, one JSON line each. Checkpoints other than the best and
the ``keep`` most recent are deleted.

A checkpoint is written before the log line and the best record, and carries its validation record in
its ``config.json``: a run killed between these writes is repaired on restart by ``repair_run_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from dpr.atomic import atomic_file
from dpr.errors import UserError
from dpr.options import val_metric
from dpr.training.checkpoint import BEST_FILE, CheckpointError, read_best_file, read_checkpoint_info

logger = logging.getLogger(__name__)

HISTORY_FILE = "validation_log.jsonl"


class OutputDirError(UserError, OSError):
    """An --output_dir that training cannot write into."""


@dataclass(frozen=True)
class BestRecord:
    path: str  # the checkpoint folder (run folder + name); the file stores the name only
    metric: str
    value: float
    epoch: int
    iteration: int
    global_step: int

    @property
    def greater_is_better(self) -> bool:
        return val_metric(self.metric).greater_is_better


def check_output_dir(output_dir: str) -> None:
    """Create ``output_dir`` if needed and prove it writable now, before hours of training."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputDirError(f"--output_dir {output_dir} is a file, not a folder: choose another --output_dir")
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=output_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise OutputDirError(
            f"--output_dir {output_dir} is not a writable folder ({err.strerror or err}): "
            f"fix its permissions or choose another --output_dir"
        ) from err


def list_checkpoints(output_dir: str, prefix: str) -> list[tuple[int, str]]:
    """(global_step, path) of the readable checkpoints named ``<prefix>.<epoch>.<iteration>``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.(\d+)$")
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        match = pattern.match(name)
        if match and os.path.isdir(path):
            try:
                step = read_checkpoint_info(path).position.global_step
            except (CheckpointError, ValueError, TypeError) as err:
                logger.warning("ignoring unreadable checkpoint %s: %s", path, err)
                continue
            # Ties on the step (never expected) fall back to the numeric position, not the name's spelling.
            found.append(((step, int(match[1]), int(match[2])), path))
    return [(key[0], path) for key, path in sorted(found)]


def latest_checkpoint(output_dir: str, prefix: str) -> str | None:
    found = list_checkpoints(output_dir, prefix)
    return found[-1][1] if found else None


def read_best(output_dir: str) -> BestRecord | None:
    record = read_best_file(output_dir)
    if record is None:
        return None
    record.pop("greater_is_better", None)  # written for readers of the file; follows from the metric
    try:
        return BestRecord(**record)
    except TypeError as err:
        raise CheckpointError(
            f"{os.path.join(output_dir, BEST_FILE)}: not a best-checkpoint record ({err}); "
            f"delete it and restart training on this folder to rebuild it"
        ) from err


def best_record(path: str, record: Mapping[str, Any]) -> BestRecord:
    """The best-checkpoint candidate for checkpoint ``path`` saved with validation ``record``."""
    return BestRecord(
        path, record["metric"], record["value"], record["epoch"], record["iteration"], record["global_step"]
    )


def update_best(output_dir: str, candidate: BestRecord) -> bool:
    """Record ``candidate`` if it beats the best of the same metric (or the metric changed).

    Beats: a lower value, or a higher one for a metric where greater is better; a tie keeps the earlier best.
    A non-finite value is never recorded (NaN fails every comparison, so it would always "win").
    """
    if not math.isfinite(candidate.value):
        logger.warning("not recording %s as best: its %s is %s", candidate.path, candidate.metric, candidate.value)
        return False
    if not replaces_best(read_best(output_dir), candidate):
        return False
    record = {**asdict(candidate), "path": os.path.basename(candidate.path)}
    with atomic_file(os.path.join(output_dir, BEST_FILE)) as handle:
        json.dump({**record, "greater_is_better": candidate.greater_is_better}, handle, indent=2)
    logger.info("new best checkpoint %s (%s %.4f)", candidate.path, candidate.metric, candidate.value)
    return True


def replaces_best(best: BestRecord | None, candidate: BestRecord) -> bool:
    """Whether ``candidate`` becomes the best in place of ``best`` (the rule of :func:`update_best`)."""
    if not math.isfinite(candidate.value):
        return False
    return (
        best is None
        or best.metric != candidate.metric
        or not math.isfinite(best.value)
        or _beats(candidate.value, best.value, candidate.greater_is_better)
        or not os.path.isdir(best.path)
    )


def _beats(value: float, best: float, greater_is_better: bool) -> bool:
    return value > best if greater_is_better else value < best


def prune_checkpoints(output_dir: str, prefix: str, keep: int) -> list[str]:
    """Delete checkpoints other than the best and the ``max(keep, 1)`` most recent; return what was deleted."""
    _remove_deletion_leftovers(output_dir, prefix)
    best = read_best(output_dir)
    protected = {os.path.abspath(best.path)} if best is not None else set()
    found = [path for _, path in list_checkpoints(output_dir, prefix)]
    protected.update(os.path.abspath(p) for p in found[-max(keep, 1) :])  # the latest is needed to resume
    deleted = [p for p in found if os.path.abspath(p) not in protected]
    for path in deleted:
        _delete_folder(path)
        logger.info("deleted old checkpoint %s", path)
    return deleted


_DELETED = ".deleted-"


def _delete_folder(path: str) -> None:
    """Rename, then delete: a kill mid-delete leaves a hidden leftover, never a half checkpoint that reads
    as a real one (or, without its config.json, as junk that is never pruned)."""
    parent, name = os.path.split(os.path.abspath(path))
    doomed = tempfile.mkdtemp(prefix=f".{name}{_DELETED}", dir=parent)
    os.rmdir(doomed)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_deletion_leftovers(output_dir: str, prefix: str) -> None:
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith(f".{prefix}.") and _DELETED in name:
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _cut_torn_line(path: str) -> bytes:
    """Drop a last line without its newline (a kill mid-append: only lines with one were fully written)."""
    with open(path, "rb+") as handle:
        data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            logger.warning("%s: dropping a torn last line of %d bytes", path, len(data) - len(complete))
            handle.truncate(len(complete))
    return complete


def read_history(output_dir: str) -> list[dict[str, Any]]:
    """The complete records of ``validation_log.jsonl`` (a torn last line is cut off the file)."""
    path = os.path.join(output_dir, HISTORY_FILE)
    if not os.path.isfile(path):
        return []
    records = []
    for number, line in enumerate(_cut_torn_line(path).decode("utf-8", errors="replace").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s:%d: not a JSON record, left as it is", path, number)
    return records


def append_history(output_dir: str, record: Mapping[str, Any]) -> None:
    """Append one validation result to ``validation_log.jsonl`` (the training curve)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, HISTORY_FILE)
    if os.path.isfile(path):
        _cut_torn_line(path)  # so the new record starts a line of its own
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(record), sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _position(record: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    return record.get("epoch"), record.get("iteration"), record.get("global_step")


def repair_run_dir(output_dir: str, prefix: str) -> None:
    """Rebuild what a kill between a checkpoint and its log line / best record lost, from the checkpoints."""
    saved = []
    for _, path in list_checkpoints(output_dir, prefix):
        validation = read_checkpoint_info(path).validation
        if validation is not None:
            saved.append((path, validation))
    logged = {_position(r) for r in read_history(output_dir)}
    for path, record in saved:  # only the newest can be missing; appended oldest first anyway
        if _position(record) not in logged:
            logger.warning("%s: adding the validation of %s that a crash kept out of it", HISTORY_FILE, path)
            append_history(output_dir, record)
    _repair_best(output_dir, saved)


def _repair_best(output_dir: str, saved: list[tuple[str, Mapping[str, Any]]]) -> None:
    """Offer the checkpoints saved after the recorded best to ``update_best`` again, oldest first.

    The best was recorded when it was the newest checkpoint, so only later ones can have been missed;
    replaying ones already compared changes nothing. Without a (readable) best record, replay all.
    """
    try:
        best = read_best(output_dir)
    except CheckpointError as err:
        logger.warning("rebuilding %s: %s", BEST_FILE, err)
        os.remove(os.path.join(output_dir, BEST_FILE))
        best = None
    paths = [os.path.abspath(path) for path, _ in saved]
    start = 0
    if best is not None and os.path.abspath(best.path) in paths:
        start = paths.index(os.path.abspath(best.path)) + 1
    for path, record in saved[start:]:
        update_best(output_dir, best_record(path, record))
