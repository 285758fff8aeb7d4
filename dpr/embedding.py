"""Encode a passage corpus into embedding shards (the library behind ``generate_embeddings.py``).

Shard ``i`` of ``num_shards`` holds a contiguous range of the corpus' passages (:func:`shard_range`), so
the shards of one corpus cover every passage exactly once whichever machine encodes which. Each shard
is the folder ``<out_file>_<i>`` (vectors.npy, ids.json, meta.json; see :mod:`dpr.embeddings_io`),
written atomically; its header records the passage encoder, the corpus digest and the rows it holds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dpr.data.corpus import iter_unique_passages, read_corpus, read_passage_range, resolve_corpus_path
from dpr.data.readers import DataFormatError, Passage
from dpr.embeddings_io import (
    RowDigest,
    ShardHeader,
    passages_digest,
    shard_path,
    shard_range,
    write_shard,
)
from dpr.encoding import encode_texts
from dpr.options import ConfigError
from dpr.retrieval import InferenceModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedConfig:
    """How passages are encoded and stored (generate_embeddings.py's embedding flags)."""

    batch_size: int = 128  # passages per forward pass
    max_passages: int | None = None  # only the first N passages of the file (quick runs)
    fp16_storage: bool = False  # store vectors as float16 (half the disk)
    progress: bool = False  # tqdm bar while encoding

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, found {self.batch_size}")
        if self.max_passages is not None and self.max_passages < 1:
            raise ConfigError(f"--max_passages must be >= 1, found {self.max_passages}")


@dataclass(frozen=True)
class EmbeddedShard:
    """One written shard: its folder, its header (meta.json) and the seconds spent encoding it."""

    path: str
    header: ShardHeader
    seconds: float


@dataclass(frozen=True)
class ShardRows:
    """This shard's rows ``[start, end)`` of the ``total`` passages, their digest and that of all ``total``."""

    ids: list[str]
    passages: list[Passage]
    start: int
    end: int
    total: int
    corpus_digest: str
    passages_digest: str


def _count_and_digest(ctx_file: str, limit: int | None) -> tuple[int, str]:
    """(passages, RowDigest of them) in one streaming pass (count_passages' pass, plus the digest): every
    row is parsed and ids are checked unique, so a bad row or a repeated id fails early."""
    digest = RowDigest()
    for passage_id, passage in iter_unique_passages(ctx_file, limit):
        digest.update(passage_id, passage)
    return digest.count, digest.hexdigest()


def _whole_corpus(ctx_file: str, limit: int | None) -> ShardRows:
    ids, passages = read_corpus(ctx_file, limit)
    digest = passages_digest(ids, passages)  # the shard is the whole corpus
    return ShardRows(ids, passages, 0, len(ids), len(ids), digest, digest)


def _shard_rows(ctx_file: str, total: int, corpus_digest: str, shard_id: int, num_shards: int) -> ShardRows:
    start, end = shard_range(total, shard_id, num_shards)
    ids, passages = read_passage_range(ctx_file, start, end)
    return ShardRows(ids, passages, start, end, total, corpus_digest, passages_digest(ids, passages))


def _shard_header(
    loaded: InferenceModel,
    rows: ShardRows,
    dim: int,
    ctx_file: str,
    cfg: EmbedConfig,
    shard_id: int,
    num_shards: int,
) -> ShardHeader:
    model = loaded.model
    # The passage side's own config: with --tune_side question it is the base model's, so indexes match.
    identity = model.passage_identity()
    passage_config = model.config.passage_config()
    return ShardHeader(
        encoder=passage_config.to_dict(),
        backbone=dict(identity.backbone),
        encoder_digest=identity.digest,
        checkpoint=loaded.checkpoint,
        dim=dim,
        count=len(rows.ids),
        dtype="float16" if cfg.fp16_storage else "float32",
        shard_id=shard_id,
        num_shards=num_shards,
        start=rows.start,
        end=rows.end,
        total_passages=rows.total,
        ctx_file=os.path.abspath(ctx_file),
        insert_title=passage_config.passages.insert_title,
        corpus_digest=rows.corpus_digest,
        passages_digest=rows.passages_digest,
    )


def check_shard_ids(shard_ids: Sequence[int], num_shards: int) -> None:
    """Every shard id in ``[0, num_shards)``; a CLI checks this before it loads a model."""
    for shard_id in shard_ids:
        if num_shards < 1 or not 0 <= shard_id < num_shards:
            raise ConfigError(f"--shard_id must be in [0, --num_shards={num_shards}), found {shard_id}")
    if num_shards < 1:
        raise ConfigError(f"--num_shards must be >= 1, found {num_shards}")


def _encode_shard(
    loaded: InferenceModel,
    rows: ShardRows,
    ctx_file: str,
    out_file: str,
    cfg: EmbedConfig,
    shard_id: int,
    num_shards: int,
) -> EmbeddedShard:
    model = loaded.model
    logger.info(
        "shard %d of %d: passages %d..%d of %d from %s",
        shard_id,
        num_shards,
        rows.start,
        rows.end - 1,
        rows.total,
        ctx_file,
    )
    began = time.perf_counter()
    vectors = encode_texts(
        model,
        loaded.tokenizer,
        rows.passages,
        "passage",
        max_length=model.config.backbone.sequence_length,
        batch_size=cfg.batch_size,
        device=loaded.device,
        precision=loaded.precision,
        insert_title=model.config.passages.insert_title,
        progress=cfg.progress,
    )  # (n, D)
    seconds = time.perf_counter() - began
    header = _shard_header(loaded, rows, int(vectors.shape[1]), ctx_file, cfg, shard_id, num_shards)
    path = write_shard(shard_path(out_file, shard_id), vectors, rows.ids, header)
    return EmbeddedShard(path, header, seconds)


def embed_corpus(
    loaded: InferenceModel,
    ctx_file: str,
    out_file: str,
    cfg: EmbedConfig = EmbedConfig(),
    *,
    shard_ids: Sequence[int] | None = None,
    num_shards: int = 1,
) -> list[EmbeddedShard]:
    """Encode shards ``shard_ids`` (default: all) of ``num_shards`` of the corpus ``ctx_file`` with ``loaded``.

    ``ctx_file``: DPR passages TSV (gzip ok) or BEIR corpus.jsonl (or its folder). Shard ``i`` is written
    to ``<out_file>_<i>/``; returns the written shards in ``shard_ids`` order. One pass over the file for
    a single shard; with several, a counting pass (every id checked unique) and one reading pass per shard.
    """
    shard_ids = list(range(num_shards)) if shard_ids is None else list(shard_ids)
    check_shard_ids(shard_ids, num_shards)
    ctx_file = resolve_corpus_path(ctx_file)
    if num_shards == 1:
        return [_encode_shard(loaded, _whole_corpus(ctx_file, cfg.max_passages), ctx_file, out_file, cfg, 0, 1)]
    total, corpus_digest = _count_and_digest(ctx_file, cfg.max_passages)
    if total == 0:
        raise DataFormatError(f"{ctx_file}: no passages found (empty corpus)")
    if num_shards > total:
        raise ConfigError(f"--num_shards {num_shards} exceeds the {total} passages of {ctx_file}")
    return [
        _encode_shard(
            loaded,
            _shard_rows(ctx_file, total, corpus_digest, shard_id, num_shards),
            ctx_file,
            out_file,
            cfg,
            shard_id,
            num_shards,
        )
        for shard_id in shard_ids
    ]
