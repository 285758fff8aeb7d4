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
from dataclasses import dataclass
from typing import Any, Literal, Mapping

logger = logging.getLogger(__name__)

TUNING_MODES = ("finetune", "prefix", "prompt", "bitfit", "adapter")
# Modes whose backbone stays frozen: question and passage encoders then share ONE backbone in memory.
FROZEN_BACKBONE_MODES = ("prefix", "prompt", "adapter")
POOLING_MODES = ("auto", "cls", "mean")
PROMPT_ENCODERS = ("none", "lstm", "mlp")
DEFAULT_MODEL = "minilm-l6"

Tuning = Literal["finetune", "prefix", "prompt", "bitfit", "adapter"]


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the flag(s) and values involved."""


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild an encoder; stored in every checkpoint as JSON."""

    pretrained_model_cfg: str = DEFAULT_MODEL
    tuning: Tuning = "finetune"
    pre_seq_len: int = 8
    prefix_mlp: bool = False
    prefix_hidden_size: int = 512
    prefix_dropout: float = 0.1
    prompt_encoder: str = "none"
    prompt_init_text: str | None = None
    adapter_size: int = 64
    pooling: str = "auto"
    projection_dim: int = 0
    share_encoder: bool = False
    sequence_length: int = 512
    do_lower_case: bool = False
    dropout: float = 0.1
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.tuning not in TUNING_MODES:
            raise ConfigError(f"tuning mode {self.tuning!r} is not one of {', '.join(TUNING_MODES)}")
        if self.tuning in ("prefix", "prompt") and self.pre_seq_len < 1:
            raise ConfigError(f"--pre_seq_len must be >= 1 for --{self.tuning}, got {self.pre_seq_len}")
        if self.prefix_hidden_size < 1:
            raise ConfigError(f"--prefix_hidden_size must be >= 1, got {self.prefix_hidden_size}")
        if self.adapter_size < 1:
            raise ConfigError(f"--adapter_size must be >= 1, got {self.adapter_size}")
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"--pooling {self.pooling!r} is not one of {', '.join(POOLING_MODES)}")
        if self.prompt_encoder not in PROMPT_ENCODERS:
            raise ConfigError(f"--prompt_encoder {self.prompt_encoder!r} is not one of {', '.join(PROMPT_ENCODERS)}")
        if self.projection_dim < 0:
            raise ConfigError(f"--projection_dim must be >= 0 (0 = no projection), got {self.projection_dim}")
        if self.sequence_length < 3:
            raise ConfigError(f"--sequence_length must be >= 3 ([CLS] x [SEP]), got {self.sequence_length}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.prefix_dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1): --dropout {self.dropout}, --prefix_dropout {self.prefix_dropout}")
        if self.share_encoder and self.tuning in FROZEN_BACKBONE_MODES:
            # Frozen modes always share the backbone; sharing the tuned parameters too would make the
            # question and passage sides identical, which is never what a user of these modes wants.
            raise ConfigError(f"--share_encoder applies to fine-tuning and --bitfit, not --{self.tuning} "
                              f"(its backbone is always shared)")
        if self.gradient_checkpointing and self.tuning in ("prefix", "adapter"):
            # BERT's checkpointed layers drop past_key_values, and adapter hooks would not run on the
            # recomputation: either would silently train the wrong model, so refuse.
            raise ConfigError(f"--gradient_checkpointing cannot be combined with --{self.tuning}: the "
                              f"recomputed layers would run without the {self.tuning}")

    @property
    def frozen_backbone(self) -> bool:
        return self.tuning in FROZEN_BACKBONE_MODES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "EncoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown encoder config keys {unknown}")
        return cls(**dict(data))


# Fields that define the network: a flag that contradicts the checkpoint here is an error. The rest
# (sequence length, dropout, ...) may be changed when a checkpoint is reused.
ARCHITECTURE_FIELDS = ("pretrained_model_cfg", "tuning", "pre_seq_len", "prefix_mlp", "prefix_hidden_size",
                       "prompt_encoder", "adapter_size", "pooling", "projection_dim", "share_encoder")
_FLAG_NAMES = {"tuning": "the tuning mode (--prefix/--prompt/--bitfit/--adapter, none = fine-tuning)"}


