"""The passage-embedding shard format: safe to read (no pickle), atomic to write, self-describing.

One shard is a folder ``<out_file>_<shard_id>/`` (DPR's naming, so ``--encoded_ctx_file
"<out_file>_*"`` globs every shard) holding::

    vectors.npy    (count, dim) float32, or float16 with --fp16_storage; read with allow_pickle=False
    ids.json       JSON list of ``count`` passage ids (strings), row i is the vector of ids[i]
    meta.json      the header: format, version, passage-encoder config (with its passage format),
                   backbone fingerprint, checkpoint path, passage-encoder digest, dim, count, dtype,
                   shard_id / num_shards, passage range, and (version 2) digests of the shard's passages
                   and of the whole corpus they came from; (version 3) the encoder config nested

The folder is written with :func:`dpr.atomic.atomic_directory`, so the three files appear together or
not at all (a crash can never pair new vectors with old ids). Every reader check names the file.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dpr.atomic import atomic_directory
from dpr.configs import BiEncoderConfig, ConfigError
from dpr.data.files import read_json_file, read_versioned_json
from dpr.errors import UserError
from dpr.identity import EncoderIdentity, encoder_digest

if TYPE_CHECKING:
    from dpr.data.readers import Passage

logger = logging.getLogger(__name__)

FORMAT = "dpr-ptv2-embeddings"
# 2: corpus_digest / passages_digest. Version-1 shards still load; their corpus is "unknown".
# 3: the encoder config nested (dpr.configs, format 2), its passage format included.
VERSION = 3
VECTORS_FILE = "vectors.npy"
IDS_FILE = "ids.json"
META_FILE = "meta.json"
# Beside a saved FAISS index (dense_retriever --save_or_load_index): a glob over shards may match it.
INDEX_SOURCE_FILE = "embeddings.json"
STORAGE_DTYPES = ("float32", "float16")

__all__ = [  # encoder_digest lives in dpr.identity; shard code and its tests have always found it here
    "EmbeddingShard",
    "EmbeddingsError",
    "RowDigest",
    "ShardHeader",
    "check_identity",
    "encoder_digest",
    "find_shards",
    "passages_digest",
    "read_shard",
    "shard_path",
    "shard_range",
    "write_shard",
]


class EmbeddingsError(UserError, ValueError):
    """An embeddings shard that is missing, damaged, or does not fit the others or the encoder."""


@dataclass(frozen=True)
class ShardHeader:
    """What ``meta.json`` records about one shard. ``start``/``end``: its rows of the source corpus.

    ``corpus_digest``: :class:`RowDigest` of rows ``[0, total_passages)`` of ``ctx_file``, the same in
    every shard of one corpus version; ``passages_digest``: of this shard's own rows. None: an older shard.
    """

    encoder: dict[str, Any]
    backbone: dict[str, Any]
    encoder_digest: str
    checkpoint: str | None
    dim: int
    count: int
    dtype: str
    shard_id: int
    num_shards: int
    start: int
    end: int
    total_passages: int
    ctx_file: str
    insert_title: bool = True
    corpus_digest: str | None = None
    passages_digest: str | None = None
    format: str = FORMAT
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self, source: str = META_FILE) -> EncoderIdentity:
        """The passage encoder that made the shard (versions 1 and 2 kept --no_title beside the config)."""
        try:
            config = BiEncoderConfig.from_dict(self.encoder, source)
        except ConfigError as err:
            raise EmbeddingsError(str(err)) from None
        if self.version < 3:
            config = config.with_settings(insert_title=self.insert_title)
        return EncoderIdentity.of_config(config, self.backbone, self.encoder_digest)


def shard_range(total: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of shard ``shard_id``: contiguous, sizes differ by at most one, none dropped.

    The first ``total % num_shards`` shards get one extra row (DPR's ``int(N / num_shards)`` lost them).
    """
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard_id must be in [0, --num_shards={num_shards}), found {shard_id}")
    base, extra = divmod(total, num_shards)
    start = shard_id * base + min(shard_id, extra)
    return start, start + base + (1 if shard_id < extra else 0)


