"""Initial weights of ColBERT's linear projection ``H -> dim`` (``--linear_init``).

An untrained ColBERT is already a usable retriever: MaxSim over the pretrained token states, seen through
the projection. Training should start from the best such view, not overwrite it (issue 16).

- ``random``: ``nn.Linear``'s default (Kaiming uniform), ColBERT v1's. A random projection keeps
  cosines only roughly (Johnson-Lindenstrauss: distortion ~ 1/sqrt(dim)).
- ``orthogonal``: orthonormal rows (``nn.init.orthogonal_``); the same JL argument, without the chance of
  two nearly parallel rows, and no data needed.
- ``pca`` (the default): the top ``dim`` principal directions of the unit-normalised token states of the
  untrained model (backbone plus its initial prefix) over a sample of training documents. Uncentred:
  MaxSim adds up raw dot products, and by Eckart-Young the projection onto the top ``dim`` right singular
  vectors of the states ``X`` gives the best rank-``dim`` approximation of their Gram matrix ``X X^T``,
  i.e. of every token-pair similarity MaxSim takes its maxima over. Centring would drop the direction
  all BERT token states share, which is part of those similarities.

Computed once at the start of a new run; a resumed run or one started from ``--checkpoint`` keeps its
stored projection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colbert.groups import Row
from colbert.model import ColBERT
from colbert.tokenization import ColBERTTokenizer
from dpr.configs import ConfigError
from dpr.data.readers import Passage

logger = logging.getLogger(__name__)

LINEAR_INITS = ("random", "orthogonal", "pca")
# Documents whose token states define the PCA directions: ~40k token states for 180-token documents,
# far more than the H (768) dimensions to estimate, and seconds of encoding.
PCA_DOCS = 256


def pca_directions(states: Tensor, dim: int) -> Tensor:
    """The top ``dim`` uncentred principal directions of ``states`` ``(N, H)`` after unit normalisation.

    Returns ``(dim, H)`` orthonormal rows, largest variance first, each signed so that its largest entry
    is positive (deterministic). Raises ValueError when ``dim`` exceeds ``H`` or ``N``.
    """
    n, hidden = states.shape
    if dim > hidden or dim > n:
        raise ValueError(
            f"pca_directions: {dim} directions need at least {dim} states of size >= {dim}, got {n}x{hidden}"
        )
    x = F.normalize(states.double(), dim=-1)  # (N, H)
    second_moment = x.T @ x / n  # (H, H)
    _, vectors = torch.linalg.eigh(second_moment)  # (H, H), columns by ascending eigenvalue
    top = vectors[:, -dim:].flip(-1).T  # (dim, H)
    peaks = top.gather(1, top.abs().argmax(dim=1, keepdim=True))  # (dim, 1)
    return (top * peaks.sign()).to(states.dtype)  # (dim, H)


def sample_passages(rows: Sequence[Row], count: int, seed: int) -> list[Passage]:
    """Up to ``count`` distinct documents of ``count`` training rows drawn with ``seed`` (each row's positive
    and first negative, so a pool of 30 negatives does not fill the sample from a few rows); only the drawn
    rows are read (a lazy triples file stays on disk)."""
    drawn = np.random.default_rng([seed, 0x5CA]).choice(len(rows), size=min(len(rows), count), replace=False)
    chosen: dict[tuple[str, str], Passage] = {}
    for index in drawn:
        for passage in rows[int(index)].passages[:2]:
            chosen.setdefault((passage.title, passage.text), passage)
    return list(chosen.values())[:count]


@torch.no_grad()
def token_states(
    model: ColBERT, tokenizer: ColBERTTokenizer, passages: Iterable[Passage], batch_size: int = 32
) -> Tensor:
    """The encoder's states ``(N, H)`` of the scored tokens of ``passages`` (what the projection sees), eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    passages, out = list(passages), []
    try:
        for start in range(0, len(passages), batch_size):
            docs = tokenizer.docs(passages[start : start + batch_size])  # (B, Ld) each
            states = model.encoder.token_states(
                docs["input_ids"].to(device), docs["attention_mask"].to(device)
            )  # (B, Ld, H)
            out.append(states[docs["score_mask"].to(device)].float().cpu())  # (n, H)
    finally:
        model.train(was_training)
    return torch.cat(out)  # (N, H)


def init_projection(
    model: ColBERT, method: str, tokenizer: ColBERTTokenizer | None = None, passages: Sequence[Passage] = ()
) -> None:
    """Set ``model.linear.weight`` ``(dim, H)`` by ``method`` (``random`` keeps nn.Linear's draw).

    ``orthogonal`` draws from torch's global generator (the caller seeds it); ``pca`` encodes ``passages``.
    """
    weight = model.linear.weight  # (dim, H)
    if method == "random":
        return
    if method == "orthogonal":
        with torch.no_grad():
            nn.init.orthogonal_(weight)
        return
    if method != "pca":
        raise ConfigError(f"--linear_init {method!r} is not one of {', '.join(LINEAR_INITS)}")
    dim, hidden = weight.shape
    if dim > hidden:
        raise ConfigError(f"--linear_init pca needs --dim <= the hidden size {hidden}, got --dim {dim}")
    if tokenizer is None or not passages:
        raise ValueError("--linear_init pca needs a tokenizer and training documents")
    states = token_states(model, tokenizer, passages)  # (N, H)
    if len(states) < dim:
        raise ConfigError(
            f"--linear_init pca: {len(passages)} training documents give {len(states)} token states, fewer "
            f"than --dim {dim}; use --linear_init orthogonal"
        )
    directions = pca_directions(states, dim)  # (dim, H)
    with torch.no_grad():
        weight.copy_(directions.to(weight.device, weight.dtype))
    x = F.normalize(states.double(), dim=-1)  # (N, H)
    kept = (x @ directions.double().T).pow(2).sum(-1).mean().item()  # share of each unit state's energy kept
    logger.info(
        "projection: top %d PCA directions of %d token states (%.1f%% of their energy)", dim, len(x), 100 * kept
    )
