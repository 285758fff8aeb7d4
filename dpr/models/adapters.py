"""Bottleneck adapters (Houlsby et al.) on a shared, frozen BERT backbone.

The question and passage encoders each own an ``AdapterSet`` while sharing one backbone. Forward hooks
are installed once on the backbone's attention-output and FFN-output projections; each hook applies the
adapter set that the calling encoder made active for the duration of its forward pass (``AdapterRouter``).
Switching the active set moves no weights, which is what lets many tasks share one backbone.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
from torch import nn
from transformers import BertModel


class Adapter(nn.Module):
    """``x + up(gelu(down(x)))`` with ``up`` zero-initialised, so a new adapter is the identity."""

    def __init__(self, hidden_size: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.act = nn.GELU()
        nn.init.normal_(self.down.weight, std=1e-3)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., hidden)"""
        return hidden + self.up(self.act(self.down(hidden)))


class AdapterSet(nn.Module):
    """Two adapters per layer: after the attention output projection and after the FFN output."""

    def __init__(self, hidden_size: int, num_layers: int, bottleneck: int) -> None:
        super().__init__()
        self.attention = nn.ModuleList(Adapter(hidden_size, bottleneck) for _ in range(num_layers))
        self.ffn = nn.ModuleList(Adapter(hidden_size, bottleneck) for _ in range(num_layers))


class _AdapterHook:
    """The forward hook after one projection: applies the active set's adapter ``where``/``index``.

    An object, not a closure, so that a deep copy of the backbone (``copy.deepcopy``, int8 quantization) gets
    hooks bound to the copy's router rather than to the original's.
    """

    _dpr_router_hook = True  # dropped from plain copies (dpr.models.lora)

    def __init__(self, router: AdapterRouter, where: str, index: int) -> None:
        self.router, self.where, self.index = router, where, index

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        adapters = self.router.active
        if adapters is None:
            return None  # None keeps the module's own output
        return getattr(adapters, self.where)[self.index](output)


class AdapterRouter:
    """Hooks on one backbone that apply whichever AdapterSet is active (none: plain backbone)."""

    def __init__(self, backbone: BertModel) -> None:
        # Thread-local so that two threads encoding with different tasks do not see each other's set.
        self._local = threading.local()
        for index, layer in enumerate(backbone.encoder.layer):
            layer.attention.output.dense.register_forward_hook(_AdapterHook(self, "attention", index))
            layer.output.dense.register_forward_hook(_AdapterHook(self, "ffn", index))

    @property
    def active(self) -> AdapterSet | None:
        return getattr(self._local, "active", None)

    def __deepcopy__(self, memo: dict) -> AdapterRouter:
        # A copied model (e.g. quantize_int8's) gets its own router (its copied hooks point at it) and
        # thread-local, nothing active; a thread-local itself cannot be copied.
        copied = AdapterRouter.__new__(AdapterRouter)
        memo[id(self)] = copied
        copied._local = threading.local()
        return copied

    @contextlib.contextmanager
    def use(self, adapters: AdapterSet | None) -> Iterator[None]:
        previous = self.active
        self._local.active = adapters
        try:
            yield
        finally:
            self._local.active = previous


def adapter_router(backbone: BertModel) -> AdapterRouter:
    """The backbone's router, installed on first use (hooks are registered exactly once)."""
    router = backbone.__dict__.get("_dpr_adapter_router")
    if router is None:
        router = AdapterRouter(backbone)
        # Stored in __dict__ (not as a Module attribute) so it is neither a submodule nor in state_dict.
        backbone.__dict__["_dpr_adapter_router"] = router
    return router
