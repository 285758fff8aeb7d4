#!/usr/bin/env python3
"""Encode a passage corpus (DPR passages TSV or BEIR corpus.jsonl) into one embeddings shard.

The encoder comes from ``--model_file`` (a checkpoint: its stored config decides the network) or, without
it, from ``--pretrained_model_cfg`` alone (the untrained base model, for zero-shot baselines). Shard
``--shard_id`` of ``--num_shards`` holds a contiguous range of the passages; together the shards cover
every passage exactly once. Output: the folder ``<out_file>_<shard_id>`` (vectors.npy, ids.json,
meta.json; see dpr/embeddings_io.py), written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

from dpr.cli import run_cli, setup_logging
from dpr.data.corpus import iter_unique_passages, read_corpus, read_passage_range, resolve_corpus_path
from dpr.data.readers import DataFormatError, Passage
from dpr.embeddings_io import (RowDigest, ShardHeader, encoder_digest, passages_digest, shard_path, shard_range,
                               write_shard)
from dpr.encoding import encode_texts
from dpr.models.encoder import trainable_report
from dpr.models.serialization import backbone_fingerprint
from dpr.options import ConfigError, add_encoder_params, add_tuning_params
from dpr.retrieval import InferenceModel, load_inference_model, select_device

logger = logging.getLogger("generate_embeddings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder_params(parser)
    add_tuning_params(parser)
    g = parser.add_argument_group("embedding")
    g.add_argument("--ctx_file", required=True,
                   help="passages: DPR TSV (id, text, title; gzip ok) or BEIR corpus.jsonl (or its folder)")
    g.add_argument("--out_file", required=True, help="output prefix; shard i goes to <out_file>_<i>/")
    g.add_argument("--shard_id", type=int, default=0)
    g.add_argument("--num_shards", type=int, default=1)
    g.add_argument("--batch_size", type=int, default=128, help="passages per forward pass")
    g.add_argument("--max_passages", type=int, default=None,
                   help="encode only the first N passages of the file (quick runs)")
    g.add_argument("--fp16_storage", action="store_true", help="store vectors as float16 (half the disk)")
    g.add_argument("--no_title", dest="insert_title", action="store_false", default=None,
                   help="encode passages without titles (default: as the checkpoint was trained)")
    h = parser.add_argument_group("hardware")
    h.add_argument("--fp16", dest="precision", action="store_const", const="fp16", default="fp32",
                   help="fp16 autocast (CUDA only)")
    h.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="bf16 autocast")
    h.add_argument("--no_cuda", action="store_true")
    h.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.num_shards < 1 or not 0 <= args.shard_id < args.num_shards:
        raise ConfigError(f"--shard_id must be in [0, --num_shards={args.num_shards}), found {args.shard_id}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, found {args.batch_size}")
    if args.max_passages is not None and args.max_passages < 1:
        raise ConfigError(f"--max_passages must be >= 1, found {args.max_passages}")


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


def _read_shard_passages(args: argparse.Namespace, ctx_file: str) -> ShardRows:
    """This shard's rows; one pass when there is a single shard, else a counting pass and a reading pass."""
    if args.num_shards == 1:
        ids, passages = read_corpus(ctx_file, args.max_passages)
        digest = passages_digest(ids, passages)               # the shard is the whole corpus
        return ShardRows(ids, passages, 0, len(ids), len(ids), digest, digest)
    total, corpus_digest = _count_and_digest(ctx_file, args.max_passages)
    if total == 0:
        raise DataFormatError(f"{ctx_file}: no passages found (empty corpus)")
    if args.num_shards > total:
        raise ConfigError(f"--num_shards {args.num_shards} exceeds the {total} passages of {ctx_file}")
    start, end = shard_range(total, args.shard_id, args.num_shards)
    ids, passages = read_passage_range(ctx_file, start, end)
    return ShardRows(ids, passages, start, end, total, corpus_digest, passages_digest(ids, passages))


def _shard_header(args: argparse.Namespace, loaded: InferenceModel, rows: ShardRows, dim: int, ctx_file: str,
                  insert_title: bool) -> ShardHeader:
    model = loaded.model
    # The passage side's own config: with --tune_side question it is the base model's, so indexes match.
    return ShardHeader(encoder=model.config.passage_config().to_dict(), backbone=backbone_fingerprint(model.backbone),
                       encoder_digest=encoder_digest(model.ctx_encoder), checkpoint=loaded.checkpoint, dim=dim,
                       count=len(rows.ids), dtype="float16" if args.fp16_storage else "float32",
                       shard_id=args.shard_id, num_shards=args.num_shards, start=rows.start, end=rows.end,
                       total_passages=rows.total, ctx_file=os.path.abspath(ctx_file), insert_title=insert_title,
                       corpus_digest=rows.corpus_digest, passages_digest=rows.passages_digest)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    _check_args(args)
    ctx_file = resolve_corpus_path(args.ctx_file)
    device = select_device(args.no_cuda, args.precision)
    loaded = load_inference_model(args, device)
    model = loaded.model
    logger.info("encoder config: %s", json.dumps(model.config.to_dict(), sort_keys=True))
    report = trainable_report(model)
    logger.info("%s", report)
    insert_title = args.insert_title if args.insert_title is not None else loaded.training.get("insert_title", True)

    rows = _read_shard_passages(args, ctx_file)
    ids, start, end, total = rows.ids, rows.start, rows.end, rows.total
    logger.info("shard %d of %d: passages %d..%d of %d from %s", args.shard_id, args.num_shards, start,
                end - 1, total, ctx_file)
    began = time.perf_counter()
    vectors = encode_texts(model, loaded.tokenizer, rows.passages, "passage",
                           max_length=model.config.sequence_length, batch_size=args.batch_size, device=device,
                           precision=args.precision, insert_title=insert_title, progress=args.progress)  # (n, D)
    seconds = time.perf_counter() - began
    header = _shard_header(args, loaded, rows, int(vectors.shape[1]), ctx_file, insert_title)
    out = write_shard(shard_path(args.out_file, args.shard_id), vectors, ids, header)
    print(f"encoded {len(ids)} passages (shard {args.shard_id} of {args.num_shards}: rows {start}..{end - 1} "
          f"of {total}) in {seconds:.1f} s, {len(ids) / max(seconds, 1e-9):.1f} passages/s")
    print(f"embeddings: shape ({header.count}, {header.dim}), dtype {header.dtype} -> {out}/")
    print(f"encoder: {loaded.checkpoint or 'base model ' + model.config.pretrained_model_cfg} "
          f"({model.config.tuning}, {model.config.pooling} pooling); {report}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
