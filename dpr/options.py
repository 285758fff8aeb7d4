"""Command-line flags (PT-Retrieval / DPR names) and the frozen configs built from them.

Flags are parsed once by a CLI into frozen dataclasses; library code receives the values it needs and
never the argparse namespace. Encoder flags default to ``None`` on the command line so that, when a
checkpoint is loaded, we can tell a flag the user typed (which must agree with the checkpoint) from one
left at its default (which the checkpoint fills in).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from dpr.configs import (
    DEFAULT_MODEL,
    FLAT_FIELDS,
    POOLING_MODES,
    PROMPT_ENCODERS,
    TITLE_MODES,
    TUNE_SIDES,
    BiEncoderConfig,
    ConfigError,
    apply_overrides,
)
from dpr.device import REQUESTS, add_hardware_params

logger = logging.getLogger(__name__)


def add_backbone_params(group: argparse._ArgumentGroup) -> None:
    """--pretrained_model_cfg and --do_lower_case (DPR and ColBERT); None = the checkpoint's or the default."""
    group.add_argument(
        "--pretrained_model_cfg",
        default=None,
        help=f"Hugging Face model name, local folder, or a short name of an offline encoder "
        f"(minilm-l6, bert-tiny). Default {DEFAULT_MODEL}.",
    )
    group.add_argument(
        "--do_lower_case",
        action="store_const",
        const=True,
        default=None,
        help="lower-case text before tokenizing (uncased models already do)",
    )


def add_dropout_params(group: argparse._ArgumentGroup) -> None:
    """--dropout and --attention_dropout (DPR and ColBERT training); None = the checkpoint's or the default."""
    group.add_argument("--dropout", type=float, default=None, help="backbone hidden-state dropout (0.1)")
    group.add_argument(
        "--attention_dropout",
        type=float,
        default=None,
        help="dropout on attention probabilities (default 0: other values make training leave the fused "
        "attention kernel for a ~3x slower one)",
    )


def add_encoder_params(parser: argparse.ArgumentParser) -> None:
    """Encoder flags; defaults are None so explicit values can be checked against a checkpoint."""
    group = parser.add_argument_group("encoder")
    add_backbone_params(group)
    group.add_argument("--model_file", default=None, help="checkpoint folder to start from or evaluate")
    group.add_argument("--projection_dim", type=int, default=None, help="linear projection size (0 = none)")
    group.add_argument("--sequence_length", type=int, default=None, help="max tokens per text (default 512)")
    group.add_argument(
        "--pooling",
        choices=POOLING_MODES,
        default=None,
        help="cls (DPR) or mean (sentence-transformers); auto picks mean for sentence-transformers folders, else cls",
    )
    group.add_argument(
        "--normalize",
        dest="normalize",
        action="store_const",
        const=True,
        default=None,
        help="L2-normalise the vectors (cosine similarity); default: on when the model folder's "
        "sentence-transformers modules include Normalize (minilm-l6), else off",
    )
    group.add_argument("--no_normalize", dest="normalize", action="store_const", const=False)
    group.add_argument(
        "--title_mode",
        choices=TITLE_MODES,
        default=None,
        help="pair: [CLS] title [SEP] text [SEP] (DPR); concat: 'title text' as one segment "
        "(how sentence-transformers models are evaluated on BEIR); auto: concat for "
        "sentence-transformers folders, else pair",
    )
    group.add_argument(
        "--share_encoder",
        action="store_const",
        const=True,
        default=None,
        help="one encoder for questions and passages (fine-tuning and BitFit)",
    )
    group.add_argument(
        "--gradient_checkpointing",
        action="store_const",
        const=True,
        default=None,
        help="trade compute for activation memory (not with --prefix or --adapter)",
    )
    group.add_argument(
        "--tune_side",
        choices=TUNE_SIDES,
        default=None,
        help="both (default) or question: tune only the question encoder; passages keep the "
        "base model's vectors, so an existing passage index stays valid",
    )
    group.add_argument(
        "--no_title",
        dest="insert_title",
        action="store_const",
        const=False,
        default=None,
        help="encode passages without titles (default: with titles, or as the checkpoint was trained)",
    )


