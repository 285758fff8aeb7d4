"""Train a ColBERT (late interaction) model over a prefix-tuned (or prompt, BitFit, adapter, LoRA, fine-tuned) BERT.

  python -m colbert.train --pretrained_model_cfg bert-tiny --prefix --pre_seq_len 16 \\
      --dpr_train_file data/scifact/scifact-train.json --output_dir runs/colbert --bsize 32 --lr 1e-2 --maxsteps 2000
  python -m colbert.train --triples triples.train.small.tsv --prefix --pre_seq_len 64 --lr 1e-2 ...
  python -m colbert.train --triples triples.jsonl --queries queries.tsv --collection collection.tsv ...

Checkpoints ``<output_dir>/colbert-<step>/`` hold the full ColBERT config. ``--resume`` continues from
``--checkpoint`` (or the latest checkpoint in --output_dir; a new run if there is none yet) with its
optimizer state; ``--checkpoint`` without ``--resume`` starts a new run from its weights.
``--maxsteps 0`` writes the untrained model (e.g. to index zero-shot).

PT-Retrieval's command line is accepted: ``python -m torch.distributed.launch --nproc_per_node=4
colbert/train.py --amp --doc_maxlen 300 --mask-punctuation --lr 3e-6 --bsize 32 --accum 1 --triples ...
--root ./ --experiment checkpoints --similarity cosine --run NAME --prefix --pre_seq_len 180``: ``--root
--experiment --run`` name ColBERT v1's folder ``<root>/<experiment>/train.py/<run>`` (instead of --output_dir).
Under today's torch launchers spell ``--run`` as ``--run_name``: their own ``--run-path`` option takes
``--run`` for its abbreviation before the script sees it. Under torchrun (or that launcher) each process
trains on its slice of every batch (DDP); rank 0 logs, validates and writes the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

if __name__ == "__main__" and not __package__:
    # Run as a file (PT-Retrieval: `python -m torch.distributed.launch ... colbert/train.py`): Python put
    # colbert/ first on sys.path, where its modules would shadow top-level names and `colbert` would be
    # whatever copy is installed. The repository takes that place, so `colbert` is this package.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch

from colbert.checkpoint import checkpoint_path, latest_checkpoint, load_colbert, load_training_state
from colbert.data import read_triples, triples_from_dpr
from colbert.groups import Pool, Row, groups_from_dpr, pools_from_dpr
from colbert.model import ColBERT, build_colbert
from colbert.options import add_colbert_model_params, colbert_config_from_args, colbert_overrides_from_args
from colbert.projection import PCA_DOCS, init_projection, sample_passages
from colbert.tokenization import ColBERTTokenizer
from colbert.train_options import ColBERTTrainConfig, add_colbert_training_params, train_config_from_args
from colbert.training import ColBERTTrainer
from colbert.validation import read_dev
from dpr.cli import run_cli, setup_logging
from dpr.data.readers import DataFormatError, read_dpr_files
from dpr.models.encoder import trainable_report
from dpr.models.hub import load_tokenizer
from dpr.options import ConfigError
from dpr.training.dashboard import resolve_tensorboard
from dpr.training.distributed import DistributedContext, cleanup_distributed, configure_logging, init_distributed

logger = logging.getLogger("colbert.train")  # not __name__: under `python -m` that is "__main__"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colbert.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_colbert_model_params(parser)
    add_colbert_training_params(parser)
    parser.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def load_rows(cfg: ColBERTTrainConfig) -> Sequence[Row | Pool]:
    """The training rows: triples (ColBERT v1), or one group a DPR question with --group_negatives; from DPR
    data with --negative_pool, rows that draw their negatives afresh at every step."""
    if cfg.triples:
        return read_triples(cfg.triples, cfg.queries, cfg.collection)
    samples = read_dpr_files(list(cfg.dpr_train_file))
    if cfg.negative_pool:
        rows, skipped = pools_from_dpr(samples, cfg.negative_pool, cfg.hard_negatives, cfg.group_negatives)
        what = f"rows drawing {cfg.hard_negatives if cfg.group_negatives else 1} of up to {cfg.negative_pool} negatives"
    elif cfg.group_negatives:
        rows, skipped = groups_from_dpr(samples, cfg.hard_negatives)
        what = f"groups of up to {cfg.hard_negatives} negatives"
    else:
        rows, skipped = triples_from_dpr(samples, cfg.hard_negatives)
        what = "triples"
    logger.info("%d %s from DPR data (%d questions without a negative skipped)", len(rows), what, skipped)
    if not rows:
        raise DataFormatError(f"{list(cfg.dpr_train_file)}: no question has both a positive and a negative")
    return rows


def load_model(args: argparse.Namespace, cfg: ColBERTTrainConfig) -> tuple[ColBERT, int, dict | None, bool]:
    """(model, first step, optimizer state, new): resumed, warm-started from --checkpoint, or new (built
    from the flags: its projection is still nn.Linear's draw, for ``init_projection``)."""
    existing = latest_checkpoint(cfg.output_dir)
    if args.resume:
        source = args.checkpoint or existing
        if source is None:
            logger.warning("--resume: no colbert-<step> checkpoint in %s yet, starting a new run", cfg.output_dir)
    elif existing is not None:
        raise ConfigError(
            f"--output_dir {cfg.output_dir} already holds {existing}; pass --resume to continue "
            f"that run or choose another --output_dir"
        )
    else:
        source = args.checkpoint
    if source is None:
        config = colbert_config_from_args(args)
        init_ids = None
        init_text = getattr(config.tuning, "prompt_init_text", None)  # only a --prompt has one
        if init_text:
            tokenizer = load_tokenizer(config.backbone.pretrained_model_cfg, config.backbone.do_lower_case)
            init_ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
        return build_colbert(config, init_ids), 0, None, True
    model, info = load_colbert(source, colbert_overrides_from_args(args))
    if not args.resume:
        return model, 0, None, False
    state = load_training_state(info.path)
    if state is None:
        logger.warning("%s has no optimizer state: the optimizer starts fresh at step %d", source, info.step)
    logger.info("resuming from %s at step %d", source, info.step)
    return model, info.step, state, False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg = train_config_from_args(args)
    ctx = init_distributed(args.no_cuda, args.local_rank, cfg.precision)
    configure_logging(ctx)
    try:
        trainer = train(args, cfg, ctx)
    except BaseException:
        cleanup_distributed(synchronize=False)  # a failed peer may never reach a barrier
        raise
    last = checkpoint_path(cfg.output_dir, trainer.step)
    del trainer  # its DDP wrapper holds the process group
    cleanup_distributed()
    if ctx.is_main:
        print(f"last checkpoint: {last}")
    return 0


def train(args: argparse.Namespace, cfg: ColBERTTrainConfig, ctx: DistributedContext) -> ColBERTTrainer:
    """Build (or load) the model, read the data, train; returns the trainer after its last step."""
    resolve_tensorboard(cfg.tensorboard)  # --tensorboard on without the package: an error now, not mid-run
    torch.manual_seed(cfg.seed)  # the linear layer's and the prefix's initialisation
    model, start, state, new = load_model(args, cfg)
    logger.info("ColBERT config: %s", json.dumps(model.config.to_dict(), sort_keys=True))
    logger.info("training config: %s", json.dumps(cfg.to_dict(), sort_keys=True))
    logger.info("%s", trainable_report(model))
    base = load_tokenizer(model.config.backbone.pretrained_model_cfg, model.config.backbone.do_lower_case)
    tokenizer = ColBERTTokenizer.from_config(base, model.config)
    rows = load_rows(cfg)  # the whole file is checked here, before the first step
    dev = read_dev(cfg.dev_file, cfg.val_ctx_file, cfg.val_pool) if cfg.val_every and ctx.is_main else None
    if new:  # the same on every process (DDP also copies rank 0's weights to the others)
        model.to(ctx.device)
        init_projection(model, cfg.linear_init, tokenizer, sample_passages(rows, PCA_DOCS, cfg.seed))
    trainer = ColBERTTrainer(cfg, model, tokenizer, rows, ctx.device, start, state, ctx=ctx, dev=dev)
    trainer.run(progress=args.progress)
    return trainer


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