class RowDigest:
    """SHA-256 over passages ``(id, title, text)`` in order, fed a row at a time (one streaming pass).

    Over parsed rows, not file bytes, so a gzipped copy or the TSV and BEIR forms of one corpus agree.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.count = 0

    def update(self, passage_id: str, passage: Passage) -> None:
        row = json.dumps([passage_id, passage.title, passage.text], ensure_ascii=False)  # unambiguous
        self._sha.update(row.encode("utf-8") + b"\n")
        self.count += 1

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def passages_digest(ids: Sequence[str], passages: Sequence[Passage]) -> str:
    """The :class:`RowDigest` of ``passages`` under ``ids``, in order."""
    digest = RowDigest()
    for passage_id, passage in zip(ids, passages, strict=True):
        digest.update(passage_id, passage)
    return digest.hexdigest()


def shard_path(out_file: str, shard_id: int) -> str:
    return f"{out_file}_{shard_id}"


def write_shard(path: str, vectors: np.ndarray, ids: Sequence[str], header: ShardHeader) -> str:
    """Write one shard folder atomically; ``vectors`` (count, dim) are stored as ``header.dtype``."""
    if header.dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, found {header.dtype!r}")
    if vectors.shape != (header.count, header.dim) or len(ids) != header.count:
        raise ValueError(
            f"shard {path}: header says ({header.count}, {header.dim}), got vectors {vectors.shape} and {len(ids)} ids"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"shard {path}: duplicate passage ids in rows {header.start}..{header.end - 1}")
    with np.errstate(over="ignore"):  # overflow is checked just below, with a clearer message
        stored = vectors.astype(header.dtype, copy=False)
    if not np.isfinite(stored).all():
        # fp16 overflows above 65504: refuse rather than store infinities the index would rank first
        raise ValueError(f"shard {path}: vectors hold NaN or infinite values as {header.dtype}")
    with atomic_directory(path) as tmp:
        np.save(os.path.join(tmp, VECTORS_FILE), stored, allow_pickle=False)
        with open(os.path.join(tmp, IDS_FILE), "w", encoding="utf-8") as handle:
            json.dump(list(ids), handle, ensure_ascii=False)
        with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as handle:
            json.dump(header.to_dict(), handle, indent=2, sort_keys=True)
    logger.info("wrote %d x %d %s embeddings to %s", header.count, header.dim, header.dtype, path)
    return path


@dataclass(frozen=True)
class EmbeddingShard:
    """A validated shard folder; vectors and ids are read on demand (vectors memory-mapped)."""

    path: str
    header: ShardHeader

    @property
    def meta_path(self) -> str:
        return os.path.join(self.path, META_FILE)

    def vectors(self) -> np.ndarray:
        """The (count, dim) vectors as stored (float32 or float16), memory-mapped read-only."""
        return _load_vectors(self.path, self.header)

    def ids(self) -> list[str]:
        return _load_ids(self.path, self.header)

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(≤size, dim) float32 vectors with their ids, so a large shard is never copied whole."""
        vectors, ids = self.vectors(), self.ids()
        for start in range(0, len(ids), size):
            yield np.asarray(vectors[start : start + size], dtype=np.float32), ids[start : start + size]


def is_saved_index(folder: str) -> bool:
    """Whether ``folder`` holds an index saved by dense_retriever (one group, or ``group_<g>`` folders)."""
    return os.path.isfile(os.path.join(folder, INDEX_SOURCE_FILE)) or bool(
        glob.glob(os.path.join(glob.escape(folder), "group_*", INDEX_SOURCE_FILE))
    )


def _read_header(path: str) -> ShardHeader:
    meta_path = os.path.join(path, META_FILE)
    if is_saved_index(path):
        raise EmbeddingsError(
            f"{path} is a saved FAISS index (--save_or_load_index), not an embeddings shard "
            f"folder; pass the shard folders (<out_file>_<shard_id>) to --encoded_ctx_file"
        )
    if not os.path.isfile(meta_path):
        hint = (
            " (a DPR pickle? this format needs no pickle: regenerate with generate_embeddings.py)"
            if os.path.isfile(path)
            else ""
        )
        raise EmbeddingsError(f"{path} is not an embeddings shard folder: no {META_FILE}{hint}")
    data = read_versioned_json(meta_path, max_version=VERSION, format=FORMAT, error=EmbeddingsError)
    names = {f.name for f in dataclasses.fields(ShardHeader)}
    required = {f.name for f in dataclasses.fields(ShardHeader) if f.default is dataclasses.MISSING}
    missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
    if missing or unknown:
        raise EmbeddingsError(f"{meta_path}: missing keys {missing}, unknown keys {unknown}")
    header = ShardHeader(**data)
    if header.dtype not in STORAGE_DTYPES:
        raise EmbeddingsError(f"{meta_path}: dtype {header.dtype!r}, expected one of {STORAGE_DTYPES}")
    header.identity(meta_path)  # a readable encoder config, or the error names the file
    return header


