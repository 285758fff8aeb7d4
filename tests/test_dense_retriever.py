"""dense_retriever.py: checkpoint -> embeddings -> retrieval in QA and BEIR mode, index shards, bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import embed_in_shards
from reference import brute_force_topk

import generate_embeddings
from dense_retriever import main
from dpr.cli import run_cli
from dpr.configs import BiEncoderConfig
from dpr.embeddings_io import find_shards
from dpr.evaluation.evaluate import evaluate_beir, evaluate_qa, load_beir_queries, load_qa_queries, write_qa_results
from dpr.evaluation.metrics import evaluate_run, write_trec_run
from dpr.evaluation.retrieval_eval import calibration_inputs
from dpr.indexer.faiss_index import IndexParams
from dpr.models.biencoder import build_biencoder
from dpr.options import ConfigError
from dpr.retrieval import InferenceModelConfig, group_shards, load_inference_model, search_groups
from dpr.search import RetrieveConfig, metrics_record, open_shards, retrieve, retrieved_passages
from dpr.training.checkpoint import save_checkpoint

TOPICS = [
    "Paris is the capital of France",
    "The Nile flows through Egypt",
    "Mozart composed The Magic Flute",
    "Mount Everest is in the Himalayas",
    "Photosynthesis needs sunlight",
    "Tokyo hosted the 2020 Olympics",
    "Shakespeare wrote Hamlet",
    "Penguins live in Antarctica",
    "Café culture thrives in Vienna",
    "The Danube reaches the Black Sea",
    "Copper conducts electricity well",
]
QUESTIONS = [
    ("what is the capital of france?", '["Paris"]'),
    ("who wrote hamlet?", "['Shakespeare']"),
    ("where do penguins live?", '["Antarctica", "the south pole"]'),
    ("where is the cafe?", '["Café"]'),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prefix checkpoint, an 11-passage corpus embedded in 3 shards, a QA file and a BEIR folder."""
    root = tmp_path_factory.mktemp("retrieval")
    torch.manual_seed(0)
    model = build_biencoder(
        BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny", tuning="prefix", sequence_length=64)
    )
    ckpt = save_checkpoint(str(root / "dpr_biencoder.0.1"), model)
    corpus = root / "psgs.tsv"
    corpus.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}.\tdoc {i}\n" for i, t in enumerate(TOPICS)))
    embed_in_shards(["--model_file", ckpt, "--ctx_file", str(corpus), "--no_progress"], str(root / "emb"))
    qa = root / "qa.tsv"
    qa.write_text("".join(f"{q}\t{a}\n" for q, a in QUESTIONS))
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, (q, _) in enumerate(QUESTIONS))
    )
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\t0\t1\nq1\t6\t1\nq2\t7\t2\n")
    return {
        "root": root,
        "ckpt": ckpt,
        "corpus": str(corpus),
        "emb": str(root / "emb_*"),
        "qa": str(qa),
        "beir": str(beir),
    }


def _args(s, mode, source, out, *extra, emb=None):
    """dense_retriever.py on the setup's checkpoint and shards (or ``emb``), queries from ``mode`` (--qa_file or
    --beir_dir) ``source``, all 11 passages retrieved into ``out``; then ``extra``."""
    return [
        "--model_file",
        s["ckpt"],
        "--encoded_ctx_file",
        emb or s["emb"],
        mode,
        source,
        "--out_file",
        str(out),
        "--n-docs",
        "11",
        "--no_progress",
        *extra,
    ]


def _qa_args(s, out, *extra):
    return _args(s, "--qa_file", s["qa"], out, "--no_cuda", *extra)


def _beir_args(s, out, *extra):
    return _args(s, "--beir_dir", s["beir"], out, *extra)


def test_qa_mode_writes_dpr_results_and_metrics(setup, tmp_path, capsys):
    out = tmp_path / "results.json"
    plot = tmp_path / "reliability.png"
    assert main(_qa_args(setup, out, "--reliability_plot", str(plot))) == 0
    records = json.loads(out.read_text())
    assert [r["question"] for r in records] == [q for q, _ in QUESTIONS]
    assert records[3]["answers"] == ["Café"]
    for record in records:
        ctxs = record["ctxs"]
        assert sorted(c["id"] for c in ctxs) == sorted(str(i) for i in range(len(TOPICS)))
        assert [c["score"] for c in ctxs] == sorted((c["score"] for c in ctxs), reverse=True)
        assert set(ctxs[0]) == {"id", "title", "text", "score", "has_answer"}
    assert {c["id"] for c in records[0]["ctxs"] if c["has_answer"]} == {"0"}
    assert {c["id"] for c in records[3]["ctxs"] if c["has_answer"]} == {"8"}  # NFC/NFD-safe unicode match
    metrics = json.loads((tmp_path / "results.json.metrics.json").read_text())
    accuracy = metrics["top_k_accuracy"]
    assert list(accuracy) == [str(k) for k in range(1, 12)] and accuracy["11"] == 1.0
    assert 0.0 <= metrics["ece_top5"] <= 1.0 and plot.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "top-1 " in printed and "top-5 " in printed and "ECE" in printed


