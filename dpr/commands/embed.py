"""Encode a passage corpus (DPR passages TSV or BEIR corpus.jsonl) into one embeddings shard.

The encoder comes from ``--model_file`` (a checkpoint: its stored config decides the network) or, without
it, from ``--pretrained_model_cfg`` alone (the untrained base model, for zero-shot baselines). Shard
``--shard_id`` of ``--num_shards`` holds a contiguous range of the passages; together the shards cover
every passage exactly once. Output: the folder ``<out_file>_<shard_id>`` (vectors.npy, ids.json,
meta.json; see dpr/embeddings_io.py), written atomically. The work is :func:`dpr.embedding.embed_corpus`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dpr.cli import run_cli, setup_logging
from dpr.data.corpus import resolve_corpus_path
from dpr.device import add_hardware_params
from dpr.embedding import EmbedConfig, check_shard_ids, embed_corpus
from dpr.inference_options import inference_config_from_args
from dpr.models.encoder import trainable_report
from dpr.options import add_encoder_params, add_merge_lora_param, add_tuning_params
from dpr.retrieval import load_inference_model

logger = logging.getLogger("generate_embeddings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder_params(parser)
    add_tuning_params(parser)
    g = parser.add_argument_group("embedding")
    g.add_argument(
        "--ctx_file",
        required=True,
        help="passages: DPR TSV (id, text, title; gzip ok) or BEIR corpus.jsonl (or its folder)",
    )
    g.add_argument("--out_file", required=True, help="output prefix; shard i goes to <out_file>_<i>/")
    g.add_argument("--shard_id", type=int, default=0)
    g.add_argument("--num_shards", type=int, default=1)
    g.add_argument("--batch_size", type=int, default=128, help="passages per forward pass")
    g.add_argument(
        "--max_passages", type=int, default=None, help="encode only the first N passages of the file (quick runs)"
    )
    g.add_argument("--fp16_storage", action="store_true", help="store vectors as float16 (half the disk)")
    h = add_hardware_params(parser, training=False, int8=True)
    add_merge_lora_param(h)
    h.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def embed_config_from_args(args: argparse.Namespace) -> EmbedConfig:
    return EmbedConfig(
        batch_size=args.batch_size,
        max_passages=args.max_passages,
        fp16_storage=args.fp16_storage,
        progress=args.progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    check_shard_ids([args.shard_id], args.num_shards)  # bad flags fail before a model is loaded
    cfg, model_cfg = embed_config_from_args(args), inference_config_from_args(args)
    ctx_file = resolve_corpus_path(args.ctx_file)  # a missing corpus, too
    loaded = load_inference_model(model_cfg)
    model = loaded.model
    logger.info("encoder config: %s", json.dumps(model.config.to_dict(), sort_keys=True))
    report = trainable_report(model)
    logger.info("%s", report)
    [shard] = embed_corpus(loaded, ctx_file, args.out_file, cfg, shard_ids=[args.shard_id], num_shards=args.num_shards)
    header = shard.header
    print(
        f"encoded {header.count} passages (shard {header.shard_id} of {header.num_shards}: rows {header.start}.."
        f"{header.end - 1} of {header.total_passages}) in {shard.seconds:.1f} s, "
        f"{header.count / max(shard.seconds, 1e-9):.1f} passages/s"
    )
    print(f"embeddings: shape ({header.count}, {header.dim}), dtype {header.dtype} -> {shard.path}/")
    print(f"encoder: {loaded.describe()} ({model.config.tuning.method}, {model.config.head.pooling} pooling); {report}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
