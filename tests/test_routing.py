"""Per-query task routing: summaries, TaskEncoder.encode(task="auto"), dense_retriever.py --task auto."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys

import numpy as np
import pytest
import torch

import dense_retriever
import generate_embeddings
import train_dense_encoder
from dpr.cli import run_cli
from dpr.commands import route
from dpr.configs import BiEncoderConfig
from dpr.models.biencoder import build_biencoder
from dpr.models.tasks import TaskError
from dpr.retrieval import InferenceModelConfig, TaskEncoder, load_inference_model
from dpr.routing import (
    BASE_ROUTE,
    SUMMARY_FILE,
    RoutingError,
    SummaryConfig,
    TaskSummary,
    choose_routes,
    fit_summary,
    read_summary,
    spherical_kmeans,
    write_summary,
)
from dpr.search import open_shards, retrieve_routed
from dpr.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

GEO = ["river", "mountain", "capital", "country", "ocean", "island", "city", "desert", "lake", "border"]
BIO = ["protein", "cell", "gene", "enzyme", "virus", "blood", "tissue", "neuron", "insulin", "bacteria"]
FAR = ["1234 5678 9012", "the the the"]  # like neither word list (measured: similarity < 0.5, thresholds > 0.8)


def _questions(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 7))) for _ in range(n)]


def _summary(centroids, threshold: float) -> TaskSummary:
    return TaskSummary("m", "mean", np.asarray(centroids, dtype=np.float32), threshold, 0.05, (0.0,) * 101, 10, 2)


def test_choose_routes_hand_computed():
    # cosine to [1, 0] and to [0, 1]; thresholds 0.8 and 0.9
    summaries = {"a": _summary([[1, 0]], 0.8), "b": _summary([[0, 1]], 0.9)}
    vectors = np.array([[2, 0], [0.6, 0.8], [0.1, 1], [-1, 0], [0.7, 0.7]], dtype=np.float32)
    # [2,0]: a 1.0; [.6,.8]: a 0.6 < 0.8, b 0.8 < 0.9 -> base; [.1,1]: b 0.995; [-1,0]: neither;
    # [.7,.7]: a 0.707 < 0.8, b 0.707 < 0.9 -> base
    assert choose_routes(summaries, vectors) == ["a", BASE_ROUTE, "b", BASE_ROUTE, BASE_ROUTE]
    # both pass: the more similar wins, whichever threshold is lower
    both = {"a": _summary([[1, 0]], 0.1), "b": _summary([[0.6, 0.8]], 0.1)}
    assert choose_routes(both, np.array([[1, 0.1], [0.5, 0.9]], dtype=np.float32)) == ["a", "b"]
    # k centroids: the nearest one counts
    two = {"a": _summary([[1, 0], [0, 1]], 0.9)}
    assert choose_routes(two, np.array([[0, 3]], dtype=np.float32)) == ["a"]


def test_spherical_kmeans_finds_two_directions_and_fit_summary_sets_the_quantile():
    rng = np.random.default_rng(0)
    x = np.concatenate([[5, 0, 0] + rng.normal(0, 0.3, (20, 3)), [0, 0, 5] + rng.normal(0, 0.3, (20, 3))])
    centroids = spherical_kmeans(x, 2, seed=1)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert sorted(int(np.argmax(np.abs(c))) for c in centroids) == [0, 2]
    held = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0.8, 0.6], [0, 0, 1], [0.8, 0.6, 0]], dtype=np.float32)
    summary = fit_summary(x, held, SummaryConfig(clusters=2, quantile=0.25), model_name="m", pooling="mean")
    scores = (held / np.linalg.norm(held, axis=1, keepdims=True)) @ centroids.T
    assert summary.threshold == pytest.approx(np.quantile(scores.max(axis=1), 0.25), abs=1e-6)
    assert summary.questions == 40 and summary.held_out == 5 and len(summary.held_out_scores) == 101
    with pytest.raises(RoutingError, match="3 clusters need at least 3 questions, found 2"):
        spherical_kmeans(x[:2], 3)


def test_summary_round_trip_and_bad_files(tmp_path):
    summary = _summary([[0.6, 0.8], [1, 0]], 0.7)
    path = write_summary(str(tmp_path), summary)
    assert path == str(tmp_path / SUMMARY_FILE)
    back = read_summary(str(tmp_path))
    assert np.array_equal(back.centroids, summary.centroids)
    assert (back.threshold, back.pooling, back.questions, back.held_out) == (0.7, "mean", 10, 2)
    assert read_summary(str(tmp_path / "nothing")) is None
    data = json.loads((tmp_path / SUMMARY_FILE).read_text())
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({**data, "version": 9}))
    with pytest.raises(RoutingError, match="version 9 is newer than this code"):
        read_summary(str(tmp_path))
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({**data, "centroids": []}))
    with pytest.raises(RoutingError, match="'centroids' must be a non-empty"):
        read_summary(str(tmp_path))
    del data["threshold"]
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(data))
    with pytest.raises(RoutingError, match="not a task summary .KeyError"):
        read_summary(str(tmp_path))


def _task(seed: int, tune_side: str = "question", pooling: str = "mean"):
    torch.manual_seed(seed)
    config = BiEncoderConfig.from_flat(
        pretrained_model_cfg="bert-tiny",
        tuning="prefix",
        pre_seq_len=4,
        sequence_length=32,
        tune_side=tune_side,
        pooling=pooling,
    )
    model = build_biencoder(config)
    with torch.no_grad():
        for name in model.tuned_names:
            dict(model.named_parameters())[name].normal_(std=0.3)
    return model


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Question-side prefix tasks 'geo' and 'bio' on bert-tiny, summarised from their word lists' questions.

    geo's questions come as a DPR JSON file, bio's as BEIR queries of which only the train qrels' are used.
    """
    root = tmp_path_factory.mktemp("routing")
    ckpts = {name: save_checkpoint(str(root / name), _task(seed)) for name, seed in (("geo", 1), ("bio", 2))}
    ckpts["both"] = save_checkpoint(str(root / "both"), _task(3, tune_side="both"))
    ckpts["cls"] = save_checkpoint(str(root / "cls"), _task(4, pooling="cls"))
    geo_file = root / "geo-train.json"
    geo_file.write_text(
        json.dumps([{"question": q, "answers": [], "positive_ctxs": []} for q in _questions(GEO, 40, 1)])
    )
    bio, leaked = _questions(BIO, 40, 2), _questions(GEO, 10, 9)  # the "test" queries must not be summarised
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"b{i}", "text": q}) + "\n" for i, q in enumerate(bio + leaked))
    )
    (root / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"b{i}\td\t1\n" for i in range(40)))
    common = ["--quantile", "0", "--held_out_fraction", "0.5", "--no_cuda"]
    assert route.main(["summarize", "--model_file", ckpts["geo"], "--questions", str(geo_file), *common]) == 0
    bio_args = ["--questions", str(root / "queries.jsonl"), "--qrels", str(root / "train.tsv")]
    assert route.main(["summarize", "--model_file", ckpts["bio"], *bio_args, *common]) == 0
    return {"root": root, "ckpts": ckpts}