def test_beir_mode_writes_trec_run_and_metrics(setup, tmp_path, capsys):
    run = tmp_path / "run.trec"
    assert main(_beir_args(setup, run)) == 0
    lines = run.read_text().splitlines()
    assert len(lines) == 3 * 11 and lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    assert {line.split()[0] for line in lines} == {"q0", "q1", "q2"}  # only judged queries are run
    metrics = json.loads((tmp_path / "run.trec.metrics.json").read_text())["metrics"]
    assert "R@100" not in metrics  # k > --n-docs is not reported (it would undercount)
    ranked = {}
    for line in lines:
        qid, _, doc, rank, score, _ = line.split()
        ranked.setdefault(qid, {})[doc] = float(score)
    qrels = {"q0": {"0": 1}, "q1": {"6": 1}, "q2": {"7": 2}}
    assert metrics == evaluate_run(qrels, ranked, (1, 3, 5, 10), ignore_identical_ids=True)
    # hand check: P@1 is the share of queries whose first passage is the judged one, R@10 whether it is in the top 10
    first = {qid: max(docs, key=docs.get) for qid, docs in ranked.items()}
    assert metrics["P@1"] == pytest.approx(sum(first[q] in qrels[q] for q in qrels) / 3)
    top10 = {qid: sorted(docs, key=docs.get, reverse=True)[:10] for qid, docs in ranked.items()}
    assert metrics["R@10"] == pytest.approx(sum(next(iter(qrels[q])) in top10[q] for q in qrels) / 3)
    assert "nDCG@10" in capsys.readouterr().out


def test_index_shards_searched_separately_equal_one_index(setup, tmp_path):
    one, three = tmp_path / "one.json", tmp_path / "three.json"
    assert main(_qa_args(setup, one)) == 0
    assert main(_qa_args(setup, three, "--num_index_shards", "3")) == 0
    a, b = json.loads(one.read_text()), json.loads(three.read_text())
    assert [[c["id"] for c in r["ctxs"]] for r in a] == [[c["id"] for c in r["ctxs"]] for r in b]
    np.testing.assert_allclose(
        [[c["score"] for c in r["ctxs"]] for r in a], [[c["score"] for c in r["ctxs"]] for r in b], atol=1e-6
    )


def test_search_groups_equal_brute_force(setup):
    shards = find_shards(setup["emb"])
    vectors = np.concatenate([s.vectors() for s in shards])  # (11, 128)
    ids = [pid for s in shards for pid in s.ids()]
    queries = np.random.default_rng(0).standard_normal((5, vectors.shape[1])).astype(np.float32)  # (5, 128)
    expected_scores, expected_ids = brute_force_topk(queries, vectors, ids, 4)
    for groups in (1, 2, 3):
        scores, found = search_groups(group_shards(shards, groups), queries, 4, "flat", IndexParams(), buffer=2)
        assert found == expected_ids
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_saved_index_is_reused_and_checked(setup, tmp_path, capsys):
    index_dir = tmp_path / "index"
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    common = ["--save_or_load_index", "--index_path", str(index_dir), "--index_type", "hnsw", "--hnsw_m", "8"]
    assert main(_qa_args(setup, first, *common)) == 0
    assert (index_dir / "embeddings.json").is_file()
    assert main(_qa_args(setup, second, *common)) == 0
    assert json.loads(first.read_text()) == json.loads(second.read_text())
    code = run_cli(main, _qa_args(setup, second, "--save_or_load_index", "--index_path", str(index_dir)))
    assert code == 2 and "embeddings.json: the index" in capsys.readouterr().err


