"""Reference implementations the tests compare the library to: plain, slow and obviously right."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def brute_force_topk(
    queries: np.ndarray, vectors: np.ndarray, ids: Sequence[str], k: int
) -> tuple[np.ndarray, list[list[str]]]:
    """Exact numpy top-k by inner product: the reference for the FAISS indexes.

    queries (Q, D), vectors (N, D), ids (N). Returns scores (Q, min(k, N)) float32 and ids;
    ties keep the lower position.
    """
    assert len(ids) == len(vectors) and k >= 1
    q = np.asarray(queries, dtype=np.float32)  # (Q, D)
    v = np.asarray(vectors, dtype=np.float32)  # (N, D)
    scores = q @ v.T  # (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(v))]  # (Q, k_eff)
    top = np.take_along_axis(scores, order, axis=1)  # (Q, k_eff)
    return top.astype(np.float32), [[ids[j] for j in row] for row in order.tolist()]
