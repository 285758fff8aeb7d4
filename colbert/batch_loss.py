"""The training loss of one (micro-)batch: encode the rows, score them by MaxSim, apply ``colbert.losses``.

Rows are ColBERT v1 triples (pairwise softmax over [positive, negative]) or groups (cross-entropy over
[positive, its negatives]); with ``in_batch_negatives`` every query also scores every other passage.

Several processes (torchrun, DDP): each encodes its slice of the global batch. In-batch negatives are then
gathered from every process (``dpr.training.distributed.gather_with_grad``) so each query scores the
passages of the whole global batch, laid out as one process would lay them out; the loss's value is the
global loss and its gradient is ``world_size`` times it, so that after DDP's averaging the gradients equal
one process's on the global batch (``global_biencoder_loss`` does the same for DPR). Without in-batch
negatives a row's loss needs no other process: the mean over ranks that DDP's averaging makes is the
global mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from colbert.data import Triple
from colbert.groups import Group, Row
from colbert.losses import group_loss, in_batch_loss, pairwise_softmax_loss
from colbert.scoring import maxsim, maxsim_all
from colbert.tokenization import ColBERTTokenizer
from dpr.data.readers import Passage
from dpr.training.distributed import DistributedContext, gather_with_grad, unwrap

logger = logging.getLogger(__name__)


def batch_loss(
    model: nn.Module,
    tokenizer: ColBERTTokenizer,
    rows: Sequence[Row],
    *,
    in_batch_negatives: bool = False,
    device: torch.device | str = "cpu",
    ctx: DistributedContext | None = None,
) -> torch.Tensor:
    """The training loss ``()`` of triples or groups (no backward; the caller sets modes and autocast).

    ``model``: a ColBERT or its DDP wrapper (called once, so DDP synchronises the gradients). ``ctx``: the
    processes whose in-batch negatives are shared (each passes its own equally many rows).
    """
    gather = ctx if ctx is not None and ctx.distributed and in_batch_negatives else None
    if all(isinstance(row, Group) for row in rows):
        return _group_batch_loss(model, tokenizer, rows, in_batch_negatives, device, gather)  # type: ignore[arg-type]
    if not all(isinstance(row, Triple) for row in rows):
        raise TypeError("a batch holds triples or groups, not both")
    return _triples_batch_loss(model, tokenizer, rows, in_batch_negatives, device, gather)  # type: ignore[arg-type]


def _encode(
    model: nn.Module, tokenizer: ColBERTTokenizer, queries: list[str], docs: list[Passage], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query vectors ``(B, Lq, dim)``, document vectors ``(C, Ld, dim)`` in fp32, and the ``(C, Ld)`` score mask."""
    q_tokens, d_tokens = tokenizer.queries(queries), tokenizer.docs(docs)  # (B, Lq), (C, Ld) each
    q, d = model(
        q_tokens["input_ids"].to(device),
        q_tokens["attention_mask"].to(device),
        d_tokens["input_ids"].to(device),
        d_tokens["attention_mask"].to(device),
    )  # (B, Lq, dim), (C, Ld, dim)
    return q.float(), d.float(), d_tokens["score_mask"].to(device)  # MaxSim in fp32


def _gather(
    q: torch.Tensor, d: torch.Tensor, mask: torch.Tensor, doc_maxlen: int, ctx: DistributedContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every process's ``(B, Lq, dim)`` queries, ``(C, Ld, dim)`` documents and ``(C, Ld)`` masks, rank after
    rank (this rank's rows keep their graph); documents are padded to ``doc_maxlen`` tokens, masked out."""
    d = F.pad(d, (0, 0, 0, doc_maxlen - d.shape[1]))  # (C, doc_maxlen, dim)
    mask = F.pad(mask.to(torch.uint8), (0, doc_maxlen - mask.shape[1]))  # (C, doc_maxlen), 0 padding
    q_all, _ = gather_with_grad(q, ctx)  # (W*B, Lq, dim)
    d_all, _ = gather_with_grad(d, ctx)  # (W*C, doc_maxlen, dim)
    mask_all, _ = gather_with_grad(mask, ctx)  # (W*C, doc_maxlen)
    return q_all, d_all, mask_all.bool()


def _global(loss: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Value: the global loss; gradient: ``world_size`` times it (DDP averages, see the module docstring)."""
    scaled = loss * ctx.world_size  # ()
    return loss.detach() + (scaled - scaled.detach())


def _group_batch_loss(
    model: nn.Module,
    tokenizer: ColBERTTokenizer,
    groups: Sequence[Group],
    in_batch_negatives: bool,
    device: torch.device | str,
    ctx: DistributedContext | None,
) -> torch.Tensor:
    config = unwrap(model).config
    docs = [p for g in groups for p in g.passages]
    q, d, mask = _encode(model, tokenizer, [g.query for g in groups], docs, device)  # (B, Lq, dim), (C, Ld, dim)
    sizes = torch.tensor([len(g.passages) for g in groups], device=q.device)  # (B,)
    if ctx is not None:
        q, d, mask = _gather(q, d, mask, config.doc_maxlen, ctx)  # (W*B, Lq, dim), (W*C, Ld', dim)
        sizes, _ = gather_with_grad(sizes, ctx)  # (W*B,): groups stay rank after rank, as the documents
        return _global(group_loss(maxsim_all(q, d, mask, config.similarity), sizes, True), ctx)
    if in_batch_negatives:
        return group_loss(maxsim_all(q, d, mask, config.similarity), sizes, True)  # (B, C) -> ()
    owner = torch.repeat_interleave(torch.arange(len(groups), device=q.device), sizes)  # (C,)
    own = maxsim(q[owner], d, mask, config.similarity)  # (C,): each passage against its own query only
    scores = q.new_full((len(groups), len(docs)), float("-inf"))  # (B, C)
    scores[owner, torch.arange(len(docs), device=q.device)] = own
    return group_loss(scores, sizes)


def _triples_batch_loss(
    model: nn.Module,
    tokenizer: ColBERTTokenizer,
    triples: Sequence[Triple],
    in_batch_negatives: bool,
    device: torch.device | str,
    ctx: DistributedContext | None,
) -> torch.Tensor:
    """ColBERT v1's loss: each query's positive against its negative (or every passage, in-batch)."""
    config = unwrap(model).config
    batch = len(triples)
    docs = [t.positive for t in triples] + [t.negative for t in triples]
    q, d, mask = _encode(model, tokenizer, [t.query for t in triples], docs, device)  # (B, Lq, dim), (2B, Ld, dim)
    if ctx is not None:
        q, d, mask = _gather(q, d, mask, config.doc_maxlen, ctx)  # (W*B, Lq, dim), (W*2B, Ld', dim)
        # Rank r's documents are [positives r, negatives r]: reorder to [all positives, all negatives].
        starts = torch.arange(ctx.world_size, device=d.device) * 2 * batch  # (W,)
        within = torch.arange(batch, device=d.device)  # (B,)
        order = torch.cat([(starts[:, None] + within).reshape(-1), (starts[:, None] + batch + within).reshape(-1)])
        scores = maxsim_all(q, d[order], mask[order], config.similarity)  # (W*B, 2*W*B)
        return _global(in_batch_loss(scores), ctx)
    if in_batch_negatives:
        return in_batch_loss(maxsim_all(q, d, mask, config.similarity))  # (B, 2B) -> ()
    positive = maxsim(q, d[:batch], mask[:batch], config.similarity)  # (B,)
    negative = maxsim(q, d[batch:], mask[batch:], config.similarity)  # (B,)
    return pairwise_softmax_loss(positive, negative)
