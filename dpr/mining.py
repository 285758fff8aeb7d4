"""Dense hard-negative mining (the library behind ``prepare_data.py mine``): DPR training JSON + a dense
encoder + its passage embeddings -> the same JSON with ``hard_negative_ctxs`` from the dense ranking.

:func:`mine_dense_negatives` checks that the shards were made by the model's passage encoder (as
``dense_retriever.py`` does), builds the FAISS index once and searches it one batch of questions at a
time; each batch's positives are encoded by the same model's passage side for their scores (the margins'
reference). Which ranked passages are kept is :func:`dpr.data.mining.select_negatives`. Memory: the index
(the vectors once; shards are memory-mapped while it is built), each question's text and positives, and the
chosen ids; the texts of the chosen passages are read in ONE streaming pass over the corpus at the end
(:func:`dpr.search.retrieved_passages`, which also checks the corpus is the version that was encoded), and
the input is read a second time to write the output. :func:`embed_for_mining` encodes a corpus first when
there are no shards of this model yet.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from dpr import retrieval
from dpr.atomic import atomic_file
from dpr.data.mining import (
    MiningQuery,
    MiningSettings,
    MiningSummary,
    Selection,
    iter_records,
    mined_records,
    select_negatives,
)
from dpr.data.prepare import write_dpr_json
from dpr.data.readers import Passage, expand_patterns
from dpr.embedding import EmbedConfig, embed_corpus
from dpr.embeddings_io import EmbeddingShard, check_identity, find_shards
from dpr.encoding import Side, encode_texts
from dpr.indexer.faiss_index import DenseIndex
from dpr.options import ConfigError
from dpr.retrieval import InferenceModel
from dpr.search import RetrieveConfig, retrieved_passages

logger = logging.getLogger(__name__)

_QUERY_BATCH = 1024  # questions per index search: bounds the (batch, depth) result arrays


@dataclass(frozen=True)
class MiningReport:
    """What a mining run wrote and what it kept and dropped."""

    out_file: str
    summary_file: str
    summary: MiningSummary
    record: dict[str, Any]  # the summary JSON: inputs, encoder, shards, settings, counts


def summary_path(out_file: str) -> str:
    """The summary JSON beside the output: ``x.json`` -> ``x.mining.json``."""
    return re.sub(r"\.jsonl?$", "", out_file) + ".mining.json"


def embed_for_mining(
    loaded: InferenceModel, ctx_file: str, out_file: str, cfg: EmbedConfig = EmbedConfig()
) -> list[EmbeddingShard]:
    """Encode the corpus ``ctx_file`` with ``loaded`` into one shard ``<out_file>_0`` and open it."""
    written = embed_corpus(loaded, ctx_file, out_file, cfg)
    return find_shards([shard.path for shard in written])


def _encode(
    loaded: InferenceModel, items: Sequence[str] | Sequence[Passage], side: Side, batch_size: int
) -> np.ndarray:
    """(N, D) float32 vectors of questions or passages, passages formatted as the model's passage side is."""
    config = loaded.model.config
    return encode_texts(
        loaded.model,
        loaded.tokenizer,
        items,
        side,
        max_length=config.backbone.sequence_length,
        batch_size=batch_size,
        device=loaded.device,
        precision=loaded.precision,
        insert_title=config.passages.insert_title,
    )


def _positive_scores(
    loaded: InferenceModel, questions: np.ndarray, batch: Sequence[MiningQuery], size: int
) -> np.ndarray:
    """(B,) the lowest score of each question's positives; ``questions`` (B, D) are the batch's vectors."""
    counts = [len(query.positives) for query in batch]
    passages = _encode(loaded, [p for query in batch for p in query.positives], "passage", size)  # (P, D)
    owner = np.repeat(np.arange(len(batch)), counts)  # (P,) the question of each positive
    pair = np.einsum("pd,pd->p", questions[owner], passages)  # (P,) question . positive
    lowest = np.full(len(batch), np.inf, dtype=np.float64)  # (B,)
    np.minimum.at(lowest, owner, pair)
    return lowest


