"""ColBERT v1 inputs: ``[CLS] [Q] query [SEP] [MASK]...`` and ``[CLS] [D] document [SEP]``.

- Queries are always ``query_maxlen`` long: after ``[SEP]`` they are padded with ``[MASK]`` (query
  augmentation). As in ColBERT v1 the ``[MASK]`` positions get attention mask 0 (no other token
  attends to them) but they are encoded and *scored*: their vectors are soft, learned expansions.
- Documents are cut to ``doc_maxlen`` and padded with ``[PAD]`` to the longest of the batch.
  ``score_mask`` marks the tokens MaxSim may match: the real tokens, minus punctuation with
  ``--mask-punctuation`` (punctuation is still attended to, only its vectors are dropped, as in v1).
- The markers are ColBERT's: ``[unused0]`` for ``[Q]`` and ``[unused1]`` for ``[D]``.
- A document with a title is ``title | text`` (ColBERT's collection loader joins them this way).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from colbert.options import ColBERTConfig
from dpr.data.batching import word_pieces
from dpr.data.readers import Passage
from dpr.options import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Q_MARKER = "[unused0]"
D_MARKER = "[unused1]"
_SPECIALS = 3  # [CLS] marker ... [SEP]


def doc_text(passage: Passage) -> str:
    """The text ColBERT encodes for a passage: ``title | text``, or the text alone."""
    return f"{passage.title} | {passage.text}" if passage.title else passage.text


def punctuation_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Token ids of the ASCII punctuation symbols (ColBERT v1's skiplist)."""
    ids = set()
    for symbol in string.punctuation:
        pieces = tokenizer.encode(symbol, add_special_tokens=False)
        if pieces:
            ids.add(int(pieces[0]))
    return frozenset(ids)


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str, what: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ConfigError(
            f"the tokenizer has no {token} token for {what}; ColBERT needs a BERT vocabulary "
            f"with [unused0] and [unused1]"
        )
    return int(token_id)


class ColBERTTokenizer:
    """Tokenizes queries and documents for one ColBERT config (a thin wrapper over a fast BERT tokenizer)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, query_maxlen: int, doc_maxlen: int, mask_punctuation: bool
    ) -> None:
        self.tokenizer = tokenizer
        self.query_maxlen = query_maxlen
        self.doc_maxlen = doc_maxlen
        self.cls_id = _token_id(tokenizer, tokenizer.cls_token or "[CLS]", "[CLS]")
        self.sep_id = _token_id(tokenizer, tokenizer.sep_token or "[SEP]", "[SEP]")
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.mask_id = _token_id(tokenizer, tokenizer.mask_token or "[MASK]", "query augmentation")
        self.q_marker = _token_id(tokenizer, Q_MARKER, "the query marker [Q]")
        self.d_marker = _token_id(tokenizer, D_MARKER, "the document marker [D]")
        self.skiplist = punctuation_ids(tokenizer) if mask_punctuation else frozenset()

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, config: ColBERTConfig) -> ColBERTTokenizer:
        return cls(tokenizer, config.query_maxlen, config.doc_maxlen, config.mask_punctuation)

    def _pieces(self, texts: list[str], max_pieces: int) -> list[list[int]]:
        return word_pieces(self.tokenizer, texts, max_pieces)

    def queries(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``token_type_ids``: each ``(B, query_maxlen)`` long.

        The attention mask is 1 on ``[CLS] [Q] ... [SEP]`` and 0 on the ``[MASK]`` padding.
        """
        if not texts:
            raise ValueError("queries: no texts given")
        pieces = self._pieces(list(texts), self.query_maxlen - _SPECIALS)
        ids = torch.full((len(pieces), self.query_maxlen), self.mask_id, dtype=torch.long)  # (B, Lq)
        mask = torch.zeros_like(ids)  # (B, Lq)
        for row, word_ids in enumerate(pieces):
            tokens = [self.cls_id, self.q_marker, *word_ids, self.sep_id]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    def docs(self, passages: Sequence[Passage]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` ``(B, T)`` long and ``score_mask`` ``(B, T)`` bool.

        ``T`` is the longest document of the batch (at most ``doc_maxlen``); padding is on the right.
        """
        if not passages:
            raise ValueError("docs: no passages given")
        pieces = self._pieces([doc_text(p) for p in passages], self.doc_maxlen - _SPECIALS)
        width = max(len(p) for p in pieces) + _SPECIALS
        ids = torch.full((len(pieces), width), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(ids)  # (B, T)
        for row, word_ids in enumerate(pieces):
            tokens = [self.cls_id, self.d_marker, *word_ids, self.sep_id]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        score_mask = mask.bool()  # (B, T)
        if self.skiplist:
            skip = torch.tensor(sorted(self.skiplist), dtype=torch.long)
            score_mask &= ~torch.isin(ids, skip)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(ids),
            "score_mask": score_mask,
        }
