"""The one device / precision seam of training and inference: which device, which autocast, which loss scaler.

Training (``dpr.training``, ``colbert.training``) and inference (``dpr.encoding``, ``dpr.retrieval``,
``colbert.encoding``) both read it, so it imports nothing of the project but :mod:`dpr.errors`. The hardware
flags (``--precision``, its aliases ``--fp16`` / ``--bf16`` / ColBERT's ``--amp``, ``--no_cuda``) are declared
here too, once for every CLI.

Precisions: ``fp32`` (no autocast), ``fp16`` (CUDA only, with loss scaling when training), ``bf16`` (autocast;
fast on GPUs and on CPUs with native bf16 matrix units, far slower than fp32 on CPUs without), ``int8``
(inference on a CPU: the linear layers' weights quantized to int8, :func:`quantize_int8`) and ``auto``, the
default: :func:`resolve_precision` picks bf16 where this machine runs it fast, else fp32, and logs why.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from dpr.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "REQUESTS",
    "INFERENCE_REQUESTS",
    "DeviceError",
    "select_device",
    "resolve_precision",
    "cpu_bf16_speedup",
    "autocast",
    "quantize_int8",
    "MixedPrecision",
    "add_hardware_params",
]

PRECISIONS = ("fp32", "fp16", "bf16")  # what autocast runs
REQUESTS = ("auto", *PRECISIONS)  # what --precision takes for training
INFERENCE_REQUESTS = (*REQUESTS, "int8")  # and for encoding / retrieval (int8: CPU inference only)
# bf16 must beat fp32 by this factor in the matmul micro-benchmark for ``auto`` to choose it on a CPU.
CPU_BF16_MIN_SPEEDUP = 1.5
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
AUTO_ENV = "DPR_AUTO_PRECISION"  # fp32 or bf16: what ``auto`` means on this machine, without measuring


class DeviceError(UserError, ValueError):
    """A precision that is unknown or that the chosen device cannot run (fp16 without CUDA)."""


def _check_precision(precision: str, allowed: tuple[str, ...] = INFERENCE_REQUESTS) -> None:
    if precision not in allowed:
        raise DeviceError(f"precision must be one of {', '.join(allowed)}; found {precision!r}")


def _refuse_fp16_on(device: torch.device) -> DeviceError:
    return DeviceError(
        f"fp16 mixed precision (--precision fp16, --fp16, or --amp for ColBERT) needs a CUDA device; this run is "
        f"on {device}. Use --precision auto (bf16 where this CPU runs it fast, else fp32) or fp32"
    )


def select_device(no_cuda: bool, precision: str = "fp32", index: int | None = None) -> torch.device:
    """CUDA (device ``index`` when given) unless ``no_cuda`` or none is present, else the CPU.

    Raises:
        DeviceError: unknown ``precision``, fp16 without CUDA or int8 on CUDA (refused up front, not at the
            first batch).
    """
    _check_precision(precision)
    if torch.cuda.is_available() and not no_cuda:
        device = torch.device("cuda", index) if index is not None else torch.device("cuda")
        if precision == "int8":
            raise DeviceError("--precision int8 is CPU inference only; add --no_cuda, or use bf16 / fp16 on the GPU")
        return device
    device = torch.device("cpu")
    if precision == "fp16":
        raise _refuse_fp16_on(device)
    return device


def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where that cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _best_seconds(run: Any, repeats: int, budget: float) -> float:
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        took = time.perf_counter() - started
        best, spent = min(best, took), spent + took
        if spent > budget:
            break
    return best


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 512) -> float:
    """How many times faster a ``size`` x ``size`` matmul runs under CPU bf16 autocast than in fp32 (measured
    once per process, ~0.1 s; under 1 means bf16 is slower, as on CPUs without native bf16)."""
    a, b = torch.randn(size, size), torch.randn(size, size)

    def fp32() -> None:
        for _ in range(4):
            torch.matmul(a, b)

    def bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(4):
                torch.matmul(a, b)

    fp32(), bf16()  # warm up both kernels
    reference = _best_seconds(fp32, 5, 0.2)
    return reference / _best_seconds(bf16, 5, max(0.2, 20 * reference))


def _cpu_bf16_choice() -> tuple[bool, str]:
    flags = _cpu_flags()
    if flags is not None and not flags.intersection(_CPU_BF16_FLAGS):
        return False, f"the CPU has no native bf16 ({' / '.join(_CPU_BF16_FLAGS)} not among its flags)"
    speedup = cpu_bf16_speedup()
    native = sorted(flags.intersection(_CPU_BF16_FLAGS)) if flags is not None else []
    where = f"CPU with {', '.join(native)}" if native else "this CPU"
    fast = speedup >= CPU_BF16_MIN_SPEEDUP
    verdict = "at least" if fast else "below"
    return fast, f"bf16 matmul runs {speedup:.1f}x fp32 on this {where} ({verdict} {CPU_BF16_MIN_SPEEDUP}x)"


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """The precision to run: ``requested`` itself, or for ``auto`` bf16 where ``device`` runs it fast, else fp32.

    ``auto`` on CUDA is bf16 when the GPU supports it; on a CPU it is bf16 only when the CPU has native bf16
    (flags ``amx_bf16`` or ``avx512_bf16``, where readable) and a one-off matmul micro-benchmark shows bf16 at
    least :data:`CPU_BF16_MIN_SPEEDUP` x faster than fp32. ``auto`` never picks fp16 or int8. The choice and its
    reason are logged. The environment variable ``DPR_AUTO_PRECISION`` (fp32 or bf16) pins what ``auto`` means,
    e.g. for reproducible runs across machines (the test suite sets it to fp32).
    """
    _check_precision(requested)
    if requested != "auto":
        return requested
    pinned = os.environ.get(AUTO_ENV, "")
    if pinned:
        if pinned not in ("fp32", "bf16"):
            raise DeviceError(f"{AUTO_ENV}={pinned!r}: expected fp32 or bf16 (or unset it)")
        logger.info("precision auto -> %s: %s is set", pinned, AUTO_ENV)
        return pinned
    device = torch.device(device)
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
        reason = f"{torch.cuda.get_device_name(device)} {'supports' if fast else 'lacks'} bf16"
    elif device.type == "cpu":
        fast, reason = _cpu_bf16_choice()
    else:
        fast, reason = False, f"no bf16 check for {device.type} devices"
    chosen = "bf16" if fast else "fp32"
    logger.info("precision auto -> %s: %s", chosen, reason)
    return chosen


@functools.lru_cache(maxsize=1)  # once per process, not every step
def _warn_cpu_bf16() -> None:
    fast, reason = _cpu_bf16_choice()
    if not fast:
        logger.warning("bf16 autocast on CPU was requested, but %s: expect it to be slower than fp32", reason)


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager[None]:
    """The autocast context for ``precision`` (resolved, not ``auto``) on ``device``; build once, enter per step.

    ``int8`` runs without autocast: its linear layers are already quantized (:func:`quantize_int8`).

    Returns:
        A reusable context manager: ``nullcontext`` for fp32 and int8, ``torch.autocast`` otherwise.

    Raises:
        DeviceError (a ValueError): unknown or unresolved precision, fp16 on a non-CUDA device, bf16 on a GPU
        without it.
    """
    device = torch.device(device)
    _check_precision(precision, (*PRECISIONS, "int8"))
    if precision in ("fp32", "int8"):
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


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` (in eval mode, on the CPU) with every ``nn.Linear`` replaced by a dynamically quantized int8 one.

    PyTorch's dynamic quantization: int8 weights (per output channel), activations quantized per batch on the fly,
    int8 x int8 matrix products (fbgemm / oneDNN, VNNI where the CPU has it). Attention score products, layer
    norms and embeddings stay fp32, and so do prefixes and prompts (they are parameters, not linear layers of
    the forward pass, unless reparameterised by an MLP, which is quantized like the rest). Returns a new module;
    ``model`` is left as it was.
    """
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager dynamic path used here still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # Per output channel: one scale per weight row. Per tensor (PyTorch's default) bent minilm-l6 passage
        # vectors to a minimum cosine of 0.876 against fp32 (measured, 128 SciFact passages); per channel 0.970.
        spec = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)


