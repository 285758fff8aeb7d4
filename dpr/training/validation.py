"""Validation of a bi-encoder on dev data: in-batch NLL, DPR's average rank, and retrieval metrics.

All run on every rank over that rank's slice of the dev questions (and of the dev corpus); vectors are
gathered so every rank computes the same global numbers. The retrieval metrics (``--val_metric ndcg@10``,
``mrr@10``, ``recall@100``) rank a dev corpus (``--val_ctx_file``) for the dev questions by an exact top-k,
with each question's positive passage ids as its relevant passages (grade 1), and are computed by
``dpr.evaluation.metrics.evaluate_run``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from dpr.configs import ConfigError
from dpr.data.batching import build_biencoder_batch
from dpr.data.corpus import read_corpus
from dpr.data.iterator import ShardedDataIterator, batch_rng
from dpr.data.readers import BiEncoderSample, Passage
from dpr.device import autocast
from dpr.encoding import Side, encode_texts
from dpr.evaluation.metrics import evaluate_run
from dpr.models.biencoder import BiEncoder
from dpr.options import VAL_METRICS, val_metric
from dpr.training.distributed import DistributedContext, all_reduce_sum, gather_with_grad
from dpr.training.passage_cache import PassageVectorCache, passage_key

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationResult:
    """A validation metric (a name of ``dpr.options.VAL_METRICS``), its value and what else was measured."""

    metric: str  # "nll", "average_rank" or a retrieval metric such as "ndcg@10"
    value: float
    details: dict[str, float]

    @property
    def greater_is_better(self) -> bool:
        """False for DPR's NLL and average rank, True for the retrieval metrics."""
        return val_metric(self.metric).greater_is_better


# Every cut-off a retrieval --val_metric names; all their metrics are computed and logged at each validation.
RETRIEVAL_KS = tuple(sorted({int(m.key.rsplit("@", 1)[1]) for m in VAL_METRICS.values() if m.key is not None}))


@dataclass(frozen=True)
class DevRetrieval:
    """The dev corpus and the dev questions that have a relevant passage in it."""

    corpus: str  # the --val_ctx_file path
    ids: tuple[str, ...] = field(repr=False)  # (N,) corpus passage ids, file order
    passages: tuple[Passage, ...] = field(repr=False)  # (N,)
    question_ids: tuple[str, ...] = field(repr=False)  # (Q,) positions in the dev samples, as strings
    questions: tuple[str, ...] = field(repr=False)  # (Q,)
    qrels: dict[str, dict[str, int]] = field(repr=False)  # question id -> relevant passage id -> 1


def read_dev_retrieval(corpus: str, samples: Sequence[BiEncoderSample], max_questions: int) -> DevRetrieval:
    """Read the dev corpus and judge the first ``max_questions`` dev samples by their positives' ids.

    A positive whose id is not in the corpus is counted and warned about (its question is left out when
    none of its positives is there); ConfigError when no dev question has a positive in the corpus.
    """
    ids, passages = read_corpus(corpus)
    known = set(ids)
    qrels: dict[str, dict[str, int]] = {}
    questions: list[str] = []
    chosen = samples[:max_questions]
    missing = 0
    for position, sample in enumerate(chosen):
        relevant = {p.passage_id: 1 for p in sample.positive_passages if p.passage_id in known}
        missing += len(sample.positive_passages) - len(relevant)
        if relevant:
            qrels[str(position)] = relevant
            questions.append(sample.question)
    if not qrels:
        raise ConfigError(
            f"--val_ctx_file {corpus} holds none of the positive passage ids of the {len(chosen)} --dev_file "
            f"questions (e.g. {[p.passage_id for p in chosen[0].positive_passages][:3]}): give the corpus the "
            f"dev positives come from"
        )
    if missing:
        logger.warning(
            "%d --dev_file positive passages are not in --val_ctx_file %s (by passage id): %d of %d dev questions "
            "have none there and are left out of retrieval validation",
            missing,
            corpus,
            len(chosen) - len(qrels),
            len(chosen),
        )
    logger.info("retrieval validation: %d dev questions over %d passages of %s", len(qrels), len(ids), corpus)
    return DevRetrieval(corpus, tuple(ids), tuple(passages), tuple(qrels), tuple(questions), qrels)


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
            q = model.encode_query(*batch.question_inputs(ctx.device))
            c = model.encode_passage(*batch.passage_inputs(ctx.device))
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