def _load_vectors(path: str, header: ShardHeader) -> np.ndarray:
    vectors_path = os.path.join(path, VECTORS_FILE)
    if not os.path.isfile(vectors_path):
        raise EmbeddingsError(f"{vectors_path}: missing (the shard has {META_FILE} but no vectors)")
    try:
        vectors = np.load(vectors_path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:  # numpy raises ValueError for pickled object arrays and bad headers
        raise EmbeddingsError(f"{vectors_path}: not a plain numpy array file: {err}") from err
    expected = (header.count, header.dim)
    if vectors.shape != expected or vectors.dtype != np.dtype(header.dtype):
        raise EmbeddingsError(
            f"{vectors_path}: holds {vectors.dtype} {vectors.shape}, but "
            f"{os.path.join(path, META_FILE)} says {header.dtype} {expected}"
        )
    return vectors


def _load_ids(path: str, header: ShardHeader) -> list[str]:
    ids_path = os.path.join(path, IDS_FILE)
    if not os.path.isfile(ids_path):
        raise EmbeddingsError(f"{ids_path}: missing: the {header.count} vectors have no passage ids")
    ids = read_json_file(ids_path, error=EmbeddingsError)
    if not isinstance(ids, list):
        raise EmbeddingsError(f"{ids_path}: expected a JSON list of passage ids, found {type(ids).__name__}")
    if len(ids) != header.count:
        what = "missing" if len(ids) < header.count else "extra"
        raise EmbeddingsError(
            f"{ids_path}: holds {len(ids)} ids for {header.count} vectors ({abs(header.count - len(ids))} {what})"
        )
    for row, pid in enumerate(ids):
        if not isinstance(pid, str) or not pid:
            raise EmbeddingsError(f"{ids_path}: row {row}: expected a non-empty string id, found {pid!r}")
    return ids


def read_shard(path: str) -> EmbeddingShard:
    """Open one shard folder, checking its header, vectors and ids agree (ids are read, vectors mapped)."""
    path = path.rstrip(os.sep)
    header = _read_header(path)
    _load_vectors(path, header)
    _load_ids(path, header)
    return EmbeddingShard(path, header)


def _expand(patterns: str | Sequence[str]) -> list[str]:
    """Shard folders matched by glob patterns; a match inside a shard folder counts as the folder.

    A saved index that a glob matches is skipped: its default place ``<out_file>_index_<kind>`` matches
    ``<out_file>_*``, so without this a second ``--save_or_load_index`` run failed on its own index.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    folders: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"no embeddings shard matches {pattern!r}")
        for match in matches:
            folder = os.path.dirname(match) if os.path.basename(match) in (VECTORS_FILE, IDS_FILE, META_FILE) else match
            if glob.has_magic(pattern) and is_saved_index(folder):
                logger.info("%s matches %r but is a saved index, not a shard: skipped", folder, pattern)
                continue
            if folder not in folders:
                folders.append(folder)
    if not folders:
        raise FileNotFoundError(f"no embeddings shard matches {list(patterns)} (only saved indexes)")
    return folders


def find_shards(patterns: str | Sequence[str], allow_partial: bool = False) -> list[EmbeddingShard]:
    """Read every shard the patterns match, sorted by shard id, and check they form one corpus.

    All shards must come from the same encoder, have the same dimension and the same ``num_shards``,
    and no shard id may repeat. A missing shard id is an error unless ``allow_partial``.
    """
    shards = sorted((read_shard(p) for p in _expand(patterns)), key=lambda s: (s.header.shard_id, s.path))
    first = shards[0]
    for shard in shards[1:]:
        _check_same_corpus(first, shard)
    _warn_unknown_corpus(shards)
    seen = [s.header.shard_id for s in shards]
    duplicated = sorted({i for i in seen if seen.count(i) > 1})
    if duplicated:
        paths = [s.path for s in shards if s.header.shard_id in duplicated]
        raise EmbeddingsError(f"shard id(s) {duplicated} appear more than once: {paths}")
    absent = sorted(set(range(first.header.num_shards)) - set(seen))
    if absent:
        message = (
            f"{len(shards)} of {first.header.num_shards} shards found; shard id(s) {absent} of "
            f"{first.header.ctx_file} are missing next to {first.path}"
        )
        if not allow_partial:
            raise EmbeddingsError(
                message + " (their passages could never be retrieved; pass "
                "--allow_partial_corpus to search the shards that exist)"
            )
        logger.warning("%s", message)
    _check_unique_ids(shards)
    return shards


def _warn_unknown_corpus(shards: Sequence[EmbeddingShard]) -> None:
    """One warning for all shards that predate corpus digests: their corpus version cannot be checked."""
    unknown = [s.path for s in shards if s.header.corpus_digest is None]
    if unknown:
        logger.warning(
            "%d of %d embeddings shards (e.g. %s) record no corpus digest (written before format "
            "version 2): cannot check they were encoded from one version of %s; regenerate them "
            "to get the check",
            len(unknown),
            len(shards),
            unknown[0],
            shards[0].header.ctx_file,
        )


def _check_unique_ids(shards: Sequence[EmbeddingShard]) -> None:
    """Refuse a passage id held twice, within a shard or across shards (shards can come from elsewhere)."""
    seen: set[str] = set()
    for n, shard in enumerate(shards):
        for pid in shard.ids():
            if pid in seen:
                first = next(s for s in shards[: n + 1] if pid in s.ids())
                raise EmbeddingsError(_duplicate_message(pid, first, shard))
            seen.add(pid)


def _duplicate_message(pid: str, first: EmbeddingShard, second: EmbeddingShard) -> str:
    if first.path == second.path:
        rows = [row for row, other in enumerate(second.ids()) if other == pid]
        return (
            f"{os.path.join(second.path, IDS_FILE)}: passage id {pid!r} appears at rows {rows}; each "
            f"passage must be encoded once (regenerate the shard from a corpus without duplicate ids)"
        )
    return (
        f"passage id {pid!r} is in both {first.path} and {second.path}: the shards overlap (two runs "
        f"over the same rows, or corpora that share ids); pass shards of one generate_embeddings run"
    )


def _check_same_corpus(a: EmbeddingShard, b: EmbeddingShard) -> None:
    ha, hb = a.header, b.header
    if ha.dim != hb.dim:
        raise EmbeddingsError(f"{b.meta_path}: dimension {hb.dim} does not match {a.meta_path}: {ha.dim}")
    diffs = ha.identity(a.meta_path).diff(hb.identity(b.meta_path))
    if diffs:
        raise EmbeddingsError(f"{b.meta_path} and {a.meta_path} were made by different encoders: {'; '.join(diffs)}")
    if ha.num_shards != hb.num_shards or ha.total_passages != hb.total_passages:
        raise EmbeddingsError(
            f"{b.meta_path}: shard {hb.shard_id} of {hb.num_shards} over {hb.total_passages} "
            f"passages, but {a.meta_path}: shard {ha.shard_id} of {ha.num_shards} over "
            f"{ha.total_passages}; mix of two embedding runs?"
        )
    if ha.corpus_digest and hb.corpus_digest and ha.corpus_digest != hb.corpus_digest:
        raise EmbeddingsError(
            f"{b.path} and {a.path} were encoded from different versions of the corpus "
            f"(digest {hb.corpus_digest[:12]} of {hb.ctx_file} vs {ha.corpus_digest[:12]} of "
            f"{ha.ctx_file}): the same ids may hold other texts; regenerate every shard "
            f"from one corpus file"
        )


def check_identity(shard: EmbeddingShard, identity: EncoderIdentity, checkpoint: str | None) -> None:
    """Refuse embeddings made by another passage encoder than the query encoder's (config, format, weights).

    ``identity`` is the query-side model's passage identity; the error names the shard's header file,
    the embeddings' checkpoint and the query encoder's, and each differing value (embeddings -> query).
    """
    stored = shard.header.identity(shard.meta_path)
    diffs = stored.diff(identity)
    if diffs:
        made_by = shard.header.checkpoint or f"base model {stored.settings.get('pretrained_model_cfg')}"
        query_by = checkpoint or f"base model {identity.settings.get('pretrained_model_cfg')}"
        raise EmbeddingsError(
            f"{shard.meta_path}: these embeddings were made by another encoder than the query encoder "
            f"(embeddings: {made_by}; query encoder: {query_by}): {'; '.join(diffs)}. Regenerate the "
            f"embeddings with this encoder or pass the --model_file they were made with"
        )
