"""Retrieval validation of a ColBERT during training: exact MaxSim over a dev corpus, DPR's metrics.

Judged as DPR's retrieval ``--val_metric`` is (``dpr.training.validation.read_dev_retrieval``): the dev
questions are DPR JSON (``--dev_file``), each question's relevant passages are its positives' ids in the
dev corpus (``--val_ctx_file``, grade 1). The corpus is encoded with the current model, every question
ranks the whole corpus by exact MaxSim (``colbert.retrieval.brute_force``: no FAISS, nothing approximate
in the number a checkpoint is chosen by) and ``dpr.evaluation.metrics.evaluate_run`` computes the metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch

from colbert.encoding import encode_documents, encode_queries
from colbert.indexing import DocStore
from colbert.model import ColBERT
from colbert.retrieval import brute_force
from colbert.tokenization import ColBERTTokenizer
from dpr.data.readers import read_dpr_files
from dpr.evaluation.metrics import evaluate_run
from dpr.options import val_metric
from dpr.training.validation import RETRIEVAL_KS, DevRetrieval, ValidationResult, read_dev_retrieval

logger = logging.getLogger(__name__)


def read_dev(dev_files: Sequence[str], corpus: str, pool: int = 0) -> DevRetrieval:
    """The dev questions of ``dev_files`` (DPR JSON) judged against the passages of ``corpus``.

    ``pool`` > 0: only the passages that are some dev question's positive or one of its first ``pool`` hard
    negatives are kept, a shared re-ranking pool every question ranks (a validation costs the encoding of
    that pool, not of the whole corpus; the number is higher than over the corpus, but it moves with it).
    """
    samples = read_dpr_files(list(dev_files))
    dev = read_dev_retrieval(corpus, samples, len(samples))
    if not pool:
        return dev
    wanted = {p.passage_id for s in samples for p in (*s.positive_passages, *s.hard_negative_passages[:pool])}
    keep = [i for i, pid in enumerate(dev.ids) if pid in wanted]
    logger.info("retrieval validation: a pool of %d of the %d passages (--val_pool %d)", len(keep), len(dev.ids), pool)
    return dataclasses.replace(dev, ids=tuple(dev.ids[i] for i in keep), passages=tuple(dev.passages[i] for i in keep))


def validate_retrieval(
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    dev: DevRetrieval,
    metric: str,
    *,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
) -> ValidationResult:
    """``metric`` (e.g. ``"ndcg@10"``) of exact MaxSim retrieval over the dev corpus; every retrieval metric
    at ``RETRIEVAL_KS`` goes in the details. The model is left in the mode it was in."""
    q = encode_queries(model, tokenizer, list(dev.questions), precision=precision)  # (Q, Lq, dim)
    vectors, doclens = encode_documents(model, tokenizer, list(dev.passages), precision=precision)  # (T, dim), (N,)
    store = DocStore.from_arrays(vectors, doclens, dev.ids)
    depth = min(max(RETRIEVAL_KS), len(dev.ids))
    ranking = brute_force(q, list(dev.question_ids), store, depth, model.config.similarity, device=device)
    run = {qid: dict(rows) for qid, rows in ranking.items()}  # qid -> pid -> score
    scores = evaluate_run(dev.qrels, run, RETRIEVAL_KS)
    value = scores[val_metric(metric).key]
    logger.info("validation: %s %.4f over %d questions and %d passages", metric, value, len(q), len(dev.ids))
    return ValidationResult(metric, value, {**scores, "questions": float(len(q)), "passages": float(len(dev.ids))})