def encode_split(
    model: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[str] | Sequence[Passage],
    side: Side,
    ctx: DistributedContext,
    **encoding: Any,
) -> torch.Tensor:
    """``(N, D)`` vectors of all ``items`` on every rank: each rank encodes one contiguous slice.

    ``encoding``: ``encode_texts``'s keyword arguments (max_length, batch_size, precision, insert_title).
    """
    per_rank = -(-len(items) // ctx.world_size)
    mine = items[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
    local = torch.from_numpy(encode_texts(model, tokenizer, mine, side, device=ctx.device, **encoding))  # (n, D)
    if not mine:  # more ranks than items: nothing to add, but with the right width
        local = torch.zeros(0, model.question_encoder.output_dim)
    gathered, _ = gather_with_grad(local.to(ctx.device), ctx)  # (N, D) in rank order = item order
    return gathered


@torch.inference_mode()
def fixed_corpus_vectors(
    model: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    dev: DevRetrieval,
    cache: PassageVectorCache,
    training_passages: Mapping[str, Passage],
    ctx: DistributedContext,
    **encoding: Any,
) -> torch.Tensor:
    """``(N, D)`` vectors of the dev corpus for question-side training, whose passage side never changes.

    A dev passage that is a training passage (same id, title and text) takes its cached vector; the others
    are encoded once, now. ``training_passages``: cache key -> passage, of the training samples.
    """
    reused = [i for i, p in enumerate(dev.passages) if training_passages.get(passage_key(p)) == p]
    reused_set = set(reused)
    fresh = [i for i in range(len(dev.passages)) if i not in reused_set]
    parts = [cache.lookup([dev.passages[i] for i in reused])] if reused else []  # (R, D)
    if fresh:
        parts.append(encode_split(model, tokenizer, [dev.passages[i] for i in fresh], "passage", ctx, **encoding))
    order = torch.tensor(reused + fresh, device=ctx.device)  # row j of the concatenation is corpus row order[j]
    stacked = torch.cat(parts)  # (N, D)
    vectors = torch.empty_like(stacked)
    vectors[order] = stacked
    logger.info(
        "dev corpus for question-side validation: %d passage vectors from the training cache, %d encoded once",
        len(reused),
        len(fresh),
    )
    return vectors


def top_k_run(
    questions: torch.Tensor, passages: torch.Tensor, question_ids: Sequence[str], ids: Sequence[str], k: int
) -> dict[str, dict[str, float]]:
    """Exact top-``k`` by inner product as a run (question id -> passage id -> score).

    questions (Q, D), passages (N, D); questions are scored 1024 at a time to bound the (B, N) scores.
    """
    k = min(k, len(ids))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(questions), 1024):
        scores = questions[start : start + 1024].float() @ passages.float().T  # (B, N)
        top, rows = torch.topk(scores, k, dim=1)  # (B, k) each
        for qid, values, found in zip(question_ids[start : start + 1024], top.tolist(), rows.tolist()):
            run[qid] = {ids[j]: value for j, value in zip(found, values)}
    return run


def retrieval_metrics(dev: DevRetrieval, questions: torch.Tensor, passages: torch.Tensor) -> dict[str, float]:
    """nDCG, MAP, R and P at ``RETRIEVAL_KS`` and MRR@10 of the exact top-k of questions (Q, D) over passages (N, D)."""
    return evaluate_run(
        dev.qrels, top_k_run(questions, passages, dev.question_ids, dev.ids, max(RETRIEVAL_KS)), RETRIEVAL_KS
    )


@torch.inference_mode()
def validate_retrieval(
    model: BiEncoder,
    dev: DevRetrieval,
    tokenizer: PreTrainedTokenizerBase,
    *,
    metric: str,
    batch_size: int,
    max_length: int,
    insert_title: bool,
    ctx: DistributedContext,
    precision: str = "fp32",
    passage_vectors: torch.Tensor | None = None,
) -> ValidationResult:
    """``metric`` (e.g. ``"ndcg@10"``) of ranking the dev corpus for the dev questions; every retrieval metric
    at ``RETRIEVAL_KS`` goes in the details. ``passage_vectors`` (N, D): the dev corpus's fixed vectors
    (question-side training), else the corpus is encoded now with the model's passage side."""
    model.eval()
    encoding = dict(max_length=max_length, batch_size=batch_size, precision=precision, insert_title=insert_title)
    q = encode_split(model, tokenizer, dev.questions, "question", ctx, **encoding)  # (Q, D)
    c = (
        passage_vectors
        if passage_vectors is not None
        else encode_split(model, tokenizer, dev.passages, "passage", ctx, **encoding)
    )  # (N, D)
    scores = retrieval_metrics(dev, q, c)
    value = scores[val_metric(metric).key]
    logger.info(
        "retrieval validation: %s %.4f over %d questions and %d passages",
        metric,
        value,
        len(dev.questions),
        len(dev.ids),
    )
    return ValidationResult(
        metric, value, {**scores, "questions": float(len(dev.questions)), "passages": float(len(dev.ids))}
    )
