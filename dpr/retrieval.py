"""After training: load an encoder for inference, and search embedding shards with FAISS indexes.

Embedding shards can be searched as one index or as several index groups, one at a time: each group is
built (or loaded), searched, and freed before the next, and the per-group top-k lists are merged with
:func:`dpr.indexer.faiss_index.merge_topk`. Peak memory is then one group's index, and for exact
(flat) indexes the merged result equals a single index's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dpr.atomic import atomic_directory
from dpr.embeddings_io import EmbeddingShard, EmbeddingsError, encoder_digest
from dpr.indexer.faiss_index import DenseIndex, IndexParams, merge_topk
from dpr.models.biencoder import BiEncoder, build_biencoder
from dpr.models.hub import load_tokenizer
from dpr.models.serialization import backbone_fingerprint
from dpr.options import ConfigError, encoder_config_from_args
from dpr.training.checkpoint import load_biencoder

logger = logging.getLogger(__name__)

SOURCE_FILE = "embeddings.json"       # beside a saved index: which shards and encoder it was built from


@dataclass(frozen=True)
class InferenceModel:
    """A bi-encoder ready to encode, its tokenizer, and where its weights came from."""

    model: BiEncoder
    tokenizer: Any
    checkpoint: str | None          # absolute checkpoint path, None for the base model
    training: dict[str, Any]        # the checkpoint's training config ({} for the base model)

    def identity(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        """(encoder config dict, backbone fingerprint, passage-encoder digest): what embeddings record."""
        return (self.model.config.to_dict(), backbone_fingerprint(self.model.backbone),
                encoder_digest(self.model.ctx_encoder))


def select_device(no_cuda: bool, precision: str) -> torch.device:
    """CUDA unless ``no_cuda`` or none is present; fp16 autocast on CPU is refused up front."""
    device = torch.device("cuda" if torch.cuda.is_available() and not no_cuda else "cpu")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"--fp16 needs a CUDA device; this run is on {device} (drop --fp16)")
    return device


def load_inference_model(args: argparse.Namespace, device: torch.device) -> InferenceModel:
    """The encoder of ``--model_file`` (its stored config decides the network), or the base model.

    Without a checkpoint, fine-tuning / BitFit encoders are the pretrained model on both sides, so they
    share one backbone (half the memory); prefix / prompt / adapter parameters would be random.
    """
    if args.model_file:
        model, info = load_biencoder(args.model_file, args)
        checkpoint, training = os.path.abspath(args.model_file), info.training
    else:
        config = encoder_config_from_args(args)
        if config.tuning in ("finetune", "bitfit") and getattr(args, "share_encoder", None) is None:
            config = dataclasses.replace(config, share_encoder=True)
        elif config.frozen_backbone:
            logger.warning("no --model_file: the %s parameters are randomly initialised, so these vectors "
                           "are not a trained retriever's", config.tuning)
        model, checkpoint, training = build_biencoder(config), None, {}
    tokenizer = load_tokenizer(model.config.pretrained_model_cfg, model.config.do_lower_case)
    model.to(device).eval()
    return InferenceModel(model, tokenizer, checkpoint, training)


def group_shards(shards: Sequence[EmbeddingShard], num_groups: int) -> list[list[EmbeddingShard]]:
    """Split shards (in order) into ``num_groups`` contiguous groups whose sizes differ by at most one."""
    if not 1 <= num_groups <= len(shards):
        raise ConfigError(f"--num_index_shards must be between 1 and the number of embedding shards "
                          f"({len(shards)}), found {num_groups}")
    base, extra = divmod(len(shards), num_groups)
    groups, start = [], 0
    for g in range(num_groups):
        end = start + base + (1 if g < extra else 0)
        groups.append(list(shards[start:end]))
        start = end
    return groups


def build_index(shards: Sequence[EmbeddingShard], kind: str, params: IndexParams, buffer: int) -> DenseIndex:
    """An index over the shards' vectors, added ``buffer`` rows at a time (shards are memory-mapped)."""
    index = DenseIndex(shards[0].header.dim, kind, params)
    for shard in shards:
        for vectors, ids in shard.chunks(buffer):
            try:
                index.add(vectors, ids)                                        # (≤buffer, D)
            except ValueError as err:     # duplicate ids across shards, bad values, training failure
                raise EmbeddingsError(f"{shard.path}: {err}") from err
    logger.info("built %r from %d shard(s)", index, len(shards))
    return index


def _source_record(shards: Sequence[EmbeddingShard], kind: str) -> dict[str, Any]:
    return {"kind": kind, "encoder_digest": shards[0].header.encoder_digest,
            "shards": [[s.header.shard_id, s.header.num_shards, s.header.count] for s in shards]}


def default_index_dir(shards: Sequence[EmbeddingShard], kind: str) -> str:
    """``<out_file>_index_<kind>`` beside the shards (``<out_file>_<id>``)."""
    stem = re.sub(r"_\d+$", "", shards[0].path)
    return f"{stem}_index_{re.sub(r'[^A-Za-z0-9]+', '-', kind).strip('-')}"


def load_or_build(shards: Sequence[EmbeddingShard], kind: str, params: IndexParams, buffer: int,
                  index_dir: str | None) -> DenseIndex:
    """Load the index saved in ``index_dir`` if it was built from these shards, else build (and save).

    A saved index from other embeddings (another encoder, other shards, another kind) is an error, not
    a silent reuse: the message says which folder to delete.
    """
    if index_dir is None:
        return build_index(shards, kind, params, buffer)
    expected = _source_record(shards, kind)
    source_path = os.path.join(index_dir, SOURCE_FILE)
    if os.path.isfile(source_path):
        with open(source_path, encoding="utf-8") as handle:
            found = json.load(handle)
        if found != expected:
            raise EmbeddingsError(f"{source_path}: the index in {index_dir} was built from other embeddings "
                                  f"or another --index_type ({found}, expected {expected}); delete the folder "
                                  f"or pass another --index_path")
        try:
            index = DenseIndex.load(index_dir)
        except (ValueError, RuntimeError) as err:
            raise EmbeddingsError(f"{index_dir}: cannot load the saved index: {err}") from err
        logger.info("loaded %r from %s", index, index_dir)
        return index
    index = build_index(shards, kind, params, buffer)
    with atomic_directory(index_dir) as tmp:
        index.save(tmp)
        with open(os.path.join(tmp, SOURCE_FILE), "w", encoding="utf-8") as handle:
            json.dump(expected, handle, indent=2)
    logger.info("saved the index to %s", index_dir)
    return index


def search_groups(groups: Sequence[Sequence[EmbeddingShard]], queries: np.ndarray, k: int, kind: str,
                  params: IndexParams, buffer: int, index_dir: str | None = None,
                  ) -> tuple[np.ndarray, list[list[str]]]:
    """Top-k of ``queries`` (Q, D) over every group: one index per group, searched then freed, merged.

    Returns scores (Q, k') float32, best first, and the ids per query. With ``index_dir``, group g is
    saved to / loaded from ``<index_dir>/group_<g>`` (or ``index_dir`` itself for a single group).
    """
    results = []
    for g, group in enumerate(groups):
        folder = None if index_dir is None else (index_dir if len(groups) == 1
                                                 else os.path.join(index_dir, f"group_{g}"))
        index = load_or_build(group, kind, params, buffer, folder)
        results.append(index.search(queries, k))
        del index                     # free this group's index before building the next one
    return results[0] if len(results) == 1 else merge_topk(results, k)
