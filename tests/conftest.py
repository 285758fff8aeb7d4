"""Shared pytest setup: tests never touch the network (no Hugging Face Hub downloads), and ``--precision auto``
means fp32 on every machine (the same numbers with or without native bf16; tests of auto itself unset it)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["DPR_AUTO_PRECISION"] = "fp32"  # inherited by the subprocesses of distributed tests

import json  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A tiny random BERT (2 layers, hidden 32) with BERT-tiny's real uncased tokenizer, as a model folder."""
    from helpers import tiny_bert_with_bert_tiny_vocab

    from dpr.models.hub import load_tokenizer

    path = str(tmp_path_factory.mktemp("tiny-bert-tok"))
    tiny_bert_with_bert_tiny_vocab(seed=0).save_pretrained(path)
    load_tokenizer("bert-tiny").save_pretrained(path)
    return path


def _passage(i: int) -> dict:
    return {
        "title": f"topic {i}",
        "text": f"passage number {i} about subject {i % 7} and item {i * 3}",
        "passage_id": str(i),
    }


@pytest.fixture
def tiny_dpr_files(tmp_path) -> tuple[str, str]:
    """A DPR train JSON (24 questions) and dev JSON (8), each question with 1 positive and 3 hard negatives."""

    def samples(start: int, count: int) -> list[dict]:
        return [
            {
                "question": f"what is item {i * 3} of subject {i % 7}?",
                "answers": [str(i)],
                "positive_ctxs": [_passage(i)],
                "hard_negative_ctxs": [_passage(1000 + i * 3 + k) for k in range(3)],
                "negative_ctxs": [_passage(5000 + i)],
            }
            for i in range(start, start + count)
        ]

    train, dev = tmp_path / "tiny-train.json", tmp_path / "tiny-dev.json"
    train.write_text(json.dumps(samples(0, 24)))
    dev.write_text(json.dumps(samples(100, 8)))
    return str(train), str(dev)


@pytest.fixture(scope="module")
def one_thread():
    """Run tiny models on one thread (use it module-wide: ``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core machine, OpenMP synchronisation between two threads made a training step ~100x slower
    (1.8 s instead of 0.012 s) than the work itself."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
