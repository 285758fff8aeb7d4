"""Saving and loading the tuned weights of a bi-encoder (safetensors, strict key checks)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertModel

from dpr.errors import UserError

BACKBONE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
)


class CheckpointMismatchError(UserError, ValueError):
    """The weights in a file do not fit the model built from its config."""


def backbone_fingerprint(backbone: BertModel) -> dict[str, object]:
    """The backbone's shape, stored in checkpoints to catch a checkpoint applied to another backbone."""
    return {name: getattr(backbone.config, name) for name in BACKBONE_FIELDS}


def check_backbone(stored: dict[str, object], backbone: BertModel, source: str) -> None:
    found = backbone_fingerprint(backbone)
    diffs = [
        f"{k}: checkpoint {stored[k]!r}, backbone {found[k]!r}"
        for k in BACKBONE_FIELDS
        if k in stored and stored[k] != found[k]
    ]
    if diffs:
        raise CheckpointMismatchError(f"{source} was trained on another backbone ({'; '.join(diffs)})")


def tuned_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the tuning mode trains (not the frozen backbone), as contiguous CPU tensors."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().to("cpu").contiguous() for name in model.tuned_names}


def save_tuned_weights(model: nn.Module, path: str) -> None:
    save_file(tuned_state_dict(model), path, metadata={"format": "pt"})


def load_tuned_weights(model: nn.Module, path: str) -> None:
    """Load a file written by save_tuned_weights into any model with ``tuned_names`` (BiEncoder, ColBERT);
    every tuned parameter must be there, nothing else, with the same shapes."""
    state = load_file(path)
    expected = set(model.tuned_names)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{path} does not fit this {type(model).__name__} ({len(expected)} tuned parameters): missing "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in model.tuned_names:
            if params[name].shape != state[name].shape:
                raise CheckpointMismatchError(
                    f"{path}: {name} has shape {tuple(state[name].shape)}, "
                    f"the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(state[name])
