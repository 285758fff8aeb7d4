"""The ColBERT index on disk and in memory.

Layout of ``<index_root>/<index_name>/`` (the whole folder is written atomically; ``meta.json`` last)::

    shard-00000.safetensors   "embeddings" (n_tokens, dim) fp16, documents one after another,
                              and "doclens" (n_docs,) int32: the scored tokens of each document
                              (``--index_mode plaid``: also "codes" (n_tokens,), each token's centroid;
                              ``--compression residual``: "residuals" (n_tokens, dim * nbits / 8) uint8
                              in place of "embeddings", see colbert.compression)
    shard-00000.pids.json     the shard's pids, in order
    faiss.index               ``--index_mode faiss``: token index (flat or IVF-PQ), labels = positions in
                              the packed embeddings
    plaid.safetensors         ``--index_mode plaid``: centroids and inverted lists (see colbert.plaid)
    meta.json                 format, the full ColBERT config, backbone shape, model digest, checkpoint,
                              collection, counts, shards, index mode, FAISS or PLAID settings

No pickle anywhere. ``check_model`` refuses to search an index with a model whose identity
(``ColBERT.identity``: config, backbone shape, weights) differs from the one that built it, naming what
differs. Version 3 adds the index mode (PLAID, compression); version 2 stores the config nested;
versions 1 and 2 (FAISS indexes) still load, version 1 with a flat DPR encoder config.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from colbert.compression import ResidualCodec
from colbert.encoding import encode_documents
from colbert.faiss_index import FaissSettings, TokenIndex, sample_rows
from colbert.model import ColBERT, colbert_identity
from colbert.options import ColBERTConfig
from colbert.plaid import PLAID_FILE, PlaidIndex, PlaidSettings, build_plaid, load_plaid
from colbert.tokenization import ColBERTTokenizer
from dpr.atomic import atomic_directory
from dpr.configs import ConfigError
from dpr.data.files import read_versioned_json
from dpr.data.readers import DataFormatError, Passage
from dpr.identity import EncoderIdentity

logger = logging.getLogger(__name__)

FORMAT = "colbert-ptv2-index"
VERSION = 3
INDEX_MODES = ("faiss", "plaid")
META_FILE = "meta.json"
FAISS_FILE = "faiss.index"


def model_record(model: ColBERT) -> dict[str, Any]:
    """What an index records about the model that built it: full config, backbone shape, weights digest."""
    identity = model.identity()
    return {"colbert": model.config.to_dict(), "backbone": dict(identity.backbone), "model_digest": identity.digest}


def index_identity(meta: dict[str, Any], source: str = META_FILE) -> EncoderIdentity:
    """The identity of the model that built an index, from its meta (format 1 or 2)."""
    return colbert_identity(ColBERTConfig.from_dict(meta["colbert"], source), meta["backbone"], meta["model_digest"])


def _shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


def _write_shard(
    folder: str, shard_id: int, vectors: np.ndarray, doclens: np.ndarray, pids: Sequence[str]
) -> dict[str, Any]:
    name = _shard_name(shard_id)
    save_file({"embeddings": vectors, "doclens": doclens}, os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}.pids.json"), "w", encoding="utf-8") as handle:
        json.dump(list(pids), handle, ensure_ascii=False)
    return {"name": name, "docs": len(pids), "embeddings": int(vectors.shape[0])}


def _chunks(rows: Iterator[tuple[str, Passage]], size: int) -> Iterator[list[tuple[str, Passage]]]:
    chunk: list[tuple[str, Passage]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _build_faiss(folder: str, shards: Sequence[dict[str, Any]], dim: int, settings: FaissSettings) -> TokenIndex:
    """Train on a sample drawn from every shard, then add the shards one at a time (memory ~ one shard)."""
    token_index = TokenIndex.create(dim, settings)
    shard_file = [os.path.join(folder, f"{shard['name']}.safetensors") for shard in shards]
    if token_index.needs_training:
        sample = [
            load_file(path)["embeddings"][sample_rows(shard["embeddings"], settings, i)]
            for i, (path, shard) in enumerate(zip(shard_file, shards, strict=True))
        ]
        token_index.train(np.concatenate(sample), settings, sum(shard["embeddings"] for shard in shards))
    for path in shard_file:
        token_index.add(load_file(path)["embeddings"])
    logger.info("indexed %d token vectors (%s)", token_index.ntotal, settings.kind)
    return token_index


def build_index(
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    collection: Iterator[tuple[str, Passage]],
    index_dir: str,
    *,
    settings: FaissSettings | PlaidSettings,
    shard_size: int = 100_000,
    batch_size: int = 64,
    precision: str = "fp32",
    provenance: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Encode ``(pid, passage)`` rows shard by shard, build the FAISS index (``FaissSettings``) or the PLAID
    centroids (``PlaidSettings``), write ``index_dir``; returns meta."""
    if shard_size < 1:
        raise ConfigError(f"--shard_size must be >= 1, got {shard_size}")
    shards = []
    with atomic_directory(index_dir) as tmp:
        for shard_id, chunk in enumerate(_chunks(collection, shard_size)):
            pids = [pid for pid, _ in chunk]
            vectors, doclens = encode_documents(
                model, tokenizer, [p for _, p in chunk], batch_size=batch_size, precision=precision, progress=progress
            )
            shards.append(_write_shard(tmp, shard_id, vectors, doclens, pids))
            logger.info("shard %d: %d documents, %d token vectors", shard_id, len(pids), len(vectors))
        if not shards:
            raise DataFormatError("the collection holds no documents")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            **model_record(model),
            **(provenance or {}),
            "num_docs": sum(s["docs"] for s in shards),
            "num_embeddings": sum(s["embeddings"] for s in shards),
            "dim": model.config.dim,
            "shards": shards,
        }
        _finish(tmp, meta, settings)
    logger.info("index %s: %d documents, %d token vectors", index_dir, meta["num_docs"], meta["num_embeddings"])
    return meta


