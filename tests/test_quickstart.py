"""quickstart.py's embed and evaluate stages: library calls that give what the CLIs give (no training here)."""

import json
import os
import shutil

import pytest
import torch

import dense_retriever
import generate_embeddings
import quickstart
from dpr.configs import BiEncoderConfig
from dpr.data.preparation import PreparedData
from dpr.models.biencoder import build_biencoder
from dpr.training.checkpoint import save_checkpoint

TOPICS = [
    "Paris is the capital of France",
    "The Nile flows through Egypt",
    "Shakespeare wrote Hamlet",
    "Penguins live in Antarctica",
    "Copper conducts electricity well",
]
QUERIES = {
    "q0": ("what is the capital of france?", "0"),
    "q1": ("who wrote hamlet?", "2"),
    "q2": ("where do penguins live?", "3"),
}


@pytest.fixture
def data(tmp_path):
    corpus = tmp_path / "psgs.tsv"
    corpus.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}.\tdoc {i}\n" for i, t in enumerate(TOPICS)))
    beir = tmp_path / "mini"
    (beir / "qrels").mkdir(parents=True)
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in QUERIES.items())
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{doc}\t1\n" for q, (_, doc) in QUERIES.items())
    )
    return str(corpus), str(beir)


def _quickstart_argv(beir, out_dir):
    model = ["--model", "bert-tiny", "--sequence_length", "64"]
    return ["--beir_dir", beir, "--out_dir", str(out_dir), *model, "--no_progress"]


def test_zero_shot_stages_equal_the_clis_and_are_reused(data, tmp_path, capsys):
    corpus, beir = data
    args = quickstart.build_parser().parse_args(_quickstart_argv(beir, tmp_path / "qs"))
    os.makedirs(args.out_dir)
    embeddings = str(tmp_path / "qs" / "zero-shot")
    quickstart._embed(args, embeddings, quickstart._model(args), corpus)
    record = quickstart._evaluate(args, "zero-shot", embeddings, quickstart._model(args))
    assert record["queries"] == 3 and record["passages"] == len(TOPICS) and record["mode"] == "beir"
    assert "BEIR mini test, 3 queries:" in capsys.readouterr().out

    flags = ["--pretrained_model_cfg", "bert-tiny", "--sequence_length", "64", "--no_progress"]
    assert (
        generate_embeddings.main(
            flags + ["--batch_size", "64", "--ctx_file", corpus, "--out_file", str(tmp_path / "cli")]
        )
        == 0
    )
    assert (
        dense_retriever.main(
            flags
            + [
                "--encoded_ctx_file",
                str(tmp_path / "cli_*"),
                "--beir_dir",
                beir,
                "--n-docs",
                "100",
                "--out_file",
                str(tmp_path / "cli.trec"),
            ]
        )
        == 0
    )
    assert (tmp_path / "qs" / "zero-shot.trec").read_text() == (tmp_path / "cli.trec").read_text()
    cli = json.loads((tmp_path / "cli.trec.metrics.json").read_text())
    assert record["metrics"] == cli["metrics"] and record["ece_top5"] == cli["ece_top5"]
    assert {k: v for k, v in record.items() if k not in ("search_seconds", "shards")} == {
        k: v for k, v in cli.items() if k not in ("search_seconds", "shards")
    }

    # a second run reuses both stages: the saved metrics are returned, nothing is encoded again
    capsys.readouterr()
    quickstart._embed(args, embeddings, quickstart._model(args), corpus)
    assert quickstart._evaluate(args, "zero-shot", embeddings, quickstart._model(args)) == record
    assert capsys.readouterr().out == ""


def test_main_names_the_dataset_it_ran_on(data, tmp_path, monkeypatch, capsys):
    """The summary line names --beir_dir's dataset, split and counts; training gets the mined negatives
    (prepare and train are stubbed)."""
    corpus, beir = data

    calls = {}

    def prepare(beir_dir, out_dir, *, name, train_split, eval_split, settings):
        calls["prepare"] = (beir_dir, name, train_split, eval_split)
        os.makedirs(out_dir, exist_ok=True)
        passages, bm25 = os.path.join(out_dir, f"{name}-passages.tsv"), os.path.join(out_dir, f"{name}-test-bm25.json")
        shutil.copy(corpus, passages)
        with open(bm25, "w") as handle:
            json.dump({"metrics": {"nDCG@10": 0.5, "R@100": 1.0}}, handle)
        train, dev = os.path.join(out_dir, f"{name}-train.json"), os.path.join(out_dir, f"{name}-dev.json")
        positive = {"title": "doc 0", "text": TOPICS[0] + ".", "passage_id": "0"}
        with open(train, "w") as handle:
            json.dump([{"question": QUERIES["q0"][0], "positive_ctxs": [positive], "hard_negative_ctxs": []}], handle)
        return PreparedData(out_dir, name, passages, train, dev, eval_split, None, None, None, None, bm25, ())

    def train(cfg, encoder):
        calls["train"] = (cfg.train_file, cfg.ctx_embeddings, encoder)
        torch.manual_seed(0)
        model = build_biencoder(BiEncoderConfig.from_flat({**encoder, "pre_seq_len": 4}))
        save_checkpoint(cfg.output_dir, model)
        return None

    monkeypatch.setattr(quickstart, "prepare_beir", prepare)
    monkeypatch.setattr(quickstart, "train", train)
    assert quickstart.main(_quickstart_argv(beir, tmp_path / "qs")) == 0
    printed = capsys.readouterr().out
    assert f"\nmini test (3 queries, {len(TOPICS)} passages); best checkpoint " in printed
    assert "SciFact" not in printed and "bert-tiny + question-side prefix" in printed
    assert calls["prepare"] == (beir, "mini", "train", "test")
    train_files, ctx_embeddings, encoder = calls["train"]
    # Training reads the negatives mined from the zero-shot index: dense ranks 3-30 of 4 non-positives = 1.
    assert train_files == (os.path.join(str(tmp_path / "qs"), "data", "train-dense.json"),)
    with open(train_files[0]) as handle:
        mined = json.load(handle)
    assert len(mined[0]["hard_negative_ctxs"]) == 1 and mined[0]["hard_negative_ctxs"][0]["passage_id"] != "0"
    assert ctx_embeddings == (os.path.join(str(tmp_path / "qs"), "embeddings", "zero-shot_*"),)
    assert encoder == {
        "pretrained_model_cfg": "bert-tiny",
        "tuning": "prefix",
        "sequence_length": 64,
        "dropout": 0.0,
        "prefix_dropout": 0.0,
        "tune_side": "question",
        "pre_seq_len": 32,
    }
