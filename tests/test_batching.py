"""Batching: layout of contexts, dynamic padding, title/text pairs, negatives, rng determinism."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from dpr.data.batching import build_biencoder_batch, tokenize_passages, tokenize_questions
from dpr.data.readers import BiEncoderSample, Passage


def _tokenizer_folder() -> str | None:
    spec = importlib.util.find_spec("cognition")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(spec.submodule_search_locations[0], "model")
    return folder if os.path.isfile(os.path.join(folder, "tokenizer.json")) else None


@pytest.fixture(scope="module")
def tokenizer():
    folder = _tokenizer_folder()
    if folder is None:
        pytest.skip("the offline BERT tokenizer (cognition/model) is not installed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _real_ids(ids: torch.Tensor, mask: torch.Tensor, row: int) -> list[int]:
    return ids[row][mask[row].bool()].tolist()


def _sample(q: str, n_pos: int = 1, n_other: int = 0, n_hard: int = 0) -> BiEncoderSample:
    return BiEncoderSample(
        question=f"what is {q}",
        answers=(q,),
        positive_passages=tuple(Passage(f"{q} positive number {i}", f"title {q}") for i in range(n_pos)),
        negative_passages=tuple(Passage(f"{q} random negative {i}", "") for i in range(n_other)),
        hard_negative_passages=tuple(Passage(f"{q} hard negative {i}", "hard") for i in range(n_hard)),
    )


def _encoded(tokenizer, passage: Passage) -> list[int]:
    if passage.title:
        return tokenizer(passage.title, passage.text)["input_ids"]
    return tokenizer(passage.text)["input_ids"]


def test_layout_and_positive_idx(tokenizer) -> None:
    samples = [_sample("apple", n_other=2, n_hard=3), _sample("pear", n_hard=1), _sample("fig")]
    batch = build_biencoder_batch(
        samples,
        tokenizer,
        np.random.default_rng(0),
        max_length=64,
        hard_negatives=2,
        other_negatives=1,
        shuffle_negatives=False,
    )
    # apple: pos, 1 other, 2 hard (rows 0-3); pear: pos, 1 hard (rows 4-5); fig: pos (row 6)
    assert batch.positive_idx.tolist() == [0, 4, 6]
    assert batch.positive_idx.dtype == torch.long
    assert batch.context_ids.shape[0] == 7 and batch.question_ids.shape[0] == 3
    expected_rows = [
        samples[0].positive_passages[0],
        samples[0].negative_passages[0],
        *samples[0].hard_negative_passages[:2],
        samples[1].positive_passages[0],
        samples[1].hard_negative_passages[0],
        samples[2].positive_passages[0],
    ]
    for row, passage in enumerate(expected_rows):
        assert _real_ids(batch.context_ids, batch.context_mask, row) == _encoded(tokenizer, passage)
    for row, sample in enumerate(samples):
        expected = tokenizer(sample.question)["input_ids"]
        assert _real_ids(batch.question_ids, batch.question_mask, row) == expected


def test_dynamic_padding_to_the_longest_real_sequence(tokenizer) -> None:
    questions = ["short", "a somewhat longer question with more words"]
    out = tokenize_questions(tokenizer, questions, max_length=64)
    lengths = [len(tokenizer(q)["input_ids"]) for q in questions]
    assert out["input_ids"].shape == (2, max(lengths)) and max(lengths) < 64
    assert out["attention_mask"].sum(dim=1).tolist() == lengths
    padding = [tokenizer.pad_token_id] * (max(lengths) - lengths[0])
    assert out["input_ids"][0, lengths[0] :].tolist() == padding
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(t.dtype == torch.long for t in out.values())
    capped = tokenize_questions(tokenizer, ["word " * 100, "tiny"], max_length=12)
    assert capped["input_ids"].shape == (2, 12)
    assert capped["input_ids"][0, -1].item() == tokenizer.sep_token_id


def test_title_text_pair_segments_and_text_only_truncation(tokenizer) -> None:
    passages = [Passage("the body of the passage", "A Title"), Passage("no title here", "")]
    out = tokenize_passages(tokenizer, passages, max_length=32)
    n_title = len(tokenizer("A Title", add_special_tokens=False)["input_ids"])
    pair = tokenizer("A Title", "the body of the passage")
    length = len(pair["input_ids"])
    assert out["input_ids"].shape == (2, length)
    assert out["input_ids"][0].tolist() == pair["input_ids"]
    assert out["token_type_ids"][0].tolist() == [0] * (n_title + 2) + [1] * (length - n_title - 2)
    assert out["token_type_ids"][1].tolist() == [0] * length  # text alone: one segment
    without = tokenize_passages(tokenizer, passages[:1], max_length=32, insert_title=False)
    assert without["input_ids"][0].tolist() == tokenizer("the body of the passage")["input_ids"]

    cut = tokenize_passages(tokenizer, [Passage("many words " * 30, "A Title")], max_length=10)
    ids = cut["input_ids"][0].tolist()
    assert len(ids) == 10 and ids[: n_title + 2] == pair["input_ids"][: n_title + 2]  # title kept
    assert ids[-1] == tokenizer.sep_token_id
    long_title = tokenize_passages(tokenizer, [Passage("text", "title words " * 20)], max_length=8)
    assert long_title["input_ids"].shape == (1, 8)  # the title alone overflows: it is cut too


def test_negative_counts_and_shuffling_follow_the_rng(tokenizer) -> None:
    sample = _sample("kiwi", n_pos=3, n_other=5, n_hard=6)

    def chosen(seed: int, **kwargs) -> list[list[int]]:
        rng = np.random.default_rng(seed)
        batch = build_biencoder_batch([sample], tokenizer, rng, max_length=32, **kwargs)
        rows = range(batch.context_ids.shape[0])
        return [_real_ids(batch.context_ids, batch.context_mask, r) for r in rows]

    hard_ids = [_encoded(tokenizer, p) for p in sample.hard_negative_passages]
    pos_ids = [_encoded(tokenizer, p) for p in sample.positive_passages]
    plain = chosen(0, hard_negatives=2, other_negatives=0, shuffle_negatives=False)
    assert plain == [pos_ids[0], hard_ids[0], hard_ids[1]]  # no shuffling: the first ones
    runs = [chosen(seed, hard_negatives=4, other_negatives=2) for seed in range(6)]
    assert all(len(run) == 1 + 2 + 4 for run in runs)
    assert all(run[0] == pos_ids[0] for run in runs)  # first positive unless shuffle_positives
    assert all(all(row in hard_ids for row in run[3:]) for run in runs)
    assert len({str(run[3:]) for run in runs}) > 1  # different rngs pick different negatives
    assert chosen(4, hard_negatives=4, other_negatives=2) == runs[4]  # same rng, same batch
    positives = {str(chosen(seed, shuffle_positives=True)[0]) for seed in range(12)}
    assert positives == {str(ids) for ids in pos_ids}
    assert len(chosen(0, hard_negatives=50, other_negatives=50)) == 1 + 5 + 6  # capped at available


def test_batch_is_deterministic_for_a_seeded_rng(tokenizer) -> None:
    samples = [_sample("plum", n_pos=2, n_other=3, n_hard=4), _sample("lime", n_hard=2)]
    kwargs = dict(max_length=24, hard_negatives=2, other_negatives=1, shuffle_positives=True)
    first = build_biencoder_batch(samples, tokenizer, np.random.default_rng(9), **kwargs)
    second = build_biencoder_batch(samples, tokenizer, np.random.default_rng(9), **kwargs)
    for name in (
        "question_ids",
        "question_mask",
        "question_segments",
        "context_ids",
        "context_mask",
        "context_segments",
        "positive_idx",
    ):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.contexts == second.contexts


def test_invalid_batches(tokenizer) -> None:
    with pytest.raises(ValueError, match="max_length"):
        build_biencoder_batch([_sample("a")], tokenizer, np.random.default_rng(0), max_length=2)
    with pytest.raises(ValueError, match="no samples"):
        build_biencoder_batch([], tokenizer, np.random.default_rng(0), max_length=16)
    no_positive = BiEncoderSample("q", (), (), (), ())
    with pytest.raises(ValueError, match="no positive"):
        build_biencoder_batch([no_positive], tokenizer, np.random.default_rng(0), max_length=16)
    with pytest.raises(ValueError, match="max_length"):
        tokenize_passages(tokenizer, [Passage("x")], max_length=1)
    minimal = tokenize_questions(tokenizer, ["many words here"], max_length=3)
    assert minimal["input_ids"].shape == (1, 3)


def test_concat_title_mode_joins_title_and_text_into_one_segment(tokenizer) -> None:
    passages = [Passage(text="the text part", title="A Title"), Passage(text="no title here")]
    out = tokenize_passages(tokenizer, passages, max_length=32, title_mode="concat")
    expected = tokenizer(["A Title the text part", "no title here"], padding=True, return_tensors="pt")
    assert torch.equal(out["input_ids"], expected["input_ids"])
    assert int(out["token_type_ids"].sum()) == 0  # one segment, unlike the DPR pair
    pair = tokenize_passages(tokenizer, passages, max_length=32, title_mode="pair")
    assert int(pair["token_type_ids"].sum()) > 0
    with pytest.raises(ValueError, match="title_mode"):
        tokenize_passages(tokenizer, passages, max_length=32, title_mode="joined")
