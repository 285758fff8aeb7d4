"""PLAID's centroid index (ColBERTv2 / PLAID): k-means centroids over the token vectors, each token's
centroid code, and inverted lists centroid -> documents.

Stored in ``plaid.safetensors`` of a ``--index_mode plaid`` index: "centroids" ``(C, dim)`` fp16,
"ivf_offsets" ``(C + 1,)`` int64 and "ivf_docs" ``(P,)`` int32 (CSR: the documents, sorted, with at least
one token in centroid ``c`` are ``ivf_docs[ivf_offsets[c]:ivf_offsets[c + 1]]``), plus the residual
codec's bucket cutoffs and weights when the index is compressed. Each shard stores its tokens' "codes"
(uint16, or int32 past 65,536 centroids). Centroids are unit vectors rounded to fp16 once, and every
code is the centroid of highest inner product with the token (the nearest, for unit centroids).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from colbert.compression import NBITS, ResidualCodec
from dpr.configs import ConfigError
from dpr.data.readers import DataFormatError

logger = logging.getLogger(__name__)

PLAID_FILE = "plaid.safetensors"
COMPRESSIONS = ("none", "residual")
KMEANS_FIELDS = ("ncentroids", "points_per_centroid", "niters", "seed")
ASSIGN_ELEMENTS = 1 << 25  # (tokens, centroids) scores per assignment block: ~128 MB of float32


@dataclass(frozen=True)
class PlaidSettings:
    """``ncentroids`` 0 = ColBERTv2's ``2**floor(log2(16 * sqrt(n_tokens)))``; k-means trains ``niters``
    iterations on at most ``points_per_centroid * ncentroids`` sampled tokens; ``compression`` "residual"
    stores ``nbits`` bits a dimension instead of fp16 vectors."""

    ncentroids: int = 0
    points_per_centroid: int = 64
    niters: int = 4  # ColBERTv2's default
    compression: str = "none"
    nbits: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ncentroids < 0:
            raise ConfigError(f"--ncentroids must be >= 0 (0 = from the number of tokens), got {self.ncentroids}")
        if self.points_per_centroid < 1 or self.niters < 1:
            raise ConfigError(
                f"--kmeans_points_per_centroid and --kmeans_niters must be >= 1, "
                f"got {self.points_per_centroid} and {self.niters}"
            )
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        if self.nbits not in NBITS:
            raise ConfigError(f"--nbits must be one of {NBITS}, got {self.nbits}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_kmeans(self, stored: dict[str, Any]) -> bool:
        """Whether an index's stored settings would train the very centroids these train (the codec aside)."""
        mine = {k: v for k, v in self.to_dict().items() if k in KMEANS_FIELDS and (k != "ncentroids" or v)}
        return all(stored.get(k) == v for k, v in mine.items())


