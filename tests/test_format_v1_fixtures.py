"""Checkpoints and embedding shards written by the code of format 1 (commit b067be9) still load and give
the vectors that code computed. The fixtures and the script that wrote them are in fixtures/format_v1/."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from colbert.checkpoint import load_colbert
from colbert.encoding import encode_documents, encode_queries
from colbert.tokenization import ColBERTTokenizer
from dpr.data.readers import Passage
from dpr.embeddings_io import check_identity, find_shards
from dpr.encoding import encode_texts
from dpr.models.hub import load_tokenizer
from dpr.training.checkpoint import load_biencoder

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "format_v1")
PASSAGES = [
    Passage(text="Mitochondria make most of the cell's ATP.", title="Mitochondria"),
    Passage(text="The Iliad is attributed to Homer.", title="Iliad"),
    Passage(text="Water is a liquid at room temperature.", title="Water"),
    Passage(text="A passage without a title.", title=""),
    Passage(text="Bees make honey from nectar.", title="Bees"),
    Passage(text="The Moon orbits the Earth.", title="Moon"),
]


def _questions() -> list[str]:
    with open(os.path.join(HERE, "questions.json"), encoding="utf-8") as handle:
        return json.load(handle)


# The fixtures were written on one CPU; another CPU's SIMD kernels add in another order (measured: 1.4e-6 on
# values near 2.8 between two AMD EPYC machines). Wrong weights or a wrong format differ by orders more.
SAME = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("name", ["dpr_prefix", "dpr_question_side_adapter", "dpr_bitfit_shared_mean"])
def test_format_1_dpr_checkpoints_give_the_same_vectors(name):
    model, info = load_biencoder(os.path.join(HERE, name))
    assert info.position.global_step == 3
    tokenizer = load_tokenizer(model.config.pretrained_model_cfg, model.config.do_lower_case)
    q = encode_texts(model, tokenizer, _questions(), "question", max_length=32, batch_size=2)
    p = encode_texts(model, tokenizer, PASSAGES, "passage", max_length=32, batch_size=2)
    np.testing.assert_allclose(q, np.load(os.path.join(HERE, f"{name}.questions.npy")), **SAME)
    np.testing.assert_allclose(p, np.load(os.path.join(HERE, f"{name}.passages.npy")), **SAME)


def test_format_1_shards_load_and_match_their_checkpoint():
    shards = find_shards(os.path.join(HERE, "emb", "dpr_prefix_*"))
    assert [len(s.ids()) for s in shards] == [3, 3]
    vectors = np.concatenate([s.vectors() for s in shards])
    ids = [i for s in shards for i in s.ids()]
    assert ids == ["p1", "p2", "p3", "p4", "p5", "p6"]
    np.testing.assert_allclose(vectors, np.load(os.path.join(HERE, "dpr_prefix.passages.npy")), **SAME)
    model, info = load_biencoder(os.path.join(HERE, "dpr_prefix"))
    for shard in shards:
        check_identity(shard, model.passage_identity(), info.path)  # raises on a mismatch


def test_format_1_colbert_checkpoint_gives_the_same_token_vectors():
    model, info = load_colbert(os.path.join(HERE, "colbert_prefix"))
    assert info.step == 7
    config = model.config
    tok = ColBERTTokenizer(
        load_tokenizer(config.encoder.pretrained_model_cfg, config.encoder.do_lower_case),
        config.query_maxlen,
        config.doc_maxlen,
        config.mask_punctuation,
    )
    q = encode_queries(model, tok, _questions(), batch_size=2)
    d, lens = encode_documents(model, tok, PASSAGES, batch_size=2)
    np.testing.assert_allclose(q.float().numpy(), np.load(os.path.join(HERE, "colbert_prefix.queries.npy")), **SAME)
    assert list(lens) == np.load(os.path.join(HERE, "colbert_prefix.doclens.npy")).tolist()
    np.testing.assert_allclose(
        d.astype(np.float32), np.load(os.path.join(HERE, "colbert_prefix.docs.npy")), atol=1e-3, rtol=0
    )  # fp16 storage
