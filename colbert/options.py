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
from dpr.options import add_backbone_params, add_tuning_params

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
