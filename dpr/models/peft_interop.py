"""Hugging Face PEFT interop: one side's P-tuning v2 prefix <-> a PEFT prefix-tuning adapter folder.

(LoRA adapters: :mod:`dpr.models.peft_lora`, on the folder helpers and errors of this module.)

A PEFT prefix-tuning adapter (``PrefixTuningConfig``, ``task_type="FEATURE_EXTRACTION"``, applied to a
``BertModel``) is a folder with ``adapter_config.json`` and ``adapter_model.safetensors``. The weights
file holds ONE tensor, ``prompt_embeddings`` of shape ``(P, num_layers * 2 * hidden)``: the flattened
per-layer key/value prefix. That is exactly our ``prefix.embedding.weight`` without ``--prefix_mlp``,
in the same layout: both reshape it to ``(P, 2L, heads, head_dim)`` and give layer ``i`` rows ``2i``
(key) and ``2i + 1`` (value), so the mapping is the identity::

    ours  <side>_encoder.prefix.embedding.weight  (P, 2*L*H)   <->   PEFT  prompt_embeddings  (P, 2*L*H)
    pre_seq_len / num_layers / hidden / heads      <->   num_virtual_tokens / num_layers / token_dim /
                                                           num_attention_heads

With ``--prefix_mlp`` (PEFT: ``prefix_projection``) the trained parameters are an embedding and an MLP,
but what the model uses is the MLP's output, and PEFT itself saves only that flattened output. We do
the same: export evaluates the MLP once (no dropout) and writes its output with
``prefix_projection: false``, so PEFT loads it for inference and training alike; importing gives a
plain prefix (no MLP) whose keys and values, and so whose embeddings, are the same. The MLP weights
cannot be recovered from its output.

Positions (why PEFT's vectors differ from ours by default): PEFT's ``PeftModelForFeatureExtraction``
passes the prefix as ``past_key_values`` and no ``position_ids``, so ``BertModel`` numbers the real tokens
from the cache length: positions ``P .. P+T-1``. We pass explicit positions ``0 .. T-1``, as P-tuning
v2 meant ([CLS] is token 0 at position 0; the prefix is keys/values, not tokens). The two give the same
vectors once positions agree: PEFT (>= 0.21) adds ``P`` to ``position_ids`` a caller passes, so passing
:func:`peft_position_ids` (``arange(T) - P``) reproduces our embeddings exactly, and our backbone run
with positions ``P .. P+T-1`` reproduces PEFT's default output exactly (both pinned by tests). A prefix
TRAINED with PEFT saw shifted positions; imported here it runs with ours, which changes its vectors.
PEFT also drops ``token_type_ids`` for prompt learning; questions use segment 0 only, so nothing is
lost there, but titled passages (``[CLS] title [SEP] text [SEP]``, segments 0 then 1) differ.

Not representable in a PEFT prefix adapter, hence refused on export: a ``--projection_dim`` layer,
and the prompt / adapter modes (LoRA has its own format). Pooling (cls or mean) is not part of PEFT's
format; our own settings travel in a side file, ``dpr_encoder.json``, which PEFT ignores and import reads.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dpr.atomic import atomic_directory
from dpr.data.files import read_json_file
from dpr.models.encoder import TunedEncoder
from dpr.models.prefix import PrefixEncoder
from dpr.models.serialization import CheckpointMismatchError

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR_FILE = "dpr_encoder.json"
PEFT_KEY = "prompt_embeddings"
SIDECAR_FORMAT = "dpr-ptv2-peft-export"
TASK_TYPE = "FEATURE_EXTRACTION"


class PeftAdapterError(CheckpointMismatchError):
    """A PEFT adapter folder we cannot read or that does not fit the encoder; names the file and the value."""


@dataclass(frozen=True)
class PeftPrefix:
    """A PEFT prefix-tuning adapter as read from its folder (``prompt_embeddings``: ``(P, 2*L*H)``)."""

    path: str
    num_virtual_tokens: int
    num_layers: int
    token_dim: int
    num_attention_heads: int
    prompt_embeddings: torch.Tensor
    base_model_name_or_path: str | None
    sidecar: dict[str, Any] | None  # our dpr_encoder.json when we exported it, else None


def flat_prefix(prefix: PrefixEncoder) -> torch.Tensor:
    """The key/value prefix every layer sees, flattened: ``(P, num_layers * 2 * hidden)`` float32 on CPU.

    The embedding itself, or the MLP's output with ``--prefix_mlp``; never dropout (this is what the
    encoder uses at inference).
    """
    with torch.no_grad():
        flat = prefix.embedding.weight  # (P, 2LH) or (P, H)
        if prefix.trans is not None:
            flat = prefix.trans(flat)  # (P, 2LH)
        return flat.detach().to("cpu", torch.float32).contiguous().clone()


def peft_adapter_config(encoder: TunedEncoder, base_model_name: str | None) -> dict[str, Any]:
    """``adapter_config.json`` of the prefix of ``encoder``: PEFT's PrefixTuningConfig fields.

    Only fields PEFT has read for a long time are written, so older PEFT versions load it too.
    """
    assert encoder.prefix is not None
    bert = encoder.backbone.config
    return {
        "peft_type": "PREFIX_TUNING",
        "task_type": TASK_TYPE,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name,
        "revision": None,
        "num_virtual_tokens": encoder.prefix.pre_seq_len,
        "token_dim": bert.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": bert.num_attention_heads,
        "num_layers": bert.num_hidden_layers,
        "encoder_hidden_size": bert.hidden_size,
        # The MLP (if any) is already applied in the exported tensor: see the module docstring.
        "prefix_projection": False,
    }


def write_peft_adapter(
    encoder: TunedEncoder, folder: str, base_model_name: str | None = None, sidecar: dict[str, Any] | None = None
) -> str:
    """Write ``encoder``'s prefix as a PEFT prefix-tuning adapter folder (atomically); returns ``folder``.

    ``sidecar`` (our encoder settings) is written to ``dpr_encoder.json`` beside PEFT's two files.
    Raises PeftAdapterError for an encoder PEFT's prefix format cannot represent.
    """
    if encoder.prefix is None:
        raise PeftAdapterError(
            f"PEFT export needs a --prefix or --lora encoder; this one is "
            f"{encoder.tuning.method} (prompt and adapter tuning have no PEFT form here)"
        )
    if encoder.projection is not None:
        raise PeftAdapterError(
            f"the encoder has a --projection_dim {encoder.head.projection_dim} layer after "
            f"pooling; a PEFT prefix adapter holds only the prefix, so its vectors would "
            f"differ: export is refused"
        )
    with atomic_directory(folder) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(peft_adapter_config(encoder, base_model_name), handle, indent=2, sort_keys=True)
        save_file({PEFT_KEY: flat_prefix(encoder.prefix)}, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        write_sidecar(tmp, sidecar)
    logger.info("wrote PEFT prefix adapter (%d virtual tokens) to %s", encoder.prefix.pre_seq_len, folder)
    return folder


def write_sidecar(folder: str, sidecar: dict[str, Any] | None) -> None:
    """Write our encoder settings as ``dpr_encoder.json`` in an adapter folder (nothing when ``sidecar`` is None)."""
    if sidecar is not None:
        with open(os.path.join(folder, SIDECAR_FILE), "w", encoding="utf-8") as handle:
            json.dump({"format": SIDECAR_FORMAT, "version": 1, **sidecar}, handle, indent=2, sort_keys=True)


def read_sidecar(folder: str) -> dict[str, Any] | None:
    """The ``dpr_encoder.json`` of an adapter folder we exported, or None when it has none (PEFT's own folders)."""
    path = os.path.join(folder, SIDECAR_FILE)
    if not os.path.isfile(path):
        return None
    sidecar = read_adapter_json(path)
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise PeftAdapterError(f"{path}: format {sidecar.get('format')!r}, expected {SIDECAR_FORMAT!r}")
    return sidecar


def read_adapter_json(path: str) -> dict[str, Any]:
    data = read_json_file(path, error=PeftAdapterError)
    if not isinstance(data, dict):
        raise PeftAdapterError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _int_field(config: dict[str, Any], key: str, path: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PeftAdapterError(f"{path}: {key!r} must be a positive integer, found {value!r}")
    return value


def _check_config(config: dict[str, Any], path: str) -> None:
    if config.get("peft_type") != "PREFIX_TUNING":
        raise PeftAdapterError(
            f"{path}: peft_type {config.get('peft_type')!r}, expected 'PREFIX_TUNING' "
            f"(only prefix-tuning adapters map onto our --prefix encoders; LORA ones onto --lora, dpr.models.peft_lora)"
        )
    if config.get("task_type") not in (TASK_TYPE, None):
        # The tensor layout is the same for every BERT task head; only the head itself is not imported.
        logger.warning("%s: task_type %r; importing its prefix for feature extraction", path, config["task_type"])
    if config.get("num_transformer_submodules", 1) != 1:
        raise PeftAdapterError(
            f"{path}: num_transformer_submodules {config['num_transformer_submodules']}, "
            f"expected 1 (an encoder-only BERT)"
        )


def adapter_files(folder: str) -> tuple[str, str]:
    """``(adapter_config.json, adapter_model.safetensors)`` of a PEFT adapter folder; PeftAdapterError if missing."""
    config_path, weights_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(config_path):
        raise PeftAdapterError(f"{folder} is not a PEFT adapter folder: no {CONFIG_FILE}")
    if not os.path.isfile(weights_path):
        pickle_hint = (
            " (only adapter_model.bin, a pickle, which is never loaded here: re-save it with safe_serialization=True)"
            if os.path.isfile(os.path.join(folder, "adapter_model.bin"))
            else ""
        )
        raise PeftAdapterError(f"{weights_path}: missing{pickle_hint}")
    return config_path, weights_path


def peft_type(folder: str) -> str:
    """The ``peft_type`` of a PEFT adapter folder (``PREFIX_TUNING``, ``LORA``, ...), checked to be a string."""
    config_path, _ = adapter_files(folder)
    value = read_adapter_json(config_path).get("peft_type")
    if not isinstance(value, str):
        raise PeftAdapterError(f"{config_path}: peft_type {value!r}, expected 'PREFIX_TUNING' or 'LORA'")
    return value


def read_peft_adapter(folder: str) -> PeftPrefix:
    """Read and validate a PEFT prefix-tuning adapter folder; every error names the file and the value."""
    config_path, weights_path = adapter_files(folder)
    config = read_adapter_json(config_path)
    _check_config(config, config_path)
    fields = {
        k: _int_field(config, k, config_path)
        for k in ("num_virtual_tokens", "num_layers", "token_dim", "num_attention_heads")
    }
    if fields["token_dim"] % fields["num_attention_heads"]:
        raise PeftAdapterError(
            f"{config_path}: token_dim {fields['token_dim']} is not a multiple of "
            f"num_attention_heads {fields['num_attention_heads']}"
        )
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise PeftAdapterError(f"{weights_path}: not a readable safetensors file ({err})") from err
    if set(state) != {PEFT_KEY}:
        raise PeftAdapterError(f"{weights_path}: expected exactly the key {PEFT_KEY!r}, found {sorted(state)}")
    tensor = state[PEFT_KEY]
    flat = fields["num_layers"] * 2 * fields["token_dim"]
    expected = (fields["num_virtual_tokens"], flat)
    if tuple(tensor.shape) != expected:
        what = (
            " (the virtual-token embeddings of a prefix_projection adapter without its MLP weights, "
            "which cannot be imported)"
            if config.get("prefix_projection") and tensor.shape[-1] != flat
            else ""
        )
        raise PeftAdapterError(
            f"{weights_path}: {PEFT_KEY} has shape {tuple(tensor.shape)}, {CONFIG_FILE} implies {expected}{what}"
        )
    if config.get("prefix_projection"):
        logger.info("%s: prefix_projection adapter saved by PEFT as its MLP output; imported as a plain prefix", folder)
    sidecar = read_sidecar(folder)
    return PeftPrefix(
        path=folder,
        prompt_embeddings=tensor.to(torch.float32),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        sidecar=sidecar,
        **fields,
    )


def load_peft_prefix(encoder: TunedEncoder, adapter: PeftPrefix) -> None:
    """Copy an adapter's ``prompt_embeddings`` into ``encoder``'s plain (no-MLP) prefix, checking shapes.

    Raises PeftAdapterError naming both values when the adapter was made for another backbone shape or
    prefix length, or when the encoder's prefix uses an MLP (a flat prefix has no MLP parameters).
    """
    if encoder.prefix is None or encoder.prefix.trans is not None:
        found = "a --prefix_mlp prefix" if encoder.prefix is not None else f"a {encoder.tuning.method} encoder"
        raise PeftAdapterError(
            f"{adapter.path}: a PEFT prefix loads into a plain --prefix encoder (no --prefix_mlp), found {found}"
        )
    bert = encoder.backbone.config
    pairs = [
        ("num_layers", adapter.num_layers, "num_hidden_layers", bert.num_hidden_layers),
        ("token_dim", adapter.token_dim, "hidden_size", bert.hidden_size),
        ("num_attention_heads", adapter.num_attention_heads, "num_attention_heads", bert.num_attention_heads),
        ("num_virtual_tokens", adapter.num_virtual_tokens, "pre_seq_len", encoder.prefix.pre_seq_len),
    ]
    diffs = [f"{ours}: adapter {a!r}, encoder {b!r}" for _, a, ours, b in pairs if a != b]
    if diffs:
        raise PeftAdapterError(
            f"{os.path.join(adapter.path, CONFIG_FILE)} does not fit this encoder ({'; '.join(diffs)})"
        )
    with torch.no_grad():
        weight = encoder.prefix.embedding.weight
        weight.copy_(adapter.prompt_embeddings.to(weight.device, weight.dtype))


def peft_position_ids(input_ids: torch.Tensor, pre_seq_len: int) -> torch.Tensor:
    """``position_ids`` to pass to a PEFT (>= 0.21) prefix model so it reproduces our vectors: ``(B, T)``.

    PEFT adds ``pre_seq_len`` to the ``position_ids`` it is given; ``arange(T) - P`` then becomes our
    ``0 .. T-1``. (Without them PEFT's real tokens sit at ``P .. P+T-1``; see the module docstring.)
    """
    batch, length = input_ids.shape
    return (torch.arange(length, device=input_ids.device) - pre_seq_len).expand(batch, length)
