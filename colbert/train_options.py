"""Flags of ``python -m colbert.train`` (ColBERT v1 names where it had them) and the frozen training config.

The network's settings are ``colbert.options.ColBERTConfig``; these are how it is trained (data,
optimisation, checkpoints) and are stored under "training" in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from colbert.projection import LINEAR_INITS
from dpr.configs import ConfigError
from dpr.device import REQUESTS, add_hardware_params
from dpr.options import RETRIEVAL_METRICS, TENSORBOARD_CHOICES, add_dashboard_params, add_dropout_params

# The largest learning rate --linear_lr defaults to. Adam moves every weight by about the learning rate
# per step whatever its gradient's size, and the projection's weights are ~1/sqrt(H) (0.036 for H=768):
# at prefix tuning's 1e-2 a few dozen steps replace the initial projection by noise (issue 16: SciFact
# nDCG@10 fell from 0.60 untrained to 0.46 after 69 steps). 1e-4 moves a weight by at most ~0.3% of its
# size per step, the usual rate of a freshly initialised head over a pretrained encoder.
LINEAR_LR_CAP = 1e-4
# Hard negatives a DPR question's rows draw from, afresh at every step (prepare_data.py keeps 30 BM25 ones).
# Always the first one instead cost 0.10 dev nDCG@10 on SciFact (BENCHMARKS.md section 8): it is often an
# unlabelled positive, and repeating it every epoch teaches the model to push such passages down.
DEFAULT_POOL = 30
# ColBERT v1's run folder: <root>/<experiment>/<script>/<run>, the script being train.py.
V1_SCRIPT = "train.py"
# After --warmup: "linear" decays to 0 at --maxsteps (ColBERTv2, DPR); "constant" keeps the rate (ColBERT v1).
LR_SCHEDULES = ("linear", "constant")
V1_ROOT, V1_EXPERIMENT = "experiments", "dirty"  # ColBERT v1's defaults of --root and --experiment


@dataclass(frozen=True)
class ColBERTTrainConfig:
    """Training settings (ColBERT v1 names). ``bsize`` triples per optimizer step, cut into ``accum`` parts."""

    triples: str | None = None
    queries: str | None = None
    collection: str | None = None
    dpr_train_file: tuple[str, ...] = ()
    hard_negatives: int = 1
    negative_pool: int | None = None  # None: DEFAULT_POOL with DPR data, 0 with --triples (resolved below)
    group_negatives: bool = False
    dev_file: tuple[str, ...] = ()
    val_ctx_file: str | None = None
    val_every: int = 0
    val_pool: int = 0
    val_metric: str = "ndcg@10"
    output_dir: str = "outputs/colbert"
    bsize: int = 32
    accum: int = 1
    lr: float = 3e-6
    linear_lr: float | None = None  # None: min(lr, LINEAR_LR_CAP), resolved in __post_init__
    maxsteps: int = 400_000
    warmup: int = 0
    lr_schedule: str = "linear"
    max_grad_norm: float = 2.0
    in_batch_negatives: bool = False
    linear_init: str = "pca"
    seed: int = 12345
    precision: str = "auto"
    save_every: int = 2000
    keep_checkpoints: int = 2
    log_every: int = 50
    tensorboard: str = "auto"  # TensorBoard scalars in <output_dir>/tensorboard (dpr.training.dashboard)

    def __post_init__(self) -> None:
        sources = bool(self.triples) + bool(self.dpr_train_file)
        if sources != 1:
            raise ConfigError("pass exactly one of --triples (TSV or JSONL ids) and --dpr_train_file (DPR JSON)")
        for name in ("bsize", "accum", "save_every", "log_every", "hard_negatives"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("maxsteps", "warmup", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.bsize % self.accum:
            raise ConfigError(
                f"--bsize {self.bsize} must be divisible by --accum {self.accum} "
                f"(each optimizer step splits the batch into --accum parts)"
            )
        if self.negative_pool is None:
            object.__setattr__(self, "negative_pool", DEFAULT_POOL if self.dpr_train_file else 0)
        if self.negative_pool < 0:
            raise ConfigError(f"--negative_pool must be >= 0, got {self.negative_pool}")
        if self.negative_pool and not self.dpr_train_file:
            raise ConfigError(
                "--negative_pool draws from the hard negatives of DPR questions: it needs --dpr_train_file"
            )
        if self.group_negatives and not self.dpr_train_file:
            raise ConfigError("--group_negatives groups the negatives of DPR questions: it needs --dpr_train_file")
        self._check_validation()
        if self.linear_init not in LINEAR_INITS:
            raise ConfigError(f"--linear_init {self.linear_init!r} is not one of {', '.join(LINEAR_INITS)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.linear_lr is None:
            # Fine-tuning rates (ColBERT v1's 3e-6) stay one rate for everything; prefix rates are capped.
            object.__setattr__(self, "linear_lr", min(self.lr, LINEAR_LR_CAP))
        elif self.linear_lr <= 0:
            raise ConfigError(f"--linear_lr must be > 0, got {self.linear_lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr_schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        if self.precision not in REQUESTS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(REQUESTS)}")
        if self.tensorboard not in TENSORBOARD_CHOICES:
            raise ConfigError(f"--tensorboard {self.tensorboard!r} is not one of {', '.join(TENSORBOARD_CHOICES)}")

    def _check_validation(self) -> None:
        if self.val_metric not in RETRIEVAL_METRICS:
            raise ConfigError(f"--val_metric {self.val_metric!r} is not one of {', '.join(RETRIEVAL_METRICS)}")
        if self.val_pool < 0:
            raise ConfigError(f"--val_pool must be >= 0, got {self.val_pool}")
        if self.val_every < 0:
            raise ConfigError(f"--val_every must be >= 0, got {self.val_every}")
        given = [name for name in ("dev_file", "val_ctx_file") if getattr(self, name)]
        if self.val_every and len(given) < 2:
            raise ConfigError(
                "--val_every ranks --val_ctx_file (the dev corpus) for the --dev_file questions: give both"
            )
        if given and not self.val_every:
            raise ConfigError(f"--{given[0]} is read for validation only: add --val_every N (steps)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def add_colbert_training_params(parser: argparse.ArgumentParser) -> None:
    """Data and optimisation flags of ``python -m colbert.train`` (ColBERT v1 names where it had them)."""
    d = argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(ColBERTTrainConfig)})
    data = parser.add_argument_group("training data")
    data.add_argument(
        "--triples",
        help="triples: TSV 'query<TAB>positive<TAB>negative' or JSONL "
        "'[qid, pid+, pid-]' (then --queries and --collection)",
    )
    data.add_argument("--queries", help="queries.tsv (qid<TAB>query) or BEIR queries.jsonl, for JSONL triples")
    data.add_argument(
        "--collection",
        help="collection.tsv (pid<TAB>passage[<TAB>title]), a DPR passages TSV "
        "or a BEIR corpus.jsonl, for JSONL triples",
    )
    data.add_argument(
        "--dpr_train_file",
        nargs="+",
        default=[],
        help="DPR retriever JSON (e.g. prepare_data.py's NAME-train.json): each question gives "
        "--hard_negatives triples (question, first positive, BM25 hard negative)",
    )
    data.add_argument(
        "--hard_negatives",
        type=int,
        default=d.hard_negatives,
        help="negatives per DPR question (default 1): that many triples, or one group with --group_negatives",
    )
    data.add_argument(
        "--negative_pool",
        type=int,
        default=d.negative_pool,
        help=f"draw each step's negatives afresh from the first N hard negatives of every DPR question (default "
        f"{DEFAULT_POOL}; 0: always the first --hard_negatives, fixed triples as ColBERT v1's files)",
    )
    data.add_argument(
        "--group_negatives",
        action="store_true",
        help="each DPR question is one row (question, positive, its --hard_negatives negatives) scored together: "
        "cross-entropy of the positive over all of them; --bsize counts questions",
    )
    val = parser.add_argument_group("validation (exact MaxSim over a dev corpus; the best checkpoint is kept)")
    val.add_argument(
        "--dev_file",
        nargs="+",
        default=[],
        help="DPR JSON dev questions; each question's positive passage ids are its relevant passages",
    )
    val.add_argument("--val_ctx_file", help="the dev corpus: a DPR passages TSV or a BEIR corpus.jsonl")
    val.add_argument(
        "--val_every",
        type=int,
        default=d.val_every,
        help="validate (and checkpoint) every N steps, at the last step and at the start of a new run "
        "(the untrained model's value); 0 = never",
    )
    val.add_argument(
        "--val_pool",
        type=int,
        default=d.val_pool,
        help="rank only the dev questions' positives and first N hard negatives of --val_ctx_file (a re-ranking "
        "pool, far cheaper than the whole corpus; 0: the whole corpus)",
    )
    val.add_argument("--val_metric", choices=RETRIEVAL_METRICS, default=d.val_metric, help="best checkpoint by")
    train = parser.add_argument_group("training")
    train.add_argument(
        "--output_dir", default=None, help=f"checkpoints go to <output_dir>/colbert-<step> (default {d.output_dir})"
    )
    run = parser.add_argument_group("ColBERT v1 / PT-Retrieval run folder (instead of --output_dir)")
    run.add_argument(
        "--root", default=None, help=f"output_dir = <root>/<experiment>/{V1_SCRIPT}/<run> (default root {V1_ROOT!r})"
    )
    run.add_argument("--experiment", default=None, help=f"(default {V1_EXPERIMENT!r}, as in ColBERT v1)")
    run.add_argument(
        "--run",
        "--run_name",
        dest="run",
        default=None,
        help="the run's name (required with --root or --experiment); spell it --run_name under torchrun or "
        "torch.distributed.launch, whose own --run-path option takes --run for an abbreviation of it",
    )
    train.add_argument("--bsize", type=int, default=d.bsize, help="triples per optimizer step (32)")
    train.add_argument("--accum", type=int, default=d.accum, help="micro-batches per step (bsize/accum each)")
    train.add_argument(
        "--lr", type=float, default=d.lr, help="AdamW learning rate (3e-6 fine-tuning; prefix tuning wants ~1e-2)"
    )
    train.add_argument(
        "--linear_lr",
        type=float,
        default=None,
        help=f"learning rate of the linear projection H -> dim (default min(--lr, {LINEAR_LR_CAP:g}): "
        f"prefix tuning's large --lr would overwrite the fresh projection in a few dozen steps)",
    )
    train.add_argument("--maxsteps", type=int, default=d.maxsteps, help="optimizer steps in all")
    train.add_argument("--warmup", type=int, default=d.warmup, help="linear warmup steps, then --lr_schedule")
    train.add_argument(
        "--lr_schedule",
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help="after the warmup: linear decay to 0 at --maxsteps (default, as ColBERTv2) or constant (ColBERT v1)",
    )
    train.add_argument("--max_grad_norm", type=float, default=d.max_grad_norm, help="clip (0 = off)")
    train.add_argument(
        "--in_batch_negatives",
        action="store_true",
        help="score each query against every passage of the batch, not only its own pair",
    )
    train.add_argument(
        "--linear_init",
        choices=LINEAR_INITS,
        default=d.linear_init,
        help="the projection of a new run: pca (default; the top --dim principal directions of the untrained "
        "model's token states over training documents), orthogonal (orthonormal rows) or random (ColBERT v1)",
    )
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--save_every", type=int, default=d.save_every, help="checkpoint every N steps")
    train.add_argument(
        "--keep_checkpoints", type=int, default=d.keep_checkpoints, help="most recent checkpoints kept (0 = all)"
    )
    train.add_argument("--log_every", type=int, default=d.log_every)
    add_dashboard_params(train, d.tensorboard)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint (or the latest in --output_dir) with its optimizer state",
    )
    add_dropout_params(train)
    hardware = add_hardware_params(parser, training=True, amp_alias=True)
    hardware.add_argument(
        "--local_rank",
        "--local-rank",
        dest="local_rank",
        type=int,
        default=-1,
        help="set by torch.distributed.launch; torchrun sets LOCAL_RANK instead",
    )


def output_dir_from_args(args: argparse.Namespace) -> str | None:
    """``--output_dir``, or ColBERT v1's ``<root>/<experiment>/train.py/<run>``; both given is an error."""
    root, experiment, run = (getattr(args, name, None) for name in ("root", "experiment", "run"))
    if root is None and experiment is None and run is None:
        return getattr(args, "output_dir", None)
    given = [f"--{name} {value}" for name, value in (("root", root), ("experiment", experiment), ("run", run)) if value]
    if getattr(args, "output_dir", None) is not None:
        raise ConfigError(f"--output_dir {args.output_dir} and {' '.join(given)} both name the output folder: pass one")
    if not run:
        raise ConfigError(
            f"{' '.join(given)}: pass --run NAME too (the run folder's name; ColBERT v1 used a timestamp)"
        )
    return os.path.join(root or V1_ROOT, experiment or V1_EXPERIMENT, V1_SCRIPT, run)


def train_config_from_args(args: argparse.Namespace) -> ColBERTTrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ColBERTTrainConfig) if hasattr(args, f.name)}
    values["output_dir"] = output_dir_from_args(args) or ColBERTTrainConfig.output_dir
    values["dpr_train_file"] = tuple(values.get("dpr_train_file") or ())
    values["dev_file"] = tuple(values.get("dev_file") or ())
    return ColBERTTrainConfig(**values)
