"""Expected calibration error against a hand computation, and the reliability plot."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from dpr.evaluation.calibration import (
    calibration_bins,
    expected_calibration_error,
    reliability_diagram,
)

# K = 2 keeps the softmax readable: scores [ln r, 0] give top-1 probability r / (1 + r)
SCORES = np.array(
    [
        [math.log(3), 0.0],  # conf 3/4 = 0.75, bin 7 (0.7, 0.8]
        [0.0, math.log(3)],  # conf 0.75, but the top-1 is column 1
        [math.log(19), 0.0],  # conf 19/20 = 0.95, bin 9
        [math.log(13 / 7), 0.0],  # conf 13/20 = 0.65, bin 6
    ]
)
CORRECT = np.array(
    [
        [True, False],  # top-1 right
        [True, False],  # top-1 (column 1) wrong
        [True, False],  # right
        [False, True],  # wrong
    ]
)


def test_ece_hand_computed() -> None:
    # bin 7: 2 queries, accuracy 1/2, mean conf 0.75 -> 2/4 * |0.5 - 0.75| = 0.125
    # bin 9: 1 query,  accuracy 1,   conf 0.95      -> 1/4 * |1 - 0.95|    = 0.0125
    # bin 6: 1 query,  accuracy 0,   conf 0.65      -> 1/4 * |0 - 0.65|    = 0.1625
    # ECE = 0.125 + 0.0125 + 0.1625 = 0.3
    assert expected_calibration_error(SCORES, CORRECT) == pytest.approx(0.3)
    bins = calibration_bins(SCORES, CORRECT)
    np.testing.assert_array_equal(bins.counts, [0, 0, 0, 0, 0, 0, 1, 2, 0, 1])
    assert bins.accuracy[7] == 0.5 and bins.confidence[7] == pytest.approx(0.75)
    assert np.isnan(bins.accuracy[0])  # empty bins are NaN, not 0


def test_ece_is_shift_invariant_and_does_not_overflow() -> None:
    shifted = SCORES + 1000.0  # exp(1000) would overflow without the max shift
    assert expected_calibration_error(shifted, CORRECT) == pytest.approx(0.3)


def test_top5_uniform_scores_fall_in_the_right_closed_bin() -> None:
    # softmax of 5 equal scores is 0.2 exactly: bin (0.1, 0.2], index 1
    scores = np.zeros((2, 5))
    correct = np.array([[True, False, False, False, False], [False] * 5])
    bins = calibration_bins(scores, correct)
    assert bins.counts[1] == 2
    # accuracy 1/2, confidence 0.2 -> ECE = 1 * |0.5 - 0.2| = 0.3
    assert expected_calibration_error(scores, correct) == pytest.approx(0.3)


def test_perfectly_confident_and_right_is_zero() -> None:
    scores = np.array([[50.0, 0.0, 0.0, 0.0, 0.0]])  # conf ~1.0, in the last bin
    correct = np.array([[True, False, False, False, False]])
    assert expected_calibration_error(scores, correct) == pytest.approx(0.0, abs=1e-12)


def test_bad_calibration_inputs() -> None:
    with pytest.raises(ValueError, match=r"correct has shape \(4, 1\), top_scores has \(4, 2\)"):
        expected_calibration_error(SCORES, CORRECT[:, :1])
    with pytest.raises(ValueError, match="correct must be a bool array"):
        expected_calibration_error(SCORES, CORRECT.astype(int))
    with pytest.raises(ValueError, match="non-empty"):
        expected_calibration_error(np.zeros((0, 5)), np.zeros((0, 5), bool))
    with pytest.raises(ValueError, match="n_bins must be a positive int"):
        expected_calibration_error(SCORES, CORRECT, n_bins=0)
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error(np.full((1, 2), np.nan), CORRECT[:1])


def test_reliability_diagram_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "plots" / "reliability.png"
    reliability_diagram(SCORES, CORRECT, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install matplotlib"):
        reliability_diagram(SCORES, CORRECT, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()
