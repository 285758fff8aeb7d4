"""MaxSim scoring and ColBERT losses against naive, hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from colbert.losses import in_batch_loss, pairwise_softmax_loss
from colbert.scoring import maxsim, maxsim_all, maxsim_packed


def naive_maxsim(q: torch.Tensor, d: torch.Tensor, mask: torch.Tensor, similarity: str) -> float:
    """One query (Lq, dim) against one document (Ld, dim): plain Python loops."""
    total = 0.0
    for i in range(q.shape[0]):
        best = -math.inf
        for j in range(d.shape[0]):
            if not mask[j]:
                continue
            if similarity == "cosine":
                sim = float(sum(q[i, k] * d[j, k] for k in range(q.shape[1])))
            else:
                sim = -float(sum((q[i, k] - d[j, k]) ** 2 for k in range(q.shape[1])))
            best = max(best, sim)
        total += best
    return total


def random_batch(seed: int = 0, n: int = 3, lq: int = 5, ld: int = 7, dim: int = 6):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, lq, dim, generator=gen, dtype=torch.float64), dim=-1)
    d = F.normalize(torch.randn(n, ld, dim, generator=gen, dtype=torch.float64), dim=-1)
    lengths = [ld, 3, 1][:n]
    mask = torch.arange(ld).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (n, ld)
    d = d * mask.unsqueeze(-1)  # padding vectors are zeros, as a padded batch holds them
    return q, d, mask


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_maxsim_equals_a_naive_loop_with_padding(similarity):
    q, d, mask = random_batch()
    pairwise = maxsim(q, d, mask, similarity)
    full = maxsim_all(q, d, mask, similarity)
    for b in range(len(q)):
        expected = naive_maxsim(q[b], d[b], mask[b], similarity)
        assert pairwise[b].item() == pytest.approx(expected, abs=1e-9)
        for c in range(len(d)):
            assert full[b, c].item() == pytest.approx(naive_maxsim(q[b], d[c], mask[c], similarity), abs=1e-9)


def test_padding_never_wins_when_every_similarity_is_negative():
    # Every real document token points away from every query token: all similarities are negative.
    q = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])  # (1, 2, 2)
    d = torch.tensor([[[-1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0]]])  # (1, 4, 2), 2 padding
    mask = torch.tensor([[True, True, False, False]])
    score = maxsim(q, d, mask, "cosine").item()
    assert score == pytest.approx(naive_maxsim(q[0], d[0], mask[0], "cosine"))
    assert score == pytest.approx(0.0 + -0.6)  # max(-1, 0) + max(-0.6, -0.8)
    # Zeroed padding (ColBERT v1) would have scored 0 for the first token: the mask must use -inf.
    assert score < 0
    assert maxsim(q, d, mask, "l2").item() == pytest.approx(naive_maxsim(q[0], d[0], mask[0], "l2"))


def test_maxsim_all_agrees_with_pairwise_on_the_diagonal():
    q, d, mask = random_batch(seed=3)
    assert torch.allclose(torch.diagonal(maxsim_all(q, d, mask)), maxsim(q, d, mask))


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_packed_documents_score_like_the_padded_batch(similarity):
    q, d, mask = random_batch(seed=5)
    lengths = mask.sum(1)  # (n,)
    packed = d[mask]  # (sum, dim), doc order
    scores = maxsim_packed(q, packed, lengths, similarity)
    assert torch.allclose(scores, maxsim_all(q, d, mask, similarity), atol=1e-9)
    assert scores[0, 2].item() == pytest.approx(naive_maxsim(q[0], d[2], mask[2], similarity), abs=1e-9)
    with pytest.raises(ValueError):
        maxsim_packed(q, packed, torch.tensor([7, 3]), similarity)


def test_pairwise_softmax_loss_by_hand():
    positive, negative = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0))) / 2
    assert pairwise_softmax_loss(positive, negative).item() == pytest.approx(expected)


def test_in_batch_loss_by_hand():
    # Query i's positive is column i; columns B..2B-1 are the hard negatives.
    scores = torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 2.0, 2.0, 0.0]])
    row0 = -3.0 + math.log(math.exp(3) + math.exp(1) + 2)
    row1 = -2.0 + math.log(2 + 2 * math.exp(2))
    assert in_batch_loss(scores).item() == pytest.approx((row0 + row1) / 2)
    with pytest.raises(ValueError):
        in_batch_loss(torch.zeros(2, 3))
