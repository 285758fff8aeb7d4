"""The projection's initialisation (colbert.projection): PCA on synthetic states, and its use in a new run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import colbert_train_argv

from colbert import train as colbert_train
from colbert.checkpoint import load_colbert, save_colbert
from colbert.data import Triple
from colbert.model import build_colbert
from colbert.options import ColBERTConfig
from colbert.projection import init_projection, pca_directions, sample_passages, token_states
from colbert.tokenization import ColBERTTokenizer
from dpr.configs import BackboneConfig, PrefixConfig
from dpr.data.readers import Passage
from dpr.models.hub import load_tokenizer
from dpr.options import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(cols, rows, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T  # (rows, cols)


def _projector(rows: torch.Tensor) -> torch.Tensor:
    return rows.T @ rows  # (H, H)


def test_pca_recovers_the_subspace_that_holds_the_variance():
    basis = _orthonormal(4, 24, seed=0)  # (4, 24): the states live here
    gen = torch.Generator().manual_seed(1)
    coefficients = torch.randn(500, 4, generator=gen, dtype=torch.float64) * torch.tensor([5.0, 4.0, 3.0, 2.0])
    states = coefficients @ basis + 1e-3 * torch.randn(500, 24, generator=gen, dtype=torch.float64)  # (500, 24)
    found = pca_directions(states, 4)  # (4, 24)
    assert torch.allclose(found @ found.T, torch.eye(4, dtype=torch.float64), atol=1e-10)
    assert torch.linalg.norm(_projector(found) - _projector(basis)) < 1e-2
    other = _orthonormal(4, 24, seed=2)
    assert torch.linalg.norm(_projector(other) - _projector(basis)) > 1.0  # the check can fail


def test_pca_keeps_cosines_better_than_random_orthogonal_projections():
    gen = torch.Generator().manual_seed(3)
    scale = torch.logspace(0, -2, 48, dtype=torch.float64)  # a decaying spectrum, as BERT states have
    states = torch.randn(400, 48, generator=gen, dtype=torch.float64) * scale @ _orthonormal(48, 48, seed=4)
    x = F.normalize(states, dim=-1)
    original = x @ x.T  # (400, 400)

    def error(rows: torch.Tensor) -> float:
        y = F.normalize(x @ rows.T, dim=-1)
        return (y @ y.T - original).abs().mean().item()

    pca = error(pca_directions(states, 8))
    randoms = [error(_orthonormal(8, 48, seed=10 + s)) for s in range(5)]
    assert pca < 0.5 * min(randoms)


def test_pca_directions_refuses_more_directions_than_dimensions():
    with pytest.raises(ValueError, match="directions"):
        pca_directions(torch.randn(100, 8), 9)


def _model(model_dir: str, dim: int = 16):
    torch.manual_seed(0)
    config = ColBERTConfig(
        backbone=BackboneConfig(model_dir, dropout=0.0), tuning=PrefixConfig(pre_seq_len=4), doc_maxlen=32, dim=dim
    )
    return build_colbert(config)


PASSAGES = [Passage(f"passage {i} about the topic of item {i * 7} and more words") for i in range(12)]


def test_init_projection_modes(tiny_bert_dir):
    tok = ColBERTTokenizer.from_config(load_tokenizer(tiny_bert_dir), _model(tiny_bert_dir).config)
    model = _model(tiny_bert_dir)
    drawn = model.linear.weight.detach().clone()
    init_projection(model, "random")
    assert torch.equal(model.linear.weight, drawn)
    init_projection(model, "orthogonal")
    w = model.linear.weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)
    init_projection(model, "pca", tok, PASSAGES)
    expected = pca_directions(token_states(model, tok, PASSAGES), 16)
    assert torch.allclose(model.linear.weight, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="--dim <= the hidden size 32"):
        init_projection(_model(tiny_bert_dir, dim=48), "pca", tok, PASSAGES)


def test_sample_passages_is_seeded_and_distinct():
    rows = [Triple(f"q{i}", PASSAGES[i], PASSAGES[(i + 1) % 12]) for i in range(12)]
    chosen = sample_passages(rows, 5, seed=1)
    assert len(chosen) == 5 == len({p.text for p in chosen}) and chosen == sample_passages(rows, 5, seed=1)
    assert sample_passages(rows, 100, seed=1) and len(sample_passages(rows, 100, seed=1)) == 12


def test_a_new_run_starts_from_pca_and_a_warm_start_keeps_its_projection(tiny_bert_dir, tmp_path):
    triples = tmp_path / "triples.tsv"
    triples.write_text("".join(f"question {i}\t{PASSAGES[i].text}\t{PASSAGES[11 - i].text}\n" for i in range(12)))
    argv = colbert_train_argv(tiny_bert_dir, str(triples), str(tmp_path / "a"), "--maxsteps", "0")
    assert colbert_train.main(argv) == 0
    model, _ = load_colbert(str(tmp_path / "a" / "colbert-0"))
    w = model.linear.weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)  # PCA rows (nn.Linear's draw is not orthonormal)
    with torch.no_grad():
        model.linear.weight.mul_(2.0)
    save_colbert(str(tmp_path / "edited" / "colbert-0"), model)
    argv = colbert_train_argv(tiny_bert_dir, str(triples), str(tmp_path / "b"), "--maxsteps", "0")
    assert colbert_train.main([*argv, "--checkpoint", str(tmp_path / "edited" / "colbert-0")]) == 0
    warm, _ = load_colbert(str(tmp_path / "b" / "colbert-0"))
    assert torch.equal(warm.linear.weight, model.linear.weight)  # not re-initialised
