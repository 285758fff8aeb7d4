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

from dpr.configs import (
    AdapterConfig,
    BackboneConfig,
    ConfigError,
    HeadConfig,
    LoraConfig,
    PrefixConfig,
    PromptConfig,
    TuningConfig,
)
from dpr.models.adapters import AdapterSet, adapter_router
from dpr.models.lora import LoraSet, lora_router
from dpr.models.prefix import PrefixEncoder, PromptEncoder, prefix_cache, prompt_init_embeddings


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
    """A BERT encoder in one tuning mode, with an optional head (pooling, projection, normalisation).

    ``backbone`` may be shared with other encoders (frozen modes); only this encoder's prefix, prompt,
    adapters, LoRA deltas and projection are its own. ``head.pooling`` must already be resolved (cls or mean); without
    a head (ColBERT) the encoder gives token states only.
    """

    def __init__(
        self,
        backbone: BertModel,
        tuning: TuningConfig,
        head: HeadConfig | None = None,
        prompt_init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if head is not None and head.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be resolved to cls or mean, got {head.pooling!r}")
        self.tuning = tuning
        self.head = head
        self.backbone = backbone
        bert_config = backbone.config
        self.prefix: PrefixEncoder | None = None
        self.prompt: PromptEncoder | None = None
        self.adapters: AdapterSet | None = None
        self.lora: LoraSet | None = None
        if isinstance(tuning, PrefixConfig):
            self.prefix = PrefixEncoder(
                bert_config, tuning.pre_seq_len, tuning.prefix_mlp, tuning.prefix_hidden_size, tuning.prefix_dropout
            )
        elif isinstance(tuning, PromptConfig):
            self.prompt = PromptEncoder(bert_config.hidden_size, tuning.pre_seq_len, tuning.prompt_encoder, prompt_init)
        elif isinstance(tuning, AdapterConfig):
            self.adapters = AdapterSet(bert_config.hidden_size, bert_config.num_hidden_layers, tuning.adapter_size)
            adapter_router(backbone)
        elif isinstance(tuning, LoraConfig):
            self.lora = LoraSet(backbone, tuning)
            lora_router(backbone).install(self.lora.paths)
        projection_dim = head.projection_dim if head is not None else 0
        self.projection = nn.Linear(bert_config.hidden_size, projection_dim) if projection_dim > 0 else None

    @property
    def output_dim(self) -> int:
        return (self.head.projection_dim if self.head is not None else 0) or self.backbone.config.hidden_size

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
        with self._hooks():
            return self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    def _hooks(self) -> contextlib.AbstractContextManager:
        """Make this encoder's adapters or LoRA deltas the ones the shared backbone's hooks apply."""
        if self.adapters is not None:
            return adapter_router(self.backbone).use(self.adapters)
        if self.lora is not None:
            return lora_router(self.backbone).use(self.lora)
        return contextlib.nullcontext()

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
        if self.head is None:
            raise TypeError("this encoder has no head (pooling): use token_states")
        states = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        vectors = pool(states, attention_mask, self.head.pooling)  # (B, H)
        if self.projection is not None:
            vectors = self.projection(vectors)  # (B, D)
        if self.head.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)  # cosine models
        return vectors


def check_positions(backbone: BackboneConfig, tuning: TuningConfig, max_positions: int) -> None:
    """Refuse sequence lengths the backbone has no position embeddings for."""
    extra = tuning.virtual_tokens
    needed = backbone.sequence_length + extra
    if needed > max_positions:
        prompt = f" plus --pre_seq_len {extra} prompt tokens" if extra else ""
        raise ConfigError(
            f"--sequence_length {backbone.sequence_length}{prompt} needs {needed} positions but "
            f"the model has {max_positions}; pass --sequence_length {max_positions - extra} or less"
        )


def set_trainable(backbone: BertModel, method: str) -> None:
    """Backbone trainability per tuning mode: all (finetune), biases (bitfit), nothing (frozen modes)."""
    if method == "finetune":
        backbone.requires_grad_(True)
    elif method == "bitfit":
        for name, param in backbone.named_parameters():
            param.requires_grad_(name.endswith(".bias"))
    else:
        backbone.requires_grad_(False)


def build_tuned_encoder(
    backbone: BertModel,
    backbone_cfg: BackboneConfig,
    tuning: TuningConfig,
    head: HeadConfig | None = None,
    prompt_init_ids: list[int] | None = None,
) -> TunedEncoder:
    """The one encoder builder: check positions, set up checkpointing and trainability, init the prompt.

    ``backbone`` is used as loaded (its dropout settings stay); calling this again on the same backbone
    (a second side in a frozen mode) gives the same prompt start. ``prompt_init_ids``: token ids of
    ``--prompt_init_text`` (the caller tokenizes; models never do).
    """
    check_positions(backbone_cfg, tuning, backbone.config.max_position_embeddings)
    if backbone_cfg.gradient_checkpointing:
        # Non-reentrant checkpointing lets gradients reach a soft prompt fed through inputs_embeds.
        kwargs = {"use_reentrant": False}
        if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x name
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    set_trainable(backbone, tuning.method)
    prompt_init = None
    if isinstance(tuning, PromptConfig):
        prompt_init = prompt_init_embeddings(
            backbone.embeddings.word_embeddings.weight, prompt_init_ids, tuning.pre_seq_len
        )
    return TunedEncoder(backbone, tuning, head, prompt_init)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a shared backbone is counted once."""
    params = list(model.parameters())  # parameters() de-duplicates shared tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_report(model: nn.Module) -> str:
    trainable, total = parameter_counts(model)
    return f"trainable {trainable:,} of {total:,} parameters ({100.0 * trainable / max(total, 1):.2f}%)"
