"""ColBERT indexing, retrieval, re-ranking and the CLIs (train -> index -> retrieve) on a tiny random BERT."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import colbert_train_argv

from colbert import index as colbert_index
from colbert import retrieve as colbert_retrieve
from colbert import train as colbert_train
from colbert.checkpoint import save_colbert
from colbert.data import iter_collection, read_queries, read_triples, triples_from_dpr
from colbert.encoding import encode_queries
from colbert.faiss_index import FaissSettings
from colbert.indexing import build_index, check_model, load_index
from colbert.model import build_colbert
from colbert.options import ColBERTConfig
from colbert.retrieval import brute_force, end_to_end, rerank
from colbert.runs import read_qrels, read_topk
from colbert.tokenization import ColBERTTokenizer
from dpr.cli import run_cli
from dpr.configs import BackboneConfig, PrefixConfig
from dpr.data.readers import DataFormatError, read_dpr_files
from dpr.models.hub import load_tokenizer
from dpr.options import ConfigError

DOCS = [
    "paris is the capital of france",
    "the nile flows through egypt",
    "mozart composed the magic flute",
    "everest is the highest mountain on earth",
    "penguins live in antarctica",
    "copper conducts electricity",
    "shakespeare wrote hamlet and macbeth",
    "tokyo hosted the olympic games",
    "vienna is known for cafes",
    "the danube reaches the black sea",
    "photosynthesis needs sunlight",
    "the moon orbits the earth",
]
QUERIES = {
    "q1": "capital of france",
    "q2": "who wrote hamlet",
    "q3": "where do penguins live",
    "q4": "what needs sunlight",
}
QRELS = {"q1": "d0", "q2": "d6", "q3": "d4", "q4": "d10"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: these tiny models run on one thread


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("colbert-data")
    (root / "collection.tsv").write_text("".join(f"d{i}\t{t}\tdoc {i}\n" for i, t in enumerate(DOCS)))
    (root / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()))
    qrels = "".join(f"{q}\t{d}\t1\n" for q, d in QRELS.items())
    (root / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    (root / "triples.jsonl").write_text(
        "".join(json.dumps([q, d, f"d{(int(d[1:]) + 5) % 12}"]) + "\n" for q, d in QRELS.items())
    )
    return root


@pytest.fixture(scope="module")
def model_and_tok(tiny_bert_dir):
    torch.manual_seed(0)
    backbone = BackboneConfig(tiny_bert_dir)
    model = build_colbert(
        ColBERTConfig(backbone=backbone, tuning=PrefixConfig(pre_seq_len=4), query_maxlen=12, doc_maxlen=32, dim=16)
    ).eval()
    return model, ColBERTTokenizer.from_config(load_tokenizer(tiny_bert_dir), model.config)


@pytest.mark.parametrize(
    "settings", [FaissSettings(), FaissSettings(partitions=4, pq_m=4, nbits=4)], ids=["flat", "ivfpq"]
)
def test_end_to_end_with_a_large_faiss_depth_equals_brute_force(model_and_tok, files, tmp_path, settings):
    model, ct = model_and_tok
    meta = build_index(
        model,
        ct,
        iter_collection(str(files / "collection.tsv")),
        str(tmp_path / "idx"),
        settings=settings,
        shard_size=5,
    )
    assert len(meta["shards"]) == 3 and meta["num_docs"] == len(DOCS)
    _, store, token_index = load_index(str(tmp_path / "idx"))
    q = encode_queries(model, ct, list(QUERIES.values()))
    qids = list(QUERIES)
    exact = brute_force(q, qids, store, depth=5, similarity="cosine", query_batch=3)
    e2e = end_to_end(q, qids, store, token_index, depth=5, faiss_depth=10_000, nprobe=4, similarity="cosine")
    for qid in qids:
        assert [pid for pid, _ in e2e[qid]] == [pid for pid, _ in exact[qid]]
        assert np.allclose([s for _, s in e2e[qid]], [s for _, s in exact[qid]], atol=1e-5)
    # re-ranking the brute-force top 5 reproduces its scores
    reranked = rerank(q, qids, [[pid for pid, _ in exact[qid]][::-1] for qid in qids], store, "cosine")
    assert reranked == {qid: [(p, pytest.approx(s, abs=1e-5)) for p, s in exact[qid]] for qid in qids}


def test_brute_force_scores_equal_maxsim_of_freshly_encoded_documents(model_and_tok, files, tmp_path):
    model, ct = model_and_tok
    build_index(
        model, ct, iter_collection(str(files / "collection.tsv")), str(tmp_path / "idx"), settings=FaissSettings()
    )
    _, store, _ = load_index(str(tmp_path / "idx"), with_faiss=False)
    q = encode_queries(model, ct, ["capital of france"])
    ranking = brute_force(q, ["q"], store, depth=len(DOCS), similarity="cosine")["q"]
    passages = dict(iter_collection(str(files / "collection.tsv")))
    batch = ct.docs([passages[pid] for pid, _ in ranking])
    with torch.no_grad():
        d = model.encode_passage(batch["input_ids"], batch["attention_mask"]).half().float()  # stored as fp16
    fresh = model.compute_similarity(q, d, batch["score_mask"])[0]
    assert np.allclose(fresh.numpy(), [s for _, s in ranking], atol=1e-4)
    assert all(a[1] >= b[1] for a, b in zip(ranking, ranking[1:], strict=False))


def test_an_index_refuses_a_model_with_other_weights(model_and_tok, files, tmp_path):
    model, ct = model_and_tok
    meta = build_index(
        model, ct, iter_collection(str(files / "collection.tsv")), str(tmp_path / "idx"), settings=FaissSettings()
    )
    check_model(meta, model, "idx")  # the builder passes
    torch.manual_seed(7)
    other = build_colbert(model.config)  # same config, new weights
    with pytest.raises(ConfigError, match="built with other weights"):
        check_model(meta, other, "idx")


def test_bad_input_errors(files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('["q1", "d0", "d999"]\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: pid 'd999' is not in the collection .*does not match"):
        read_triples(str(bad), str(files / "queries.tsv"), str(files / "collection.tsv"))
    with pytest.raises(DataFormatError, match="pass --queries and --collection"):
        read_triples(str(bad))
    empty = tmp_path / "empty.tsv"
    empty.write_text("d0\tsome text\nd1\t  \n")
    with pytest.raises(DataFormatError, match=r"empty.tsv:2: empty document"):
        list(iter_collection(str(empty)))
    dup = tmp_path / "dup.tsv"
    dup.write_text("d0\ta\nd0\tb\n")
    with pytest.raises(DataFormatError, match="appears twice"):
        list(iter_collection(str(dup)))
    text = tmp_path / "triples.tsv"
    text.write_text("a query\ta positive\t\n")
    with pytest.raises(DataFormatError, match=r"triples.tsv:1: column 'negative' is empty"):
        read_triples(str(text))


def test_tsv_triples_are_read_on_demand(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_text("q one\tpos one\tneg one\n\nq two\tpos two\tneg two\n")
    triples = read_triples(str(path))
    assert len(triples) == 2 and isinstance(triples.offsets, np.ndarray)
    assert triples[1].query == "q two" and triples[1].negative.text == "neg two"


def test_triples_from_prepare_data_style_dpr_json(tiny_dpr_files):
    samples = read_dpr_files([tiny_dpr_files[0]])
    triples, skipped = triples_from_dpr(samples, hard_negatives=2)
    assert skipped == 0 and len(triples) == 2 * len(samples)
    first = samples[0]
    assert triples[0].query == first.question and triples[0].positive == first.positive_passages[0]
    assert [t.negative for t in triples[:2]] == list(first.hard_negative_passages[:2])


def test_runs_and_qrels_formats(tmp_path):
    trec = tmp_path / "run.trec"
    trec.write_text("q1 Q0 d3 1 9.5 bm25\nq1 Q0 d1 2 8.0 bm25\nq2 Q0 d2 1 1.0 bm25\n")
    assert read_topk(str(trec)) == {"q1": ["d3", "d1"], "q2": ["d2"]}
    ranking = tmp_path / "ranking.tsv"
    ranking.write_text("q1\td3\t1\t9.5\nq1\td1\t2\n")
    assert read_topk(str(ranking)) == {"q1": ["d3", "d1"]}
    top1000 = tmp_path / "top1000.dev"
    top1000.write_text("q1\td7\tsome query\tsome passage\n")
    assert read_topk(str(top1000)) == {"q1": ["d7"]}
    marco = tmp_path / "qrels.dev.tsv"
    marco.write_text("q1\t0\td3\t1\nq2\t0\td2\t1\n")
    assert read_qrels(str(marco)) == {"q1": {"d3": 1}, "q2": {"d2": 1}}


def _train(files, tiny_bert_dir, out, *extra):
    return colbert_train.main(
        colbert_train_argv(
            tiny_bert_dir,
            str(files / "triples.jsonl"),
            str(out),
            *("--queries", str(files / "queries.tsv"), "--collection", str(files / "collection.tsv")),
            *("--bsize", "4", "--accum", "2", "--lr", "1e-2", "--save_every", "2"),
            *extra,
        )
    )


def _index_args(files, index_root):
    """colbert/index.py's flags (but --checkpoint): the collection, indexed as "idx" under ``index_root``."""
    return [
        "--collection",
        str(files / "collection.tsv"),
        "--index_root",
        str(index_root),
        "--index_name",
        "idx",
        "--no_progress",
    ]


