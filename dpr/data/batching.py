"""Turn DPR samples into padded tensors for the bi-encoder.

Sequences are ``[CLS] question [SEP]`` and ``[CLS] title [SEP] text [SEP]`` (text alone when the
title is empty), built from the tokenizer's own word pieces and special tokens. Truncation cuts the
text first (the title only when it alone would not fit). Padding is dynamic: to the longest sequence
of the batch, never to ``max_length``, and always on the right so [CLS] stays at position 0.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from dpr.data.readers import BiEncoderSample, Passage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_SPECIALS_SINGLE = 2  # [CLS] x [SEP]
_SPECIALS_PAIR = 3  # [CLS] a [SEP] b [SEP]


@dataclass
class BiEncoderBatch:
    """Tensors for one bi-encoder step (B questions, C = sum of contexts over the questions).

    Contexts are laid out per question as ``[positive, other negatives..., hard negatives...]``.
    """

    question_ids: torch.Tensor  # (B, Tq) long
    question_mask: torch.Tensor  # (B, Tq) long, 1 = real token
    question_segments: torch.Tensor  # (B, Tq) long
    context_ids: torch.Tensor  # (C, Tc) long
    context_mask: torch.Tensor  # (C, Tc) long
    context_segments: torch.Tensor  # (C, Tc) long
    positive_idx: torch.Tensor  # (B,) long: row of each question's positive in the context tensors
    contexts: list[Passage] = dataclasses.field(default_factory=list)  # the C passages, row order

    def question_inputs(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """``(ids, mask, segments)`` of the questions, moved to ``device`` when given: an encoder's inputs."""
        tensors = (self.question_ids, self.question_mask, self.question_segments)
        return tensors if device is None else tuple(t.to(device) for t in tensors)

    def passage_inputs(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """``(ids, mask, segments)`` of the contexts, moved to ``device`` when given."""
        tensors = (self.context_ids, self.context_mask, self.context_segments)
        return tensors if device is None else tuple(t.to(device) for t in tensors)


def _check_max_length(max_length: int) -> None:
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] token [SEP]), found {max_length}")


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int, int]:
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls_id is None or sep_id is None or pad_id is None:
        raise ValueError(
            "the tokenizer needs [CLS], [SEP] and [PAD] tokens (a BERT tokenizer), found "
            f"cls={cls_id}, sep={sep_id}, pad={pad_id}"
        )
    return cls_id, sep_id, pad_id


