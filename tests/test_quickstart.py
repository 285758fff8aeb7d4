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


def test_zero_shot_stages_equal_the_clis_and_are_reused(data, tmp_path, capsys):
    corpus, beir = data
    args = quickstart.build_parser().parse_args(
        [
            "--beir_dir",
            beir,
            "--out_dir",
            str(tmp_path / "qs"),
            "--model",
            "bert-tiny",
            "--sequence_length",
            "64",
            "--no_progress",
        ]
    )
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
    """The summary line names --beir_dir's dataset, split and counts (prepare and train are stubbed)."""
    corpus, beir = data

    def prepare(argv):
        out = argv[argv.index("--out_dir") + 1]
        os.makedirs(out, exist_ok=True)
        shutil.copy(corpus, os.path.join(out, "scifact-passages.tsv"))
        with open(os.path.join(out, "scifact-test-bm25.json"), "w") as handle:
            json.dump({"metrics": {"nDCG@10": 0.5, "R@100": 1.0}}, handle)
        return 0

    def train(argv):
        torch.manual_seed(0)
        model = build_biencoder(
            BiEncoderConfig.from_flat(
                pretrained_model_cfg="bert-tiny",
                tuning="prefix",
                pre_seq_len=4,
                tune_side="question",
                sequence_length=64,
            )
        )
        save_checkpoint(argv[argv.index("--output_dir") + 1], model)
        return 0

    monkeypatch.setattr(quickstart.prepare_data, "main", prepare)
    monkeypatch.setattr(quickstart.train_dense_encoder, "main", train)
    assert (
        quickstart.main(
            [
                "--beir_dir",
                beir,
                "--out_dir",
                str(tmp_path / "qs"),
                "--model",
                "bert-tiny",
                "--sequence_length",
                "64",
                "--no_progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"\nmini test (3 queries, {len(TOPICS)} passages); best checkpoint " in printed
    assert "SciFact" not in printed and "bert-tiny + question-side prefix" in printed