def _query_args(files, index_root, *extra):
    """colbert/retrieve.py's flags for the "idx" index under ``index_root`` and the 4 queries, then ``extra``."""
    return [
        "--index_root",
        str(index_root),
        "--index_name",
        "idx",
        "--queries",
        str(files / "queries.tsv"),
        *extra,
        "--no_progress",
    ]


def test_cli_train_index_retrieve_rerank(files, tiny_bert_dir, tmp_path, capsys):
    assert _train(files, tiny_bert_dir, tmp_path / "run", "--maxsteps", "3") == 0
    ckpt = str(tmp_path / "run" / "colbert-3")
    assert sorted(n for n in os.listdir(tmp_path / "run") if n.startswith("colbert-")) == ["colbert-2", "colbert-3"]
    assert colbert_index.main(["--checkpoint", ckpt, *_index_args(files, tmp_path)]) == 0
    common = _query_args(files, tmp_path, "--qrels", str(files / "qrels.tsv"), "--depth", "5")
    assert colbert_retrieve.main([*common, "--faiss_depth", "10000", "--output_dir", str(tmp_path / "e2e")]) == 0
    assert colbert_retrieve.main([*common, "--brute_force", "--output_dir", str(tmp_path / "bf")]) == 0
    e2e = (tmp_path / "e2e" / "ranking.tsv").read_text().splitlines()
    bf = (tmp_path / "bf" / "ranking.tsv").read_text().splitlines()
    assert len(e2e) == 4 * 5 and [r.split("\t")[:3] for r in e2e] == [r.split("\t")[:3] for r in bf]
    record = json.loads((tmp_path / "e2e" / "metrics.json").read_text())
    assert {"MRR@10", "R@50", "R@100", "R@200", "R@1000", "nDCG@10"} <= set(record["metrics"])
    assert record["faiss_depth"] == 10000 and record["nprobe"] == 10  # the settings the FAISS search ran with
    brute = json.loads((tmp_path / "bf" / "metrics.json").read_text())
    assert brute["mode"] == "brute_force" and "faiss_depth" not in brute and "nprobe" not in brute
    assert (tmp_path / "e2e" / "ranking.trec").read_text().split("\n")[0].split()[1] == "Q0"
    # re-ranking BM25-style candidates by encoding the collection on the fly gives the index's scores
    assert (
        colbert_retrieve.main(
            [
                "--checkpoint",
                ckpt,
                "--collection",
                str(files / "collection.tsv"),
                "--topk",
                str(tmp_path / "bf" / "ranking.tsv"),
                "--queries",
                str(files / "queries.tsv"),
                "--output_dir",
                str(tmp_path / "rr"),
                "--no_progress",
            ]
        )
        == 0
    )
    rr = [r.split("\t") for r in (tmp_path / "rr" / "ranking.tsv").read_text().splitlines()]
    assert [r[:2] for r in rr] == [r.split("\t")[:2] for r in bf]
    assert np.allclose([float(r[3]) for r in rr], [float(r.split("\t")[3]) for r in bf], atol=1e-4)
    assert read_queries(str(files / "queries.tsv")) == QUERIES


