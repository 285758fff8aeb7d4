"""Validation of a bi-encoder on dev data: in-batch NLL and DPR's average rank.

Both run on every rank over that rank's slice of the dev questions; vectors are gathered so every rank
computes the same global numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from dpr.data.batching import build_biencoder_batch
from dpr.data.iterator import ShardedDataIterator, batch_rng
from dpr.data.readers import BiEncoderSample, Passage
from dpr.device import autocast
from dpr.encoding import encode_texts
from dpr.models.biencoder import BiEncoder
from dpr.training.distributed import DistributedContext, all_reduce_sum, gather_with_grad

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationResult:
    """A validation metric; both DPR metrics are better when lower."""

    metric: str  # "nll" or "average_rank"
    value: float
    details: dict[str, float]


@torch.inference_mode()
def validate_nll(
    model: BiEncoder,
    samples: Sequence[BiEncoderSample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int,
    max_length: int,
    hard_negatives: int,
    other_negatives: int,
    insert_title: bool,
    seed: int,
    ctx: DistributedContext,
    precision: str = "fp32",
    scale: float = 1.0,
) -> ValidationResult:
    """Mean in-batch NLL and top-1 accuracy over the dev questions (no shuffling of negatives).

    ``scale`` multiplies the scores as in training (the loss's inverse temperature).
    """
    model.eval()
    iterator = ShardedDataIterator(
        samples, batch_size, shard_id=ctx.rank, num_shards=ctx.world_size, shuffle=False, seed=seed
    )
    total_loss, total_correct, total_questions = 0.0, 0.0, 0.0
    for shard_batch in iterator.iterate(0):
        items = shard_batch.real_items
        if not items:
            continue
        batch = build_biencoder_batch(
            items,
            tokenizer,
            batch_rng(seed, 0, shard_batch.iteration, ctx.rank),
            max_length=max_length,
            hard_negatives=hard_negatives,
            other_negatives=other_negatives,
            shuffle_negatives=False,
            insert_title=insert_title,
            title_mode=model.config.passages.title_mode,
        )
        with autocast(ctx.device, precision):
            q = model.encode_query(
                batch.question_ids.to(ctx.device),
                batch.question_mask.to(ctx.device),
                batch.question_segments.to(ctx.device),
            )
            c = model.encode_passage(
                batch.context_ids.to(ctx.device),
                batch.context_mask.to(ctx.device),
                batch.context_segments.to(ctx.device),
            )
        scores = scale * (q @ c.T).float()  # (B, C)
        log_probs = torch.log_softmax(scores, dim=1)
        positive = batch.positive_idx.to(ctx.device)
        total_loss += float(-log_probs.gather(1, positive[:, None]).sum())
        total_correct += float((scores.argmax(1) == positive).sum())
        total_questions += len(items)
    # Per-rank batches only see their own in-batch negatives, as in DPR's validate_nll.
    questions = all_reduce_sum(total_questions, ctx)
    loss = all_reduce_sum(total_loss, ctx) / max(questions, 1.0)
    accuracy = all_reduce_sum(total_correct, ctx) / max(questions, 1.0)
    logger.info("NLL validation: loss %.4f, top-1 accuracy %.4f over %d questions", loss, accuracy, questions)
    return ValidationResult("nll", loss, {"accuracy": accuracy, "questions": questions})


@torch.inference_mode()
def validate_average_rank(
    model: BiEncoder,
    samples: Sequence[BiEncoderSample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    hard_negatives: int,
    other_negatives: int,
    batch_size: int,
    max_questions: int,
    max_length: int,
    insert_title: bool,
    ctx: DistributedContext,
    precision: str = "fp32",
) -> ValidationResult:
    """DPR's average rank: each question's gold passage ranked among ALL dev passages (0 = first)."""
    model.eval()
    chosen = list(samples[:max_questions])
    mine = chosen[ctx.rank :: ctx.world_size]
    passages: list[Passage] = []
    gold: list[int] = []
    for sample in mine:
        gold.append(len(passages))
        passages.append(sample.positive_passages[0])
        passages.extend(sample.hard_negative_passages[:hard_negatives])
        passages.extend(sample.negative_passages[:other_negatives])
    common = dict(
        max_length=max_length, batch_size=batch_size, device=ctx.device, precision=precision, insert_title=insert_title
    )
    q_local = torch.from_numpy(encode_texts(model, tokenizer, [s.question for s in mine], "question", **common)).to(
        ctx.device
    )  # (Q_local, D)
    c_local = torch.from_numpy(encode_texts(model, tokenizer, passages, "passage", **common)).to(ctx.device)
    if not mine:  # more ranks than dev questions: this rank contributes nothing, but with the right width
        q_local = c_local = torch.zeros(0, model.question_encoder.output_dim, device=ctx.device)
    q_all, _ = gather_with_grad(q_local, ctx)  # (Q, D)
    c_all, offset_c = gather_with_grad(c_local, ctx)  # (C, D)
    gold_all, _ = gather_with_grad(torch.tensor(gold, device=ctx.device) + offset_c, ctx)  # (Q,)
    scores = q_all @ c_all.T  # (Q, C)
    gold_scores = scores.gather(1, gold_all[:, None].long())  # (Q, 1)
    ranks = (scores > gold_scores).sum(1).float()  # (Q,) 0-based rank
    value = float(ranks.mean())
    logger.info("average rank validation: %.2f over %d questions and %d passages", value, len(q_all), len(c_all))
    return ValidationResult("average_rank", value, {"questions": float(len(q_all)), "passages": float(len(c_all))})
