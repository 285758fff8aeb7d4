"""Passage vectors computed once, for question-side training (``--tune_side question``).

The passage encoder is fixed, so every passage vector is known before training starts: either encode
the training passages once, or read them from ``generate_embeddings.py`` shards made by the same
passage encoder (checked by config and weight digest). Each step then looks its passages up instead of
running the passage side of the model, which is most of the cost of a training step.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch

from dpr.data.readers import BiEncoderSample, Passage
from dpr.embeddings_io import EmbeddingsError, check_identity, find_shards
from dpr.encoding import encode_texts
from dpr.models.biencoder import BiEncoder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def passage_key(passage: Passage) -> str:
    """Cache key: the passage id when there is one (what embedding shards store), else its text."""
    return passage.passage_id if passage.passage_id is not None else f"{passage.title}\x1f{passage.text}"


def all_passages(samples: Iterable[BiEncoderSample]) -> dict[str, Passage]:
    """Every passage the samples mention (positives, negatives, hard negatives), by id, first seen kept."""
    found: dict[str, Passage] = {}
    for sample in samples:
        for passage in (*sample.positive_passages, *sample.negative_passages, *sample.hard_negative_passages):
            found.setdefault(passage_key(passage), passage)
    return found


class PassageVectorCache:
    """Maps passages to fixed vectors ``(D,)``; ``lookup`` returns ``(C, D)`` for a batch."""

    def __init__(self, keys: Sequence[str], vectors: np.ndarray, device: torch.device) -> None:
        self._rows = {key: row for row, key in enumerate(keys)}
        self._vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)  # (N, D)

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, passages: Sequence[Passage]) -> torch.Tensor:
        """``(C, D)`` vectors of ``passages``, in order."""
        rows = [self._rows.get(passage_key(p), -1) for p in passages]
        missing = [passage_key(p) for p, r in zip(passages, rows) if r < 0]
        if missing:
            raise EmbeddingsError(f"{len(missing)} training passages have no cached vector, e.g. {missing[:3]}")
        return self._vectors[torch.tensor(rows, device=self._vectors.device)]

    @classmethod
    def encode(
        cls,
        model: BiEncoder,
        tokenizer: PreTrainedTokenizerBase,
        samples: Iterable[BiEncoderSample],
        *,
        batch_size: int,
        insert_title: bool,
        device: torch.device,
        precision: str = "fp32",
    ) -> "PassageVectorCache":
        """Encode every distinct passage of ``samples`` once with the (fixed) passage encoder."""
        passages = all_passages(samples)
        started = time.perf_counter()
        vectors = encode_texts(
            model,
            tokenizer,
            list(passages.values()),
            "passage",
            max_length=model.config.backbone.sequence_length,
            batch_size=batch_size,
            device=device,
            precision=precision,
            insert_title=insert_title,
            progress=True,
        )
        logger.info("cached %d passage vectors in %.1f s", len(passages), time.perf_counter() - started)
        return cls(list(passages), vectors, device)

    @classmethod
    def from_shards(
        cls, patterns: Sequence[str], model: BiEncoder, samples: Iterable[BiEncoderSample], device: torch.device
    ) -> "PassageVectorCache":
        """Read the vectors of the training passages from embedding shards of the same passage encoder."""
        shards = find_shards(list(patterns))
        identity = model.passage_identity()
        for shard in shards:
            check_identity(shard, identity, None)
        wanted = all_passages(samples)
        without_id = [k for k, p in wanted.items() if p.passage_id is None]
        if without_id:
            raise EmbeddingsError(
                f"{len(without_id)} training passages have no passage_id to find them in "
                f"{patterns}; drop --ctx_embeddings to encode them instead"
            )
        keys, chunks = [], []
        for shard in shards:
            ids = shard.ids()
            rows = [i for i, pid in enumerate(ids) if pid in wanted]
            keys.extend(ids[i] for i in rows)
            chunks.append(np.asarray(shard.vectors()[rows], dtype=np.float32))
        cache = cls(keys, np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32), device)
        absent = [k for k in wanted if k not in cache._rows]
        if absent:
            raise EmbeddingsError(f"{len(absent)} training passages are not in {list(patterns)}, e.g. {absent[:3]}")
        logger.info("read %d passage vectors from %d shard(s)", len(cache), len(shards))
        return cache
