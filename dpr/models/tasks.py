"""Many tasks on one frozen backbone: a registry of tuned bi-encoders that all hold the SAME BERT.

Each task is a prefix, prompt, adapter or LoRA checkpoint: a few megabytes of tuned parameters on top of a
backbone that none of them changes. The library loads that backbone once and wraps it per task in a
:class:`~dpr.models.biencoder.BiEncoder` built by ``build_biencoder_from_backbone``, so every task's
question and passage encoders point at one ``BertModel`` object: its weights exist once in memory
however many tasks are registered, and switching tasks moves no backbone weight (a prefix or prompt
is computed per call from the task's own parameters; adapters and LoRA deltas are selected per call by
the backbone's thread-local ``adapter_router`` / ``lora_router``).

Fine-tuned and BitFit checkpoints change the backbone itself, so they cannot share one: they are
refused with a message saying to load them alone.

This module works on tensors only (models never tokenize); :class:`dpr.retrieval.TaskEncoder` reads
checkpoint folders and encodes texts with it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator

import torch
from torch import nn
from transformers import BertModel

from dpr.configs import FROZEN_BACKBONE_MODES, BiEncoderConfig, ConfigError, HeadConfig
from dpr.models.biencoder import BiEncoder, build_biencoder_from_backbone, resolve_config
from dpr.models.encoder import TunedEncoder, parameter_counts
from dpr.models.hub import resolve_model_path
from dpr.models.serialization import CheckpointMismatchError, check_backbone, load_tuned_weights

logger = logging.getLogger(__name__)

SIDES = ("question", "passage")
# Task names end up in file names (per-task results) and in the ``--task name=path`` flag.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


class TaskError(ConfigError):
    """A task that cannot be registered or used (bad or duplicate name, unknown task, wrong mode)."""


class UnknownTaskError(TaskError):
    """A task name that is not registered; the message lists the registered ones."""


def same_model_name(a: str, b: str) -> bool:
    """True when two ``--pretrained_model_cfg`` values name the same model (short name, folder or hub id)."""

    def canonical(name: str) -> str:
        path = resolve_model_path(name)
        return os.path.realpath(path) if os.path.isdir(path) else path

    return a == b or canonical(a) == canonical(b)


class TaskLibrary:
    """Registered tasks on one frozen backbone.

    ``backbone`` is frozen (``requires_grad`` off) and put in eval mode; ``model_name`` is the
    ``--pretrained_model_cfg`` it was loaded from, which every registered checkpoint must name too.
    """

    def __init__(self, backbone: BertModel, model_name: str) -> None:
        self.backbone = backbone.requires_grad_(False).eval()
        self.model_name = model_name
        self._tasks: dict[str, BiEncoder] = {}

    @property
    def tasks(self) -> tuple[str, ...]:
        """The registered task names, in registration order."""
        return tuple(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def add(
        self,
        name: str,
        config: BiEncoderConfig,
        backbone_fingerprint: dict[str, object],
        weights_path: str,
        source: str,
    ) -> BiEncoder:
        """Register task ``name`` from a checkpoint's encoder config, backbone fingerprint and weights file.

        ``source`` names the checkpoint in error messages. Raises TaskError for a bad or duplicate name
        or a mode that changes the backbone, CheckpointMismatchError (naming both values) for a
        checkpoint of another model, hidden size or layer count, or for weights that do not fit.
        """
        self._check_new_name(name)
        if not config.frozen_backbone:
            raise TaskError(
                f"{source} is a {config.tuning.method} checkpoint: it changes the backbone's own weights, "
                f"so it cannot share one frozen backbone with other tasks (task library modes: "
                f"{', '.join(FROZEN_BACKBONE_MODES)}); load it alone with --model_file"
            )
        try:
            check_backbone(backbone_fingerprint, self.backbone, source)
        except CheckpointMismatchError as err:
            raise CheckpointMismatchError(
                f"{err}; checkpoint model {config.backbone.pretrained_model_cfg!r}, "
                f"task library backbone {self.model_name!r}"
            ) from None
        # Same shapes are not enough: a prefix trained on one BERT means nothing on another of that size.
        if not same_model_name(config.backbone.pretrained_model_cfg, self.model_name):
            raise CheckpointMismatchError(
                f"{source} was trained on {config.backbone.pretrained_model_cfg!r}, but the task "
                f"library's backbone is {self.model_name!r}"
            )
        # Inference only: checkpointing would switch the SHARED backbone into recompute mode for every task.
        config = resolve_config(config.with_settings(gradient_checkpointing=False))
        model = build_biencoder_from_backbone(config, self.backbone)
        load_tuned_weights(model, weights_path)
        model.to(self.device).eval()
        assert model.question_encoder.backbone is self.backbone and model.ctx_encoder.backbone is self.backbone
        self._tasks[name] = model
        logger.info("registered task %r (%s, %s) from %s", name, config.tuning.method, _describe(config), source)
        return model

    def remove(self, name: str) -> None:
        """Unregister ``name`` (its tuned parameters are freed once no caller holds them)."""
        self.model(name)  # raises UnknownTaskError with the registered names
        del self._tasks[name]
        logger.info("unregistered task %r", name)

    def model(self, name: str) -> BiEncoder:
        """The bi-encoder of task ``name`` (its question and passage encoders share the backbone)."""
        try:
            return self._tasks[name]
        except KeyError:
            registered = ", ".join(repr(t) for t in self._tasks) or "none"
            raise UnknownTaskError(f"task {name!r} is not registered (registered tasks: {registered})") from None

    def encoder(self, name: str, side: str) -> TunedEncoder:
        """The question or passage encoder of task ``name``."""
        if side not in SIDES:
            raise ValueError(f"side must be 'question' or 'passage', found {side!r}")
        model = self.model(name)
        return model.question_encoder if side == "question" else model.ctx_encoder

    def encode(
        self,
        name: str,
        side: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode ``(B, T)`` token tensors with one task's question or passage encoder -> ``(B, D)``."""
        return self.encoder(name, side)(input_ids, attention_mask, token_type_ids)

    def base_head(self) -> HeadConfig:
        """The head every registered task shares: how the plain backbone (no task active) pools and normalises.

        The base model is meaningful only if all tasks agree on it; TaskError names the tasks that differ.
        """
        heads = {name: model.config.head for name, model in self._tasks.items()}
        if not heads:
            raise TaskError("no task is registered: the base model's head comes from the tasks' checkpoints")
        distinct = set(heads.values())
        if len(distinct) > 1:
            listed = "; ".join(f"{name}: {head}" for name, head in heads.items())
            raise TaskError(f"the tasks pool or normalise differently, so they have no common base model ({listed})")
        return distinct.pop()

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def to(self, device: torch.device | str) -> "TaskLibrary":
        """Move the backbone and every task's tuned parameters (the backbone moves once)."""
        self.backbone.to(device)
        for model in self._tasks.values():
            model.to(device)
        return self

    def as_module(self) -> nn.ModuleList:
        """The backbone and all tasks as one module (its ``parameters()`` lists shared tensors once)."""
        return nn.ModuleList([self.backbone, *self._tasks.values()])

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.as_module().parameters()

    def parameter_counts(self) -> tuple[int, int]:
        """(tuned, total) parameters over all tasks, the shared backbone counted once."""
        _, total = parameter_counts(self.as_module())
        backbone = sum(p.numel() for p in self.backbone.parameters())
        return total - backbone, total

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise TaskError(
                f"task name {name!r}: expected letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        if name in self._tasks:
            raise TaskError(f"task {name!r} is already registered; unregister it first or pick another name")


def _describe(config: BiEncoderConfig) -> str:
    return ", ".join(f"{name} {getattr(config.tuning, name)}" for name in config.tuning.ARCHITECTURE[:1])