def test_embeddings_from_another_model_config_are_refused(setup, tmp_path, capsys):
    assert (
        generate_embeddings.main(
            [
                "--pretrained_model_cfg",
                "bert-tiny",
                "--sequence_length",
                "64",
                "--ctx_file",
                setup["corpus"],
                "--out_file",
                str(tmp_path / "base"),
                "--no_progress",
            ]
        )
        == 0
    )
    code = run_cli(
        main,
        [
            "--model_file",
            setup["ckpt"],
            "--encoded_ctx_file",
            str(tmp_path / "base_*"),
            "--qa_file",
            setup["qa"],
            "--no_progress",
        ],
    )
    err = capsys.readouterr().err
    assert code == 2 and "base_0/meta.json" in err and "tuning: finetune -> prefix" in err
    assert "base model bert-tiny" in err and setup["ckpt"] in err


def test_random_prefix_without_checkpoint_is_refused(setup, tmp_path, capsys):
    # two runs without --model_file each draw a new random prefix: their vectors must never be mixed
    flags = ["--pretrained_model_cfg", "bert-tiny", "--prefix", "--sequence_length", "64", "--no_progress"]
    assert generate_embeddings.main(flags + ["--ctx_file", setup["corpus"], "--out_file", str(tmp_path / "r")]) == 0
    code = run_cli(main, flags + ["--encoded_ctx_file", str(tmp_path / "r_*"), "--qa_file", setup["qa"]])
    assert code == 2 and "passage-encoder weights differ" in capsys.readouterr().err


def test_missing_ids_and_missing_shard_are_named(setup, tmp_path, capsys):
    copy = tmp_path / "emb"
    for shard in find_shards(setup["emb"]):
        shutil.copytree(shard.path, tmp_path / os.path.basename(shard.path))
    os.remove(tmp_path / "emb_1" / "ids.json")
    args = [
        "--model_file",
        setup["ckpt"],
        "--encoded_ctx_file",
        str(copy) + "_*",
        "--qa_file",
        setup["qa"],
        "--no_progress",
    ]
    assert run_cli(main, args) == 2 and "emb_1/ids.json: missing" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "emb_1")
    assert run_cli(main, args) == 2 and "shard id(s) [1]" in capsys.readouterr().err


def test_qa_line_without_answers_is_named(setup, tmp_path, capsys):
    qa = tmp_path / "qa.tsv"
    qa.write_text('who wrote hamlet?\t["Shakespeare"]\nwhere is paris?\n')
    code = run_cli(main, ["--model_file", setup["ckpt"], "--encoded_ctx_file", setup["emb"], "--qa_file", str(qa)])
    assert code == 2 and f"{qa}:2: expected 'question<TAB>answers'" in capsys.readouterr().err
    qa.write_text("who wrote hamlet?\t[]\n")
    code = run_cli(main, ["--model_file", setup["ckpt"], "--encoded_ctx_file", setup["emb"], "--qa_file", str(qa)])
    assert code == 2 and f"{qa}:1: the answers list is empty" in capsys.readouterr().err


def test_ctx_file_without_the_retrieved_passages_is_named(setup, tmp_path, capsys):
    other = tmp_path / "other.tsv"
    other.write_text("id\ttext\ttitle\n0\tonly one passage\tT\n")
    code = run_cli(main, _qa_args(setup, tmp_path / "r.json", "--ctx_file", str(other)))
    assert code == 2 and f"{other}: 10 retrieved passage ids are not in this file" in capsys.readouterr().err


def test_exactly_one_mode(setup, capsys):
    code = run_cli(main, ["--encoded_ctx_file", setup["emb"]])
    assert code == 2 and "exactly one of --qa_file" in capsys.readouterr().err


def test_regex_match_mode(setup, tmp_path):
    qa = tmp_path / "trec.tsv"
    qa.write_text('capital of france?\t["Par(is|ee)"]\nwho composed?\t["mo[sz]art"]\n')
    out = tmp_path / "r.json"
    assert main(_args(setup, "--qa_file", str(qa), out, "--match", "regex")) == 0
    records = json.loads(out.read_text())
    assert [{c["id"] for c in r["ctxs"] if c["has_answer"]} for r in records] == [{"0"}, {"2"}]


