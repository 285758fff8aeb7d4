"""dense_retriever.py --task: several task checkpoints, one backbone, one index, metrics per task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dpr.retrieval
import generate_embeddings
from dense_retriever import main
from dpr.cli import run_cli
from dpr.configs import BiEncoderConfig
from dpr.evaluation.evaluate import load_beir_queries
from dpr.models.biencoder import build_biencoder
from dpr.retrieval import InferenceModelConfig, load_inference_model, load_task_encoder
from dpr.search import RetrieveConfig, open_shards, retrieve, retrieve_tasks
from dpr.training.checkpoint import save_checkpoint

TOPICS = [
    "Paris is the capital of France",
    "The Nile flows through Egypt",
    "Mozart composed The Magic Flute",
    "Mount Everest is in the Himalayas",
    "Shakespeare wrote Hamlet",
    "Penguins live in Antarctica",
]
QUESTIONS = [("what is the capital of france?", "0"), ("who wrote hamlet?", "4"), ("where do penguins live?", "5")]


def _model(tiny_bert_dir: str, seed: int, tuning: str = "prefix"):
    torch.manual_seed(seed)
    model = build_biencoder(
        BiEncoderConfig.from_flat(pretrained_model_cfg=tiny_bert_dir, tuning=tuning, pre_seq_len=4, sequence_length=32)
    )
    with torch.no_grad():
        for name in model.tuned_names:
            dict(model.named_parameters())[name].normal_(std=0.3)
    return model


@pytest.fixture(scope="module")
def setup(tiny_bert_dir, tmp_path_factory):
    """Tasks a and b share one passage prefix (b's question prefix differs), c has its own passage prefix.

    a and b are what question-side tuning produces: many question encoders over one passage index.
    """
    root = tmp_path_factory.mktemp("tasks_retrieval")
    a, b, c = _model(tiny_bert_dir, 1), _model(tiny_bert_dir, 2), _model(tiny_bert_dir, 3)
    b.ctx_encoder.load_state_dict(a.ctx_encoder.state_dict())
    ckpts = {name: save_checkpoint(str(root / name), model) for name, model in (("a", a), ("b", b), ("c", c))}
    ckpts["ft"] = save_checkpoint(str(root / "ft"), _model(tiny_bert_dir, 4, "finetune"))
    corpus = root / "psgs.tsv"
    corpus.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}.\tdoc {i}\n" for i, t in enumerate(TOPICS)))
    assert (
        generate_embeddings.main(
            ["--model_file", ckpts["a"], "--ctx_file", str(corpus), "--out_file", str(root / "emb"), "--no_progress"]
        )
        == 0
    )
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, (q, _) in enumerate(QUESTIONS))
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{doc}\t1\n" for i, (_, doc) in enumerate(QUESTIONS))
    )
    return {"ckpts": ckpts, "emb": str(root / "emb_*"), "beir": str(beir), "corpus": str(corpus)}


def _args(s, *extra):
    return [
        "--encoded_ctx_file",
        s["emb"],
        "--beir_dir",
        s["beir"],
        "--n-docs",
        "6",
        "--no_cuda",
        "--no_progress",
        *extra,
    ]


@pytest.fixture
def counts(monkeypatch):
    """How many backbones were loaded and indexes built."""
    seen = {"backbones": 0, "indexes": 0}

    def counting(name, target):
        original = getattr(dpr.retrieval, name)

        def wrapper(*args, **kwargs):
            seen[target] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(dpr.retrieval, name, wrapper)

    counting("load_backbone", "backbones")
    counting("build_index", "indexes")
    return seen


def test_several_tasks_one_backbone_one_index_same_results_as_alone(setup, tmp_path, counts, capsys):
    ckpts = setup["ckpts"]
    out = tmp_path / "run.trec"
    assert main(_args(setup, "--task", f"a={ckpts['a']}", "--task", f"b={ckpts['b']}", "--out_file", str(out))) == 0
    assert counts == {"backbones": 1, "indexes": 1}
    printed = capsys.readouterr().out
    assert f"== task a ({ckpts['a']}) ==" in printed and f"== task b ({ckpts['b']}) ==" in printed
    metrics = json.loads((tmp_path / "run.trec.metrics.json").read_text())
    assert list(metrics["tasks"]) == ["a", "b"] and metrics["queries"] == 3
    for task in ("a", "b"):
        alone = tmp_path / f"alone_{task}.trec"
        assert main(_args(setup, "--model_file", ckpts[task], "--out_file", str(alone))) == 0
        assert (tmp_path / f"run.{task}.trec").read_text() == alone.read_text()
        single = json.loads((tmp_path / f"alone_{task}.trec.metrics.json").read_text())
        assert metrics["tasks"][task]["metrics"] == single["metrics"]
    # the two tasks really rank differently (else the comparison above would be vacuous)
    assert (tmp_path / "run.a.trec").read_text() != (tmp_path / "run.b.trec").read_text()


def test_task_whose_passage_encoder_differs_from_the_index_is_refused(setup, counts, capsys):
    ckpts = setup["ckpts"]
    code = run_cli(main, _args(setup, "--task", f"a={ckpts['a']}", "--task", f"c={ckpts['c']}"))
    err = capsys.readouterr().err
    assert code == 2 and "emb_0/meta.json: these embeddings were made by another encoder" in err
    assert f"query encoder: {ckpts['c']}" in err and "passage-encoder weights differ" in err
    assert counts["indexes"] == 0  # refused before any index was built


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "a=A", "--model_file", "M"], "either --model_file (one checkpoint) or --task"),
        (["--task", "a=A", "--task", "a=B"], "--task name(s) ['a'] given more than once"),
    ],
)
def test_bad_task_flags_are_named(setup, capsys, flags, message):
    assert run_cli(main, _args(setup, *flags)) == 2
    assert message in capsys.readouterr().err


def test_malformed_task_flag_and_unusable_checkpoints(setup, capsys):
    with pytest.raises(SystemExit):
        main(_args(setup, "--task", "just_a_path"))
    assert "expected NAME=CHECKPOINT_FOLDER" in capsys.readouterr().err
    ckpts = setup["ckpts"]
    assert run_cli(main, _args(setup, "--task", f"a={ckpts['a']}", "--task", f"ft={ckpts['ft']}")) == 2
    assert "is a finetune checkpoint: it changes the backbone's own weights" in capsys.readouterr().err
    # a typed architecture flag that contradicts a task's checkpoint
    assert run_cli(main, _args(setup, "--task", f"a={ckpts['a']}", "--pre_seq_len", "8")) == 2
    assert "--pre_seq_len is 8 but" in capsys.readouterr().err


def test_library_retrieve_tasks_equals_each_task_alone(setup):
    ckpts = setup["ckpts"]
    queries = load_beir_queries(setup["beir"])
    shards = open_shards(setup["emb"], queries)
    cfg = RetrieveConfig(n_docs=6)
    encoder = load_task_encoder(InferenceModelConfig(tasks=(("a", ckpts["a"]), ("b", ckpts["b"])), no_cuda=True))
    results = retrieve_tasks(encoder, shards, queries.texts, cfg)
    assert list(results) == ["a", "b"] and results["a"].stats.queries == 2 * len(queries.texts)
    for task, result in results.items():
        alone = retrieve(
            load_inference_model(InferenceModelConfig(model_file=ckpts[task], no_cuda=True)), shards, queries.texts, cfg
        )
        assert result.ids == alone.ids and result.encoder == alone.encoder
        np.testing.assert_allclose(result.scores, alone.scores, rtol=1e-5, atol=1e-6)