def add_encoder_params(parser: argparse.ArgumentParser) -> None:
    """Encoder flags; defaults are None so explicit values can be checked against a checkpoint."""
    group = parser.add_argument_group("encoder")
    group.add_argument("--pretrained_model_cfg", default=None,
                       help=f"Hugging Face model name, local folder, or a short name of an offline encoder "
                            f"(minilm-l6, bert-tiny). Default {DEFAULT_MODEL}.")
    group.add_argument("--model_file", default=None, help="checkpoint folder to start from or evaluate")
    group.add_argument("--projection_dim", type=int, default=None, help="linear projection size (0 = none)")
    group.add_argument("--sequence_length", type=int, default=None, help="max tokens per text (default 512)")
    group.add_argument("--do_lower_case", action="store_const", const=True, default=None,
                       help="lower-case text before tokenizing (uncased models already do)")
    group.add_argument("--pooling", choices=POOLING_MODES, default=None,
                       help="cls (DPR) or mean (sentence-transformers); auto picks mean for "
                            "sentence-transformers folders, else cls")
    group.add_argument("--share_encoder", action="store_const", const=True, default=None,
                       help="one encoder for questions and passages (fine-tuning and BitFit)")
    group.add_argument("--gradient_checkpointing", action="store_const", const=True, default=None,
                       help="trade compute for activation memory (not with --prefix or --adapter)")


def add_tuning_params(parser: argparse.ArgumentParser) -> None:
    """The tuning mode (exactly one; none = fine-tuning) and its settings."""
    group = parser.add_argument_group("tuning mode (one of; none = full fine-tuning)")
    modes = group.add_mutually_exclusive_group()
    modes.add_argument("--prefix", dest="tuning", action="store_const", const="prefix", default=None,
                       help="P-tuning v2: deep per-layer key/value prefixes")
    modes.add_argument("--prompt", dest="tuning", action="store_const", const="prompt",
                       help="shallow soft prompt at the input embeddings (Lester et al.; P-tuning v1)")
    modes.add_argument("--bitfit", dest="tuning", action="store_const", const="bitfit",
                       help="train only bias terms")
    modes.add_argument("--adapter", dest="tuning", action="store_const", const="adapter",
                       help="bottleneck adapters in every layer")
    modes.add_argument("--finetune", dest="tuning", action="store_const", const="finetune",
                       help="full fine-tuning (the default when no mode is given)")
    group.add_argument("--pre_seq_len", type=int, default=None, help="prefix / prompt length (default 8)")
    group.add_argument("--prefix_mlp", action="store_const", const=True, default=None,
                       help="reparameterise the prefix through an MLP (Embedding -> Linear -> Tanh -> Linear)")
    group.add_argument("--prefix_hidden_size", type=int, default=None, help="prefix MLP hidden size (512)")
    group.add_argument("--prefix_dropout", type=float, default=None, help="dropout on the prefix (0.1)")
    group.add_argument("--prompt_encoder", choices=PROMPT_ENCODERS, default=None,
                       help="P-tuning v1 prompt encoder for --prompt (default none: plain soft prompt)")
    group.add_argument("--prompt_init_text", default=None,
                       help="initialise the --prompt embeddings from this text's token embeddings")
    group.add_argument("--adapter_size", type=int, default=None, help="adapter bottleneck size (64)")


def encoder_config_from_args(args: argparse.Namespace,
                             stored: EncoderConfig | None = None,
                             source: str = "checkpoint") -> EncoderConfig:
    """Build the encoder config from parsed flags, filling unset flags from ``stored`` or the defaults.

    Raises ConfigError when an explicitly given architecture flag contradicts ``stored``; the message
    names the flag, its value and the checkpoint's value.
    """
    base = stored if stored is not None else EncoderConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EncoderConfig)
             if getattr(args, f.name, None) is not None}
    if stored is not None:
        for name in ARCHITECTURE_FIELDS:
            if name in given and given[name] != getattr(stored, name):
                flag = _FLAG_NAMES.get(name, f"--{name}")
                raise ConfigError(f"{flag} is {given[name]!r} but {source} was trained with "
                                  f"{name}={getattr(stored, name)!r}; drop the flag or use another checkpoint")
        for name, value in given.items():
            if name not in ARCHITECTURE_FIELDS and value != getattr(stored, name):
                logger.info("overriding %s from %s: %r -> %r", name, source, getattr(stored, name), value)
    return dataclasses.replace(base, **given)
