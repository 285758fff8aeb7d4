"""P-tuning v2 deep prefixes and shallow soft prompts (Lester et al.; P-tuning v1 prompt encoders).

Both modules only produce tensors; the encoder decides where they enter the frozen backbone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.cache_utils import DynamicCache


class PrefixEncoder(nn.Module):
    """Per-layer key/value prefixes of length ``pre_seq_len``.

    Without the MLP: one embedding row per prefix position holding every layer's key and value,
    ``(P, layers * 2 * hidden)``. With ``prefix_mlp`` (the P-tuning v2 reparameterisation):
    ``Embedding(P, hidden) -> Linear(hidden, prefix_hidden) -> Tanh -> Linear(prefix_hidden, layers*2*hidden)``.
    """

    def __init__(
        self,
        config: BertConfig,
        pre_seq_len: int,
        prefix_mlp: bool = False,
        prefix_hidden_size: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pre_seq_len = pre_seq_len
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        out_dim = self.num_layers * 2 * config.hidden_size
        self.register_buffer("prefix_tokens", torch.arange(pre_seq_len), persistent=False)
        if prefix_mlp:
            self.embedding = nn.Embedding(pre_seq_len, config.hidden_size)
            self.trans: nn.Module | None = nn.Sequential(
                nn.Linear(config.hidden_size, prefix_hidden_size), nn.Tanh(), nn.Linear(prefix_hidden_size, out_dim)
            )
        else:
            self.embedding = nn.Embedding(pre_seq_len, out_dim)
            self.trans = None
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return one ``(key, value)`` pair per layer, each ``(batch, heads, P, head_dim)``."""
        prefix = self.embedding(self.prefix_tokens)  # (P, hidden) or (P, L*2*hidden)
        if self.trans is not None:
            prefix = self.trans(prefix)  # (P, L*2*hidden)
        prefix = self.dropout(prefix)
        prefix = prefix.view(self.pre_seq_len, self.num_layers * 2, self.num_heads, self.head_dim)
        prefix = prefix.permute(1, 2, 0, 3)  # (L*2, heads, P, head_dim)
        prefix = prefix.unsqueeze(1).expand(-1, batch_size, -1, -1, -1)  # (L*2, B, heads, P, head_dim)
        return [(prefix[2 * i], prefix[2 * i + 1]) for i in range(self.num_layers)]


def prefix_cache(key_values: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A fresh DynamicCache holding the prefixes (BertModel >= 4.54 rejects tuples).

    The cache is mutated in place by the forward pass, so a new one is built for every call.
    """
    cache = DynamicCache()
    for layer, (key, value) in enumerate(key_values):
        cache.update(key, value, layer)
    return cache


class PromptEncoder(nn.Module):
    """A soft prompt of ``pre_seq_len`` virtual token embeddings, ``(P, hidden)``.

    ``kind`` 'none' trains the embeddings directly (Lester et al.); 'lstm' and 'mlp' produce them
    through a P-tuning v1 prompt encoder. ``init`` (``(P, hidden)``, e.g. the word embeddings of a text
    or of sampled vocabulary tokens) sets the starting embeddings.
    """

    def __init__(
        self, hidden_size: int, pre_seq_len: int, kind: str = "none", init: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.pre_seq_len = pre_seq_len
        self.embedding = nn.Parameter(torch.empty(pre_seq_len, hidden_size))
        if init is not None:
            if init.shape != (pre_seq_len, hidden_size):
                raise ValueError(f"prompt init has shape {tuple(init.shape)}, expected {(pre_seq_len, hidden_size)}")
            with torch.no_grad():
                self.embedding.copy_(init)
        else:
            nn.init.normal_(self.embedding, std=0.02)
        self.kind = kind
        if kind == "lstm":
            self.lstm: nn.LSTM | None = nn.LSTM(
                hidden_size, hidden_size // 2, num_layers=2, bidirectional=True, batch_first=True
            )
            self.head: nn.Module | None = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size)
            )
        elif kind == "mlp":
            self.lstm = None
            self.head = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size)
            )
        elif kind == "none":
            self.lstm, self.head = None, None
        else:
            raise ValueError(f"unknown prompt encoder {kind!r}; expected none, lstm or mlp")

    def forward(self) -> torch.Tensor:
        """Return the prompt embeddings ``(P, hidden)``."""
        prompt = self.embedding  # (P, hidden)
        if self.lstm is not None:
            prompt = self.lstm(prompt.unsqueeze(0))[0].squeeze(0)  # (P, hidden)
        if self.head is not None:
            prompt = self.head(prompt)  # (P, hidden)
        return prompt


def prompt_init_embeddings(
    word_embeddings: torch.Tensor, token_ids: list[int] | None, pre_seq_len: int, seed: int = 0
) -> torch.Tensor:
    """Starting prompt embeddings ``(P, hidden)`` taken from the frozen word embeddings ``(V, hidden)``.

    With ``token_ids`` (a tokenized init text) they are repeated or cut to ``pre_seq_len``; without,
    rows of sampled vocabulary tokens are used (Lester et al. found vocabulary init better than random).
    """
    if token_ids:
        reps = -(-pre_seq_len // len(token_ids))
        chosen = torch.tensor((token_ids * reps)[:pre_seq_len])
    else:
        generator = torch.Generator().manual_seed(seed)
        # Skip the first 1000 ids: in BERT vocabularies they are [PAD], [unused*] and special tokens.
        low = min(1000, word_embeddings.shape[0] - 1)
        chosen = torch.randint(low, word_embeddings.shape[0], (pre_seq_len,), generator=generator)
    return word_embeddings[chosen].detach().clone()