def default_ncentroids(n_tokens: int) -> int:
    """ColBERTv2's power of two below ``16 * sqrt(n_tokens)``, and at most a quarter of the tokens."""
    k = 2 ** int(math.floor(math.log2(16 * math.sqrt(n_tokens))))
    return max(1, min(k, 2 ** int(math.floor(math.log2(max(1, n_tokens // 4))))))


def train_centroids(sample: np.ndarray, k: int, niters: int, seed: int) -> torch.Tensor:
    """k-means over ``(S, dim)`` vectors -> ``(k, dim)`` float32 unit centroids, rounded through fp16 (as stored)."""
    if len(sample) < k:
        raise ConfigError(f"k-means needs at least --ncentroids {k} training tokens, the sample holds {len(sample)}")
    kmeans = faiss.Kmeans(sample.shape[1], k, niter=niters, seed=seed, max_points_per_centroid=len(sample))
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    centroids = torch.nn.functional.normalize(torch.from_numpy(kmeans.centroids.copy()), dim=-1)  # (k, dim)
    return centroids.half().float()


def assign_centroids(vectors: np.ndarray | torch.Tensor, centroids: torch.Tensor) -> np.ndarray:
    """Each of ``(n, dim)`` vectors' centroid of highest inner product: ``(n,)`` int64 (ties: the lower id)."""
    vectors = torch.as_tensor(vectors)
    step = max(1, ASSIGN_ELEMENTS // len(centroids))
    codes = [
        (vectors[start : start + step].float() @ centroids.T).argmax(dim=1)  # (step,)
        for start in range(0, len(vectors), step)
    ]
    return torch.cat(codes).numpy() if codes else np.zeros(0, dtype=np.int64)


def build_ivf(codes: np.ndarray, doc_of_token: np.ndarray, ncentroids: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverted lists from token codes ``(N_tokens,)`` and their documents ``(N_tokens,)``:
    ``offsets`` ``(C + 1,)`` int64 and ``docs`` ``(P,)`` int32, each list sorted and without repeats."""
    pairs = np.unique(codes.astype(np.int64) * (int(doc_of_token.max(initial=0)) + 1) + doc_of_token)  # (P,)
    cells, docs = np.divmod(pairs, int(doc_of_token.max(initial=0)) + 1)
    offsets = np.zeros(ncentroids + 1, dtype=np.int64)
    np.cumsum(np.bincount(cells, minlength=ncentroids), out=offsets[1:])
    return offsets, docs.astype(np.int32)


def csr_gather(offsets: np.ndarray, values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lists ``keys`` ``(m,)`` of a CSR, concatenated: ``(values (T,), key position of each (T,))``."""
    starts, lens = offsets[keys], offsets[keys + 1] - offsets[keys]  # (m,), (m,)
    total = int(lens.sum())
    before = np.cumsum(lens) - lens  # (m,) first output position of each list
    index = np.repeat(starts - before, lens) + np.arange(total)  # (T,)
    return values[index], np.repeat(np.arange(len(keys)), lens)


@dataclass
class PlaidIndex:
    """The centroids ``(C, dim)`` float32 and the inverted lists (``ivf_offsets`` ``(C + 1,)``, ``ivf_docs``)."""

    centroids: torch.Tensor
    ivf_offsets: np.ndarray
    ivf_docs: np.ndarray

    @property
    def ncentroids(self) -> int:
        return int(self.centroids.shape[0])


def _sample(shard_files: Sequence[str], counts: Sequence[int], take: int, seed: int) -> np.ndarray:
    """About ``take`` token vectors drawn uniformly from all shards (a share of each), as float32."""
    total = sum(counts)
    parts = []
    for shard_id, (path, count) in enumerate(zip(shard_files, counts, strict=True)):
        rng = np.random.default_rng([seed, shard_id])
        rows = np.sort(rng.choice(count, size=min(count, max(1, round(take * count / total))), replace=False))
        parts.append(load_file(path)["embeddings"][rows].astype(np.float32))
    return np.concatenate(parts)


def build_plaid(
    shard_files: Sequence[str],
    counts: Sequence[int],
    plaid_file: str,
    settings: PlaidSettings,
    centroids: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Train centroids (unless given: ``(C, dim)`` float32) and the codec on a sample of the fp16 shards, add
    each token's code to its shard (replacing its vectors by packed residuals when compressed), write
    ``plaid_file``; returns meta."""
    total = sum(counts)
    k = len(centroids) if centroids is not None else settings.ncentroids or default_ncentroids(total)
    if k > total:
        raise ConfigError(f"--ncentroids {k} is more than the {total} token vectors of the collection")
    sample = _sample(shard_files, counts, min(total, settings.points_per_centroid * k), settings.seed)
    if centroids is None:
        logger.info(
            "k-means: %d centroids on %d of %d token vectors, %d iterations", k, len(sample), total, settings.niters
        )
        centroids = train_centroids(sample, k, settings.niters, settings.seed)  # (k, dim)
    codec = None
    if settings.compression == "residual":
        codec = ResidualCodec.train(centroids, sample, assign_centroids(sample, centroids), settings.nbits)
    code_dtype = np.uint16 if k <= 1 << 16 else np.int32
    all_codes, doc_of_token, first_doc = [], [], 0
    for path in shard_files:
        arrays = load_file(path)
        codes = assign_centroids(arrays["embeddings"], centroids)  # (n,)
        out = {"doclens": arrays["doclens"], "codes": codes.astype(code_dtype)}
        if codec is None:
            out["embeddings"] = arrays["embeddings"]
        else:
            out["residuals"] = codec.compress(arrays["embeddings"], codes)
        save_file(out, path)
        all_codes.append(codes)
        doc_of_token.append(np.repeat(np.arange(first_doc, first_doc + len(arrays["doclens"])), arrays["doclens"]))
        first_doc += len(arrays["doclens"])
    offsets, docs = build_ivf(np.concatenate(all_codes), np.concatenate(doc_of_token), k)
    stored = {"centroids": centroids.half().numpy(), "ivf_offsets": offsets, "ivf_docs": docs}
    save_file({**stored, **(codec.to_arrays() if codec else {})}, plaid_file)
    logger.info("PLAID: %d centroids, %d (centroid, document) pairs", k, len(docs))
    return {**settings.to_dict(), "ncentroids": k}


def load_plaid(index_dir: str, meta: dict[str, Any]) -> tuple[PlaidIndex, ResidualCodec | None]:
    """The centroid index of a ``--index_mode plaid`` index, and its codec when it is compressed."""
    path = os.path.join(index_dir, PLAID_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no PLAID centroids (was indexing interrupted?)")
    arrays = load_file(path)
    plaid = PlaidIndex(
        torch.from_numpy(arrays["centroids"].astype(np.float32)),
        arrays["ivf_offsets"].astype(np.int64),
        arrays["ivf_docs"].astype(np.int64),
    )
    settings = meta["plaid"]
    if plaid.ncentroids != settings["ncentroids"] or len(plaid.ivf_offsets) != plaid.ncentroids + 1:
        raise DataFormatError(
            f"{path}: {plaid.ncentroids} centroids and {len(plaid.ivf_offsets)} list offsets, "
            f"meta.json says {settings['ncentroids']} centroids; re-index"
        )
    codec = None
    if settings["compression"] == "residual":
        codec = ResidualCodec.from_arrays(plaid.centroids, arrays, settings["nbits"])
    return plaid, codec
