"""generate_embeddings.py: shards cover every passage once, the checkpoint decides the model, bad input is named."""

import gzip
import json
import os
import re

import numpy as np
import pytest
import torch
from helpers import embed_in_shards

from dpr.cli import run_cli
from dpr.configs import BiEncoderConfig
from dpr.embedding import EmbedConfig, embed_corpus
from dpr.embeddings_io import EmbeddingsError, find_shards, read_shard
from dpr.models.biencoder import build_biencoder
from dpr.options import ConfigError
from dpr.retrieval import InferenceModelConfig, load_inference_model
from dpr.training.checkpoint import save_checkpoint
from generate_embeddings import main

SCIFACT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact", "corpus.jsonl")
N = 10  # not divisible by 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_biencoder(
        BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny", tuning="prefix", sequence_length=64)
    )
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "dpr_biencoder.0.1"), model)


def _cpu_flags(checkpoint, corpus):
    return ["--model_file", checkpoint, "--ctx_file", corpus, "--batch_size", "4", "--no_cuda", "--no_progress"]


def _write_tsv(path, n=N, compress=False):
    lines = ["id\ttext\ttitle"] + [f"p{i}\tpassage number {i} about topic {'word ' * i}\tTitle {i}" for i in range(n)]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


def test_three_shards_hold_every_passage_once(tmp_path, checkpoint, capsys):
    corpus = _write_tsv(tmp_path / "psgs.tsv.gz", compress=True)
    out = str(tmp_path / "emb" / "psgs")
    embed_in_shards(_cpu_flags(checkpoint, corpus), out)
    shards = find_shards(out + "_*")
    ids = [pid for shard in shards for pid in shard.ids()]
    assert ids == [f"p{i}" for i in range(N)] and len(set(ids)) == N
    assert [s.header.count for s in shards] == [4, 3, 3]
    assert [(s.header.start, s.header.end) for s in shards] == [(0, 4), (4, 7), (7, 10)]
    header = shards[0].header
    assert header.encoder["tuning"]["method"] == "prefix" and header.checkpoint == os.path.abspath(checkpoint)
    assert header.dim == 128 and header.dtype == "float32" and header.total_passages == N
    printed = capsys.readouterr().out
    assert "shape (3, 128), dtype float32" in printed
    assert "trainable" in printed and "parameters (" in printed and "passages/s" in printed


def test_shards_equal_one_run(tmp_path, checkpoint):
    corpus = _write_tsv(tmp_path / "psgs.tsv")
    common = ["--model_file", checkpoint, "--ctx_file", corpus, "--no_progress", "--batch_size", "3"]
    assert main(common + ["--out_file", str(tmp_path / "all")]) == 0
    for shard_id in range(3):
        assert (
            main(common + ["--out_file", str(tmp_path / "part"), "--shard_id", str(shard_id), "--num_shards", "3"]) == 0
        )
    whole = read_shard(str(tmp_path / "all_0")).vectors()
    parts = np.concatenate([s.vectors() for s in find_shards(str(tmp_path / "part_*"))])
    np.testing.assert_allclose(parts, whole, atol=1e-5, rtol=0)


