"""LoRA (Hu et al., 2021) on a shared, frozen BERT backbone, and merging it into a copy for inference.

Each encoder side owns a :class:`LoraSet`: for every adapted ``nn.Linear`` of the backbone a pair
``A: in -> r`` and ``B: r -> out``, with ``B`` zero-initialised so that a new set is the identity. As with
adapters (:mod:`dpr.models.adapters`), the backbone itself is never modified: ONE set of forward hooks on
its adapted linear layers (:class:`LoraRouter`) adds ``scale * B(A(dropout(x)))`` to their outputs for
whichever set the calling encoder made active (thread-local), so many tasks and both sides share one backbone
and switching moves no weight. ``scale = lora_alpha / r`` and ``A``'s initialisation are PEFT's.

:func:`merged_backbone` folds one side's deltas into a COPY of the backbone (``W += scale * B @ A``): the
same vectors without hooks, for inference or export.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import BertModel

from dpr.configs import ConfigError, LoraConfig

if TYPE_CHECKING:
    from dpr.models.encoder import TunedEncoder

logger = logging.getLogger(__name__)

# Linear layers whose output never reaches a vector of ours: BERT's pooler (our backbones load without it).
EXCLUDED_PREFIXES = ("pooler.",)
_ROUTER_KEY = "_dpr_lora_router"


class LoraError(ConfigError):
    """A LoRA setting that does not fit the backbone (a target that matches no linear layer) or the encoder."""


def linear_names(backbone: nn.Module) -> list[str]:
    """Dotted names of the backbone's ``nn.Linear`` modules that can be adapted, in module order."""
    return [
        name
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear) and not name.startswith(EXCLUDED_PREFIXES)
    ]


def matches(name: str, target: str) -> bool:
    """PEFT's rule for a ``target_modules`` list entry: the whole dotted name, or its last components."""
    return name == target or name.endswith("." + target)


def target_paths(backbone: nn.Module, targets: Sequence[str]) -> list[str]:
    """The linear layers ``targets`` select; LoraError naming the available names for a target matching none."""
    names = linear_names(backbone)
    unmatched = [t for t in targets if not any(matches(name, t) for name in names)]
    if unmatched:
        available = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise LoraError(
            f"--lora_target {','.join(unmatched)} matches no linear layer of this {type(backbone).__name__}; "
            f"its linear layers are named {', '.join(available)} (or longer dotted suffixes such as "
            f"attention.output.dense)"
        )
    return [name for name in names if any(matches(name, t) for t in targets)]


def module_key(path: str) -> str:
    """A ModuleDict key for a dotted module path (keys may not contain dots)."""
    return path.replace(".", "__")


class LoraDelta(nn.Module):
    """``B(A(x))`` for one linear layer ``in -> out``: ``A`` as PEFT initialises it, ``B`` zero."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)"""
        return self.B(self.A(x))

    def weight_delta(self) -> torch.Tensor:
        """``B @ A``: ``(out, in)``, the unscaled change of the layer's weight."""
        return self.B.weight @ self.A.weight


