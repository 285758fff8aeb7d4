"""Calibration of a retriever's top-1 confidence: expected calibration error and a plot.

Following PT-Retrieval, a query's confidence is the largest probability of a softmax over its
top-K retrieval scores (K = 5 in the callers), and it is "correct" when that top-1 passage is
(e.g. contains an answer). Confidences fall into ``n_bins`` uniform bins over [0, 1], closed on
the right: bin b holds b/n < conf <= (b+1)/n (the first bin also holds 0).
ECE = sum over bins of (|bin| / Q) * |accuracy(bin) - mean confidence(bin)|.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpr.atomic import atomic_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics; empty bins have count 0 and NaN accuracy / confidence.

    edges (n_bins + 1,); counts, accuracy, confidence (n_bins,).
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray


def top1_confidence(top_scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax confidence of each query's best passage and whether that passage is correct.

    top_scores (Q, K) float, correct (Q, K) bool aligned with it (column j says whether the
    passage scored top_scores[:, j] is correct). Returns confidence (Q,) and hit (Q,) bool.
    """
    scores = np.asarray(top_scores, dtype=np.float64)  # (Q, K)
    labels = np.asarray(correct)  # (Q, K)
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"top_scores must be a non-empty (Q, K) array, found {scores.shape}")
    if labels.shape != scores.shape:
        raise ValueError(f"correct has shape {labels.shape}, top_scores has {scores.shape}")
    if labels.dtype != np.bool_:
        raise ValueError(f"correct must be a bool array, found dtype {labels.dtype}")
    if not np.isfinite(scores).all():
        raise ValueError("top_scores holds NaN or infinite values")
    # subtracting the row max keeps exp() from overflowing; softmax is shift-invariant
    shifted = scores - scores.max(axis=1, keepdims=True)  # (Q, K)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)  # (Q, K)
    best = probs.argmax(axis=1)  # (Q,) ties: the first column, i.e. the retriever's order
    confidence = probs[np.arange(len(best)), best]  # (Q,)
    hit = labels[np.arange(len(best)), best]  # (Q,)
    return confidence, hit


def calibration_bins(top_scores: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> CalibrationBins:
    """Bin queries by top-1 confidence. top_scores (Q, K), correct (Q, K) bool."""
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, found {n_bins!r}")
    confidence, hit = top1_confidence(top_scores, correct)  # (Q,), (Q,)
    edges = np.linspace(0.0, 1.0, n_bins + 1)  # (n_bins + 1,)
    # right-closed bins: the number of inner edges strictly below conf is its bin
    which = np.searchsorted(edges[1:-1], confidence, side="left")  # (Q,)
    counts = np.bincount(which, minlength=n_bins)  # (n_bins,)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins -> NaN, on purpose
        accuracy = np.bincount(which, weights=hit.astype(np.float64), minlength=n_bins) / counts
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / counts
    return CalibrationBins(edges=edges, counts=counts, accuracy=accuracy, confidence=mean_conf)


def expected_calibration_error(top_scores: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the softmax top-1 confidence over each query's top-K scores.

    top_scores (Q, K), correct (Q, K) bool. Returns a float in [0, 1]; 0 is perfect.
    """
    bins = calibration_bins(top_scores, correct, n_bins)
    filled = bins.counts > 0
    weights = bins.counts[filled] / bins.counts.sum()
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(weights * gaps))


def reliability_diagram(
    top_scores: np.ndarray,
    correct: np.ndarray,
    path: str | os.PathLike[str],
    n_bins: int = 10,
    title: str | None = None,
) -> None:
    """Write a reliability diagram (accuracy vs confidence per bin, with ECE) as a PNG.

    Needs matplotlib (an optional extra); it is imported here so the rest of the package
    works without it, and an ImportError says how to install it.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "reliability_diagram needs matplotlib: pip install matplotlib (the optional 'plot' extra)"
        ) from err

    bins = calibration_bins(top_scores, correct, n_bins)
    ece = expected_calibration_error(top_scores, correct, n_bins)
    centers = (bins.edges[:-1] + bins.edges[1:]) / 2  # (n_bins,)
    accuracy = np.nan_to_num(bins.accuracy)  # (n_bins,) empty bins drawn as 0
    gap = np.nan_to_num(bins.confidence - bins.accuracy)  # (n_bins,)
    # a bare Figure renders with Agg and leaves pyplot's global backend and state alone
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.bar(centers, accuracy, width=1.0 / n_bins, edgecolor="black", label="accuracy")
    ax.bar(
        centers,
        gap,
        bottom=accuracy,
        width=1.0 / n_bins,
        color="red",
        alpha=0.3,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="top-1 confidence",
        ylabel="top-1 accuracy",
        title=title or f"Reliability (ECE = {ece:.3f})",
    )
    ax.legend(loc="upper left")
    target = Path(path)
    with atomic_file(target, "wb") as handle:  # a crash leaves no half-written PNG
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    logger.info("wrote reliability diagram (ECE %.4f) to %s", ece, target)
