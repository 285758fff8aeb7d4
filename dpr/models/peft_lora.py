"""Hugging Face PEFT interop for LoRA: one side's LoRA deltas <-> a PEFT LoRA adapter folder.

A PEFT LoRA adapter (``LoraConfig``, ``task_type="FEATURE_EXTRACTION"``, applied to a ``BertModel``) is a folder
with ``adapter_config.json`` (``peft_type: LORA``, ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``)
and ``adapter_model.safetensors`` holding two tensors per adapted linear layer::

    ours  <side>_encoder.lora.deltas.<path with __>.A.weight  (r, in)   <->  base_model.model.<path>.lora_A.weight
    ours  <side>_encoder.lora.deltas.<path with __>.B.weight  (out, r)  <->  base_model.model.<path>.lora_B.weight

PEFT's forward is ours: ``W x + lora_B(lora_A(dropout(x))) * lora_alpha / r``, so the vectors agree to float
rounding, with no position or segment caveat (unlike prefixes, see :mod:`dpr.models.peft_interop`).

Export writes ``target_modules`` as the exact list of adapted module paths (PEFT matches an entry against the
whole name or its last components), so PEFT adapts exactly our layers on any BERT, with or without a pooler.
Import reads the adapted layers from the weight keys; ``lora_target`` becomes their last names, and a layer it
selects that the adapter left out (PEFT's ``layers_to_transform``) gets ``B = 0``, the identity. Pooler layers
are ignored (our backbones have none; the pooler never reaches our vectors). Refused, as not representable:
rsLoRA, DoRA, trained biases, per-layer ranks or alphas, ``modules_to_save``, and a ``--projection_dim`` layer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dpr.atomic import atomic_directory
from dpr.models.encoder import TunedEncoder
from dpr.models.lora import EXCLUDED_PREFIXES
from dpr.models.peft_interop import (
    CONFIG_FILE,
    TASK_TYPE,
    WEIGHTS_FILE,
    PeftAdapterError,
    adapter_files,
    read_adapter_json,
    read_sidecar,
    write_sidecar,
)

logger = logging.getLogger(__name__)

_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
# PEFT LoraConfig fields whose non-default values change the forward pass in ways ours cannot.
_REFUSED = {
    "use_rslora": False,
    "use_dora": False,
    "bias": "none",
    "lora_bias": False,
    "fan_in_fan_out": False,
}


@dataclass(frozen=True)
class PeftLora:
    """A PEFT LoRA adapter as read from its folder: ``weights[path] = (A (r, in), B (out, r))``."""

    path: str
    r: int
    lora_alpha: float
    lora_dropout: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    base_model_name_or_path: str | None
    sidecar: dict[str, Any] | None  # our dpr_encoder.json when we exported it, else None

    @property
    def targets(self) -> tuple[str, ...]:
        """The last names of the adapted layers (``query``, ``dense``, ...): our ``lora_target``."""
        return tuple(dict.fromkeys(path.rsplit(".", 1)[-1] for path in self.weights))


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def lora_adapter_config(encoder: TunedEncoder, base_model_name: str | None) -> dict[str, Any]:
    """``adapter_config.json`` of ``encoder``'s LoRA deltas: PEFT LoraConfig fields (long-standing ones only)."""
    assert encoder.lora is not None
    tuning = encoder.tuning
    alpha = tuning.lora_alpha
    return {
        "peft_type": "LORA",
        "task_type": TASK_TYPE,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name,
        "revision": None,
        "r": tuning.lora_r,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": tuning.lora_dropout,
        "target_modules": list(encoder.lora.paths),  # exact paths: see the module docstring
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def lora_state_dict(encoder: TunedEncoder) -> dict[str, torch.Tensor]:
    """``encoder``'s deltas under PEFT's key names, float32 on the CPU."""
    assert encoder.lora is not None
    state = {}
    for path in encoder.lora.paths:
        delta = encoder.lora.delta(path)
        for name, linear in (("A", delta.A), ("B", delta.B)):
            tensor = linear.weight.detach().to("cpu", torch.float32).contiguous().clone()
            state[f"base_model.model.{path}.lora_{name}.weight"] = tensor
    return state


def write_lora_adapter(
    encoder: TunedEncoder, folder: str, base_model_name: str | None = None, sidecar: dict[str, Any] | None = None
) -> str:
    """Write ``encoder``'s LoRA deltas as a PEFT LoRA adapter folder (atomically); returns ``folder``."""
    if encoder.lora is None:
        raise PeftAdapterError(f"PEFT LoRA export needs a --lora encoder; this one is {encoder.tuning.method}")
    if encoder.projection is not None:
        raise PeftAdapterError(
            f"the encoder has a --projection_dim {encoder.head.projection_dim} layer after pooling; a PEFT "
            f"LoRA adapter holds only the deltas, so its vectors would differ: export is refused"
        )
    with atomic_directory(folder) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(lora_adapter_config(encoder, base_model_name), handle, indent=2, sort_keys=True)
        save_file(lora_state_dict(encoder), os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        write_sidecar(tmp, sidecar)
    logger.info(
        "wrote PEFT LoRA adapter (%d layers, r %d) to %s", len(encoder.lora.paths), encoder.tuning.lora_r, folder
    )
    return folder


def _check_lora_config(config: dict[str, Any], path: str) -> tuple[int, float, float]:
    """(r, lora_alpha, lora_dropout) of a PEFT LoRA adapter_config.json; PeftAdapterError for what we cannot run."""
    r, alpha, dropout = config.get("r"), _number(config.get("lora_alpha")), _number(config.get("lora_dropout", 0.0))
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise PeftAdapterError(f"{path}: 'r' must be a positive integer, found {config.get('r')!r}")
    if not 0 < alpha < float("inf"):
        raise PeftAdapterError(f"{path}: 'lora_alpha' must be a positive number, found {config.get('lora_alpha')!r}")
    if not 0 <= dropout < 1:
        raise PeftAdapterError(f"{path}: 'lora_dropout' must be in [0, 1), found {config.get('lora_dropout')!r}")
    for key, default in _REFUSED.items():
        if config.get(key, default) not in (default, None):
            raise PeftAdapterError(f"{path}: {key} {config[key]!r} is not supported here (only {default!r})")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save"):
        if config.get(key):
            raise PeftAdapterError(f"{path}: {key} {config[key]!r} is not supported here (one r and alpha throughout)")
    if config.get("task_type") not in (TASK_TYPE, None):
        logger.warning("%s: task_type %r; importing its LoRA deltas for feature extraction", path, config["task_type"])
    return r, float(alpha), float(dropout)


def _pairs(state: dict[str, torch.Tensor], r: int, weights_path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT keys -> ``{module path: (A, B)}``, checking names and ranks; pooler layers dropped."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise PeftAdapterError(
                f"{weights_path}: key {key!r} is not a LoRA weight of a linear layer "
                f"(expected base_model.model.<module>.lora_A.weight / lora_B.weight)"
            )
        found.setdefault(match[1], {})[match[2]] = tensor.to(torch.float32)
    ignored = sorted(path for path in found if path.startswith(EXCLUDED_PREFIXES))
    if ignored:
        logger.info("%s: ignoring the LoRA weights of %s (they never reach a vector)", weights_path, ignored)
    pairs = {}
    for path, parts in found.items():
        if path in ignored:
            continue
        if set(parts) != {"A", "B"}:
            raise PeftAdapterError(f"{weights_path}: {path} has lora_{''.join(sorted(parts))} only, expected A and B")
        a, b = parts["A"], parts["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise PeftAdapterError(
                f"{weights_path}: {path} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                f"expected (r, in) and (out, r) with r = {r}"
            )
        pairs[path] = (a, b)
    if not pairs:
        raise PeftAdapterError(f"{weights_path}: no LoRA weights of an encoder layer")
    return pairs


def read_lora_adapter(folder: str) -> PeftLora:
    """Read and validate a PEFT LoRA adapter folder; every error names the file and the value."""
    config_path, weights_path = adapter_files(folder)
    config = read_adapter_json(config_path)
    if config.get("peft_type") != "LORA":
        raise PeftAdapterError(f"{config_path}: peft_type {config.get('peft_type')!r}, expected 'LORA'")
    r, alpha, dropout = _check_lora_config(config, config_path)
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise PeftAdapterError(f"{weights_path}: not a readable safetensors file ({err})") from err
    sidecar = read_sidecar(folder)
    return PeftLora(
        path=folder,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        weights=_pairs(state, r, weights_path),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        sidecar=sidecar,
    )


def load_peft_lora(encoder: TunedEncoder, adapter: PeftLora) -> None:
    """Copy an adapter's deltas into ``encoder``'s LoRA set; layers it left out get ``B = 0`` (the identity).

    Raises PeftAdapterError naming both values for another rank or alpha, a layer ours does not adapt, or
    shapes of another backbone.
    """
    config_path = os.path.join(adapter.path, CONFIG_FILE)
    if encoder.lora is None:
        raise PeftAdapterError(
            f"{adapter.path}: a PEFT LoRA adapter loads into a --lora encoder, found {encoder.tuning.method}"
        )
    tuning = encoder.tuning
    if (adapter.r, adapter.lora_alpha) != (tuning.lora_r, tuning.lora_alpha):
        raise PeftAdapterError(
            f"{config_path} does not fit this encoder (r: adapter {adapter.r}, encoder {tuning.lora_r}; "
            f"lora_alpha: adapter {adapter.lora_alpha:g}, encoder {tuning.lora_alpha:g})"
        )
    unknown = sorted(set(adapter.weights) - set(encoder.lora.paths))
    if unknown:
        raise PeftAdapterError(f"{adapter.path}: layers {unknown[:3]} are not adapted by this encoder (or not in it)")
    with torch.no_grad():
        for path in encoder.lora.paths:
            delta = encoder.lora.delta(path)
            if path not in adapter.weights:
                logger.info("%s: no LoRA weights for %s; it stays the identity", adapter.path, path)
                delta.B.weight.zero_()
                continue
            for linear, tensor in zip((delta.A, delta.B), adapter.weights[path]):
                if tuple(tensor.shape) != tuple(linear.weight.shape):
                    raise PeftAdapterError(
                        f"{adapter.path}: {path} has shape {tuple(tensor.shape)} in the adapter, "
                        f"{tuple(linear.weight.shape)} in the encoder (another backbone?)"
                    )
                linear.weight.copy_(tensor.to(linear.weight.device, linear.weight.dtype))