def add_tuning_params(parser: argparse.ArgumentParser) -> None:
    """The tuning mode (exactly one; none = fine-tuning) and its settings."""
    group = parser.add_argument_group("tuning mode (one of; none = full fine-tuning)")
    modes = group.add_mutually_exclusive_group()
    modes.add_argument(
        "--prefix",
        dest="tuning",
        action="store_const",
        const="prefix",
        default=None,
        help="P-tuning v2: deep per-layer key/value prefixes",
    )
    modes.add_argument(
        "--prompt",
        dest="tuning",
        action="store_const",
        const="prompt",
        help="shallow soft prompt at the input embeddings (Lester et al.; P-tuning v1)",
    )
    modes.add_argument("--bitfit", dest="tuning", action="store_const", const="bitfit", help="train only bias terms")
    modes.add_argument(
        "--adapter", dest="tuning", action="store_const", const="adapter", help="bottleneck adapters in every layer"
    )
    modes.add_argument(
        "--lora",
        dest="tuning",
        action="store_const",
        const="lora",
        help="LoRA: low-rank updates (alpha / r) B A of the --lora_target linear layers of the frozen backbone",
    )
    modes.add_argument(
        "--finetune",
        dest="tuning",
        action="store_const",
        const="finetune",
        help="full fine-tuning (the default when no mode is given)",
    )
    group.add_argument("--pre_seq_len", type=int, default=None, help="prefix / prompt length (default 8)")
    group.add_argument(
        "--prefix_mlp",
        action="store_const",
        const=True,
        default=None,
        help="reparameterise the prefix through an MLP (Embedding -> Linear -> Tanh -> Linear)",
    )
    group.add_argument("--prefix_hidden_size", type=int, default=None, help="prefix MLP hidden size (512)")
    group.add_argument("--prefix_dropout", type=float, default=None, help="dropout on the prefix (0.1)")
    group.add_argument(
        "--prompt_encoder",
        choices=PROMPT_ENCODERS,
        default=None,
        help="P-tuning v1 prompt encoder for --prompt (default none: plain soft prompt)",
    )
    group.add_argument(
        "--prompt_init_text", default=None, help="initialise the --prompt embeddings from this text's token embeddings"
    )
    group.add_argument("--adapter_size", type=int, default=None, help="adapter bottleneck size (64)")
    group.add_argument("--lora_r", type=int, default=None, help="LoRA rank (8)")
    group.add_argument(
        "--lora_alpha", type=float, default=None, help="LoRA alpha: the update is scaled by alpha / r (16)"
    )
    group.add_argument("--lora_dropout", type=float, default=None, help="dropout on the LoRA input (0.1)")
    group.add_argument(
        "--lora_target",
        type=parse_names,
        default=None,
        help="comma-separated linear layers to adapt, matched against module names' last components as PEFT's "
        "target_modules (default query,key,value,dense; in BERT, dense is the attention output, intermediate "
        "and output projections)",
    )


def add_merge_lora_param(group: argparse._ArgumentGroup, checkpoint_flag: str = "--model_file") -> None:
    """--merge_lora (inference): encode with the LoRA deltas folded into the weights instead of hooks."""
    group.add_argument(
        "--merge_lora",
        action="store_true",
        help=f"with a --lora {checkpoint_flag}: fold its deltas into a copy of the backbone per tuned side "
        "(W += alpha/r B A), so encoding runs the plain BERT; same vectors and index identity",
    )