def test_cli_refuses_an_index_built_by_another_config_and_conflicting_flags(files, tiny_bert_dir, tmp_path, capsys):
    assert _train(files, tiny_bert_dir, tmp_path / "a", "--maxsteps", "0") == 0
    assert colbert_index.main(["--checkpoint", str(tmp_path / "a" / "colbert-0"), *_index_args(files, tmp_path)]) == 0
    torch.manual_seed(1)
    model = build_colbert(
        ColBERTConfig(
            backbone=BackboneConfig(tiny_bert_dir),
            tuning=PrefixConfig(pre_seq_len=4),
            query_maxlen=12,
            doc_maxlen=32,
            dim=8,
        )
    )
    other = save_colbert(str(tmp_path / "b" / "colbert-0"), model)
    query_args = _query_args(files, tmp_path, "--output_dir", str(tmp_path / "out"))
    assert run_cli(colbert_retrieve.main, ["--checkpoint", other, *query_args]) == 2
    err = capsys.readouterr().err
    assert "built by another ColBERT config" in err and "dim: 16 -> 8" in err
    assert run_cli(colbert_retrieve.main, [*query_args, "--doc_maxlen", "64"]) == 2
    assert "--doc_maxlen is 64" in capsys.readouterr().err
    assert run_cli(colbert_train.main, [*_train_args_again(files, tiny_bert_dir, tmp_path / "a")]) == 2
    assert "pass --resume" in capsys.readouterr().err


def _train_args_again(files, tiny_bert_dir, out):
    return [
        "--pretrained_model_cfg",
        tiny_bert_dir,
        "--triples",
        str(files / "triples.jsonl"),
        "--queries",
        str(files / "queries.tsv"),
        "--collection",
        str(files / "collection.tsv"),
        "--output_dir",
        str(out),
    ]