class LoraSet(nn.Module):
    """One encoder side's deltas, one per adapted linear layer of the backbone (``paths``, in module order)."""

    def __init__(self, backbone: nn.Module, tuning: LoraConfig) -> None:
        super().__init__()
        self.paths = tuple(target_paths(backbone, tuning.lora_target))
        self.scale = tuning.scale
        self.dropout = nn.Dropout(tuning.lora_dropout)
        self.deltas = nn.ModuleDict()
        for path in self.paths:
            linear = backbone.get_submodule(path)
            self.deltas[module_key(path)] = LoraDelta(linear.in_features, linear.out_features, tuning.lora_r)

    def delta(self, path: str) -> LoraDelta:
        return self.deltas[module_key(path)]

    def add_delta(self, path: str, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``output + scale * B(A(dropout(x)))``: ``x`` ``(..., in)``, ``output`` ``(..., out)``."""
        update = self.delta(path)(self.dropout(x))  # (..., out)
        return output + self.scale * update.to(output.dtype)


class _LoraHook:
    """The forward hook on one adapted linear layer: adds the active set's delta for ``path``.

    An object, not a closure, so that a deep copy of the backbone (``copy.deepcopy``, int8 quantization) gets
    hooks bound to the copy's router rather than to the original's.
    """

    _dpr_router_hook = True  # what _plain_copy removes

    def __init__(self, router: LoraRouter, path: str) -> None:
        self.router = router
        self.path = path
        self.key = module_key(path)

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        lora = self.router.active
        if lora is None or self.key not in lora.deltas:
            return None  # None keeps the module's own output
        return lora.add_delta(self.path, inputs[0], output)


class LoraRouter:
    """Hooks on one backbone's linear layers that apply whichever LoraSet is active (none: plain backbone)."""

    def __init__(self, backbone: nn.Module) -> None:
        self._backbone = backbone
        # Thread-local so that two threads encoding with different tasks do not see each other's set.
        self._local = threading.local()
        self._hooked: set[str] = set()

    @property
    def active(self) -> LoraSet | None:
        return getattr(self._local, "active", None)

    def install(self, paths: Sequence[str]) -> None:
        """Hook the layers of ``paths`` not hooked yet (tasks may adapt different layers of one backbone)."""
        for path in paths:
            if path not in self._hooked:
                self._backbone.get_submodule(path).register_forward_hook(_LoraHook(self, path))
                self._hooked.add(path)

    @contextlib.contextmanager
    def use(self, lora: LoraSet | None) -> Iterator[None]:
        previous = self.active
        self._local.active = lora
        try:
            yield
        finally:
            self._local.active = previous

    def __deepcopy__(self, memo: dict) -> LoraRouter:
        # A copied model (e.g. quantize_int8's) gets its own router, hooks and thread-local, nothing active.
        copied = LoraRouter.__new__(LoraRouter)
        memo[id(self)] = copied
        copied._backbone = copy.deepcopy(self._backbone, memo)
        copied._local = threading.local()
        copied._hooked = set(self._hooked)
        return copied


def lora_router(backbone: nn.Module) -> LoraRouter:
    """The backbone's router, created on first use."""
    router = backbone.__dict__.get(_ROUTER_KEY)
    if router is None:
        router = LoraRouter(backbone)
        # Stored in __dict__ (not as a Module attribute) so it is neither a submodule nor in state_dict.
        backbone.__dict__[_ROUTER_KEY] = router
    return router


def _plain_copy(backbone: BertModel) -> BertModel:
    """A deep copy of ``backbone`` without the routers (LoRA, adapters) of this project or their hooks."""
    routers = [key for key in backbone.__dict__ if key.startswith("_dpr_")]
    # Copied as None (a thread-local cannot be copied), then dropped: the copy is a plain BertModel.
    copied = copy.deepcopy(backbone, {id(backbone.__dict__[key]): None for key in routers})
    for key in routers:
        del copied.__dict__[key]
    for module in copied.modules():
        for hook_id, hook in list(module._forward_hooks.items()):
            if getattr(hook, "_dpr_router_hook", False):
                del module._forward_hooks[hook_id]
    return copied


def merged_backbone(encoder: TunedEncoder) -> BertModel:
    """A COPY of ``encoder``'s backbone with its LoRA deltas folded in: ``W += scale * B @ A`` per layer.

    ``encoder`` is a :class:`dpr.models.encoder.TunedEncoder` in the lora mode; its (shared) backbone is left as
    it was. The copy has no hooks: run as a plain ``BertModel`` it gives the encoder's token states (up to float
    rounding; dropout aside). Raises LoraError for an encoder of another mode.
    """
    lora = encoder.lora
    if lora is None:
        raise LoraError(f"merged_backbone needs a --lora encoder; this one is {encoder.tuning.method}")
    merged = _plain_copy(encoder.backbone)
    with torch.no_grad():
        for path in lora.paths:
            weight = merged.get_submodule(path).weight  # (out, in)
            delta = lora.delta(path).weight_delta().to(torch.float32)  # (out, in)
            weight.copy_((weight.to(torch.float32) + lora.scale * delta.to(weight.device)).to(weight.dtype))
    logger.info("merged %d LoRA deltas (scale %g) into a copy of the backbone", len(lora.paths), lora.scale)
    return merged
