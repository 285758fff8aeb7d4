"""The FAISS index over token vectors (the only module of ``colbert`` that imports faiss).

Labels are token positions in the index's packed embeddings (0..N-1), not strings: a corpus has tens
of millions of token vectors, so ``dpr.indexer.DenseIndex``'s string id per vector does not fit.
IVF-PQ (``--partitions``, trained on a ``--sample`` of the tokens) for large corpora, or an exact
flat index. Inner product is used for candidate search under both similarities: on unit vectors the
nearest tokens by inner product and by L2 are the same, and the final MaxSim is exact anyway.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from dpr.atomic import atomic_file
from dpr.options import ConfigError

logger = logging.getLogger(__name__)

ADD_CHUNK = 1 << 20  # vectors converted to float32 and added per call (bounded memory)


@dataclass(frozen=True)
class FaissSettings:
    """``partitions`` 0 = exact flat index; otherwise IVF``partitions``,PQ``pq_m``x``nbits`` (ColBERT v1: 16x8)."""

    partitions: int = 0
    sample: float = 1.0
    pq_m: int = 16
    nbits: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.partitions < 0:
            raise ConfigError(f"--partitions must be >= 0 (0 = flat index), got {self.partitions}")
        if not 0.0 < self.sample <= 1.0:
            raise ConfigError(f"--sample must be in (0, 1], got {self.sample}")
        if self.pq_m < 1 or not 1 <= self.nbits <= 16:
            raise ConfigError(f"--pq_m must be >= 1 and --pq_nbits in [1, 16], got {self.pq_m} and {self.nbits}")

    @property
    def kind(self) -> str:
        return "flat" if self.partitions == 0 else f"IVF{self.partitions},PQ{self.pq_m}x{self.nbits}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_rows(count: int, settings: FaissSettings, shard_id: int = 0) -> np.ndarray:
    """Sorted rows of a ``count``-vector shard to train IVF-PQ on: a ``settings.sample`` share, seeded per shard."""
    take = min(count, max(1, math.ceil(settings.sample * count)))
    rng = np.random.default_rng([settings.seed, shard_id])
    return np.sort(rng.choice(count, size=take, replace=False))


class TokenIndex:
    """Nearest token vectors by inner product; ``search`` returns token positions."""

    def __init__(self, index: faiss.Index) -> None:
        self._index = index

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @classmethod
    def create(cls, dim: int, settings: FaissSettings) -> TokenIndex:
        """An empty index; IVF-PQ needs :meth:`train` before :meth:`add`."""
        if settings.partitions == 0:
            return cls(faiss.IndexFlatIP(dim))
        if dim % settings.pq_m:
            raise ConfigError(f"--pq_m {settings.pq_m} must divide --dim {dim}")
        return cls(faiss.index_factory(dim, settings.kind, faiss.METRIC_INNER_PRODUCT))

    @property
    def needs_training(self) -> bool:
        return not self._index.is_trained

    def train(self, sample: np.ndarray, settings: FaissSettings, total: int) -> None:
        """Train the coarse quantiser and PQ codebooks on ``(S, dim)`` vectors sampled from ``total``."""
        needed = max(settings.partitions, 2**settings.nbits)
        if len(sample) < needed:
            raise ConfigError(
                f"IVF-PQ needs at least max(--partitions {settings.partitions}, 2**--pq_nbits "
                f"{2**settings.nbits}) = {needed} training vectors; --sample {settings.sample} of "
                f"{total} token vectors gives {len(sample)}: raise --sample, lower --partitions, "
                f"or use a flat index (no --partitions)"
            )
        logger.info("training %s on %d of %d token vectors", settings.kind, len(sample), total)
        self._index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def add(self, vectors: np.ndarray) -> None:
        """Append ``(N, dim)`` vectors (fp16 or fp32); their labels continue from :attr:`ntotal`."""
        for start in range(0, len(vectors), ADD_CHUNK):
            self._index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32))

    def search(self, queries: np.ndarray, k: int, nprobe: int = 10) -> np.ndarray:
        """Top-``k`` token positions for each of ``(n, dim)`` query token vectors: ``(n, k)`` int64, -1 = none."""
        if k < 1 or nprobe < 1:
            raise ValueError(f"k and nprobe must be >= 1, found {k} and {nprobe}")
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            ivf.nprobe = nprobe
        _, labels = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.ntotal))
        return labels

    def save(self, path: str) -> None:
        with atomic_file(path, "wb") as handle:
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(handle.write))

    @classmethod
    def load(cls, path: str) -> TokenIndex:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no FAISS index (was indexing interrupted?)")
        return cls(faiss.read_index(path))