class MixedPrecision:
    """Everything precision-specific about a training step: autocast, loss scaling and the optimizer step.

    The loss scaler is enabled only for fp16 on CUDA (bf16 and fp32 need none); disabled, it is a
    pass-through, so a trainer runs the same three calls whatever the precision::

        with mp.autocast:
            loss = ...
        mp.backward(loss / accumulation)    # per micro-batch
        mp.step(optimizer, params, max_norm)  # per optimizer step: unscale, clip, step, update

    Attributes:
        device: as given.
        precision: the one it runs (``auto`` resolved by :func:`resolve_precision`).
        autocast: the autocast context, built once, entered per forward pass.
    """

    def __init__(self, device: torch.device | str, precision: str) -> None:
        self.device = torch.device(device)
        if precision == "int8":
            raise DeviceError("--precision int8 is for CPU inference (embeddings, retrieval), not for training")
        _check_precision(precision, REQUESTS)
        self.precision = resolve_precision(precision, self.device)  # auto -> bf16 or fp32, logged
        self.autocast = autocast(self.device, self.precision)  # also validates the precision for this device
        enabled = self.precision == "fp16" and self.device.type == "cuda"
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
    parser: argparse.ArgumentParser, *, training: bool, int8: bool = False, amp_alias: bool = False
) -> argparse._ArgumentGroup:
    """The "hardware" flags: ``--precision`` (default auto), its aliases ``--fp16`` / ``--bf16``, ``--no_cuda``.

    Args:
        training: the help of fp16 mentions loss scaling.
        int8: offer ``--precision int8`` (CPU inference: embeddings, retrieval).
        amp_alias: also accept ``--amp`` for ``--fp16`` (ColBERT's flag name).

    Returns:
        The group, for a caller's own hardware flags (``--local_rank``, ``--no_progress``).
    """
    group = parser.add_argument_group("hardware")
    group.add_argument(
        "--precision",
        choices=INFERENCE_REQUESTS if int8 else REQUESTS,
        default="auto",
        help="auto (default): bf16 autocast where this machine runs it fast (a GPU with bf16; a CPU with native "
        "bf16 whose bf16 matmul beats fp32 in a quick check), else fp32; the choice is logged. fp16: CUDA only"
        + (", with loss scaling" if training else "")
        + (". int8: CPU only, linear layers quantized (faster, slightly different vectors)" if int8 else ""),
    )
    names = ("--fp16", "--amp") if amp_alias else ("--fp16",)
    group.add_argument(*names, dest="precision", action="store_const", const="fp16", help="= --precision fp16")
    group.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="= --precision bf16")
    group.add_argument("--no_cuda", action="store_true", help="run on the CPU even when a GPU is present")
    return group