def word_pieces(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids without special tokens, each cut to ``max_length`` pieces."""
    if not texts:
        return []
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


def _pad(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``(ids, segments)`` pairs to the longest one. Returns (N, T) long tensors."""
    length = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)  # (N, T)
    token_type_ids = torch.zeros((len(sequences), length), dtype=torch.long)  # (N, T)
    for row, (ids, segments) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        token_type_ids[row, : len(ids)] = torch.tensor(segments, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


def tokenize_questions(
    tokenizer: PreTrainedTokenizerBase, questions: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Tokenize questions as ``[CLS] q [SEP]``, padded to the longest (at most ``max_length``).

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids``: each (len(questions), T) long.
    """
    _check_max_length(max_length)
    if not questions:
        raise ValueError("tokenize_questions: no questions given")
    cls_id, sep_id, pad_id = _special_ids(tokenizer)
    pieces = word_pieces(tokenizer, list(questions), max_length - _SPECIALS_SINGLE)
    sequences = [([cls_id, *ids, sep_id], [0] * (len(ids) + 2)) for ids in pieces]
    return _pad(sequences, pad_id)


def tokenize_passages(
    tokenizer: PreTrainedTokenizerBase,
    passages: Sequence[Passage],
    max_length: int,
    insert_title: bool = True,
    title_mode: str = "pair",
) -> dict[str, torch.Tensor]:
    """Tokenize passages as ``[CLS] title [SEP] text [SEP]`` (segments 0 then 1), or
    ``[CLS] text [SEP]`` when the title is empty or ``insert_title`` is False. With
    ``title_mode="concat"`` the title is joined to the text (``"title text"``) as one segment, as
    sentence-transformers models are used on BEIR.

    Only the text is truncated, unless the title alone leaves no room. Padded to the longest
    sequence (at most ``max_length``). Returns ``input_ids``, ``attention_mask``,
    ``token_type_ids``: each (len(passages), T) long.
    """
    _check_max_length(max_length)
    if not passages:
        raise ValueError("tokenize_passages: no passages given")
    if title_mode not in ("pair", "concat"):
        raise ValueError(f"title_mode must be pair or concat, found {title_mode!r}")
    if title_mode == "concat":
        passages = [
            Passage(text=f"{p.title} {p.text}".strip() if insert_title else p.text, passage_id=p.passage_id)
            for p in passages
        ]
    cls_id, sep_id, pad_id = _special_ids(tokenizer)
    texts = word_pieces(tokenizer, [p.text for p in passages], max_length - _SPECIALS_SINGLE)
    titled = [i for i, p in enumerate(passages) if insert_title and p.title]
    titles = dict(zip(titled, word_pieces(tokenizer, [passages[i].title for i in titled], max_length)))
    sequences = []
    for i, text in enumerate(texts):
        if i not in titles:
            sequences.append(([cls_id, *text, sep_id], [0] * (len(text) + 2)))
            continue
        title = titles[i][: max_length - _SPECIALS_PAIR]
        text = text[: max_length - _SPECIALS_PAIR - len(title)]
        ids = [cls_id, *title, sep_id, *text, sep_id]
        sequences.append((ids, [0] * (len(title) + 2) + [1] * (len(text) + 1)))
    return _pad(sequences, pad_id)


def _select_contexts(
    sample: BiEncoderSample,
    rng: np.random.Generator,
    hard_negatives: int,
    other_negatives: int,
    shuffle_positives: bool,
    shuffle_negatives: bool,
) -> tuple[Passage, list[Passage], list[Passage]]:
    """DPR's create_biencoder_input for one sample: (positive, other negatives, hard negatives)."""
    positives = sample.positive_passages
    if not positives:
        raise ValueError(f"sample {sample.question!r} has no positive passage")
    positive = positives[int(rng.integers(len(positives)))] if shuffle_positives else positives[0]
    others, hards = list(sample.negative_passages), list(sample.hard_negative_passages)
    if shuffle_negatives:
        others = [others[i] for i in rng.permutation(len(others))] if other_negatives else others
        hards = [hards[i] for i in rng.permutation(len(hards))] if hard_negatives else hards
    return positive, others[:other_negatives], hards[:hard_negatives]


def build_biencoder_batch(
    samples: Sequence[BiEncoderSample],
    tokenizer: PreTrainedTokenizerBase,
    rng: np.random.Generator,
    *,
    max_length: int,
    hard_negatives: int = 1,
    other_negatives: int = 0,
    shuffle_positives: bool = False,
    shuffle_negatives: bool = True,
    insert_title: bool = True,
    tokenize_contexts: bool = True,
    title_mode: str = "pair",
) -> BiEncoderBatch:
    """Build one batch: B questions and their contexts ``[positive, other negs, hard negs]``.

    Each question gets its first positive (an ``rng`` choice when ``shuffle_positives``), up to
    ``other_negatives`` random negatives and up to ``hard_negatives`` hard negatives (``rng``
    shuffled first when ``shuffle_negatives``). All randomness comes from ``rng``.
    """
    _check_max_length(max_length)
    if not samples:
        raise ValueError("build_biencoder_batch: no samples given")
    if hard_negatives < 0 or other_negatives < 0:
        raise ValueError(
            f"negative counts must be >= 0, found hard_negatives={hard_negatives}, other_negatives={other_negatives}"
        )
    contexts: list[Passage] = []
    positive_idx: list[int] = []
    for sample in samples:
        positive, others, hards = _select_contexts(
            sample, rng, hard_negatives, other_negatives, shuffle_positives, shuffle_negatives
        )
        positive_idx.append(len(contexts))
        contexts.extend([positive, *others, *hards])
    questions = tokenize_questions(tokenizer, [s.question for s in samples], max_length)
    # Without tokenize_contexts (passage vectors come from a cache) the context tensors are empty.
    ctx = (
        tokenize_passages(tokenizer, contexts, max_length, insert_title=insert_title, title_mode=title_mode)
        if tokenize_contexts
        else dict.fromkeys(("input_ids", "attention_mask", "token_type_ids"), torch.zeros(0, 0, dtype=torch.long))
    )
    return BiEncoderBatch(
        question_ids=questions["input_ids"],
        question_mask=questions["attention_mask"],
        question_segments=questions["token_type_ids"],
        context_ids=ctx["input_ids"],
        context_mask=ctx["attention_mask"],
        context_segments=ctx["token_type_ids"],
        positive_idx=torch.tensor(positive_idx, dtype=torch.long),  # (B,)
        contexts=contexts,
    )
