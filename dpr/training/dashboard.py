"""Watching a training run: the train-loss log, TensorBoard scalars and the training-curves picture.

Used by both training loops (``dpr.training.trainer`` and ``colbert.training``); only rank 0 writes. In the
output folder::

    train_log.jsonl       one JSON line per logging interval (--log_batch_step / --log_every): step (optimizer
                          steps), the loop's position, loss, rolling mean loss, learning rate, samples/s
    tensorboard/          TensorBoard event files: train/* and val/<metric> scalars by optimizer step
    training_curves.png   train loss and the validation metric(s) against the step (needs matplotlib),
                          redrawn at validations (at most every REDRAW_SECONDS) and at the end

``validation_log.jsonl`` (``dpr.training.run_dir``) stays the record of validations; this module reads it
for the picture. Lines are appended and flushed as they are logged, so a crash loses none. A resumed run
first drops the lines logged after the checkpoint it continues from (the loop logs them again), so no
line is repeated; TensorBoard is told the same with ``purge_step``. The picture and TensorBoard are
extras: a missing matplotlib skips the picture with one log line, and neither can stop training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dpr.atomic import atomic_file
from dpr.configs import ConfigError
from dpr.errors import UserError
from dpr.options import TENSORBOARD_CHOICES
from dpr.training.run_dir import read_history

logger = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "training_curves.png"
# Fields of a train record that say where it is, not what was measured: not TensorBoard scalars.
_POSITION_FIELDS = ("step", "epoch", "iteration")
# A validation redraws the picture at most this often (a draw costs ~0.3 s of CPU); the end of training always.
REDRAW_SECONDS = 60.0


class DashboardError(UserError, ImportError):
    """--tensorboard on without the tensorboard package."""


def _summary_writer_class() -> type | None:
    """torch's SummaryWriter, or None when the tensorboard package (which it needs) is not installed."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard fails without it; checked first, by name)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def resolve_tensorboard(request: str) -> bool:
    """Whether to write TensorBoard scalars for ``--tensorboard request`` (auto: when the package is there).

    Called when a run starts, so ``on`` without the package fails then, not at the first log line.
    """
    if request not in TENSORBOARD_CHOICES:
        raise ConfigError(f"--tensorboard {request!r} is not one of {', '.join(TENSORBOARD_CHOICES)}")
    if request == "off":
        return False
    available = _summary_writer_class() is not None
    if request == "on" and not available:
        raise DashboardError(
            "--tensorboard on needs the tensorboard package, which is not installed: pip install tensorboard "
            "(or the 'tensorboard' extra), or pass --tensorboard auto / off"
        )
    return available


def _order(record: Mapping[str, Any], keys: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(record.get(key, 0)) for key in keys)


def _kept_train_records(path: str, keys: Sequence[str], resume_at: tuple[int, ...]) -> list[dict[str, Any]]:
    """The records of ``path`` at or before ``resume_at``, the file rewritten (atomically) to hold only them.

    Records after it were logged past the checkpoint the run continues from; a torn or unreadable line
    (a kill mid-append) is dropped with a warning.
    """
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().split("\n")
    kept, dropped, bad = [], 0, 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            position = _order(record, keys)
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            bad += 1
            continue
        if position <= resume_at:
            kept.append(record)
        else:
            dropped += 1
    if bad:
        logger.warning("%s: dropped %d torn or unreadable line(s)", path, bad)
    if dropped:
        logger.info("%s: dropped %d line(s) logged after the checkpoint this run continues from", path, dropped)
    with atomic_file(path) as handle:
        handle.writelines(json.dumps(record, sort_keys=True) + "\n" for record in kept)
    return kept


