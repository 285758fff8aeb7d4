"""Hand-computed checks of the in-batch NLL loss (dpr.losses)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dpr.losses import biencoder_nll, dot_scores


def test_dot_scores_matches_hand_computation() -> None:
    q = torch.tensor([[1.0, 2.0], [0.0, -1.0]])  # (2, 2)
    p = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]])  # (3, 2)
    expected = torch.tensor([[3.0, 3.0, 4.0], [0.0, -1.0, -2.0]])  # (2, 3)
    assert torch.equal(dot_scores(q, p), expected)


def test_dot_scores_rejects_mismatched_dims() -> None:
    with pytest.raises(ValueError, match="same D"):
        dot_scores(torch.zeros(2, 3), torch.zeros(4, 5))


def test_biencoder_nll_hand_computed_2x4() -> None:
    # Row 0: exp scores (2, 1, 1, 1), positive 0 -> p = 2/5, top-1 is the positive.
    # Row 1: exp scores (1, 3, 1, 1), positive 2 -> p = 1/6, top-1 is column 1: wrong.
    scores = torch.tensor(
        [[math.log(2.0), 0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0, 0.0]], dtype=torch.float64
    )  # (2, 4)
    positive_idx = torch.tensor([0, 2])  # (2,)
    loss, correct = biencoder_nll(scores, positive_idx)
    expected = (math.log(5.0 / 2.0) + math.log(6.0)) / 2.0  # = ln(15) / 2
    assert loss.shape == () and correct.shape == ()
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(math.log(15.0) / 2.0, abs=1e-6)
    assert correct.item() == 1
    assert correct.dtype == torch.long


def test_biencoder_nll_gradient_matches_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(5, 12, generator=gen, dtype=torch.float64)  # (B, C)
    positive_idx = torch.tensor([0, 3, 6, 9, 11])  # (B,)

    ours = base.clone().requires_grad_(True)
    loss, _ = biencoder_nll(ours, positive_idx)
    loss.backward()

    ref = base.clone().requires_grad_(True)
    ref_loss = F.cross_entropy(ref, positive_idx)
    ref_loss.backward()

    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    assert torch.allclose(ours.grad, ref.grad, atol=1e-12)
    # Closed form: d mean-NLL / d scores = (softmax - one_hot) / B.
    closed = (torch.softmax(base, dim=1) - F.one_hot(positive_idx, 12)) / 5  # (B, C)
    assert torch.allclose(ours.grad, closed, atol=1e-12)


def test_biencoder_nll_computes_in_fp32_for_half_scores() -> None:
    scores = torch.randn(3, 7).to(torch.bfloat16)  # (3, 7)
    loss, _ = biencoder_nll(scores, torch.tensor([0, 1, 2]))
    assert loss.dtype == torch.float32


def test_biencoder_nll_rejects_bad_positive_shape() -> None:
    with pytest.raises(ValueError, match="positive_idx"):
        biencoder_nll(torch.zeros(2, 4), torch.tensor([0, 1, 2]))