def test_beir_folder_base_model_and_fp16_storage(tmp_path, capsys):
    folder = tmp_path / "beir"
    folder.mkdir()
    docs = [{"_id": f"d{i}", "title": f"T{i}", "text": f"document {i} text"} for i in range(5)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert (
        main(
            [
                "--pretrained_model_cfg",
                "bert-tiny",
                "--sequence_length",
                "32",
                "--ctx_file",
                str(folder),
                "--out_file",
                str(tmp_path / "beir_emb"),
                "--max_passages",
                "4",
                "--fp16_storage",
                "--no_progress",
            ]
        )
        == 0
    )
    shard = read_shard(str(tmp_path / "beir_emb_0"))
    assert shard.ids() == ["d0", "d1", "d2", "d3"] and shard.vectors().dtype == np.float16
    assert shard.header.checkpoint is None and shard.header.encoder["tuning"]["method"] == "finetune"
    # the base model's two sides share one backbone: counted once, all of it "trainable" (not frozen)
    assert re.search(r"trainable ([\d,]+) of \1 parameters \(100\.00%\)", capsys.readouterr().out)


@pytest.mark.skipif(not os.path.isfile(SCIFACT), reason="shared SciFact data not present")
def test_real_beir_corpus_slice(tmp_path):
    assert (
        main(
            [
                "--pretrained_model_cfg",
                "bert-tiny",
                "--sequence_length",
                "64",
                "--ctx_file",
                SCIFACT,
                "--out_file",
                str(tmp_path / "sf"),
                "--max_passages",
                "6",
                "--num_shards",
                "4",
                "--shard_id",
                "1",
                "--no_progress",
            ]
        )
        == 0
    )
    shard = read_shard(str(tmp_path / "sf_1"))
    assert (shard.header.start, shard.header.end, shard.header.total_passages) == (2, 4, 6)


def test_empty_corpus_is_named(tmp_path, capsys):
    empty = tmp_path / "empty.tsv"
    empty.write_text("id\ttext\ttitle\n")
    code = run_cli(
        main,
        [
            "--pretrained_model_cfg",
            "bert-tiny",
            "--ctx_file",
            str(empty),
            "--out_file",
            str(tmp_path / "e"),
            "--no_progress",
        ],
    )
    assert code == 2
    assert f"{empty}: no passages found (empty corpus)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e_0")


