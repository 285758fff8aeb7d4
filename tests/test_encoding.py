"""The shared inference loop: length-sorted batches give the same vectors, in input order, as one by one."""

import numpy as np
import pytest
import torch

from dpr.configs import BiEncoderConfig
from dpr.data.readers import Passage
from dpr.encoding import encode_sorted, encode_texts
from dpr.models.biencoder import build_biencoder
from dpr.models.hub import load_tokenizer

WORDS = "retrieval dense passage prefix tuning encoder question answer corpus index vector".split()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    model = build_biencoder(
        BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny", tuning="prefix", sequence_length=64)
    )
    return model, load_tokenizer("bert-tiny")


def _passages(n: int) -> list[Passage]:
    # lengths 1..n words in a shuffled order, so sorting really reorders them
    order = np.random.default_rng(0).permutation(n)
    return [
        Passage(
            text=" ".join(WORDS[j % len(WORDS)] for j in range(i + 1)) * 3,
            title=f"title {i}" if i % 2 else "",
            passage_id=str(i),
        )
        for i in order
    ]


def test_sorted_batches_equal_one_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    passages = _passages(11)
    batched = encode_texts(
        model, tokenizer, passages, "passage", max_length=64, batch_size=4, sort_window=6
    )  # (11, 128)
    single = np.concatenate(
        [encode_texts(model, tokenizer, [p], "passage", max_length=64, batch_size=1) for p in passages]
    )  # (11, 128)
    assert batched.shape == (11, 128) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_questions_side_and_mode_restored(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    questions = ["who wrote it?", "a much longer question about dense passage retrieval and prefixes", "why"]
    model.train()
    batched = encode_texts(model, tokenizer, questions, "question", max_length=32, batch_size=2)
    assert model.training, "the caller's training mode must be restored"
    single = np.concatenate(
        [encode_texts(model, tokenizer, [q], "question", max_length=32, batch_size=1) for q in questions]
    )
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_input_order_and_trimmed_padding():
    # a fake encoder that returns (row length, first token): checks order and per-batch trimming exactly
    items = [5, 1, 7, 3, 3, 9, 2]
    widths = []

    def tokenize(chunk):
        width = max(chunk)
        ids = torch.tensor([[n] * n + [0] * (width - n) for n in chunk])  # (W, T)
        return {"input_ids": ids, "attention_mask": (ids > 0).long(), "token_type_ids": torch.zeros_like(ids)}

    def encode(ids, mask, segments):
        widths.append(ids.shape[1])
        return torch.stack([mask.sum(1).float(), ids[:, 0].float()], dim=1)  # (B, 2)

    out = encode_sorted(encode, tokenize, items, batch_size=2, sort_window=4)
    np.testing.assert_array_equal(out, np.array([[n, n] for n in items], dtype=np.float32))
    # windows [5, 1, 7, 3] and [3, 9, 2], longest first: batches (7, 5) (3, 1) (9, 3) (2)
    assert widths == [7, 3, 9, 2]  # each batch padded only to its own longest item


def test_empty_input_and_bad_batch_size():
    assert encode_sorted(lambda *a: None, lambda c: {}, [], batch_size=4).shape == (0, 0)
    with pytest.raises(ValueError, match="batch_size"):
        encode_sorted(lambda *a: None, lambda c: {}, [1], batch_size=0)