def _select(
    loaded: InferenceModel,
    index: DenseIndex,
    queries: Sequence[MiningQuery],
    settings: MiningSettings,
    search: RetrieveConfig,
) -> Iterator[Selection]:
    """One selection per query (each has positives, all in the index), searched ``_QUERY_BATCH`` at a time."""
    batches = range(0, len(queries), _QUERY_BATCH)
    for start in tqdm(batches, desc="dense hard negatives", unit="batch", disable=not search.progress):
        batch = queries[start : start + _QUERY_BATCH]
        vectors = _encode(loaded, [query.question for query in batch], "question", search.batch_size)  # (B, D)
        positive = _positive_scores(loaded, vectors, batch, search.batch_size)  # (B,)
        depth = settings.range_max + max(len(query.positives) for query in batch)
        scores, ids = index.search(vectors, depth)  # (B, k), best first
        for query, row_ids, row_scores, score in zip(batch, ids, scores.tolist(), positive.tolist()):
            hits = list(zip(row_ids, row_scores))  # an ANN row may hold fewer ids than k
            yield select_negatives(hits, query.positive_ids(), score, settings, key=query.question)


def _corpus_ids(shards: Sequence[EmbeddingShard], wanted: set[str]) -> set[str]:
    """The ids of ``wanted`` that the shards hold (one shard's id list in memory at a time)."""
    return {pid for shard in shards for pid in shard.ids() if pid in wanted}


def _build_index(shards: Sequence[EmbeddingShard], search: RetrieveConfig) -> DenseIndex:
    if search.num_index_shards != 1:
        raise ConfigError(
            f"mining searches one index per batch of questions; --num_index_shards {search.num_index_shards} "
            f"would rebuild every group per batch"
        )
    return retrieval.load_or_build(
        shards, search.index_type, search.index_params, search.index_buffer, search.index_dir(shards)
    )


def mine_dense_negatives(
    train_files: str | Sequence[str],
    loaded: InferenceModel,
    shards: Sequence[EmbeddingShard],
    out_file: str,
    settings: MiningSettings = MiningSettings(),
    *,
    ctx_file: str | None = None,
    search: RetrieveConfig = RetrieveConfig(),
) -> MiningReport:
    """Write ``out_file``: every record of ``train_files`` (DPR JSON / JSONL, glob patterns) with its
    ``hard_negative_ctxs`` mined from the dense ranking of ``shards`` by ``loaded``; the summary JSON beside it.

    ``ctx_file``: the corpus to read the chosen passages' texts from (default: the one the shards were encoded
    from; either way checked against their digest). ``search``: encoder batch size, index type / saved index
    folder and progress (its ``n_docs`` is not used: the depth is ``range_max`` plus the positives). Records
    without a positive, or with a positive not in the shards, are written with no hard negatives and counted.
    """
    began = time.perf_counter()
    check_identity(shards[0], loaded.identity(), loaded.checkpoint)  # before any work: the wrong index is cheap to find
    paths = expand_patterns(train_files)
    queries = [query for _, query in iter_records(paths)]
    present = _corpus_ids(shards, {pid for query in queries for pid in query.positive_ids()})
    statuses = [query.status(present) for query in queries]
    minable = [query for query, status in zip(queries, statuses) if status is None]
    if queries and not minable:
        logger.warning("no question of %s has all its positives in the embedded corpus: nothing to mine", paths)
    mined = _select(loaded, _build_index(shards, search), minable, settings, search) if minable else iter(())
    selections = [next(mined) if status is None else None for status in statuses]  # input order
    rows = [[pid for pid, _ in s.negatives] for s in selections if s is not None]
    passages = retrieved_passages(shards, rows, ctx_file) if any(rows) else {}
    count = write_dpr_json(out_file, mined_records(paths, selections, passages))
    summary = MiningSummary.of(statuses, selections, settings.num_negatives)
    record = {
        "input": paths,
        "output": os.path.abspath(out_file),
        "records": count,
        **_sources(loaded, shards, ctx_file, search),
        "settings": settings.to_dict(),
        **summary.to_dict(),
        "seconds": round(time.perf_counter() - began, 2),
    }
    summary_file = summary_path(out_file)
    with atomic_file(summary_file) as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    return MiningReport(out_file, summary_file, summary, record)


def _sources(
    loaded: InferenceModel, shards: Sequence[EmbeddingShard], ctx_file: str | None, search: RetrieveConfig
) -> dict[str, Any]:
    """The summary's record of what ranked the passages and where their texts came from."""
    return {
        "encoder": loaded.describe(),
        "shards": [shard.path for shard in shards],
        "ctx_file": os.path.abspath(ctx_file) if ctx_file else shards[0].header.ctx_file,
        "corpus_digest": shards[0].header.corpus_digest,
        "index_type": search.index_type,
    }