def encoder_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The encoder settings the user typed (flag name -> value): every encoder flag that is not None.

    ``--fix_ctx_encoder`` (DPR's name) is ``--tune_side question``: the passage side stays the base model.
    """
    given = {name: getattr(args, name) for name in FLAT_FIELDS if getattr(args, name, None) is not None}
    if getattr(args, "fix_ctx_encoder", False):
        if given.get("tune_side", "question") != "question":
            raise ConfigError(
                f"--fix_ctx_encoder means --tune_side question; it contradicts --tune_side {given['tune_side']}"
            )
        given["tune_side"] = "question"
    return given


def encoder_config_from_args(
    args: argparse.Namespace, stored: BiEncoderConfig | None = None, source: str = "checkpoint"
) -> BiEncoderConfig:
    """Build the encoder config from parsed flags, filling unset flags from ``stored`` or the defaults.

    Raises ConfigError when an explicitly given architecture flag contradicts ``stored``; the message
    names the flag, its value and the checkpoint's value.
    """
    return apply_overrides(stored, encoder_overrides_from_args(args), source)


def parse_names(value: str) -> tuple[str, ...]:
    """argparse type for comma-separated names (``--lora_target query,value``); refuses empty names."""
    names = tuple(name.strip() for name in value.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected names separated by commas (e.g. query,value), found {value!r}")
    return names


def parse_upsample_rates(value: str) -> tuple[int, ...]:
    """Parse upsample rates such as ``"1,4"``, ``"[1, 4]"`` or ``"1 4"`` into positive ints.

    Usable as an argparse ``type=``; never evaluates the string. Raises
    argparse.ArgumentTypeError on anything else.
    """
    body = value.strip()
    if len(body) >= 2 and (body[0], body[-1]) in (("[", "]"), ("(", ")")):
        body = body[1:-1].strip()
    parts = [p.strip() for p in body.split(",")] if "," in body else body.split()
    if not parts or any(not re.fullmatch(r"\+?\d+", p) for p in parts):
        raise argparse.ArgumentTypeError(
            f"upsample rates: expected positive integers separated by commas or spaces "
            f"(e.g. '1,4' or '[1, 4]'), found {value!r}"
        )
    rates = tuple(int(p) for p in parts)
    if any(rate < 1 for rate in rates):
        raise argparse.ArgumentTypeError(f"upsample rates must be >= 1, found {value!r}")
    return rates


def parse_betas(value: str) -> tuple[float, float]:
    """argparse type for --adam_betas: '(0.9, 0.999)', '0.9,0.999' or '0.9 0.999' (never eval)."""
    parts = value.strip().strip("()[]").replace(",", " ").split()
    try:
        betas = tuple(float(p) for p in parts)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--adam_betas {value!r}: expected two numbers like '(0.9, 0.999)'") from err
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise argparse.ArgumentTypeError(f"--adam_betas {value!r}: expected two numbers in [0, 1)")
    return betas  # type: ignore[return-value]


@dataclass(frozen=True)
class ValMetric:
    """A validation metric (``--val_metric``): whether a higher value is better, and for a retrieval metric its
    ``dpr.evaluation.metrics.evaluate_run`` key (None: DPR's NLL and average rank, losses over the dev file)."""

    name: str
    greater_is_better: bool
    key: str | None = None


VAL_METRICS = {
    m.name: m
    for m in (
        ValMetric("nll", False),
        ValMetric("average_rank", False),
        ValMetric("ndcg@10", True, "nDCG@10"),
        ValMetric("mrr@10", True, "MRR@10"),
        ValMetric("recall@100", True, "R@100"),
    )
}
RETRIEVAL_METRICS = tuple(name for name, m in VAL_METRICS.items() if m.key is not None)
# --tensorboard: auto = on when the tensorboard package is installed (dpr.training.dashboard).
TENSORBOARD_CHOICES = ("auto", "on", "off")


def val_metric(name: str) -> ValMetric:
    """The validation metric called ``name``; ConfigError naming the choices for any other."""
    if name not in VAL_METRICS:
        raise ConfigError(f"--val_metric {name!r} is not one of {', '.join(VAL_METRICS)}")
    return VAL_METRICS[name]


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (DPR / PT-Retrieval flag names). Stored in checkpoints: a resumed run is
    checked against them (``dpr.training.resume``)."""

    train_file: tuple[str, ...] = ()
    dev_file: tuple[str, ...] = ()
    train_files_upsample_rates: tuple[int, ...] | None = None
    output_dir: str = "outputs"
    checkpoint_file_name: str = "dpr_biencoder"
    batch_size: int = 16
    dev_batch_size: int = 16
    seed: int = 0
    learning_rate: float = 1e-5
    adam_eps: float = 1e-8
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 100
    warmup_percentage: float | None = None
    gradient_accumulation_steps: int = 1
    # GradCache (Tevatron's flags): the full-batch loss, encoder activations for one chunk at a time. Runs that
    # predate these settings ran without it: the defaults mean "off".
    grad_cache: bool = False
    gc_q_chunk_size: int = 32
    gc_p_chunk_size: int = 32
    num_train_epochs: int = 3
    hard_negatives: int = 1
    other_negatives: int = 0
    shuffle_positive_ctx: bool = False
    ctx_field: str = "text"
    log_batch_step: int = 100
    train_rolling_loss_step: int = 100
    eval_per_epoch: int = 1
    val_av_rank_start_epoch: int = 10_000
    val_av_rank_hard_neg: int = 30
    val_av_rank_other_neg: int = 30
    val_av_rank_bsz: int = 128
    val_av_rank_max_qs: int = 10_000
    # nll switches to average_rank from val_av_rank_start_epoch (DPR's schedule); the retrieval metrics rank
    # the passages of val_ctx_file for the dev questions. Runs that predate these settings ran with the defaults.
    val_metric: str = "nll"
    val_ctx_file: str | None = None
    keep_checkpoints: int = 2
    task_summary: bool = False  # write task_summary.json (per-query routing) into the best checkpoint at the end
    loss_scale: float | None = None  # scores x scale in the loss; None: 20 for normalised vectors, else 1
    ctx_embeddings: tuple[str, ...] = ()
    precision: str = "auto"  # resolved by dpr.device.resolve_precision when training starts
    no_cuda: bool = False
    local_rank: int = -1
    init_checkpoint: str | None = None  # the --model_file the run started from (real path), for the record
    tensorboard: str = "auto"  # TensorBoard scalars in <output_dir>/tensorboard: auto, on or off

    def __post_init__(self) -> None:
        positive = (
            "batch_size",
            "dev_batch_size",
            "gradient_accumulation_steps",
            "gc_q_chunk_size",
            "gc_p_chunk_size",
            "num_train_epochs",
            "log_batch_step",
            "train_rolling_loss_step",
            "eval_per_epoch",
            "val_av_rank_bsz",
            "val_av_rank_max_qs",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "hard_negatives",
            "other_negatives",
            "warmup_steps",
            "keep_checkpoints",
            "val_av_rank_hard_neg",
            "val_av_rank_other_neg",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "adam_eps", "weight_decay", "max_grad_norm", "loss_scale"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # nan passes every "<= 0" check below
                raise ConfigError(f"--{name} must be a finite number, got {value}")
        if self.loss_scale is not None and self.loss_scale <= 0:
            raise ConfigError(f"--loss_scale must be > 0, got {self.loss_scale}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_percentage is not None and not 0.0 <= self.warmup_percentage <= 1.0:
            raise ConfigError(f"--warmup_percentage must be in [0, 1], got {self.warmup_percentage}")
        if self.precision not in REQUESTS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(REQUESTS)}")
        if self.tensorboard not in TENSORBOARD_CHOICES:
            raise ConfigError(f"--tensorboard {self.tensorboard!r} is not one of {', '.join(TENSORBOARD_CHOICES)}")
        if not self.train_file:
            raise ConfigError("--train_file is required (one or more files or glob patterns)")
        if self.grad_cache and self.precision == "fp16":
            # The cached representation gradients would carry the fp16 loss scale into the chunk backward
            # passes; plausible but not verified on a GPU yet.
            raise ConfigError(
                "--grad_cache is not supported with --precision fp16 (--fp16) yet: use --precision bf16 or fp32, "
                "or drop --grad_cache"
            )
        self._check_validation()

    def _check_validation(self) -> None:
        """Refuse --val_metric / --val_ctx_file / --dev_file combinations that cannot validate as asked."""
        if val_metric(self.val_metric).key is None:
            if self.val_ctx_file is not None:
                raise ConfigError(
                    f"--val_ctx_file is the corpus of a retrieval --val_metric ({', '.join(RETRIEVAL_METRICS)}); "
                    f"--val_metric {self.val_metric} does not read it: add --val_metric or drop --val_ctx_file"
                )
            return
        if not self.dev_file:
            raise ConfigError(
                f"--val_metric {self.val_metric} ranks --val_ctx_file for the questions of --dev_file: give --dev_file"
            )
        if not self.val_ctx_file:
            raise ConfigError(
                f"--val_metric {self.val_metric} needs --val_ctx_file, the dev corpus to rank (a DPR passages TSV "
                f"or a BEIR corpus.jsonl holding the --dev_file positives)"
            )
        if self.val_av_rank_start_epoch != TrainConfig.val_av_rank_start_epoch:
            raise ConfigError(
                f"--val_av_rank_start_epoch switches --val_metric nll to average_rank; it does not apply to "
                f"--val_metric {self.val_metric}: drop one of them"
            )

    def val_metric_at(self, epoch: int) -> str:
        """The metric of validations in ``epoch``: --val_metric; nll is average_rank from --val_av_rank_start_epoch."""
        if self.val_metric == "nll" and epoch >= self.val_av_rank_start_epoch:
            return "average_rank"
        return self.val_metric

    def scale_for(self, normalized: bool) -> float:
        """The loss scale: --loss_scale, else 20 for L2-normalised vectors (as sentence-transformers' MNRL)."""
        if self.loss_scale is not None:
            return self.loss_scale
        return 20.0 if normalized else 1.0

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps: --warmup_percentage of all optimizer steps when given, else --warmup_steps."""
        if self.warmup_percentage is not None:
            return int(self.warmup_percentage * total_steps)
        return self.warmup_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def add_training_params(parser: argparse.ArgumentParser) -> None:
    """Training flags with PT-Retrieval's names and defaults (batch size aside: 16, not 2)."""
    d = argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(TrainConfig)})
    g = parser.add_argument_group("data")
    g.add_argument("--train_file", nargs="+", required=True, help="DPR JSON/JSONL files or glob patterns")
    g.add_argument("--dev_file", nargs="+", default=[], help="dev files or glob patterns (validation)")
    g.add_argument(
        "--train_files_upsample_rates",
        type=parse_upsample_rates,
        default=None,
        help="one integer per --train_file pattern, e.g. '1,4'",
    )
    g.add_argument("--hard_negatives", type=int, default=d.hard_negatives)
    g.add_argument("--other_negatives", type=int, default=d.other_negatives)
    g.add_argument("--shuffle_positive_ctx", action="store_true")
    g.add_argument(
        "--ctx_field",
        choices=("text", "title", "abstract"),
        default=d.ctx_field,
        help="passage field used as the passage text",
    )
    t = parser.add_argument_group("training")
    t.add_argument("--output_dir", default=d.output_dir)
    t.add_argument("--checkpoint_file_name", default=d.checkpoint_file_name)
    for name in (
        "batch_size",
        "dev_batch_size",
        "seed",
        "warmup_steps",
        "gradient_accumulation_steps",
        "gc_q_chunk_size",
        "gc_p_chunk_size",
        "num_train_epochs",
        "log_batch_step",
        "train_rolling_loss_step",
        "eval_per_epoch",
        "val_av_rank_start_epoch",
        "val_av_rank_hard_neg",
        "val_av_rank_other_neg",
        "val_av_rank_bsz",
        "val_av_rank_max_qs",
        "keep_checkpoints",
    ):
        t.add_argument(f"--{name}", type=int, default=getattr(d, name))
    for name in ("learning_rate", "adam_eps", "weight_decay", "max_grad_norm"):
        t.add_argument(f"--{name}", type=float, default=getattr(d, name))
    t.add_argument("--adam_betas", type=parse_betas, default=d.adam_betas)
    t.add_argument(
        "--task_summary",
        action="store_true",
        help="at the end, write task_summary.json (the base model's view of up to 2,000 training questions, "
        "for --task auto routing) into the best checkpoint; costs one base-model pass over them",
    )
    t.add_argument(
        "--grad_cache",
        action="store_true",
        help="GradCache: the in-batch loss over the whole --batch_size with encoder activations kept for "
        "--gc_q_chunk_size questions / --gc_p_chunk_size passages at a time (same gradients, less memory, "
        "about one more forward pass of compute)",
    )
    t.add_argument(
        "--val_metric",
        choices=tuple(VAL_METRICS),
        default=d.val_metric,
        help="what validation measures and the best checkpoint is chosen by: nll (default; average_rank from "
        "--val_av_rank_start_epoch), average_rank, or a retrieval metric over the --val_ctx_file corpus "
        "(ndcg@10, mrr@10, recall@100: higher is better)",
    )
    t.add_argument(
        "--val_ctx_file",
        default=None,
        help="dev corpus for a retrieval --val_metric: a DPR passages TSV or a BEIR corpus.jsonl; the positive "
        "passage ids of each of the first --val_av_rank_max_qs --dev_file questions are its relevant passages",
    )
    t.add_argument(
        "--loss_scale",
        type=float,
        default=None,
        help="multiply scores by this in the loss (inverse temperature); default 20 when vectors "
        "are L2-normalised (cosine scores lie in [-1, 1]), else 1",
    )
    t.add_argument(
        "--warmup_percentage",
        type=float,
        default=None,
        help="warmup as a share of all steps (overrides --warmup_steps)",
    )
    add_dashboard_params(t, d.tensorboard)
    add_dropout_params(t)
    t.add_argument(
        "--fix_ctx_encoder",
        action="store_true",
        help="DPR's name for --tune_side question: train the question side only (passages keep the base model)",
    )
    t.add_argument(
        "--ctx_embeddings",
        nargs="+",
        default=[],
        help="with --tune_side question: passage vectors from generate_embeddings.py shards "
        "(globs) instead of encoding the training passages once before training",
    )
    t.add_argument(
        "--global_loss_buf_sz",
        type=int,
        default=None,
        help="accepted for compatibility; not needed (tensors are gathered directly)",
    )
    h = add_hardware_params(parser, training=True)
    h.add_argument("--local_rank", type=int, default=-1, help="set by old launchers; torchrun uses env vars")
    r = parser.add_argument_group("resuming")
    r.add_argument(
        "--allow_changed_settings",
        action="store_true",
        help="continue a run (the --output_dir's latest checkpoint, or a --model_file with training "
        "state) although training flags differ from the ones it was started with; the "
        "differences are logged and the new values used (default: refuse, naming them)",
    )


def add_dashboard_params(group: argparse._ArgumentGroup, default: str) -> None:
    """``--tensorboard``, for both training commands (DPR and ColBERT)."""
    group.add_argument(
        "--tensorboard",
        choices=TENSORBOARD_CHOICES,
        default=default,
        help="TensorBoard scalars (train loss, learning rate, samples/s, validation metrics) in "
        "<output_dir>/tensorboard: auto (default) = on when the tensorboard package is installed; on without it "
        "is an error at the start",
    )


# Settings that are file patterns: stored absolute, so a run resumed from another working directory
# compares equal to the one that started it.
PATH_SETTINGS = ("train_file", "dev_file", "ctx_embeddings")
FILE_SETTINGS = ("val_ctx_file",)  # one path each, stored absolute too


def absolute_pattern(pattern: str) -> str:
    return os.path.abspath(os.path.expanduser(pattern))


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    for name in ("train_file", "dev_file", "train_files_upsample_rates", "ctx_embeddings"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    for name in PATH_SETTINGS:
        if values.get(name):
            values[name] = tuple(absolute_pattern(p) for p in values[name])
    for name in FILE_SETTINGS:
        if values.get(name):
            values[name] = absolute_pattern(values[name])
    if getattr(args, "model_file", None):
        values["init_checkpoint"] = os.path.realpath(args.model_file)
    return TrainConfig(**values)
