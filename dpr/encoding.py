"""The shared inference loop: encode many texts in length-sorted, dynamically padded batches.

Texts are tokenized once per window of ``sort_window`` items (padded to the window's longest), sorted
by token length inside the window, and cut into batches whose padding is trimmed to the batch's
longest text. Similar lengths in a batch waste almost no compute on padding, while memory stays bounded
by one window (a whole 21M-passage corpus is never tokenized at once). Vectors are written back in the
INPUT order, so callers never see the sort.

Right padding makes trimming exact: position ``t`` of a row is padding iff ``t >= length``, so cutting
the columns past the batch's longest length removes only padding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dpr.data.batching import tokenize_passages, tokenize_questions
from dpr.data.readers import Passage
from dpr.device import autocast

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
# (B, T) input_ids, attention_mask, token_type_ids -> (B, D) vectors
EncodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# a list of items -> dict of (B, T) long tensors, right-padded
TokenizeFn = Callable[[list[Any]], dict[str, torch.Tensor]]
Side = Literal["question", "passage"]

DEFAULT_SORT_WINDOW_BATCHES = 64


def _batch_order(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Row indices of each batch, longest texts first.

    Longest first means a batch that does not fit in memory fails at once rather than at the end of a
    long run, and the progress bar's rate only improves as it goes.
    """
    order = torch.argsort(lengths, descending=True, stable=True)  # (W,)
    return list(torch.split(order, batch_size))


def encode_sorted(
    encode: EncodeFn,
    tokenize: TokenizeFn,
    items: Sequence[Item],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    sort_window: int | None = None,
    progress: bool = False,
    desc: str = "encoding",
    unit: str = "texts",
) -> np.ndarray:
    """Encode ``items`` with ``encode`` and return ``(N, D)`` float32 vectors in the input order.

    ``tokenize(list_of_items)`` returns right-padded ``input_ids`` / ``attention_mask`` /
    ``token_type_ids`` of shape (B, T). ``sort_window`` items (default 64 batches) are tokenized and
    length-sorted together. Runs under ``torch.inference_mode`` and, for ``precision`` fp16/bf16,
    autocast; the vectors are converted to float32 either way. ``progress`` shows a tqdm bar counting
    ``unit``/s. An empty ``items`` gives a (0, 0) array.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    window = sort_window or batch_size * DEFAULT_SORT_WINDOW_BATCHES
    if window < 1:
        raise ValueError(f"sort_window must be >= 1, found {sort_window}")
    device = torch.device(device)
    amp = autocast(device, precision)  # built once, entered per batch
    out: np.ndarray | None = None
    with (
        torch.inference_mode(),
        tqdm(
            total=len(items), desc=desc, unit=f" {unit}", disable=not progress, dynamic_ncols=True, smoothing=0.1
        ) as bar,
    ):
        for start in range(0, len(items), window):
            chunk = list(items[start : start + window])
            tokens = tokenize(chunk)  # (W, T) each
            lengths = tokens["attention_mask"].sum(dim=1)  # (W,)
            for rows in _batch_order(lengths, batch_size):
                width = int(lengths[rows].max())
                batch = {k: v[rows, :width].to(device, non_blocking=True) for k, v in tokens.items()}  # (B, t)
                with amp:
                    vectors = encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, D)
                vectors = vectors.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(items), vectors.shape[1]), dtype=np.float32)  # (N, D)
                out[start + rows.numpy()] = vectors
                bar.update(len(rows))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def side_functions(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, side: Side, max_length: int, insert_title: bool = True
) -> tuple[EncodeFn, TokenizeFn]:
    """The encode and tokenize functions of one side of a bi-encoder.

    ``side="question"`` takes strings; ``side="passage"`` takes :class:`Passage` objects (title
    inserted as ``[CLS] title [SEP] text [SEP]`` unless ``insert_title`` is False).
    """
    if side == "question":
        return model.encode_query, lambda texts: tokenize_questions(tokenizer, texts, max_length)
    if side == "passage":
        # The model's own title format, so passages are encoded as the model was trained / evaluated.
        passages = getattr(getattr(model, "config", None), "passages", None)  # a BiEncoderConfig's PassageFormat
        title_mode = passages.title_mode if passages is not None else "pair"
        return model.encode_passage, lambda passages: tokenize_passages(
            tokenizer, passages, max_length, insert_title=insert_title, title_mode=title_mode
        )
    raise ValueError(f"side must be 'question' or 'passage', found {side!r}")


def encode_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[str] | Sequence[Passage],
    side: Side,
    *,
    max_length: int,
    batch_size: int,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    insert_title: bool = True,
    progress: bool = False,
    sort_window: int | None = None,
) -> np.ndarray:
    """Encode questions (strings) or passages with a bi-encoder; returns (N, D) float32 in input order.

    The model is put in eval mode (no dropout) for the call and restored to its previous mode after.
    ``device`` defaults to the device of the model's parameters.
    """
    encode, tokenize = side_functions(model, tokenizer, side, max_length, insert_title)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return encode_sorted(
            encode,
            tokenize,
            items,
            batch_size=batch_size,
            device=device,
            precision=precision,
            sort_window=sort_window,
            progress=progress,
            desc=f"encoding {side}s",
            unit=f"{side}s",
        )
    finally:
        model.train(was_training)
