"""Inference: queries to ``(N, Lq, dim)`` tensors, documents to packed fp16 token vectors plus lengths.

Documents are tokenized a window at a time, sorted by length inside the window and batched, so a batch
wastes almost no compute on padding; results come back in the input order. Only the tokens of each
document's ``score_mask`` are kept (padding and, with ``--mask-punctuation``, punctuation are dropped).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from colbert.model import ColBERT
from colbert.tokenization import ColBERTTokenizer
from dpr.data.readers import Passage
from dpr.device import autocast

logger = logging.getLogger(__name__)

WINDOW_BATCHES = 32


@contextlib.contextmanager
def _eval_mode(model: ColBERT) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the block; the previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _device(model: ColBERT) -> torch.device:
    return next(model.parameters()).device


def encode_queries(
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 128,
    precision: str = "fp32",
    progress: bool = False,
) -> torch.Tensor:
    """Encode queries (with ``[MASK]`` augmentation) into ``(N, query_maxlen, dim)`` float32 on the CPU."""
    device, amp = _device(model), autocast(_device(model), precision)
    out = []
    with (
        _eval_mode(model),
        tqdm(total=len(texts), desc="encoding queries", unit=" queries", disable=not progress) as bar,
    ):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer.queries(texts[start : start + batch_size])  # (B, Lq) each
            with amp:
                q = model.encode_query(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out.append(q.float().cpu())  # (B, Lq, dim)
            bar.update(len(q))
    if not out:
        raise ValueError("encode_queries: no queries given")
    return torch.cat(out)  # (N, Lq, dim)


def _encode_window(
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    passages: list[Passage],
    batch_size: int,
    amp: contextlib.AbstractContextManager[None],
) -> list[np.ndarray]:
    """Per-document ``(n_i, dim)`` fp16 arrays of the scored tokens, in the order of ``passages``."""
    tokens = tokenizer.docs(passages)  # (W, T) each
    lengths = tokens["attention_mask"].sum(1)  # (W,)
    order = torch.argsort(lengths, descending=True, stable=True)
    device = _device(model)
    result: list[np.ndarray] = [np.empty(0)] * len(passages)
    for rows in torch.split(order, batch_size):
        width = int(lengths[rows].max())
        ids = tokens["input_ids"][rows, :width].to(device)  # (B, t)
        mask = tokens["attention_mask"][rows, :width].to(device)  # (B, t)
        with amp:
            vectors = model.encode_passage(ids, mask)  # (B, t, dim)
        vectors = vectors.to(torch.float16).cpu().numpy()
        keep = tokens["score_mask"][rows, :width].numpy()  # (B, t)
        for row, doc in enumerate(rows.tolist()):
            result[doc] = vectors[row][keep[row]]  # (n_i, dim)
    return result


def encode_documents(
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    passages: Sequence[Passage],
    *,
    batch_size: int = 64,
    precision: str = "fp32",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode documents; returns ``(sum(doclens), dim)`` fp16 vectors (documents one after another) and
    ``(N,)`` int32 ``doclens`` (scored tokens per document)."""
    amp = autocast(_device(model), precision)
    window = batch_size * WINDOW_BATCHES
    per_doc: list[np.ndarray] = []
    with (
        _eval_mode(model),
        tqdm(total=len(passages), desc="encoding documents", unit=" docs", disable=not progress) as bar,
    ):
        for start in range(0, len(passages), window):
            chunk = list(passages[start : start + window])
            per_doc.extend(_encode_window(model, tokenizer, chunk, batch_size, amp))
            bar.update(len(chunk))
    if not per_doc:
        raise ValueError("encode_documents: no documents given")
    doclens = np.array([len(v) for v in per_doc], dtype=np.int32)  # (N,)
    return np.concatenate(per_doc).astype(np.float16), doclens
