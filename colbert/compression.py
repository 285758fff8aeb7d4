"""ColBERTv2's residual compression: a token vector is its centroid plus a residual of 1 or 2 bits a dimension.

Each residual component is replaced by the index of its bucket: ``2**nbits`` buckets whose cutoffs are
quantiles of the residual components of a sample (all dimensions pooled, as ColBERTv2's ResidualCodec),
and decoded as the bucket's weight, the residual quantile at the bucket's middle. Bucket indices are
packed ``8 // nbits`` to a byte (most significant bits first), so a 128-dim vector takes ``16 * nbits``
bytes plus its centroid code, against 256 bytes in fp16. Decompression is one table lookup per byte:
``table[byte]`` holds the weights of the ``8 // nbits`` dimensions the byte encodes. Decoded vectors
are L2-normalised, as the model's own vectors are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from dpr.configs import ConfigError

logger = logging.getLogger(__name__)

NBITS = (1, 2)


def check_nbits(nbits: int, dim: int) -> None:
    if nbits not in NBITS:
        raise ConfigError(f"--nbits must be one of {NBITS}, got {nbits}")
    if (dim * nbits) % 8:
        raise ConfigError(f"--nbits {nbits} packs whole bytes only when dim * nbits is a multiple of 8; dim is {dim}")


def pack_buckets(buckets: np.ndarray, nbits: int) -> np.ndarray:
    """Bucket indices ``(n, dim)`` in ``[0, 2**nbits)`` -> packed ``(n, dim * nbits // 8)`` uint8."""
    shifts = np.arange(nbits - 1, -1, -1, dtype=np.uint8)  # most significant bit first
    bits = (buckets.astype(np.uint8)[:, :, None] >> shifts) & 1  # (n, dim, nbits)
    return np.packbits(bits.reshape(len(buckets), -1), axis=1)  # (n, dim * nbits / 8)


def unpack_buckets(packed: np.ndarray, nbits: int) -> np.ndarray:
    """The inverse of :func:`pack_buckets`: ``(n, bytes)`` uint8 -> ``(n, bytes * 8 // nbits)`` uint8."""
    bits = np.unpackbits(packed, axis=1).reshape(len(packed), -1, nbits)  # (n, dim, nbits)
    weights = (1 << np.arange(nbits - 1, -1, -1)).astype(np.uint8)  # (nbits,)
    return (bits * weights).sum(-1).astype(np.uint8)  # (n, dim)


@dataclass
class ResidualCodec:
    """Centroids ``(C, dim)`` float32, ``nbits``, bucket cutoffs ``(2**nbits - 1,)`` and weights ``(2**nbits,)``."""

    centroids: torch.Tensor
    nbits: int
    cutoffs: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        check_nbits(self.nbits, self.centroids.shape[1])
        if self.cutoffs.shape != (2**self.nbits - 1,) or self.weights.shape != (2**self.nbits,):
            raise ValueError(
                f"{self.nbits}-bit codec needs {2**self.nbits - 1} cutoffs and {2**self.nbits} weights, "
                f"found {self.cutoffs.shape} and {self.weights.shape}"
            )
        per_byte = 8 // self.nbits
        every_byte = unpack_buckets(np.arange(256, dtype=np.uint8)[:, None], self.nbits)  # (256, per_byte)
        self._table = torch.from_numpy(self.weights.astype(np.float32)[every_byte])  # (256, per_byte)
        assert self._table.shape == (256, per_byte)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def bytes_per_vector(self) -> int:
        return self.dim * self.nbits // 8

    @classmethod
    def train(cls, centroids: torch.Tensor, sample: np.ndarray, codes: np.ndarray, nbits: int) -> ResidualCodec:
        """Bucket cutoffs and weights from the residuals of ``(S, dim)`` sample vectors to their centroids ``(S,)``."""
        check_nbits(nbits, centroids.shape[1])
        residuals = sample.astype(np.float32) - centroids.numpy()[codes]  # (S, dim)
        options = 2**nbits
        cutoffs = np.quantile(residuals, np.arange(1, options) / options).astype(np.float32)
        weights = np.quantile(residuals, (np.arange(options) + 0.5) / options).astype(np.float32)
        logger.info("%d-bit residual buckets: cutoffs %s, weights %s", nbits, cutoffs.round(4), weights.round(4))
        return cls(centroids, nbits, cutoffs, weights)

    def compress(self, vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """``(n, dim)`` vectors with their centroid codes ``(n,)`` -> packed residuals ``(n, bytes_per_vector)``."""
        residuals = vectors.astype(np.float32) - self.centroids.numpy()[codes]  # (n, dim)
        buckets = np.searchsorted(self.cutoffs, residuals, side="right")  # (n, dim) in [0, 2**nbits)
        return pack_buckets(buckets, self.nbits)

    def decompress(self, codes: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """Codes ``(n,)`` and packed residuals ``(n, bytes_per_vector)`` uint8 -> unit vectors ``(n, dim)`` float32."""
        residuals = self._table[packed.long()].reshape(len(packed), self.dim)  # (n, dim)
        vectors = self.centroids[codes.long()] + residuals  # (n, dim)
        return torch.nn.functional.normalize(vectors, dim=-1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What an index stores besides the centroids (which :mod:`colbert.plaid` stores)."""
        return {"bucket_cutoffs": self.cutoffs, "bucket_weights": self.weights}

    @classmethod
    def from_arrays(cls, centroids: torch.Tensor, arrays: dict[str, np.ndarray], nbits: int) -> ResidualCodec:
        return cls(centroids, nbits, arrays["bucket_cutoffs"], arrays["bucket_weights"])