@pytest.fixture(scope="module")
def encoder(tasks):
    ckpts = tasks["ckpts"]
    return TaskEncoder.from_checkpoints({"geo": ckpts["geo"], "bio": ckpts["bio"]})


def test_summarize_writes_the_summary_of_the_selected_questions(tasks):
    geo, bio = read_summary(tasks["ckpts"]["geo"]), read_summary(tasks["ckpts"]["bio"])
    distinct = len(set(_questions(GEO, 40, 1)))
    assert geo.questions + geo.held_out == distinct and geo.held_out == round(distinct * 0.5)
    assert bio.questions + bio.held_out == len(set(_questions(BIO, 40, 2)))  # the 10 "test" queries left out
    assert geo.pooling == "mean" and geo.model_name == "bert-tiny" and geo.centroids.shape == (1, 128)


def test_routing_picks_each_domain_and_sends_far_queries_to_the_base(encoder):
    geo, bio = _questions(GEO, 8, 5), _questions(BIO, 8, 6)  # questions no summary saw
    routes = encoder.route([*geo, *bio, *FAR])
    assert routes == ["geo"] * 8 + ["bio"] * 8 + [BASE_ROUTE] * 2


def test_auto_vectors_equal_the_chosen_encoders_in_input_order(encoder):
    texts = [FAR[0], *_questions(GEO, 3, 7), *_questions(BIO, 3, 8), FAR[1]]
    random.Random(0).shuffle(texts)
    vectors, routes = encoder.encode(texts, "auto", return_routes=True)
    assert set(routes) == {"geo", "bio", BASE_ROUTE}
    zero_shot = load_inference_model(
        InferenceModelConfig(encoder_overrides={"pretrained_model_cfg": "bert-tiny", "pooling": "mean"}, no_cuda=True)
    )
    base = zero_shot.model.encode_query
    for text, vector, task in zip(texts, vectors, routes, strict=True):
        if task == BASE_ROUTE:
            tokens = zero_shot.tokenizer([text], return_tensors="pt")
            with torch.no_grad():
                expected = base(tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"])[0].numpy()
        else:
            expected = encoder.encode([text], task)[0]
        np.testing.assert_allclose(vector, expected, atol=1e-5)
    # the order follows the input: reversed texts give reversed vectors and routes
    back, back_routes = encoder.encode(texts[::-1], "auto", return_routes=True)
    np.testing.assert_allclose(back, vectors[::-1], atol=1e-5)
    assert back_routes == routes[::-1]
    assert np.asarray(encoder.encode(texts, "auto")).shape == vectors.shape


def test_auto_without_a_summary_names_the_command(tasks):
    ckpts = tasks["ckpts"]
    encoder = TaskEncoder.from_checkpoints({"geo": ckpts["geo"], "plain": ckpts["both"]})
    with pytest.raises(
        RoutingError, match=r"missing for 'plain' .*both\); make one with: python -m dpr.route summarize"
    ):
        encoder.encode(["a river"], "auto")
    encoder.set_summary("plain", read_summary(ckpts["bio"]))
    assert encoder.route(_questions(GEO, 2, 5) + _questions(BIO, 2, 6)) == ["geo", "geo", "plain", "plain"]


def test_auto_refusals(tasks, encoder):
    with pytest.raises(TaskError, match="routes questions; encode passages with a named task"):
        encoder.encode(["x"], "auto", side="passage")
    with pytest.raises(TaskError, match="return_routes needs task='auto'"):
        encoder.encode(["x"], "geo", return_routes=True)
    with pytest.raises(TaskError, match="'auto' is reserved"):
        TaskEncoder("bert-tiny").register("auto", tasks["ckpts"]["geo"])
    mixed = TaskEncoder.from_checkpoints({"geo": tasks["ckpts"]["geo"], "cls": tasks["ckpts"]["cls"]})
    mixed.set_summary("cls", read_summary(tasks["ckpts"]["bio"]))
    with pytest.raises(TaskError, match="pool or normalise differently, so they have no common base model"):
        mixed.route(["x"])


@pytest.fixture(scope="module")
def beir(tasks):
    """A corpus of geo and bio passages embedded by the base model, and BEIR queries of both domains and FAR."""
    root, ckpts = tasks["root"], tasks["ckpts"]
    passages = _questions(GEO, 10, 11) + _questions(BIO, 10, 12)
    corpus = root / "psgs.tsv"
    corpus.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}\tdoc {i}\n" for i, t in enumerate(passages)))
    # a question-side checkpoint's passage encoder is the base model: this is the zero-shot index
    flags = ["--model_file", ckpts["geo"], "--ctx_file", str(corpus), "--out_file", str(root / "emb"), "--no_progress"]
    assert generate_embeddings.main(flags) == 0
    folder = root / "beir"
    (folder / "qrels").mkdir(parents=True)
    queries = [*_questions(GEO, 3, 13), *_questions(BIO, 3, 14), *FAR]
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, q in enumerate(queries))
    )
    judged = "".join(f"q{i}\t{i % 20}\t1\n" for i in range(len(queries)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judged)
    return {"emb": str(root / "emb_*"), "dir": str(folder), "queries": queries}


def _retriever_args(beir, out, *extra):
    flags = ["--encoded_ctx_file", beir["emb"], "--beir_dir", beir["dir"], "--n-docs", "10", "--out_file", str(out)]
    return [*flags, "--no_cuda", "--no_progress", *extra]


def test_dense_retriever_task_auto_end_to_end(tasks, beir, encoder, tmp_path, capsys):
    ckpts = tasks["ckpts"]
    out = tmp_path / "run.trec"
    assert (
        dense_retriever.main(
            _retriever_args(
                beir, out, "--task", "auto", "--task", f"geo={ckpts['geo']}", "--task", f"bio={ckpts['bio']}"
            )
        )
        == 0
    )
    metrics = json.loads((tmp_path / "run.trec.metrics.json").read_text())
    routes = encoder.route(beir["queries"])
    assert metrics["routing"]["queries"] == {f"q{i}": r for i, r in enumerate(routes)}
    assert metrics["routing"]["counts"] == {"geo": 3, "bio": 3, BASE_ROUTE: 2}
    printed = capsys.readouterr().out
    assert "(base)  2" in printed and "nDCG@10" in printed
    # a geo-routed query's ranking is the geo task's own ranking of it
    assert dense_retriever.main(_retriever_args(beir, tmp_path / "geo.trec", "--model_file", ckpts["geo"])) == 0
    routed_run, geo_run = out.read_text().splitlines(), (tmp_path / "geo.trec").read_text().splitlines()
    for qid in ("q0", "q1", "q2"):
        assert [line for line in routed_run if line.startswith(f"{qid} ")] == [
            line for line in geo_run if line.startswith(f"{qid} ")
        ]
    assert routed_run != geo_run  # the other queries were not encoded by geo: the check above is not vacuous


def test_dense_retriever_task_auto_refusals(tasks, beir, tmp_path, capsys):
    ckpts = tasks["ckpts"]
    code = run_cli(dense_retriever.main, _retriever_args(beir, tmp_path / "r", "--task", "auto"))
    assert code == 2 and "--task auto routes queries among the other --task" in capsys.readouterr().err
    encoder = TaskEncoder.from_checkpoints({"geo": ckpts["geo"], "both": ckpts["both"]})
    with pytest.raises(Exception, match=r"task\(s\) \['both'\] tune the passage side too"):
        retrieve_routed(encoder, open_shards(beir["emb"]), ["a river"])


def test_training_writes_a_task_summary(tmp_path, tiny_bert_dir, tiny_dpr_files, capsys):
    train, dev = tiny_dpr_files
    out = tmp_path / "run"
    flags = ["--prefix", "--pre_seq_len", "4", "--sequence_length", "32", "--batch_size", "8", "--num_train_epochs"]
    argv = ["--pretrained_model_cfg", tiny_bert_dir, "--train_file", train, "--dev_file", dev, "--output_dir", str(out)]
    assert train_dense_encoder.main([*argv, *flags, "1", "--task_summary"]) == 0
    best = json.loads((out / "best_checkpoint.json").read_text())["path"]
    summary = read_summary(str(out / best))
    assert summary.questions + summary.held_out == 24 and summary.model_name == tiny_bert_dir
    assert summary.pooling == "cls"  # auto pooling of a plain BERT folder, as the tasks resolve it
    # the run folder stands for its best checkpoint (run_scripts/cpu_routing_bench.sh passes run folders)
    by_run, by_best = (
        TaskEncoder.from_checkpoints({"t": str(out)}),
        TaskEncoder.from_checkpoints({"t": str(out / best)}),
    )
    assert by_run.checkpoint("t") == by_best.checkpoint("t") == os.path.abspath(out / best)
    texts = ["a question about cells", "another one"]
    assert np.array_equal(by_run.encode(texts, task="t"), by_best.encode(texts, task="t"))
    code = run_cli(
        train_dense_encoder.main,
        [*argv[:-1], str(tmp_path / "ft"), "--sequence_length", "32", "--num_train_epochs", "1", "--task_summary"],
    )
    assert code == 2 and "--task_summary is for task-library checkpoints" in capsys.readouterr().err
    assert not list(tmp_path.glob("ft/*/config.json"))  # refused before any training step or checkpoint


def test_bench_routing_prints_the_table(tasks, beir, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_routing", os.path.join("bench", "routing.py"))
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_routing", bench)  # its dataclass looks its module up
    spec.loader.exec_module(bench)
    ckpts, out = tasks["ckpts"], tmp_path / "routing.json"
    domain = [beir["dir"] + "/queries.jsonl", beir["dir"] + "/qrels/test.tsv", beir["emb"]]
    argv = ["--task", f"geo={ckpts['geo']}", "--task", f"bio={ckpts['bio']}", "--domain", "geo", *domain]
    assert (
        bench.main([*argv, "--domain", "other", *domain, "--leave_one_out", "--n_docs", "10", "--out", str(out)]) == 0
    )
    rows = {row["domain"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["geo"]["routes"] == {"geo": 3, "bio": 3, BASE_ROUTE: 2} and rows["other"]["own_prefix"] is None
    assert rows["geo"]["held_out_routes"] == {"geo": 0, "bio": 3, BASE_ROUTE: 5}  # geo's queries go to the base
    assert "| geo, its task unregistered | 8 |" in capsys.readouterr().out
