"""Which encoder made a set of vectors: one frozen value, compared field by field with a readable diff.

A DPR embedding shard and a ColBERT index record the :class:`EncoderIdentity` of the (passage) encoder
that made them; a search refuses a query encoder whose identity differs, listing each difference as
``name: index value -> model value``. Settings that do not change a vector (dropout, the checkpoint's
path) are not part of it; the weights are, through a digest of every parameter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dpr.configs import BiEncoderConfig, same_setting


def encoder_digest(encoder: nn.Module) -> str:
    """SHA-256 over every parameter of ``encoder`` (names, shapes, dtypes, bytes).

    Identifies the encoder that made a set of embeddings independently of where its checkpoint lives:
    a copied checkpoint matches, a re-initialised random prefix does not.
    """
    digest = hashlib.sha256()
    for name, param in sorted(encoder.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _diff(ours: Mapping[str, Any], theirs: Mapping[str, Any], prefix: str = "", shared_only: bool = False) -> list[str]:
    names = [n for n in ours if n in theirs or not shared_only]
    names += [n for n in theirs if n not in ours and not shared_only]
    return [
        f"{prefix}{name}: {_show(ours.get(name))} -> {_show(theirs.get(name))}"
        for name in names
        if not same_setting(name, ours.get(name), theirs.get(name))
    ]


@dataclass(frozen=True)
class EncoderIdentity:
    """The encoder settings that shape a vector, the backbone's shape, the passage format and a weights digest.

    ``settings`` and ``passages`` use the flag names (``tuning``, ``pre_seq_len``, ``title_mode``, ...).
    """

    settings: Mapping[str, Any]
    backbone: Mapping[str, Any]
    digest: str
    passages: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # values, not views of a caller's dicts
        object.__setattr__(self, "settings", dict(self.settings))
        object.__setattr__(self, "backbone", dict(self.backbone))
        object.__setattr__(self, "passages", dict(self.passages))

    def diff(self, other: EncoderIdentity) -> list[str]:
        """One line per difference, ``name: ours -> theirs``; the weights only when all else agrees."""
        # Settings of one tuning method only (pre_seq_len, adapter_size, ...) follow from the "tuning" line.
        lines = _diff(self.settings, other.settings, shared_only=True) + _diff(self.passages, other.passages)
        lines += _diff(self.backbone, other.backbone, prefix="backbone ")
        if not lines and self.digest != other.digest:
            lines.append(f"passage-encoder weights differ (digest {self.digest[:12]} -> {other.digest[:12]})")
        return lines

    @classmethod
    def of_config(cls, config: BiEncoderConfig, backbone: Mapping[str, Any], digest: str) -> EncoderIdentity:
        """The identity of a DPR passage encoder with ``config`` (its passage side's own config)."""
        tuning = config.tuning
        settings = {
            "pretrained_model_cfg": config.backbone.pretrained_model_cfg,
            "do_lower_case": config.backbone.do_lower_case,
            "tuning": tuning.method,
            **{name: getattr(tuning, name) for name in tuning.ARCHITECTURE},
            "pooling": config.head.pooling,
            "projection_dim": config.head.projection_dim,
            "normalize": config.head.normalize,
            "tune_side": config.sides.tune_side,
        }
        return cls(settings, backbone, digest, config.passages.to_dict())