def test_bad_row_is_named_with_its_line(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\ttext\ttitle\np1\tfine\tT\np2\n")
    code = run_cli(
        main,
        [
            "--pretrained_model_cfg",
            "bert-tiny",
            "--ctx_file",
            str(bad),
            "--out_file",
            str(tmp_path / "b"),
            "--num_shards",
            "2",
            "--no_progress",
        ],
    )
    assert code == 2 and f"{bad}:3: expected" in capsys.readouterr().err


def test_flags_that_contradict_the_checkpoint_are_refused(tmp_path, checkpoint, capsys):
    corpus = _write_tsv(tmp_path / "psgs.tsv", n=3)
    code = run_cli(
        main,
        [
            "--model_file",
            checkpoint,
            "--pre_seq_len",
            "4",
            "--ctx_file",
            corpus,
            "--out_file",
            str(tmp_path / "x"),
            "--no_progress",
        ],
    )
    assert code == 2 and "--pre_seq_len is 4" in capsys.readouterr().err


def test_shard_id_out_of_range(tmp_path, capsys):
    corpus = _write_tsv(tmp_path / "psgs.tsv", n=3)
    code = run_cli(
        main,
        [
            "--pretrained_model_cfg",
            "bert-tiny",
            "--ctx_file",
            corpus,
            "--out_file",
            str(tmp_path / "x"),
            "--shard_id",
            "3",
            "--num_shards",
            "3",
        ],
    )
    assert code == 2 and "--shard_id must be in [0, --num_shards=3)" in capsys.readouterr().err


def test_shards_record_one_corpus_digest_and_refuse_another_version(tmp_path, checkpoint):
    plain, packed = _write_tsv(tmp_path / "psgs.tsv"), _write_tsv(tmp_path / "psgs.tsv.gz", compress=True)
    common = ["--model_file", checkpoint, "--no_progress"]
    embed_in_shards(common + ["--ctx_file", plain], str(tmp_path / "part"))
    assert main(common + ["--ctx_file", packed, "--out_file", str(tmp_path / "all")]) == 0
    parts, whole = find_shards(str(tmp_path / "part_*")), read_shard(str(tmp_path / "all_0")).header
    # rows, not bytes: the gzipped copy is the same corpus version; one shard's passages are the corpus
    assert {s.header.corpus_digest for s in parts} == {whole.corpus_digest} == {whole.passages_digest}
    assert len({s.header.passages_digest for s in parts}) == 3 and whole.version == 3
    # the same ids with one other text: a new version of the corpus, whose shard 1 must not join the others
    edited = tmp_path / "psgs.tsv"
    edited.write_text(edited.read_text().replace("passage number 5 about", "passage number 5 (fixed) about"))
    assert (
        main(
            common
            + ["--ctx_file", str(edited), "--out_file", str(tmp_path / "part"), "--shard_id", "1", "--num_shards", "3"]
        )
        == 0
    )
    assert read_shard(str(tmp_path / "part_1")).header.corpus_digest != whole.corpus_digest
    with pytest.raises(
        EmbeddingsError,
        match=f"{tmp_path / 'part_1'} and {tmp_path / 'part_0'} were encoded from different versions of the corpus",
    ):
        find_shards(str(tmp_path / "part_*"))


def test_max_passages_digest_covers_the_encoded_rows(tmp_path, checkpoint):
    corpus = _write_tsv(tmp_path / "psgs.tsv")
    common = ["--model_file", checkpoint, "--ctx_file", corpus, "--max_passages", "5", "--no_progress"]
    assert main(common + ["--out_file", str(tmp_path / "one")]) == 0
    assert main(common + ["--out_file", str(tmp_path / "two"), "--num_shards", "2", "--shard_id", "1"]) == 0
    assert (
        read_shard(str(tmp_path / "one_0")).header.corpus_digest
        == read_shard(str(tmp_path / "two_1")).header.corpus_digest
    )


def _shard_files(folder):
    shard = read_shard(folder)
    return shard.vectors(), shard.ids(), json.loads(open(os.path.join(folder, "meta.json")).read())


def test_embed_corpus_writes_what_the_cli_writes(tmp_path, checkpoint):
    """The library call (all three shards at once) and three CLI runs give the same shard folders."""
    corpus = _write_tsv(tmp_path / "psgs.tsv")
    embed_in_shards(_cpu_flags(checkpoint, corpus), str(tmp_path / "cli"))
    loaded = load_inference_model(InferenceModelConfig(model_file=checkpoint, no_cuda=True))
    written = embed_corpus(loaded, corpus, str(tmp_path / "lib"), EmbedConfig(batch_size=4), num_shards=3)
    assert [s.path for s in written] == [str(tmp_path / f"lib_{i}") for i in range(3)]
    assert [s.header.count for s in written] == [4, 3, 3]
    for i, shard in enumerate(written):
        vectors, ids, meta = _shard_files(shard.path)
        cli_vectors, cli_ids, cli_meta = _shard_files(str(tmp_path / f"cli_{i}"))
        np.testing.assert_array_equal(vectors, cli_vectors)
        assert ids == cli_ids and meta == cli_meta


def test_embed_config_and_shard_ids_are_checked(tmp_path, checkpoint):
    with pytest.raises(ConfigError, match="--batch_size must be >= 1, found 0"):
        EmbedConfig(batch_size=0)
    loaded = load_inference_model(
        InferenceModelConfig(encoder_overrides={"pretrained_model_cfg": "bert-tiny"}, no_cuda=True)
    )
    with pytest.raises(ConfigError, match=re.escape("--shard_id must be in [0, --num_shards=2), found 2")):
        embed_corpus(loaded, _write_tsv(tmp_path / "psgs.tsv"), str(tmp_path / "e"), shard_ids=[2], num_shards=2)


def test_int8_vectors_stay_close_to_fp32_ones(tmp_path, checkpoint, caplog):
    corpus = _write_tsv(tmp_path / "psgs.tsv")
    for precision in ("fp32", "int8"):
        assert (
            main([*_cpu_flags(checkpoint, corpus), "--out_file", str(tmp_path / precision), "--precision", precision])
            == 0
        )
    fp32, int8 = (read_shard(str(tmp_path / f"{p}_0")).vectors() for p in ("fp32", "int8"))
    assert int8.dtype == np.float32 and int8.shape == fp32.shape  # stored as float32 like any other run
    cosine = (fp32 * int8).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    assert cosine.min() > 0.95 and not np.array_equal(fp32, int8)  # quantized (not fp32 again), yet close