def test_calibration_inputs_leave_out_short_rows():
    scores = np.array([[3.0, 2.0, 1.0], [2.0, -np.inf, -np.inf]], dtype=np.float32)  # (2, 3)
    top, correct = calibration_inputs(scores, [[True, False, False], [False]], depth=5)
    np.testing.assert_array_equal(top, [[3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(correct, [[True, False, False]])


def test_beir_paths_accept_prepare_data_outputs(tmp_path):
    from dpr.data.queries import beir_paths

    (tmp_path / "squad-test-queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (tmp_path / "squad-test-qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\n")
    assert beir_paths(str(tmp_path), "test") == (
        str(tmp_path / "squad-test-queries.jsonl"),
        str(tmp_path / "squad-test-qrels.tsv"),
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        beir_paths(str(tmp_path), "dev")


def _copy_shards(setup, folder):
    for shard in find_shards(setup["emb"]):
        shutil.copytree(shard.path, folder / os.path.basename(shard.path))
    return str(folder / "emb_*")


@pytest.mark.parametrize("groups", ["1", "2"])
def test_save_or_load_index_runs_twice_in_the_default_folder(setup, tmp_path, caplog, groups):
    # the default folder <prefix>_index_flat matches the shards' glob <prefix>_*: the 2nd run read it as a shard
    emb = _copy_shards(setup, tmp_path)
    index_flags = ("--save_or_load_index", "--num_index_shards", groups)

    def args(out):
        return _args(setup, "--qa_file", setup["qa"], out, *index_flags, emb=emb)

    assert main(args(tmp_path / "first.json")) == 0
    assert (tmp_path / "emb_index_flat").is_dir()
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(args(tmp_path / "second.json")) == 0
    assert any(r.getMessage().startswith("loaded DenseIndex") for r in caplog.records)
    assert json.loads((tmp_path / "first.json").read_text()) == json.loads((tmp_path / "second.json").read_text())


def test_ctx_file_of_another_corpus_version_is_refused(setup, tmp_path, capsys):
    rows = [(str(i), f"{t}.", f"doc {i}") for i, t in enumerate(TOPICS)]
    same = tmp_path / "corpus.jsonl"  # the encoded rows in the other format: the same corpus version
    same.write_text("".join(json.dumps({"_id": i, "title": title, "text": text}) + "\n" for i, text, title in rows))
    assert main(_qa_args(setup, tmp_path / "ok.json", "--ctx_file", str(same))) == 0
    edited = tmp_path / "edited.tsv"  # same ids, one text changed after encoding
    edited.write_text(
        "id\ttext\ttitle\n" + "".join(f"{i}\t{text.replace('Paris', 'Lyon')}\t{title}\n" for i, text, title in rows)
    )
    code = run_cli(main, _qa_args(setup, tmp_path / "r.json", "--ctx_file", str(edited)))
    err = capsys.readouterr().err
    assert code == 2 and f"{edited} is not the corpus version the embeddings were encoded from" in err
    assert "emb_0/meta.json records" in err and not (tmp_path / "r.json").exists()


def _beir_copy(setup, tmp_path, qrels):
    beir = tmp_path / "beir"
    shutil.copytree(setup["beir"], beir)
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return _args(setup, "--beir_dir", str(beir), tmp_path / "run.trec")


def test_judged_docs_missing_from_the_corpus_are_counted(setup, tmp_path, caplog, capsys):
    args = _beir_copy(setup, tmp_path, "q0\t0\t1\nq1\tgone\t1\nq2\t7\t2\n")
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    qrels = str(tmp_path / "beir" / "qrels" / "test.tsv")
    assert any(
        r.getMessage().startswith(f"{qrels}: 1 of 3 judged doc ids are not in the 11 embedded passages")
        for r in caplog.records
    )
    args = _beir_copy(setup, tmp_path / "wrong", "q0\tgone\t1\nq1\tlost\t1\n")
    code, err = run_cli(main, args), capsys.readouterr().err
    assert code == 2 and "test.tsv: none of its 2 judged doc ids is in the 11 embedded passages" in err


def test_judged_queries_missing_from_the_queries_file_are_left_out(setup, tmp_path, caplog, capsys):
    args = _beir_copy(setup, tmp_path, "q0\t0\t1\nq1\t6\t1\nq9\t7\t1\n")
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert any(
        "1 of 3 judged queries are not in" in r.getMessage() and "queries.jsonl" in r.getMessage()
        for r in caplog.records
    )
    assert json.loads((tmp_path / "run.trec.metrics.json").read_text())["queries"] == 2
    assert {line.split()[0] for line in (tmp_path / "run.trec").read_text().splitlines()} == {"q0", "q1"}
    code = run_cli(main, _beir_copy(setup, tmp_path / "wrong", "q8\t0\t1\nq9\t7\t1\n"))
    assert code == 2 and "test.tsv: none of its 2 judged query ids is in" in capsys.readouterr().err


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640  # what a plain open() gives under this umask
    os.umask(old)


def test_outputs_get_the_users_umask(setup, tmp_path, umask_027):
    index = tmp_path / "index"
    extra = ("--reliability_plot", str(tmp_path / "plot.png"), "--save_or_load_index", "--index_path", str(index))
    assert main(_beir_args(setup, tmp_path / "run.trec", *extra)) == 0
    assert main(_qa_args(setup, tmp_path / "results.json")) == 0
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {
        "run.trec",
        "run.trec.metrics.json",
        "plot.png",
        "results.json",
        "index.faiss",
        "ids.json",
        "meta.json",
        "embeddings.json",
    }
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(umask_027) for p in files}


def _without_timing(record):
    return {key: value for key, value in record.items() if key != "search_seconds"}


def test_library_retrieve_and_evaluate_equal_the_cli(setup, tmp_path):
    """retrieve + evaluate_beir / evaluate_qa return what dense_retriever.py writes."""
    run_file, results_file = tmp_path / "run.trec", tmp_path / "results.json"
    assert main(_beir_args(setup, run_file, "--no_cuda")) == 0
    assert main(_qa_args(setup, results_file)) == 0
    loaded = load_inference_model(InferenceModelConfig(model_file=setup["ckpt"], no_cuda=True))
    cfg = RetrieveConfig(n_docs=11)

    beir = load_beir_queries(setup["beir"], "test")
    result = retrieve(loaded, open_shards(setup["emb"], beir), beir.texts, cfg)
    assert result.scores.shape == (3, 11) and result.encoder == os.path.abspath(setup["ckpt"])
    evaluation = evaluate_beir(beir, result.ids, result.scores, cfg.n_docs)
    write_trec_run(evaluation.run, tmp_path / "lib.trec", tag="dense")
    assert (tmp_path / "lib.trec").read_text() == run_file.read_text()
    record = metrics_record(beir, cfg.n_docs, {**result.to_dict(), **evaluation.to_dict()})
    cli_record = json.loads((tmp_path / "run.trec.metrics.json").read_text())
    assert _without_timing(record) == _without_timing(cli_record)

    qa = load_qa_queries(setup["qa"])
    shards = open_shards(setup["emb"], qa)
    result = retrieve(loaded, shards, qa.texts, cfg)
    passages = retrieved_passages(shards, result.ids)
    evaluation = evaluate_qa(qa, result.ids, result.scores, passages)
    write_qa_results(str(tmp_path / "lib.json"), qa, result.ids, result.scores, passages, evaluation)
    assert json.loads((tmp_path / "lib.json").read_text()) == json.loads(results_file.read_text())
    assert evaluation.to_dict() == {
        k: v
        for k, v in json.loads((tmp_path / "results.json.metrics.json").read_text()).items()
        if k in ("top_k_accuracy", "ece_top5")
    }


def test_inference_and_retrieve_configs_are_checked(setup):
    with pytest.raises(ConfigError, match="either --model_file"):
        InferenceModelConfig(model_file="m", tasks=(("a", "A"),))
    with pytest.raises(ConfigError, match=r"--task name\(s\) \['a'\] given more than once"):
        InferenceModelConfig(tasks=(("a", "A"), ("a", "B")))
    with pytest.raises(ConfigError, match="unknown encoder settings \\['pre_seq_length'\\]"):
        InferenceModelConfig(encoder_overrides={"pre_seq_length": 4})
    with pytest.raises(ConfigError, match="--n-docs must be >= 1, found 0"):
        RetrieveConfig(n_docs=0)
    with pytest.raises(ConfigError, match="expected flat, hnsw, ivfpq or factory"):
        RetrieveConfig(index_type="factory:")
    # typed settings that contradict the checkpoint's architecture are refused, others override it
    with pytest.raises(ConfigError, match="--pre_seq_len is 4 but"):
        load_inference_model(
            InferenceModelConfig(model_file=setup["ckpt"], encoder_overrides={"pre_seq_len": 4}, no_cuda=True)
        )
    loaded = load_inference_model(
        InferenceModelConfig(model_file=setup["ckpt"], no_cuda=True, encoder_overrides={"sequence_length": 32})
    )
    assert loaded.model.config.backbone.sequence_length == 32 and loaded.model.config.tuning.method == "prefix"