def _finish(
    folder: str,
    meta: dict[str, Any],
    settings: FaissSettings | PlaidSettings,
    centroids: torch.Tensor | None = None,
) -> None:
    """Build the candidate index over the fp16 shards in ``folder``, then write ``meta`` (with its mode) last."""
    shards = meta["shards"]
    if isinstance(settings, PlaidSettings):
        shard_files = [os.path.join(folder, f"{shard['name']}.safetensors") for shard in shards]
        counts = [shard["embeddings"] for shard in shards]
        plaid_file = os.path.join(folder, PLAID_FILE)
        meta.update(index_mode="plaid", plaid=build_plaid(shard_files, counts, plaid_file, settings, centroids))
    else:
        _build_faiss(folder, shards, meta["dim"], settings).save(os.path.join(folder, FAISS_FILE))
        meta.update(index_mode="faiss", faiss=settings.to_dict())
    with open(os.path.join(folder, META_FILE), "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)


def reindex(source_dir: str, index_dir: str, settings: FaissSettings | PlaidSettings) -> dict[str, Any]:
    """A new index over the fp16 token vectors of the index ``source_dir`` (copied, not re-encoded), with other
    candidate settings: e.g. PLAID or compressed from a FAISS index. A PLAID source whose k-means settings
    match lends its centroids (no k-means again). Returns the new meta."""
    source = read_meta(source_dir)
    centroids = None
    if isinstance(settings, PlaidSettings) and index_mode(source) == "plaid" and settings.same_kmeans(source["plaid"]):
        centroids = load_plaid(source_dir, source)[0].centroids
        logger.info("reusing the %d centroids of %s", len(centroids), source_dir)
    meta = {key: value for key, value in source.items() if key not in ("index_mode", "faiss", "plaid")}
    with atomic_directory(index_dir) as tmp:
        for shard in source["shards"]:
            arrays = load_file(os.path.join(source_dir, f"{shard['name']}.safetensors"))
            if "embeddings" not in arrays:
                raise ConfigError(f"{source_dir} stores compressed vectors; re-index from an fp16 index")
            save_file(
                {"embeddings": arrays["embeddings"], "doclens": arrays["doclens"]},
                os.path.join(tmp, f"{shard['name']}.safetensors"),
            )
            shutil.copyfile(
                os.path.join(source_dir, f"{shard['name']}.pids.json"), os.path.join(tmp, f"{shard['name']}.pids.json")
            )
        _finish(tmp, {**meta, "version": VERSION, "reindexed_from": os.path.abspath(source_dir)}, settings, centroids)
    return read_meta(index_dir)


def read_meta(index_dir: str) -> dict[str, Any]:
    path = os.path.join(index_dir, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{index_dir} is not a ColBERT index (no {META_FILE})")
    meta = read_versioned_json(
        path,
        max_version=VERSION,
        format=FORMAT,
        required=("colbert", "backbone", "model_digest", "shards", "num_embeddings", "dim"),
        error=DataFormatError,
    )
    if index_mode(meta) not in INDEX_MODES or (index_mode(meta) == "plaid" and "plaid" not in meta):
        raise DataFormatError(
            f"{path}: index_mode {meta.get('index_mode')!r} (with its settings) expected one of {INDEX_MODES}"
        )
    return meta


def index_bytes(index_dir: str, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the files of an index folder (but the names in ``skip``, e.g. ``(FAISS_FILE,)``)."""
    return sum(entry.stat().st_size for entry in os.scandir(index_dir) if entry.is_file() and entry.name not in skip)


def check_model(meta: dict[str, Any], model: ColBERT, index_dir: str) -> None:
    """Refuse a model other than the one that built the index (config, backbone or weights)."""
    stored, found = index_identity(meta, os.path.join(index_dir, META_FILE)), model.identity()
    diffs = stored.diff(found)
    if diffs and diffs[0].startswith("passage-encoder weights differ"):
        raise ConfigError(
            f"index {index_dir} was built with other weights (checkpoint {meta.get('checkpoint')}) "
            f"than the model given; use that checkpoint or re-index"
        )
    if diffs:
        raise ConfigError(
            f"index {index_dir} was built by another ColBERT config (index -> model): {'; '.join(diffs)}; "
            f"use the checkpoint it was built with ({meta.get('checkpoint')}) or re-index"
        )


@dataclass
class DocStore:
    """Every document's token vectors in memory, packed: ``(N_tokens, dim)`` vectors plus ``(N,)`` doclens.

    A PLAID index adds each token's centroid ``codes`` ``(N_tokens,)``; a compressed one holds packed
    residuals ``(N_tokens, dim * nbits / 8)`` uint8 in ``embeddings`` and decodes them with ``codec``.
    """

    embeddings: torch.Tensor  # (N_tokens, dim) float, or (N_tokens, bytes) uint8 with a codec
    doclens: np.ndarray  # (N,) int64
    pids: list[str]
    codes: torch.Tensor | None = None  # (N_tokens,) int32
    codec: ResidualCodec | None = None

    def __post_init__(self) -> None:
        if int(self.doclens.sum()) != self.embeddings.shape[0] or len(self.pids) != len(self.doclens):
            raise DataFormatError(
                f"index files disagree: {len(self.pids)} pids, {len(self.doclens)} doclens "
                f"summing to {int(self.doclens.sum())}, {self.embeddings.shape[0]} vectors"
            )
        if self.codes is not None and len(self.codes) != self.embeddings.shape[0]:
            raise DataFormatError(f"index files disagree: {len(self.codes)} codes, {self.embeddings.shape[0]} vectors")
        if self.codec is not None and self.codes is None:
            raise ValueError("a compressed store needs the tokens' centroid codes")
        self.offsets = np.concatenate([[0], np.cumsum(self.doclens)[:-1]]).astype(np.int64)  # (N,)
        self.row_of = {pid: row for row, pid in enumerate(self.pids)}
        # token position -> document row, to turn FAISS hits into candidate documents
        self.emb2doc = np.repeat(np.arange(len(self.pids), dtype=np.int64), self.doclens)  # (N_tokens,)

    @classmethod
    def from_arrays(
        cls, vectors: np.ndarray, doclens: np.ndarray, pids: Sequence[str], dtype: torch.dtype = torch.float32
    ) -> DocStore:
        """``dtype`` float32 for CPU scoring (fp16 arithmetic on CPUs is slow), float16 to halve memory on GPUs."""
        return cls(torch.from_numpy(np.ascontiguousarray(vectors)).to(dtype), doclens.astype(np.int64), list(pids))

    @property
    def num_tokens(self) -> int:
        return int(self.embeddings.shape[0])

    def tokens(self, rows: np.ndarray) -> slice | torch.Tensor:
        """Positions of the tokens of the documents ``rows`` ``(n,)``: a slice for a contiguous run, else ``(t,)``."""
        lens = self.doclens[rows]  # (n,)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and bool(np.all(np.diff(rows) == 1)):
            start = int(self.offsets[rows[0]])
            return slice(start, start + int(lens.sum()))
        starts = np.repeat(self.offsets[rows] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        return torch.from_numpy(starts + np.arange(int(lens.sum())))

    def packed(self, rows: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The documents at ``rows`` packed: ``(sum(doclens[rows]), dim)`` float32 vectors and ``(n,)`` doclens."""
        lens = self.doclens[rows]  # (n,)
        tokens = self.tokens(rows)
        vectors = self.embeddings[tokens]
        if self.codec is not None:
            assert self.codes is not None
            vectors = self.codec.decompress(self.codes[tokens], vectors)  # (t, dim) float32
        return vectors.to(device=device, dtype=torch.float32), torch.from_numpy(lens).to(device)


def index_mode(meta: dict[str, Any]) -> str:
    """ "faiss" or "plaid" (indexes before version 3 are FAISS indexes)."""
    return meta.get("index_mode", "faiss")


def _read_shards(index_dir: str, meta: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every shard's arrays concatenated (the keys of the first shard), and the pids."""
    parts: dict[str, list[np.ndarray]] = {}
    pids: list[str] = []
    for shard in meta["shards"]:
        arrays = load_file(os.path.join(index_dir, f"{shard['name']}.safetensors"))
        with open(os.path.join(index_dir, f"{shard['name']}.pids.json"), encoding="utf-8") as handle:
            pids.extend(json.load(handle))
        for key, value in arrays.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in parts.items()}, pids


def load_index(
    index_dir: str, with_faiss: bool = True, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, Any], DocStore, TokenIndex | PlaidIndex | None]:
    """Read an index folder: meta, every document's vectors (as ``dtype``; compressed ones stay packed and are
    decoded when scored), and (``with_faiss``) its candidate index, FAISS or PLAID by the index's mode."""
    meta = read_meta(index_dir)
    arrays, pids = _read_shards(index_dir, meta)
    plaid, codec = load_plaid(index_dir, meta) if index_mode(meta) == "plaid" else (None, None)
    codes = torch.from_numpy(arrays["codes"].astype(np.int32)) if "codes" in arrays else None
    if codec is not None:
        if "residuals" not in arrays or arrays["residuals"].shape[1:] != (codec.bytes_per_vector,):
            raise DataFormatError(f"{index_dir}: shards lack {codec.bytes_per_vector}-byte residuals; re-index")
        store = DocStore(torch.from_numpy(arrays["residuals"]), arrays["doclens"].astype(np.int64), pids, codes, codec)
    else:
        vectors = arrays.get("embeddings")
        if vectors is None or vectors.ndim != 2 or vectors.shape[1] != meta["dim"]:
            raise DataFormatError(f"{index_dir}: shard vectors do not have the dimension {meta['dim']} of {META_FILE}")
        store = DocStore.from_arrays(vectors, arrays["doclens"], pids, dtype)
        store.codes = codes
    if plaid is not None and codes is None:
        raise DataFormatError(f"{index_dir}: a PLAID index whose shards hold no centroid codes; re-index")
    if not with_faiss or plaid is not None:
        return meta, store, plaid if with_faiss else None
    token_index = TokenIndex.load(os.path.join(index_dir, FAISS_FILE))
    if token_index.ntotal != store.num_tokens:
        raise DataFormatError(
            f"{index_dir}: {FAISS_FILE} holds {token_index.ntotal} vectors, the shards {store.num_tokens}; re-index"
        )
    return meta, store, token_index
