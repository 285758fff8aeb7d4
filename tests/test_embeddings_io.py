"""The embedding shard format: ranges cover every row once, round trips, and every damage is named."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from dpr.configs import BiEncoderConfig
from dpr.embeddings_io import (
    EmbeddingsError,
    ShardHeader,
    check_identity,
    encoder_digest,
    find_shards,
    read_shard,
    shard_path,
    shard_range,
    write_shard,
)
from dpr.identity import EncoderIdentity

ENCODER = {
    "pretrained_model_cfg": "bert-tiny",
    "tuning": "prefix",
    "pre_seq_len": 8,
    "prefix_mlp": False,
    "prefix_hidden_size": 512,
    "prompt_encoder": "none",
    "adapter_size": 64,
    "pooling": "cls",
    "projection_dim": 0,
    "do_lower_case": False,
}
BACKBONE = {"model_type": "bert", "hidden_size": 4}


def _header(**changes) -> ShardHeader:
    base = ShardHeader(
        encoder=ENCODER,
        backbone=BACKBONE,
        encoder_digest="d" * 64,
        checkpoint="/ckpt",
        dim=4,
        count=3,
        dtype="float32",
        shard_id=0,
        num_shards=1,
        start=0,
        end=3,
        total_passages=3,
        ctx_file="/corpus.tsv",
    )
    return dataclasses.replace(base, **changes)


def _write(tmp_path, shard_id=0, num_shards=1, count=3, dim=4, **changes) -> str:
    vectors = np.arange(count * dim, dtype=np.float32).reshape(count, dim) / 7  # (count, dim)
    ids = [f"s{shard_id}-{i}" for i in range(count)]
    header = _header(
        shard_id=shard_id,
        num_shards=num_shards,
        count=count,
        dim=dim,
        end=count,
        total_passages=count * num_shards,
        **changes,
    )
    return write_shard(shard_path(str(tmp_path / "emb"), shard_id), vectors, ids, header)


@pytest.mark.parametrize("total", [0, 1, 2, 7, 10, 31])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 7])
def test_shard_ranges_cover_every_row_once(total, num_shards):
    ranges = [shard_range(total, i, num_shards) for i in range(num_shards)]
    rows = [r for start, end in ranges for r in range(start, end)]
    assert rows == list(range(total))
    sizes = [end - start for start, end in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_round_trip_float32_and_float16(tmp_path):
    path = _write(tmp_path)
    shard = read_shard(path)
    assert shard.header.count == 3 and shard.ids() == ["s0-0", "s0-1", "s0-2"]
    np.testing.assert_array_equal(shard.vectors(), np.arange(12, dtype=np.float32).reshape(3, 4) / 7)
    half = read_shard(_write(tmp_path / "half", dtype="float16"))
    assert half.vectors().dtype == np.float16
    chunks = list(half.chunks(2))
    assert [len(ids) for _, ids in chunks] == [2, 1] and chunks[0][0].dtype == np.float32
    np.testing.assert_allclose(np.concatenate([v for v, _ in chunks]), shard.vectors(), atol=1e-3)


def test_vectors_load_without_pickle(tmp_path):
    path = _write(tmp_path)
    np.save(os.path.join(path, "vectors.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(EmbeddingsError, match="vectors.npy"):
        read_shard(path)


def test_missing_and_short_ids_are_named(tmp_path):
    path = _write(tmp_path)
    ids_path = os.path.join(path, "ids.json")
    with open(ids_path, "w") as handle:
        json.dump(["a", "b"], handle)
    with pytest.raises(EmbeddingsError, match=r"ids\.json: holds 2 ids for 3 vectors \(1 missing\)"):
        read_shard(path)
    with open(ids_path, "w") as handle:
        json.dump(["a", None, "c"], handle)
    with pytest.raises(EmbeddingsError, match=r"ids\.json: row 1"):
        read_shard(path)
    os.remove(ids_path)
    with pytest.raises(EmbeddingsError, match=r"ids\.json: missing"):
        read_shard(path)


def test_dimension_mismatch_with_header_is_named(tmp_path):
    path = _write(tmp_path)
    np.save(os.path.join(path, "vectors.npy"), np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(
        EmbeddingsError, match=r"vectors\.npy: holds float32 \(3, 5\).*meta\.json says float32 \(3, 4\)"
    ):
        read_shard(path)


def test_not_a_shard_folder(tmp_path):
    pickle_like = tmp_path / "wiki_passages_0"
    pickle_like.write_bytes(b"\x80\x04old dpr pickle")
    with pytest.raises(EmbeddingsError, match="wiki_passages_0 is not an embeddings shard folder.*pickle"):
        find_shards(str(tmp_path / "wiki_passages_*"))
    with pytest.raises(FileNotFoundError, match="no embeddings shard matches"):
        find_shards(str(tmp_path / "nothing_*"))


def test_shards_from_another_model_config_are_refused(tmp_path):
    _write(tmp_path, 0, 2)
    _write(tmp_path, 1, 2, encoder={**ENCODER, "pre_seq_len": 16})
    with pytest.raises(
        EmbeddingsError,
        match=r"emb_1/meta\.json and .*emb_0/meta\.json were made by different "
        r"encoders: pre_seq_len: 8 -> 16",
    ):
        find_shards(str(tmp_path / "emb_*"))


def test_shards_with_different_dimensions_are_refused(tmp_path):
    _write(tmp_path, 0, 2)
    _write(tmp_path, 1, 2, dim=6)
    with pytest.raises(EmbeddingsError, match=r"emb_1/meta\.json: dimension 6 does not match .*emb_0/meta\.json: 4"):
        find_shards(str(tmp_path / "emb_*"))


def test_missing_shard_is_an_error_unless_partial_is_allowed(tmp_path):
    _write(tmp_path, 0, 3)
    _write(tmp_path, 2, 3)
    with pytest.raises(EmbeddingsError, match=r"2 of 3 shards found; shard id\(s\) \[1\]"):
        find_shards(str(tmp_path / "emb_*"))
    shards = find_shards([str(tmp_path / "emb_0"), str(tmp_path / "emb_2" / "meta.json")], allow_partial=True)
    assert [s.header.shard_id for s in shards] == [0, 2]


def _identity(encoder: dict, digest: str) -> EncoderIdentity:
    """The identity of a query encoder whose passage side has ``encoder`` (a flat config), BACKBONE, ``digest``."""
    return EncoderIdentity.of_config(BiEncoderConfig.from_dict(encoder), BACKBONE, digest)


def test_query_encoder_mismatch_names_both(tmp_path):
    shard = read_shard(_write(tmp_path))
    check_identity(shard, _identity(ENCODER, "d" * 64), "/elsewhere")  # same weights, moved checkpoint
    with pytest.raises(
        EmbeddingsError,
        match=r"meta\.json: .*embeddings: /ckpt; query encoder: base model "
        r"bert-tiny\): tuning: prefix -> finetune\. Regenerate",
    ):
        check_identity(shard, _identity({**ENCODER, "tuning": "finetune"}, "d" * 64), None)
    with pytest.raises(EmbeddingsError, match="passage-encoder weights differ"):
        check_identity(shard, _identity(ENCODER, "e" * 64), "/other")


def test_encoder_digest_tracks_weights():
    layer = torch.nn.Linear(3, 2)
    before = encoder_digest(layer)
    assert encoder_digest(layer) == before
    with torch.no_grad():
        layer.bias[0] += 1e-6
    assert encoder_digest(layer) != before


def test_write_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="duplicate passage ids"):
        write_shard(str(tmp_path / "x_0"), np.zeros((3, 4), np.float32), ["a", "a", "b"], _header())
    with pytest.raises(ValueError, match="infinite"):
        write_shard(str(tmp_path / "x_0"), np.full((3, 4), 1e6, np.float32), ["a", "b", "c"], _header(dtype="float16"))
    assert not os.path.exists(tmp_path / "x_0")


def _rewrite(path: str, name: str, content) -> None:
    with open(os.path.join(path, name), "w") as handle:
        json.dump(content, handle)


def test_shards_of_two_corpus_versions_are_refused(tmp_path):
    # same ids, same sizes, same encoder: only the corpus digest tells the texts apart
    _write(tmp_path, 0, 2, corpus_digest="a" * 64)
    _write(tmp_path, 1, 2, corpus_digest="b" * 64)
    with pytest.raises(
        EmbeddingsError,
        match=r"emb_1 and .*emb_0 were encoded from different versions of the "
        r"corpus \(digest bbbbbbbbbbbb of /corpus.tsv vs aaaaaaaaaaaa",
    ):
        find_shards(str(tmp_path / "emb_*"))
    _write(tmp_path, 1, 2, corpus_digest="a" * 64)
    assert len(find_shards(str(tmp_path / "emb_*"))) == 2


def test_version_1_shards_load_with_one_warning(tmp_path, caplog):
    for shard_id in (0, 1):
        path = _write(tmp_path, shard_id, 2)
        with open(os.path.join(path, "meta.json")) as handle:
            meta = json.load(handle)
        del meta["corpus_digest"], meta["passages_digest"]
        _rewrite(path, "meta.json", {**meta, "version": 1})  # as written before digests existed
    with caplog.at_level("WARNING", logger="dpr.embeddings_io"):
        shards = find_shards(str(tmp_path / "emb_*"))
    assert [s.header.corpus_digest for s in shards] == [None, None]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "2 of 2 embeddings shards" in warnings[0] and "no corpus digest" in warnings[0]


def test_duplicate_ids_within_and_across_shards_are_named(tmp_path):
    first, second = _write(tmp_path, 0, 2), _write(tmp_path, 1, 2)
    _rewrite(second, "ids.json", ["s1-0", "s0-2", "s1-2"])  # write_shard would refuse; copies do not
    with pytest.raises(EmbeddingsError, match=rf"passage id 's0-2' is in both {first} and {second}"):
        find_shards(str(tmp_path / "emb_*"))
    _rewrite(second, "ids.json", ["x", "y", "x"])
    with pytest.raises(EmbeddingsError, match=r"emb_1/ids\.json: passage id 'x' appears at rows \[0, 2\]"):
        find_shards(str(tmp_path / "emb_*"))


def test_saved_index_beside_the_shards_is_not_a_shard(tmp_path):
    _write(tmp_path)
    index = tmp_path / "emb_index_flat"  # dense_retriever's default place: matches emb_*
    (index / "group_0").mkdir(parents=True)
    (index / "group_0" / "embeddings.json").write_text("{}")
    (index / "group_0" / "meta.json").write_text('{"format_version": 1}')
    assert [s.path for s in find_shards(str(tmp_path / "emb_*"))] == [str(tmp_path / "emb_0")]
    with pytest.raises(EmbeddingsError, match="emb_index_flat is a saved FAISS index"):
        find_shards(str(index))
