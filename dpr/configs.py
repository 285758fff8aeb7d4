"""Frozen configs, one per concern: backbone, tuning method, retriever head, passage format, tuned sides.

:class:`BiEncoderConfig` composes all five for DPR; ``colbert.options.ColBERTConfig`` composes the
backbone and the tuning method with ColBERT's own settings, so it has nothing to force or refuse. The
tuning method is one config per method (as PEFT has one config class per method), serialised with its
name: ``{"method": "prefix", "pre_seq_len": 8, ...}``.

Format 2 stores a config nested, one object per concern. Format 1 stored one flat dict whose keys are the
flag names (``pretrained_model_cfg``, ``tuning``, ``pre_seq_len``, ...): :meth:`BiEncoderConfig.from_dict`
reads both, and :meth:`BiEncoderConfig.from_flat` / :meth:`BiEncoderConfig.to_flat` are the flag layer's
view. Error messages name the flags.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from dpr.errors import UserError

logger = logging.getLogger(__name__)

TUNING_MODES = ("finetune", "prefix", "prompt", "bitfit", "adapter", "lora")
# Modes whose backbone stays frozen: question and passage encoders then share ONE backbone in memory.
FROZEN_BACKBONE_MODES = ("prefix", "prompt", "adapter", "lora")
POOLING_MODES = ("auto", "cls", "mean")
PROMPT_ENCODERS = ("none", "lstm", "mlp")
TUNE_SIDES = ("both", "question")
TITLE_MODES = ("auto", "pair", "concat")
DEFAULT_MODEL = "minilm-l6"


class ConfigError(UserError, ValueError):
    """A configuration that cannot work; the message names the flag(s) and values involved."""


def _check_choice(flag: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{flag} {value!r} is not one of {', '.join(choices)}")


def _check_dropout(flag: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"dropout must be in [0, 1): --{flag} {value}")


def _take(cls: type, values: Mapping[str, Any]) -> Any:
    """``cls`` built from the entries of ``values`` that are its fields (the others belong to other concerns)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _from_object(cls: type, data: Any, source: str, what: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {what} must be a JSON object, found {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown {what} keys {unknown}")
    return cls(**dict(data))


@dataclass(frozen=True)
class BackboneConfig:
    """The BERT backbone and how text reaches it.

    ``dropout`` is the hidden-state dropout; ``attention_dropout`` the dropout on attention probabilities,
    0 by default: any other value makes PyTorch's scaled-dot-product attention leave its fused kernel for
    the unfused "math" one while training (measured on CPU: 3.2x the attention time in fp32, 3.8x in bf16).
    """

    pretrained_model_cfg: str = DEFAULT_MODEL
    sequence_length: int = 512
    do_lower_case: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.0
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.sequence_length < 3:
            raise ConfigError(f"--sequence_length must be >= 3 ([CLS] x [SEP]), got {self.sequence_length}")
        _check_dropout("dropout", self.dropout)
        _check_dropout("attention_dropout", self.attention_dropout)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stored_backbone_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Backbone settings read from a checkpoint or index: one written before ``attention_dropout`` existed
    trained with attention dropout equal to its ``dropout`` (both were one setting)."""
    values = dict(values)
    if "attention_dropout" not in values and "dropout" in values:
        values["attention_dropout"] = values["dropout"]
    return values


class _Tuning:
    """What every tuning config has: its method name and the fields that shape the network."""

    method: ClassVar[str]
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ()  # fields a checkpoint's flags may not contradict

    @property
    def frozen_backbone(self) -> bool:
        return self.method in FROZEN_BACKBONE_MODES

    @property
    def virtual_tokens(self) -> int:
        """Positions the method adds in front of the text (a soft prompt's; prefixes take none)."""
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class FinetuneConfig(_Tuning):
    """Full fine-tuning: every backbone weight trains."""

    method: ClassVar[str] = "finetune"


@dataclass(frozen=True)
class BitFitConfig(_Tuning):
    """BitFit: only the backbone's bias terms train."""

    method: ClassVar[str] = "bitfit"


@dataclass(frozen=True)
class PrefixConfig(_Tuning):
    """P-tuning v2: per-layer key/value prefixes on a frozen backbone."""

    method: ClassVar[str] = "prefix"
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("pre_seq_len", "prefix_mlp", "prefix_hidden_size")
    pre_seq_len: int = 8
    prefix_mlp: bool = False
    prefix_hidden_size: int = 512
    prefix_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pre_seq_len < 1:
            raise ConfigError(f"--pre_seq_len must be >= 1 for --prefix, got {self.pre_seq_len}")
        if self.prefix_hidden_size < 1:
            raise ConfigError(f"--prefix_hidden_size must be >= 1, got {self.prefix_hidden_size}")
        _check_dropout("prefix_dropout", self.prefix_dropout)


@dataclass(frozen=True)
class PromptConfig(_Tuning):
    """A soft prompt at the input embeddings (Lester et al.; P-tuning v1 with a prompt encoder)."""

    method: ClassVar[str] = "prompt"
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("pre_seq_len", "prompt_encoder")
    pre_seq_len: int = 8
    prompt_encoder: str = "none"
    prompt_init_text: str | None = None

    def __post_init__(self) -> None:
        if self.pre_seq_len < 1:
            raise ConfigError(f"--pre_seq_len must be >= 1 for --prompt, got {self.pre_seq_len}")
        _check_choice("prompt_encoder", self.prompt_encoder, PROMPT_ENCODERS)

    @property
    def virtual_tokens(self) -> int:
        return self.pre_seq_len


@dataclass(frozen=True)
class AdapterConfig(_Tuning):
    """Bottleneck adapters in every layer of a frozen backbone."""

    method: ClassVar[str] = "adapter"
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("adapter_size",)
    adapter_size: int = 64

    def __post_init__(self) -> None:
        if self.adapter_size < 1:
            raise ConfigError(f"--adapter_size must be >= 1, got {self.adapter_size}")


@dataclass(frozen=True)
class LoraConfig(_Tuning):
    """LoRA (Hu et al.): ``W x + (alpha / r) B A dropout(x)`` on the chosen linear layers of a frozen backbone.

    Field meanings follow PEFT's ``LoraConfig`` (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``);
    ``lora_target`` names match module names' last components (or longer dotted suffixes), as in PEFT.
    A comma-separated string or a JSON list is read as a tuple.
    """

    method: ClassVar[str] = "lora"
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("lora_r", "lora_alpha", "lora_target")
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_target: tuple[str, ...] = ("query", "key", "value", "dense")

    def __post_init__(self) -> None:
        target = self.lora_target
        names = target.split(",") if isinstance(target, str) else list(target)
        names = [n.strip() if isinstance(n, str) else n for n in names]
        if not names or any(not isinstance(n, str) or not n for n in names):
            raise ConfigError(f"--lora_target needs module names separated by commas (query,value), got {target!r}")
        object.__setattr__(self, "lora_target", tuple(dict.fromkeys(names)))
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 1:
            raise ConfigError(f"--lora_r must be an integer >= 1, got {self.lora_r!r}")
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
            raise ConfigError(f"--lora_alpha must be a finite number > 0, got {alpha!r}")  # nan fails 0 < nan
        object.__setattr__(self, "lora_alpha", float(alpha))
        _check_dropout("lora_dropout", self.lora_dropout)

    @property
    def scale(self) -> float:
        """What multiplies ``B A x``: ``lora_alpha / lora_r`` (PEFT's ``scaling``, without rsLoRA)."""
        return self.lora_alpha / self.lora_r


TuningConfig = Union[FinetuneConfig, BitFitConfig, PrefixConfig, PromptConfig, AdapterConfig, LoraConfig]
TUNING_CONFIGS: dict[str, type] = {
    cls.method: cls for cls in (FinetuneConfig, BitFitConfig, PrefixConfig, PromptConfig, AdapterConfig, LoraConfig)
}
# Every tuning field under its flag name, with its default (what format 1 stored for every method).
TUNING_FIELDS: dict[str, Any] = {f.name: f.default for cls in TUNING_CONFIGS.values() for f in dataclasses.fields(cls)}


def _check_method(method: Any) -> None:
    if method not in TUNING_CONFIGS:
        raise ConfigError(f"tuning mode {method!r} is not one of {', '.join(TUNING_MODES)}")


def tuning_from_dict(data: Any, source: str = "config") -> TuningConfig:
    """``{"method": "prefix", ...}`` -> the method's config; unknown methods and keys are errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the tuning config must be a JSON object, found {type(data).__name__}")
    _check_method(data.get("method"))
    values = {k: v for k, v in data.items() if k != "method"}
    return _from_object(TUNING_CONFIGS[data["method"]], values, source, f"{data['method']} tuning config")


def tuning_from_flat(values: Mapping[str, Any]) -> TuningConfig:
    """The config of ``values["tuning"]`` (default finetune) from flag-named values; other methods' fields
    are ignored (they never reached the network)."""
    method = values.get("tuning", "finetune")
    _check_method(method)
    return _take(TUNING_CONFIGS[method], values)


def tuning_to_flat(tuning: TuningConfig) -> dict[str, Any]:
    """Every tuning flag: the method's own values, the defaults for the other methods' fields."""
    return {"tuning": tuning.method, **TUNING_FIELDS, **dataclasses.asdict(tuning)}


@dataclass(frozen=True)
class HeadConfig:
    """How token states become one vector: pooling, optional projection, optional L2 normalisation."""

    pooling: str = "auto"  # auto: mean for sentence-transformers folders, else cls
    projection_dim: int = 0
    normalize: bool | None = None  # None = auto (on when the model folder's modules include Normalize)

    def __post_init__(self) -> None:
        _check_choice("pooling", self.pooling, POOLING_MODES)
        if self.projection_dim < 0:
            raise ConfigError(f"--projection_dim must be >= 0 (0 = no projection), got {self.projection_dim}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PassageFormat:
    """How a passage becomes text: title/text as a pair (DPR) or one "title text" segment, or no title."""

    title_mode: str = "auto"  # auto: concat for sentence-transformers folders, else pair
    insert_title: bool = True  # False: --no_title, the text alone

    def __post_init__(self) -> None:
        _check_choice("title_mode", self.title_mode, TITLE_MODES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SidesConfig:
    """Which encoders exist and train: one shared encoder, and both sides or the question side only."""

    share_encoder: bool = False
    tune_side: str = "both"

    def __post_init__(self) -> None:
        _check_choice("tune_side", self.tune_side, TUNE_SIDES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The flat (format 1, flag-named) view of a BiEncoderConfig, in format 1's order plus insert_title.
FLAT_FIELDS = (
    "pretrained_model_cfg",
    "tuning",
    *TUNING_FIELDS,
    "pooling",
    "projection_dim",
    "share_encoder",
    "sequence_length",
    "do_lower_case",
    "dropout",
    "attention_dropout",
    "gradient_checkpointing",
    "tune_side",
    "normalize",
    "title_mode",
    "insert_title",
)
# Fields that define the network: a flag that contradicts the checkpoint here is an error. The rest
# (sequence length, dropout, --no_title, ...) may be changed when a checkpoint is reused.
ARCHITECTURE_FIELDS = (
    "pretrained_model_cfg",
    "tuning",
    "pre_seq_len",
    "prefix_mlp",
    "prefix_hidden_size",
    "prompt_encoder",
    "adapter_size",
    "lora_r",
    "lora_alpha",
    "lora_target",
    "pooling",
    "projection_dim",
    "share_encoder",
    "tune_side",
    "normalize",
    "title_mode",
)
# Fields whose values are sets written as lists: --lora_target value,query selects the same layers as query,value.
ORDERLESS_FIELDS = ("lora_target",)
_FLAG_NAMES = {"tuning": "the tuning mode (--prefix/--prompt/--bitfit/--adapter/--lora, none = fine-tuning)"}
_PARTS = {"backbone": BackboneConfig, "head": HeadConfig, "passages": PassageFormat, "sides": SidesConfig}


@dataclass(frozen=True)
class BiEncoderConfig:
    """Everything needed to rebuild a DPR bi-encoder; stored in every checkpoint, shard and export."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    tuning: TuningConfig = field(default_factory=FinetuneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    passages: PassageFormat = field(default_factory=PassageFormat)
    sides: SidesConfig = field(default_factory=SidesConfig)

    def __post_init__(self) -> None:
        method = self.tuning.method
        if self.sides.share_encoder and self.tuning.frozen_backbone:
            # Frozen modes always share the backbone; sharing the tuned parameters too would make the
            # question and passage sides identical, which is never what a user of these modes wants.
            raise ConfigError(
                f"--share_encoder applies to fine-tuning and --bitfit, not --{method} (its backbone is always shared)"
            )
        if self.sides.tune_side == "question" and (self.head.projection_dim or self.sides.share_encoder):
            # The passage side is the fixed base encoder: it has no projection and is never shared.
            raise ConfigError(
                "--tune_side question keeps the passage encoder fixed; it cannot be combined "
                f"with --projection_dim {self.head.projection_dim} or --share_encoder"
            )
        if self.backbone.gradient_checkpointing and method in ("prefix", "adapter", "lora"):
            # BERT's checkpointed layers drop past_key_values, and adapter / LoRA hooks would not see their
            # set on the recomputation: either would silently train the wrong model, so refuse.
            raise ConfigError(
                f"--gradient_checkpointing cannot be combined with --{method}: the "
                f"recomputed layers would run without the {method}"
            )

    @property
    def frozen_backbone(self) -> bool:
        return self.tuning.frozen_backbone

    # The two backbone settings every caller needs to load the tokenizer (format 1's attribute names).
    @property
    def pretrained_model_cfg(self) -> str:
        return self.backbone.pretrained_model_cfg

    @property
    def do_lower_case(self) -> bool:
        return self.backbone.do_lower_case

    def passage_config(self) -> BiEncoderConfig:
        """The config of the passage side alone: what a passage index made with this model records.

        With ``tune_side='question'`` the passage side is the untouched base model, so it equals the
        config of a zero-shot base encoder and an index built before training stays valid.
        """
        if self.sides.tune_side == "both":
            return self
        backbone = dataclasses.replace(self.backbone, gradient_checkpointing=False)
        return BiEncoderConfig(backbone=backbone, head=self.head, passages=self.passages)

    def to_dict(self) -> dict[str, Any]:
        """The nested form (format 2)."""
        return {
            "backbone": self.backbone.to_dict(),
            "tuning": self.tuning.to_dict(),
            "head": self.head.to_dict(),
            "passages": self.passages.to_dict(),
            "sides": self.sides.to_dict(),
        }

    def to_flat(self) -> dict[str, Any]:
        """Every setting under its flag name (format 1's keys plus ``insert_title``)."""
        values = {
            **self.backbone.to_dict(),
            **tuning_to_flat(self.tuning),
            **self.head.to_dict(),
            **self.passages.to_dict(),
            **self.sides.to_dict(),
        }
        return {name: values[name] for name in FLAT_FIELDS}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any] | None = None, /, **more: Any) -> BiEncoderConfig:
        """A config from flag-named settings (a format 1 dict); missing ones take their defaults."""
        values = {**(values or {}), **more}
        unknown = sorted(set(values) - set(FLAT_FIELDS))
        if unknown:
            raise ConfigError(f"unknown encoder config keys {unknown}")
        return cls(
            backbone=_take(BackboneConfig, values),
            tuning=tuning_from_flat(values),
            head=_take(HeadConfig, values),
            passages=_take(PassageFormat, values),
            sides=_take(SidesConfig, values),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> BiEncoderConfig:
        """Read the nested form (format 2) or the flat one (format 1, flag-named keys)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the encoder config must be a JSON object, found {type(data).__name__}")
        if "backbone" not in data:
            try:
                return cls.from_flat(stored_backbone_settings(data))
            except ConfigError as err:
                raise ConfigError(f"{source}: {err}") from None
        unknown = sorted(set(data) - set(_PARTS) - {"tuning"})
        if unknown:
            raise ConfigError(f"{source}: unknown encoder config keys {unknown}")
        data = {**data, "backbone": stored_backbone_settings(data.get("backbone", {}))}
        parts = {
            name: _from_object(part, data.get(name, {}), source, f"{name} config") for name, part in _PARTS.items()
        }
        return cls(tuning=tuning_from_dict(data.get("tuning", {"method": "finetune"}), source), **parts)

    def with_settings(self, **values: Any) -> BiEncoderConfig:
        """A copy with flag-named settings changed (``with_settings(pooling="cls")``)."""
        return BiEncoderConfig.from_flat({**self.to_flat(), **values})


def apply_overrides(
    stored: BiEncoderConfig | None, overrides: Mapping[str, Any], source: str = "checkpoint"
) -> BiEncoderConfig:
    """``stored`` (default: the defaults) with the flag-named ``overrides`` (the settings a user typed).

    Raises ConfigError when an override of an architecture field contradicts ``stored``, naming the flag,
    its value and the stored value; other changes are logged.
    """
    base = stored if stored is not None else BiEncoderConfig()
    if stored is not None:
        check_agrees(overrides, stored.to_flat(), ARCHITECTURE_FIELDS, source)
        old = stored.to_flat()
        for name, value in overrides.items():
            if name not in ARCHITECTURE_FIELDS and value != old.get(name):
                logger.info("overriding %s from %s: %r -> %r", name, source, old.get(name), value)
    return base.with_settings(**overrides) if overrides else base


def same_setting(name: str, a: Any, b: Any) -> bool:
    """Whether two values of the field ``name`` mean the same (in any order for ORDERLESS_FIELDS)."""
    if name in ORDERLESS_FIELDS and isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return sorted(a) == sorted(b)
    return a == b


def check_agrees(
    given: Mapping[str, Any], stored: Mapping[str, Any], names: tuple[str, ...], source: str, verb: str = "trained"
) -> None:
    """Refuse a ``given`` value of one of ``names`` that differs from ``stored``'s, naming both."""
    for name in names:
        if name in given and not same_setting(name, given[name], stored.get(name)):
            flag = _FLAG_NAMES.get(name, f"--{name}")
            raise ConfigError(
                f"{flag} is {given[name]!r} but {source} was {verb} with "
                f"{name}={stored.get(name)!r}; drop the flag or use another checkpoint"
            )
