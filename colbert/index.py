"""Encode a collection with a ColBERT checkpoint and build its token index.

  python -m colbert.index --checkpoint runs/colbert/colbert-2000 --collection data/scifact/scifact-passages.tsv \\
      --index_root indexes --index_name scifact [--partitions 1024 --sample 0.3]
      [--index_mode plaid [--ncentroids 8192] [--compression residual --nbits 2]]

The collection is encoded in shards of --shard_size documents (fp16 token vectors and document lengths,
safetensors). --index_mode faiss (the default) builds a FAISS token index: exact (flat) without
--partitions, with it IVF-PQ trained on a --sample of the token vectors. --index_mode plaid builds
ColBERTv2/PLAID's centroids (k-means, --ncentroids, 0 = 2**floor(log2(16 sqrt(tokens)))) with each token's
centroid code and the inverted lists centroid -> documents; with --compression residual the vectors are
stored as centroid + --nbits bits a dimension (32 + 2 bytes a 128-dim token at 2 bits, not 256).
The index records the full ColBERT config and a digest of the weights, so retrieval with another model is
refused. The folder <index_root>/<index_name> is replaced atomically.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from colbert.checkpoint import load_colbert
from colbert.data import iter_collection
from colbert.faiss_index import FaissSettings
from colbert.indexing import INDEX_MODES, build_index, index_bytes
from colbert.model import merge_lora
from colbert.options import add_colbert_model_params, colbert_overrides_from_args
from colbert.plaid import COMPRESSIONS, PlaidSettings
from colbert.tokenization import ColBERTTokenizer
from dpr.cli import run_cli, setup_logging
from dpr.device import add_hardware_params, resolve_precision, select_device
from dpr.models.encoder import trainable_report
from dpr.models.hub import load_tokenizer
from dpr.options import ConfigError, add_merge_lora_param

logger = logging.getLogger("colbert.index")  # not __name__: under `python -m` that is "__main__"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colbert.index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_colbert_model_params(parser)
    g = parser.add_argument_group("indexing")
    g.add_argument(
        "--collection",
        required=True,
        help="collection.tsv (pid<TAB>passage[<TAB>title]), DPR passages TSV or BEIR corpus.jsonl",
    )
    g.add_argument("--index_root", required=True)
    g.add_argument("--index_name", required=True)
    g.add_argument("--index_mode", choices=INDEX_MODES, default="faiss", help="candidate index: FAISS tokens or PLAID")
    g.add_argument("--partitions", type=int, default=0, help="IVF cells (0 = exact flat index, for small corpora)")
    g.add_argument("--sample", type=float, default=1.0, help="share of token vectors IVF-PQ trains on")
    g.add_argument("--pq_m", type=int, default=16, help="PQ sub-quantisers (must divide --dim)")
    g.add_argument("--pq_nbits", type=int, default=8, help="bits per PQ code")
    p = parser.add_argument_group("PLAID (--index_mode plaid)")
    p.add_argument("--ncentroids", type=int, default=0, help="k-means centroids (0 = from the number of tokens)")
    p.add_argument("--kmeans_niters", type=int, default=4, help="k-means iterations (ColBERTv2's 4)")
    p.add_argument(
        "--kmeans_points_per_centroid", type=int, default=64, help="k-means trains on this many tokens a centroid"
    )
    p.add_argument("--compression", choices=COMPRESSIONS, default="none", help="residual: centroid + nbits residual")
    p.add_argument("--nbits", type=int, default=2, help="bits a dimension of a compressed residual (1 or 2)")
    g.add_argument("--shard_size", type=int, default=100_000, help="documents per shard")
    g.add_argument("--bsize", type=int, default=64, help="documents per encoder batch")
    h = add_hardware_params(parser, training=False, amp_alias=True)
    add_merge_lora_param(h, "--checkpoint")
    h.add_argument("--no_progress", dest="progress", action="store_false")
    return parser


def _settings(args: argparse.Namespace) -> FaissSettings | PlaidSettings:
    if args.index_mode == "faiss":
        if args.compression != "none" or args.ncentroids:
            raise ConfigError("--compression and --ncentroids are PLAID settings: add --index_mode plaid")
        return FaissSettings(partitions=args.partitions, sample=args.sample, pq_m=args.pq_m, nbits=args.pq_nbits)
    if args.partitions:
        raise ConfigError("--partitions is a FAISS setting; --index_mode plaid takes --ncentroids")
    return PlaidSettings(
        ncentroids=args.ncentroids,
        points_per_centroid=args.kmeans_points_per_centroid,
        niters=args.kmeans_niters,
        compression=args.compression,
        nbits=args.nbits,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required (python -m colbert.train --maxsteps 0 writes an untrained one)")
    if args.bsize < 1:
        raise ConfigError(f"--bsize must be >= 1, got {args.bsize}")
    settings = _settings(args)
    device = select_device(args.no_cuda, args.precision)
    precision = resolve_precision(args.precision, device)
    model, _ = load_colbert(args.checkpoint, colbert_overrides_from_args(args))
    if args.merge_lora:
        model = merge_lora(model)
    model.to(device)
    logger.info("%s", trainable_report(model))
    backbone = model.config.backbone
    tokenizer = ColBERTTokenizer.from_config(
        load_tokenizer(backbone.pretrained_model_cfg, backbone.do_lower_case), model.config
    )
    index_dir = os.path.join(args.index_root, args.index_name)
    provenance = {"checkpoint": os.path.abspath(args.checkpoint), "collection": os.path.abspath(args.collection)}
    meta = build_index(
        model,
        tokenizer,
        iter_collection(args.collection),
        index_dir,
        settings=settings,
        shard_size=args.shard_size,
        batch_size=args.bsize,
        precision=precision,
        provenance=provenance,
        progress=args.progress,
    )
    print(
        f"index {index_dir}: {meta['num_docs']} documents, {meta['num_embeddings']} token vectors "
        f"({meta['num_embeddings'] / meta['num_docs']:.1f} per document), {len(meta['shards'])} shard(s), "
        f"{index_bytes(index_dir) / meta['num_embeddings']:.1f} bytes a token, "
        + (f"FAISS {settings.kind}" if isinstance(settings, FaissSettings) else _plaid_summary(meta))
    )
    return 0


def _plaid_summary(meta: dict) -> str:
    plaid = meta["plaid"]
    stored = "fp16 vectors" if plaid["compression"] == "none" else f"{plaid['nbits']}-bit residuals"
    return f"PLAID {plaid['ncentroids']} centroids, {stored}"


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
