"""ColBERT flags (ColBERT v1 / PT-Retrieval names) and the frozen configs built from them.

``ColBERTConfig`` is the whole network: the backbone and the tuning method (the configs of
``dpr.configs``) plus ColBERT's own settings; it has no pooling, projection or sides (ColBERT keeps every
token, has its own linear layer to ``dim`` and one encoder for both sides). It is stored in every
checkpoint and in every index, so ``query_maxlen`` / ``doc_maxlen`` / ``dim`` / ``similarity`` / the prefix
length at evaluation are always those of training. A flag typed on the command line that contradicts a
stored config is an error naming both values (the fault of PT-Retrieval's scripts, whose prefix length at
evaluation differed from training).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dpr.configs import (
    ARCHITECTURE_FIELDS,
    TUNING_FIELDS,
    BackboneConfig,
    ConfigError,
    FinetuneConfig,
    TuningConfig,
    check_agrees,
    stored_backbone_settings,
    tuning_from_dict,
    tuning_from_flat,
    tuning_to_flat,
)
from dpr.device import REQUESTS, add_hardware_params
from dpr.options import add_backbone_params, add_dropout_params, add_tuning_params

logger = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "l2")
# [CLS] [Q] at least one word piece [SEP]: the shortest useful sequence.
MIN_MAXLEN = 4
# Format 1 stored a whole DPR encoder config under "encoder"; these keys of it have no ColBERT meaning.
_V1_DPR_ONLY = ("pooling", "projection_dim", "share_encoder", "tune_side", "normalize", "title_mode")


@dataclass(frozen=True)
class ColBERTConfig:
    """Everything needed to rebuild a ColBERT model; stored as JSON in checkpoints and indexes.

    ``backbone.sequence_length`` is ``max(query_maxlen, doc_maxlen)``, what the backbone must have
    position embeddings for (derived here, so it can never disagree).
    """

    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    tuning: TuningConfig = dataclasses.field(default_factory=FinetuneConfig)
    query_maxlen: int = 32
    doc_maxlen: int = 180
    dim: int = 128
    similarity: str = "cosine"
    mask_punctuation: bool = False

    def __post_init__(self) -> None:
        for name in ("query_maxlen", "doc_maxlen"):
            if getattr(self, name) < MIN_MAXLEN:
                raise ConfigError(
                    f"--{name} must be >= {MIN_MAXLEN} ([CLS] [marker] token [SEP]), got {getattr(self, name)}"
                )
        if self.dim < 1:
            raise ConfigError(f"--dim must be >= 1, got {self.dim}")
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"--similarity {self.similarity!r} is not one of {', '.join(SIMILARITIES)}")
        longest = max(self.query_maxlen, self.doc_maxlen)
        if self.backbone.sequence_length != longest:
            object.__setattr__(self, "backbone", dataclasses.replace(self.backbone, sequence_length=longest))

    @property
    def encoder(self) -> BackboneConfig:
        """Format 1's name for the backbone settings (``config.encoder.pretrained_model_cfg``)."""
        return self.backbone

    def to_dict(self) -> dict[str, Any]:
        """The nested form (format 2)."""
        values = dataclasses.asdict(self)
        values["tuning"] = self.tuning.to_dict()
        return values

    def to_flat(self) -> dict[str, Any]:
        """Every setting under its flag name."""
        values = dataclasses.asdict(self)
        del values["backbone"], values["tuning"]
        return {**self.backbone.to_dict(), **tuning_to_flat(self.tuning), **values}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> ColBERTConfig:
        unknown = sorted(set(values) - set(COLBERT_FLAT_FIELDS))
        if unknown:
            raise ConfigError(f"unknown ColBERT config keys {unknown}")
        backbone = {f.name: values[f.name] for f in dataclasses.fields(BackboneConfig) if f.name in values}
        own = {name: values[name] for name in COLBERT_FIELDS if name in values}
        return cls(backbone=BackboneConfig(**backbone), tuning=tuning_from_flat(values), **own)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> ColBERTConfig:
        """Read the nested form (format 2) or format 1's (a flat DPR encoder config under "encoder")."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the ColBERT config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)} | {"encoder"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown ColBERT config keys {unknown}")
        own = {name: data[name] for name in COLBERT_FIELDS if name in data}
        if "encoder" in data:  # format 1
            if not isinstance(data["encoder"], Mapping):
                raise ConfigError(f"{source}: the ColBERT config's 'encoder' is not an object")
            flat = stored_backbone_settings({k: v for k, v in data["encoder"].items() if k not in _V1_DPR_ONLY})
            try:
                return cls.from_flat({**flat, **own})
            except ConfigError as err:
                raise ConfigError(f"{source}: {err}") from None
        if not isinstance(data.get("backbone"), Mapping) or not isinstance(data.get("tuning"), Mapping):
            raise ConfigError(f"{source}: the ColBERT config has no 'backbone' and 'tuning' objects")
        names = {f.name for f in dataclasses.fields(BackboneConfig)}
        extra = sorted(set(data["backbone"]) - names)
        if extra:
            raise ConfigError(f"{source}: unknown backbone config keys {extra}")
        backbone = BackboneConfig(**stored_backbone_settings(data["backbone"]))
        return cls(backbone=backbone, tuning=tuning_from_dict(data["tuning"], source), **own)


# ColBERT fields with their flag names; all of them define the network or its inputs.
COLBERT_FIELDS = {
    "query_maxlen": "--query_maxlen",
    "doc_maxlen": "--doc_maxlen",
    "dim": "--dim",
    "similarity": "--similarity",
    "mask_punctuation": "--mask-punctuation",
}
COLBERT_FLAT_FIELDS = (
    *(f.name for f in dataclasses.fields(BackboneConfig)),
    "tuning",
    *TUNING_FIELDS,
    *COLBERT_FIELDS,
)
# The backbone and tuning fields a flag may not contradict (the rest, e.g. dropout, may change).
_ENCODER_ARCHITECTURE = tuple(name for name in ARCHITECTURE_FIELDS if name in COLBERT_FLAT_FIELDS)


def add_colbert_model_params(parser: argparse.ArgumentParser) -> None:
    """Backbone, tuning mode and ColBERT flags; defaults are None so a checkpoint can fill them."""
    group = parser.add_argument_group("ColBERT model")
    group.add_argument(
        "--checkpoint", default=None, help="ColBERT checkpoint folder (its stored config decides the network)"
    )
    add_backbone_params(group)
    group.add_argument("--query_maxlen", type=int, default=None, help="query tokens incl. [MASK] padding (32)")
    group.add_argument("--doc_maxlen", type=int, default=None, help="document tokens at most (180)")
    group.add_argument("--dim", type=int, default=None, help="token vector size after the linear layer (128)")
    group.add_argument("--similarity", choices=SIMILARITIES, default=None, help="MaxSim similarity (cosine)")
    group.add_argument(
        "--mask-punctuation",
        "--mask_punctuation",
        dest="mask_punctuation",
        action="store_const",
        const=True,
        default=None,
        help="drop punctuation tokens from documents (they are encoded but not scored)",
    )
    add_tuning_params(parser)


def colbert_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ColBERT settings the user typed (flag name -> value): every such flag that is not None."""
    return {name: getattr(args, name) for name in COLBERT_FLAT_FIELDS if getattr(args, name, None) is not None}