class TrainingLogger:
    """Rank 0's record of a run: ``train_log.jsonl`` lines, TensorBoard scalars and ``training_curves.png``.

    ``order``: the record fields that order the loop's log lines (DPR: epoch, iteration; ColBERT: step);
    ``resume_at``: their values at the checkpoint the run starts from (zeros for a new run), ``resume_step``
    its optimizer step. With ``enabled`` False (ranks above 0) every method does nothing.
    """

    def __init__(
        self,
        output_dir: str,
        *,
        order: Sequence[str],
        resume_at: Sequence[int],
        resume_step: int,
        tensorboard: bool,
        enabled: bool = True,
    ) -> None:
        self.output_dir, self.enabled, self.order = output_dir, enabled, tuple(order)
        self.path = os.path.join(output_dir, TRAIN_LOG)
        self._writer: Any = None
        self._plot = True  # False once matplotlib turned out missing
        self._drawn_at = -math.inf  # time.monotonic() of the last picture
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        kept = _kept_train_records(self.path, self.order, tuple(resume_at))
        if tensorboard:
            self._open_tensorboard(resume_step, kept)

    @classmethod
    def inactive(cls, output_dir: str) -> TrainingLogger:
        """One that writes nothing: before a loop opens the real one, and on ranks above 0."""
        return cls(output_dir, order=(), resume_at=(), resume_step=0, tensorboard=False, enabled=False)

    def _open_tensorboard(self, resume_step: int, kept: list[dict[str, Any]]) -> None:
        """Hide events at or after ``resume_step`` from an earlier process (purge_step), then log again the
        kept ones at that step: the train lines and validation before the checkpoint."""
        writer_class = _summary_writer_class()
        if writer_class is None:  # resolve_tensorboard said it was there
            raise DashboardError("the tensorboard package can no longer be imported")
        self._writer = writer_class(log_dir=os.path.join(self.output_dir, TENSORBOARD_DIR), purge_step=resume_step)
        for record in kept:
            if int(record.get("step", 0)) >= resume_step:
                self._train_scalars(record)
        if resume_step > 0:
            for record in read_history(self.output_dir):
                if record.get("global_step") == resume_step:
                    self._validation_scalars(record)

    def log_train(self, record: Mapping[str, Any]) -> None:
        """Append one train record (``step``, the ``order`` fields, ``loss``, ``lr``, ...) and its scalars."""
        if not self.enabled:
            return
        missing = [key for key in ("step", *self.order) if key not in record]
        if missing:
            raise ValueError(f"a train log record needs {missing}: got {sorted(record)}")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(dict(record), sort_keys=True) + "\n")
            handle.flush()  # a crash loses no line; fsync per line would cost more than the line is worth
        self._train_scalars(record)

    def _train_scalars(self, record: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        for key, value in record.items():
            if key not in _POSITION_FIELDS and isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"train/{key}", value, int(record["step"]))

    def log_validation(self, record: Mapping[str, Any]) -> None:
        """After ``validation_log.jsonl`` got ``record`` (metric, value, global_step): its scalar, the picture."""
        if not self.enabled:
            return
        self._validation_scalars(record)
        if self._writer is not None:
            self._writer.flush()
        if time.monotonic() - self._drawn_at >= REDRAW_SECONDS:
            self.write_curves()

    def _validation_scalars(self, record: Mapping[str, Any]) -> None:
        if self._writer is not None:
            self._writer.add_scalar(f"val/{record['metric']}", float(record["value"]), int(record["global_step"]))

    def write_curves(self) -> str | None:
        """Draw ``training_curves.png`` from the two logs; its path, or None when it was not drawn."""
        if not self.enabled or not self._plot:
            return None
        path = os.path.join(self.output_dir, CURVES_FILE)
        self._drawn_at = time.monotonic()
        try:
            return plot_curves(self.output_dir, path)
        except ImportError:
            self._plot = False
            logger.info("matplotlib is not installed: no %s (pip install matplotlib, the 'plot' extra)", CURVES_FILE)
        except Exception as err:  # a picture must never stop a training run, whatever broke in drawing it
            logger.warning("could not draw %s: %s: %s", path, type(err).__name__, err)
        return None

    def close(self) -> None:
        """Flush and close TensorBoard's writer (also on errors: it holds a thread and an open file)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> None:
        """The end of training: the last picture, TensorBoard closed."""
        self.write_curves()
        self.close()


def read_train_log(output_dir: str) -> list[dict[str, Any]]:
    """The records of ``train_log.jsonl`` (unreadable lines skipped)."""
    path = os.path.join(output_dir, TRAIN_LOG)
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_curves(output_dir: str, path: str) -> str | None:
    """Train loss (and its rolling mean) and each validation metric against the optimizer step, one panel
    each, written atomically to ``path``; None when neither log has a point yet. ImportError without
    matplotlib (imported here: the package does not need it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state, no GUI backend
    from matplotlib.figure import Figure

    train = [r for r in read_train_log(output_dir) if "loss" in r]
    validations: dict[str, list[tuple[int, float]]] = {}
    for record in read_history(output_dir):
        validations.setdefault(record["metric"], []).append((record["global_step"], record["value"]))
    if not train and not validations:
        return None
    panels = 1 + len(validations)
    figure = Figure(figsize=(7.0, 2.6 * panels), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], lw=0.8, alpha=0.5, label="loss (batch)")
    if train and all("loss_mean" in r for r in train):
        axes[0].plot(steps, [r["loss_mean"] for r in train], lw=1.6, label="loss (rolling mean)")
    axes[0].set_ylabel("train loss")
    axes[0].legend(loc="upper right", fontsize="small")
    for ax, (metric, points) in zip(axes[1:], validations.items()):
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", color="C2")
        ax.set_ylabel(f"dev {metric}")
    axes[-1].set_xlabel("optimizer step")
    axes[0].set_title(os.path.basename(os.path.abspath(output_dir)))
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    return path
