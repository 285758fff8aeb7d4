"""The one device / precision seam of training and inference: which device, which autocast, which loss scaler.

Training (``dpr.training``, ``colbert.training``) and inference (``dpr.encoding``, ``dpr.retrieval``,
``colbert.encoding``) both read it, so it imports nothing of the project but :mod:`dpr.errors`. The hardware
flags (``--fp16`` / ``--bf16`` / ``--no_cuda``, ColBERT's ``--amp``) are declared here too, once for every CLI.

Precisions: ``fp32`` (no autocast), ``fp16`` (CUDA only, with loss scaling when training) and ``bf16`` (CUDA;
on a CPU only on explicit request, with a warning: it is far slower than fp32 on most CPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from dpr.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "DeviceError", "select_device", "autocast", "MixedPrecision", "add_hardware_params"]

PRECISIONS = ("fp32", "fp16", "bf16")


class DeviceError(UserError, ValueError):
    """A precision that is unknown or that the chosen device cannot run (fp16 without CUDA)."""


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be one of {', '.join(PRECISIONS)}; found {precision!r}")


def _refuse_fp16_on(device: torch.device) -> DeviceError:
    return DeviceError(
        f"fp16 mixed precision (--fp16, or --amp for ColBERT) needs a CUDA device; this run is on {device}. "
        "Drop the flag to run in fp32 (bf16 also runs on a CPU, but much slower on most CPUs)"
    )


def select_device(no_cuda: bool, precision: str = "fp32", index: int | None = None) -> torch.device:
    """CUDA (device ``index`` when given) unless ``no_cuda`` or none is present, else the CPU.

    Raises:
        DeviceError: unknown ``precision``, or fp16 without CUDA (refused up front, not at the first batch).
    """
    _check_precision(precision)
    if torch.cuda.is_available() and not no_cuda:
        return torch.device("cuda", index) if index is not None else torch.device("cuda")
    device = torch.device("cpu")
    if precision == "fp16":
        raise _refuse_fp16_on(device)
    return device


@functools.lru_cache(maxsize=1)
def _warn_cpu_bf16() -> None:
    # Cached so a context built per step does not repeat the warning every step.
    logger.warning(
        "bf16 autocast on CPU was requested: on CPUs without native bf16 it is far slower than "
        "fp32 (about 200x measured on the development machine); use fp32 unless you know better"
    )


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager[None]:
    """The autocast context for ``precision`` on ``device``; build it once, enter it per step.

    Returns:
        A reusable context manager: ``nullcontext`` for fp32, ``torch.autocast`` otherwise.

    Raises:
        DeviceError (a ValueError): unknown precision, fp16 on a non-CUDA device, or bf16 on a GPU without it.
    """
    device = torch.device(device)
    _check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise DeviceError(f"bf16 was requested but {device} does not support it; use fp16 or fp32")
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type="cuda", dtype=dtype)
    if precision == "fp16":
        raise _refuse_fp16_on(device)
    _warn_cpu_bf16()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class MixedPrecision:
    """Everything precision-specific about a training step: autocast, loss scaling and the optimizer step.

    The loss scaler is enabled only for fp16 on CUDA (bf16 and fp32 need none); disabled, it is a
    pass-through, so a trainer runs the same three calls whatever the precision::

        with mp.autocast:
            loss = ...
        mp.backward(loss / accumulation)    # per micro-batch
        mp.step(optimizer, params, max_norm)  # per optimizer step: unscale, clip, step, update

    Attributes:
        device, precision: as given.
        autocast: the autocast context, built once, entered per forward pass.
    """

    def __init__(self, device: torch.device | str, precision: str) -> None:
        self.device = torch.device(device)
        self.precision = precision
        self.autocast = autocast(self.device, precision)  # also validates the precision for this device
        enabled = precision == "fp16" and self.device.type == "cuda"
        self._scaler = torch.amp.GradScaler(self.device.type, enabled=enabled)

    @property
    def scaling(self) -> bool:
        """True when the loss is scaled (fp16 on CUDA)."""
        return self._scaler.is_enabled()

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (shape ()), scaled when fp16 loss scaling is on."""
        self._scaler.scale(loss).backward()

    def step(
        self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor] = (), max_grad_norm: float = 0.0
    ) -> None:
        """Unscale the gradients, clip ``parameters`` to ``max_grad_norm`` (when > 0), step, update the scale.

        Clipping happens after unscaling, so ``max_grad_norm`` means the same in every precision. With fp16 a
        step whose gradients overflowed is skipped by the scaler (and the scale lowered), as in PyTorch AMP.
        """
        self._scaler.unscale_(optimizer)
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
        self._scaler.step(optimizer)
        self._scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (``{}`` when scaling is off); saved in training state as ``"scaler"``."""
        return self._scaler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; an empty or missing state (a run saved without scaling) changes nothing."""
        if state:
            self._scaler.load_state_dict(dict(state))


def add_hardware_params(
    parser: argparse.ArgumentParser, *, training: bool, bf16: bool = True, amp_alias: bool = False
) -> argparse._ArgumentGroup:
    """The "hardware" flag group: ``--fp16`` / ``--bf16`` (into ``args.precision``, default fp32), ``--no_cuda``.

    Args:
        training: the help of ``--fp16`` mentions loss scaling.
        bf16: offer ``--bf16`` (ColBERT runs fp32 or fp16 only).
        amp_alias: also accept ``--amp`` for ``--fp16`` (ColBERT's flag name).

    Returns:
        The group, for a caller's own hardware flags (``--local_rank``, ``--no_progress``).
    """
    group = parser.add_argument_group("hardware")
    names = ("--fp16", "--amp") if amp_alias else ("--fp16",)
    fp16_help = "fp16 autocast" + (" with loss scaling" if training else "") + " (CUDA only)"
    group.add_argument(*names, dest="precision", action="store_const", const="fp16", default="fp32", help=fp16_help)
    if bf16:
        group.add_argument(
            "--bf16", dest="precision", action="store_const", const="bf16", help="bf16 autocast (CUDA; slow on CPUs)"
        )
    group.add_argument("--no_cuda", action="store_true", help="run on the CPU even when a GPU is present")
    return group
