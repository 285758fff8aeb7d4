"""One text encoder: a BERT backbone (possibly shared and frozen) plus its tuned parameters.

The encoder takes token tensors and returns one vector per text (``forward``) or the states of the real
tokens (``token_states``, used by ColBERT). It never tokenizes and never computes a loss.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch import nn
from transformers import BertModel

from dpr.models.adapters import AdapterSet, adapter_router
from dpr.models.prefix import PrefixEncoder, PromptEncoder, prefix_cache
from dpr.options import EncoderConfig


def pool(states: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ``(B, T, H)`` into ``(B, H)``: the [CLS] state, or the mean over real tokens."""
    if mode == "cls":
        return states[:, 0]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
    raise ValueError(f"unknown pooling {mode!r}; expected cls or mean")


@functools.lru_cache(maxsize=None)
def cache_argument(model_class: type) -> str:
    """The name under which ``model_class.forward`` takes a key/value cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40);
    older releases only know ``past_key_values``. Asking the signature works across the whole range.
    """
    parameters = inspect.signature(model_class.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise TypeError(
        f"{model_class.__name__}.forward takes neither cache nor past_key_values: prefix tuning needs one of them"
    )


def prefixed_forward(
    backbone: BertModel,
    key_values: list[tuple[torch.Tensor, torch.Tensor]],
    prefix_mask: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
) -> torch.Tensor:
    """Run the backbone with per-layer prefixes ``(B, heads, P, head_dim)`` in front of every attention.

    ``prefix_mask`` ``(B, P)`` says which prefix positions are visible (ones in training and inference).
    Returns the real tokens' states ``(B, T, H)``.
    """
    batch, length = input_ids.shape
    # Explicit positions: without them BERT would start the real tokens at position P.
    positions = torch.arange(length, device=input_ids.device).expand(batch, length)
    out = backbone(
        input_ids=input_ids,
        attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),  # (B, P+T)
        token_type_ids=token_type_ids,
        position_ids=positions,
        **{cache_argument(type(backbone)): prefix_cache(key_values)},
    )
    return out.last_hidden_state


class TunedEncoder(nn.Module):
    """A BERT encoder in one tuning mode.

    ``backbone`` may be shared with other encoders (frozen modes); only this encoder's prefix, prompt,
    adapters and projection are its own. ``config.pooling`` must already be resolved (cls or mean).
    """

    def __init__(self, backbone: BertModel, config: EncoderConfig, prompt_init: torch.Tensor | None = None) -> None:
        super().__init__()
        if config.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be resolved to cls or mean, got {config.pooling!r}")
        self.config = config
        self.backbone = backbone
        bert_config = backbone.config
        self.prefix: PrefixEncoder | None = None
        self.prompt: PromptEncoder | None = None
        self.adapters: AdapterSet | None = None
        if config.tuning == "prefix":
            self.prefix = PrefixEncoder(
                bert_config, config.pre_seq_len, config.prefix_mlp, config.prefix_hidden_size, config.prefix_dropout
            )
        elif config.tuning == "prompt":
            self.prompt = PromptEncoder(bert_config.hidden_size, config.pre_seq_len, config.prompt_encoder, prompt_init)
        elif config.tuning == "adapter":
            self.adapters = AdapterSet(bert_config.hidden_size, bert_config.num_hidden_layers, config.adapter_size)
            adapter_router(backbone)
        self.projection = (
            nn.Linear(bert_config.hidden_size, config.projection_dim) if config.projection_dim > 0 else None
        )

    @property
    def output_dim(self) -> int:
        return self.config.projection_dim or self.backbone.config.hidden_size

    def token_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states of the real tokens, ``(B, T, H)`` for inputs ``(B, T)``.

        Prefix and prompt positions never appear in the output, so [CLS] stays at index 0.
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if self.prefix is not None:
            return self._prefix_states(input_ids, attention_mask, token_type_ids)
        if self.prompt is not None:
            return self._prompt_states(input_ids, attention_mask, token_type_ids)
        context = (
            adapter_router(self.backbone).use(self.adapters) if self.adapters is not None else contextlib.nullcontext()
        )
        with context:
            return self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    def _prefix_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        assert self.prefix is not None
        prefix_mask = attention_mask.new_ones(input_ids.shape[0], self.prefix.pre_seq_len)
        return prefixed_forward(
            self.backbone, self.prefix(input_ids.shape[0]), prefix_mask, input_ids, attention_mask, token_type_ids
        )

    def _prompt_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        assert self.prompt is not None
        batch = input_ids.shape[0]
        length = self.prompt.pre_seq_len
        words = self.backbone.embeddings.word_embeddings(input_ids)  # (B, T, H)
        prompt = self.prompt().to(words.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, P, H)
        # The virtual tokens take positions 0..P-1 (Lester et al.); the real tokens follow them.
        out = self.backbone(
            inputs_embeds=torch.cat([prompt, words], dim=1),  # (B, P+T, H)
            attention_mask=torch.cat([attention_mask.new_ones(batch, length), attention_mask], dim=1),
            token_type_ids=torch.cat([token_type_ids.new_zeros(batch, length), token_type_ids], dim=1),
        )
        return out.last_hidden_state[:, length:]  # (B, T, H)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode ``(B, T)`` token tensors into ``(B, D)`` vectors."""
        states = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        vectors = pool(states, attention_mask, self.config.pooling)  # (B, H)
        if self.projection is not None:
            vectors = self.projection(vectors)  # (B, D)
        if self.config.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)  # cosine models
        return vectors


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a shared backbone is counted once."""
    params = list(model.parameters())  # parameters() de-duplicates shared tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_report(model: nn.Module) -> str:
    trainable, total = parameter_counts(model)
    return f"trainable {trainable:,} of {total:,} parameters ({100.0 * trainable / max(total, 1):.2f}%)"