def apply_colbert_overrides(
    stored: ColBERTConfig | None, overrides: Mapping[str, Any], source: str = "checkpoint"
) -> ColBERTConfig:
    """``stored`` (or the defaults) with the flag-named ``overrides``.

    Raises ConfigError naming the flag, its value and the stored value when an override contradicts
    ``stored`` (backbone / tuning architecture flags and every ColBERT flag).
    """
    base = stored if stored is not None else ColBERTConfig()
    if stored is not None:
        flat = stored.to_flat()
        check_agrees(overrides, flat, _ENCODER_ARCHITECTURE, source)
        check_agrees(overrides, flat, tuple(COLBERT_FIELDS), source, verb="built")
    values = {**base.to_flat(), **overrides}
    values.pop("sequence_length", None)  # derived from query_maxlen and doc_maxlen
    return ColBERTConfig.from_flat(values)


def colbert_config_from_args(
    args: argparse.Namespace, stored: ColBERTConfig | None = None, source: str = "checkpoint"
) -> ColBERTConfig:
    """Build the config from flags, filling unset ones from ``stored`` (or the defaults)."""
    return apply_colbert_overrides(stored, colbert_overrides_from_args(args), source)


@dataclass(frozen=True)
class ColBERTTrainConfig:
    """Training settings (ColBERT v1 names). ``bsize`` triples per optimizer step, cut into ``accum`` parts."""

    triples: str | None = None
    queries: str | None = None
    collection: str | None = None
    dpr_train_file: tuple[str, ...] = ()
    hard_negatives: int = 1
    output_dir: str = "outputs/colbert"
    bsize: int = 32
    accum: int = 1
    lr: float = 3e-6
    maxsteps: int = 400_000
    warmup: int = 0
    max_grad_norm: float = 2.0
    in_batch_negatives: bool = False
    seed: int = 12345
    precision: str = "auto"
    save_every: int = 2000
    keep_checkpoints: int = 2
    log_every: int = 50

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
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.precision not in REQUESTS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(REQUESTS)}")

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
        help="triples per DPR question (one per hard negative, default 1)",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default=d.output_dir, help="checkpoints go to <output_dir>/colbert-<step>")
    train.add_argument("--bsize", type=int, default=d.bsize, help="triples per optimizer step (32)")
    train.add_argument("--accum", type=int, default=d.accum, help="micro-batches per step (bsize/accum each)")
    train.add_argument(
        "--lr", type=float, default=d.lr, help="AdamW learning rate (3e-6 fine-tuning; prefix tuning wants ~1e-2)"
    )
    train.add_argument("--maxsteps", type=int, default=d.maxsteps, help="optimizer steps in all")
    train.add_argument("--warmup", type=int, default=d.warmup, help="linear warmup steps, then constant")
    train.add_argument("--max_grad_norm", type=float, default=d.max_grad_norm, help="clip (0 = off)")
    train.add_argument(
        "--in_batch_negatives",
        action="store_true",
        help="score each query against every passage of the batch, not only its own pair",
    )
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--save_every", type=int, default=d.save_every, help="checkpoint every N steps")
    train.add_argument(
        "--keep_checkpoints", type=int, default=d.keep_checkpoints, help="most recent checkpoints kept (0 = all)"
    )
    train.add_argument("--log_every", type=int, default=d.log_every)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint (or the latest in --output_dir) with its optimizer state",
    )
    add_dropout_params(train)
    add_hardware_params(parser, training=True, amp_alias=True)


def train_config_from_args(args: argparse.Namespace) -> ColBERTTrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ColBERTTrainConfig) if hasattr(args, f.name)}
    values["dpr_train_file"] = tuple(values.get("dpr_train_file") or ())
    return ColBERTTrainConfig(**values)
