"""prepare_data.py on small slices of ../shared/data: DPR schema, clean negatives, no leakage, reruns,
and every kind of bad input."""

from __future__ import annotations

import csv
import json
import os
import random
import sys
from pathlib import Path

import pytest

from dpr.cli import run_cli
from dpr.commands import prepare as prepare_data
from dpr.data import prepare as prep
from dpr.data.manifest import MANIFEST
from dpr.data.preparation import PrepareSettings, prepare_beir
from dpr.data.queries import read_qrels
from dpr.data.readers import iter_passages_tsv, read_dpr_file
from dpr.evaluation.qa_validation import has_answer, parse_answers
from dpr.options import ConfigError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
SCIFACT = os.path.join(SHARED, "scifact")
SQUAD = os.path.join(SHARED, "squad1.1")
FAST = ["--no_progress", "--hard_negatives", "5", "--other_negatives", "3"]


def _need(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} is not available")


def _jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _write_qrels(path: Path, rows: list[tuple[str, str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows))


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory) -> Path:
    """40 train + 20 test SciFact queries, their documents and 250 more: a real but tiny BEIR folder."""
    _need(SCIFACT)
    folder = tmp_path_factory.mktemp("scifact")
    train, test = (read_qrels(os.path.join(SCIFACT, "qrels", f"{s}.tsv")) for s in ("train", "test"))
    train = {q: train[q] for q in sorted(train)[:40]}
    test = {q: test[q] for q in sorted(test)[:20]}
    wanted = {d for qrels in (train, test) for docs in qrels.values() for d in docs}
    corpus = [
        row for i, row in enumerate(_jsonl(os.path.join(SCIFACT, "corpus.jsonl"))) if i < 250 or row["_id"] in wanted
    ]
    queries = [row for row in _jsonl(os.path.join(SCIFACT, "queries.jsonl")) if row["_id"] in {*train, *test}]
    _write_jsonl(folder / "corpus.jsonl", corpus)
    _write_jsonl(folder / "queries.jsonl", queries)
    for name, qrels in (("train", train), ("test", test)):
        _write_qrels(
            folder / "qrels" / f"{name}.tsv", [(q, d, s) for q, docs in qrels.items() for d, s in docs.items()]
        )
    return folder


@pytest.fixture(scope="module")
def scifact_out(scifact_slice, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scifact_dpr")
    assert (
        prepare_data.main(
            ["beir", "--beir_dir", str(scifact_slice), "--out_dir", str(out), "--dev_ratio", "0.25", *FAST]
        )
        == 0
    )
    return out


def _samples(path: Path):
    samples, skipped = read_dpr_file(str(path))
    assert skipped == 0
    return samples


def test_beir_outputs_follow_the_dpr_schema(scifact_slice, scifact_out):
    train, dev = _samples(next(scifact_out.glob("*-train.json"))), _samples(next(scifact_out.glob("*-dev.json")))
    assert len(train) + len(dev) <= 40 and len(dev) >= 5 and len(train) >= 25
    for sample in train + dev:
        assert sample.positive_passages and sample.answers == ()
        assert len(sample.hard_negative_passages) <= 5 and len(sample.negative_passages) == 3
        ctxs = sample.positive_passages + sample.hard_negative_passages + sample.negative_passages
        assert all(p.passage_id for p in ctxs)
        positive_ids = {p.passage_id for p in sample.positive_passages}
        hard_ids = {p.passage_id for p in sample.hard_negative_passages}
        assert not positive_ids & hard_ids  # a hard negative is never a positive
        assert not {p.passage_id for p in sample.negative_passages} & (positive_ids | hard_ids)
    assert sum(len(s.hard_negative_passages) == 5 for s in train) > 0.9 * len(train)


def test_beir_splits_are_disjoint_and_hold_no_test_question(scifact_slice, scifact_out):
    train = {s.question for s in _samples(next(scifact_out.glob("*-train.json")))}
    dev = {s.question for s in _samples(next(scifact_out.glob("*-dev.json")))}
    test = {row["text"] for row in _jsonl(str(next(scifact_out.glob("*-test-queries.jsonl"))))}
    assert train and dev and len(test) == 20
    assert not train & dev and not (train | dev) & test


def test_beir_eval_files_and_bm25_baseline(scifact_slice, scifact_out):
    passages = list(iter_passages_tsv(str(next(scifact_out.glob("*-passages.tsv")))))
    assert len(passages) == len(_jsonl(str(scifact_slice / "corpus.jsonl")))
    assert read_qrels(next(scifact_out.glob("*-test-qrels.tsv"))) == read_qrels(scifact_slice / "qrels" / "test.tsv")
    report = json.loads(next(scifact_out.glob("*-test-bm25.json")).read_text())
    assert report["queries"] == 20 and 0.3 < report["metrics"]["nDCG@10"] <= 1
    run_lines = next(scifact_out.glob("*-test-bm25.trec")).read_text().splitlines()
    assert run_lines and len(run_lines[0].split()) == 6


def test_rerun_reuses_outputs_and_redoes_changed_stages(scifact_slice, tmp_path, capsys):
    argv = ["beir", "--beir_dir", str(scifact_slice), "--out_dir", str(tmp_path), "--name", "sf", *FAST]
    assert prepare_data.main(argv) == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert prepare_data.main(argv) == 0
    assert capsys.readouterr().out.count("reused") == 3  # passages, train, eval (the index is not needed)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes
    assert prepare_data.main([*argv, "--hard_negatives", "2"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    changed = {name for name in after if after[name] != mtimes.get(name)}
    assert changed == {"sf-train.json", "sf-dev.json", MANIFEST}
    assert all(len(s.hard_negative_passages) <= 2 for s in _samples(next(tmp_path.glob("*-train.json"))))


def test_same_seed_same_files_other_seed_other_split(scifact_slice, tmp_path):
    outs = []
    for seed, folder in ((0, "a"), (0, "b"), (1, "c")):
        out = tmp_path / folder
        prepare_data.main(
            [
                "beir",
                "--beir_dir",
                str(scifact_slice),
                "--out_dir",
                str(out),
                "--seed",
                str(seed),
                "--eval_split",
                "none",
                *FAST,
            ]
        )
        outs.append((next(out.glob("*-train.json")).read_bytes(), next(out.glob("*-dev.json")).read_bytes()))
    assert outs[0] == outs[1] and outs[0] != outs[2]


# ---------------------------------------------------------------------------------------- SQuAD


def _squad_slice(path: str, articles: int, paragraphs: int) -> dict:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    data["data"] = [{**a, "paragraphs": a["paragraphs"][:paragraphs]} for a in data["data"][:articles]]
    return data


@pytest.fixture(scope="module")
def squad_out(tmp_path_factory) -> tuple[Path, dict, dict]:
    _need(SQUAD)
    folder = tmp_path_factory.mktemp("squad")
    train = _squad_slice(os.path.join(SQUAD, "train-subset-v1.1.json"), 8, 6)
    test = _squad_slice(os.path.join(SQUAD, "dev-v1.1.json"), 3, 6)
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "test.json").write_text(json.dumps(test))
    out = folder / "out"
    assert (
        prepare_data.main(
            [
                "squad",
                "--squad_file",
                str(folder / "train.json"),
                "--eval_file",
                str(folder / "test.json"),
                "--out_dir",
                str(out),
                "--dev_ratio",
                "0.25",
                *FAST,
            ]
        )
        == 0
    )
    return out, train, test


def test_squad_negatives_hold_no_answer_and_are_not_the_positive(squad_out):
    out, _, _ = squad_out
    samples = _samples(out / "squad1-train.json") + _samples(out / "squad1-dev.json")
    assert samples and sum(len(s.hard_negative_passages) for s in samples) > 3 * len(samples)
    # SQuAD's own annotation is not always verbatim ("3" for "three"), so most, not all, positives match
    assert sum(has_answer(s.answers, s.positive_passages[0].text) for s in samples) > 0.95 * len(samples)
    for sample in samples:
        assert sample.answers and len(sample.positive_passages) == 1
        positive = sample.positive_passages[0]
        for negative in sample.hard_negative_passages + sample.negative_passages:
            assert negative.passage_id != positive.passage_id
            assert not has_answer(sample.answers, negative.text)
            assert not has_answer(sample.answers, negative.title)


def test_squad_split_by_article_and_test_articles_never_trained_on(squad_out):
    out, train_data, test_data = squad_out
    article = {p["context"]: i for i, a in enumerate(train_data["data"]) for p in a["paragraphs"]}
    train = {article[s.positive_passages[0].text] for s in _samples(out / "squad1-train.json")}
    dev = {article[s.positive_passages[0].text] for s in _samples(out / "squad1-dev.json")}
    assert train and dev and not train & dev and len(dev) == 2  # round(8 * 0.25) articles
    test_titles = {a["title"] for a in test_data["data"]}
    trained = {s.positive_passages[0].title for s in _samples(out / "squad1-train.json")}
    assert not trained & test_titles


def test_squad_eval_files(squad_out):
    out, _, test_data = squad_out
    n_questions = sum(len(p["qas"]) for a in test_data["data"] for p in a["paragraphs"])
    with open(out / "squad1-test-qa.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))  # DPR reads its QA files with csv
    assert len(rows) == n_questions
    for line, (question, answers) in enumerate(rows, start=1):
        assert question and parse_answers(answers, "qa", line)
    passages = dict(iter_passages_tsv(str(out / "squad1-passages.tsv")))
    assert len(passages) == 18 and all(p.title for p in passages.values())
    report = json.loads((out / "squad1-test-bm25.json").read_text())
    assert 0.5 < report["answer_accuracy"]["top20"] <= 1 and report["questions"] == n_questions


def test_answer_accuracy_hand_computed():
    passages = {"a": prep.Passage("the answer is Paris", "", "a"), "b": prep.Passage("nothing here", "", "b")}
    queries = [
        prep.Query("q1", "?", ("Paris",), (), "0"),
        prep.Query("q2", "?", ("Rome",), (), "0"),
        prep.Query("q3", "?", ("Paris",), (), "0"),
    ]
    run = {"q1": {"a": 2.0, "b": 1.0}, "q2": {"a": 2.0, "b": 1.0}, "q3": {"b": 3.0, "a": 1.0}}
    assert prep.answer_accuracy(run, queries, passages, [1, 2, 5]) == {"top1": 1 / 3, "top2": 2 / 3, "top5": 2 / 3}


def test_qa_tsv_quotes_a_question_that_starts_with_a_quote(tmp_path):
    queries = [prep.Query("1", '"Bairn" and "hyem" come from what culture?', ("Scots", 'the "Geordie"'), (), "0")]
    prep.write_qa_tsv(str(tmp_path / "qa.tsv"), queries)
    with open(tmp_path / "qa.tsv", encoding="utf-8", newline="") as handle:
        ((question, answers),) = list(csv.reader(handle, delimiter="\t"))
    assert question == queries[0].question and parse_answers(answers, "qa", 1) == ["Scots", 'the "Geordie"']


def test_split_by_group_is_seeded_and_disjoint():
    queries = [prep.Query(str(i), f"q{i}", (), (("p", 1),), str(i % 7)) for i in range(70)]
    train, dev = prep.split_by_group(queries, 0.3, seed=3)
    assert len(dev) == 20 and len(train) == 50  # round(7 * 0.3) = 2 groups of 10
    assert not {q.group for q in train} & {q.group for q in dev}
    # the split depends on the groups and the seed, not on the input order
    assert {q.group for q in prep.split_by_group(list(reversed(queries)), 0.3, seed=3)[1]} == {q.group for q in dev}
    assert prep.split_by_group(queries, 0.0, seed=3) == (queries, [])
    with pytest.raises(ValueError, match="no training group"):
        prep.split_by_group([q for q in queries if q.group in "01"], 0.9, seed=0)  # round(2 * 0.9) = 2 to dev


def test_answer_filter_agrees_with_has_answer():
    passages = {
        "t": prep.Passage("a body without it", "Denver Broncos", "t"),
        "x": prep.Passage("Broncos of Denver", "", "x"),
        "y": prep.Passage("the Denver Broncos won", "", "y"),
    }
    check = prep.AnswerFilter(passages)
    assert check(["Denver Broncos"], "t")  # in the title only: still a false negative
    assert not check(["Denver Broncos"], "x")  # all tokens present, not in sequence
    assert check(["denver broncos"], "y") and not check([], "y") and not check(["  "], "y")
    rng = random.Random(0)
    words = ["a", "b", "c", "d", "e"]
    for _ in range(200):
        text = " ".join(rng.choices(words, k=8))
        answer = " ".join(rng.choices(words, k=rng.randint(1, 3)))
        assert prep.AnswerFilter({"p": prep.Passage(text, "", "p")})([answer], "p") == has_answer([answer], text)


# ------------------------------------------------------------------------------------- bad input


def _beir_folder(root: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write_jsonl(root / "corpus.jsonl", corpus)
    _write_jsonl(root / "queries.jsonl", queries)
    _write_qrels(root / "qrels" / "train.tsv", qrels)
    return root


TOY_CORPUS = [{"_id": f"d{i}", "title": f"T{i}", "text": f"document {i} about topic {i % 3}"} for i in range(12)]
TOY_QUERIES = [{"_id": f"q{i}", "text": f"what about topic {i % 3} number {i}"} for i in range(6)]
TOY_QRELS = [(f"q{i}", f"d{i}", 1) for i in range(6)]


def _run(tmp_path: Path, folder: Path, *extra: str) -> int:
    return run_cli(
        prepare_data.main,
        [
            "beir",
            "--beir_dir",
            str(folder),
            "--out_dir",
            str(tmp_path / "out"),
            "--eval_split",
            "none",
            "--dev_ratio",
            "0.2",
            *FAST,
            *extra,
        ],
    )


def test_qrels_id_missing_from_corpus_is_skipped_and_counted_or_an_error_with_strict(tmp_path, capsys):
    folder = _beir_folder(tmp_path / "b", TOY_CORPUS, TOY_QUERIES, [*TOY_QRELS, ("q1", "gone", 1)])
    assert _run(tmp_path, folder) == 0
    samples = _samples(tmp_path / "out" / "b-train.json") + _samples(tmp_path / "out" / "b-dev.json")
    assert len(samples) == 6  # q1 keeps its real positive; the stale judgment is dropped
    capsys.readouterr()
    assert _run(tmp_path, folder, "--strict", "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == f"error: {folder / 'qrels' / 'train.tsv'}:8: corpus-id 'gone' is not in the corpus "
        "(drop --strict to skip such judgments)"
    )


def test_qrels_naming_no_known_document_is_an_error(tmp_path, capsys):
    folder = _beir_folder(tmp_path / "b", TOY_CORPUS, TOY_QUERIES, [("q1", "x1", 1), ("q2", "x2", 1)])
    assert _run(tmp_path, folder) == 2
    assert "no relevant judgment names a query and a document that exist" in capsys.readouterr().err


def test_duplicate_corpus_id_names_the_id_and_line(tmp_path, capsys):
    folder = _beir_folder(
        tmp_path / "b", [*TOY_CORPUS, {"_id": "d3", "title": "", "text": "again"}], TOY_QUERIES, TOY_QRELS
    )
    assert _run(tmp_path, folder) == 2
    assert capsys.readouterr().err.strip().endswith("corpus.jsonl:13: duplicate document id 'd3' (also on line 4)")


def test_duplicate_query_id_is_an_error(tmp_path, capsys):
    folder = _beir_folder(tmp_path / "b", TOY_CORPUS, [*TOY_QUERIES, {"_id": "q0", "text": "x"}], TOY_QRELS)
    assert _run(tmp_path, folder) == 2
    assert "queries.jsonl:7: duplicate query id 'q0' (also on line 1)" in capsys.readouterr().err


def test_empty_texts_are_skipped_and_counted(tmp_path, capsys):
    corpus = [*TOY_CORPUS, {"_id": "blank", "title": " ", "text": ""}]
    queries = [*TOY_QUERIES, {"_id": "qb", "text": "  "}]
    folder = _beir_folder(tmp_path / "b", corpus, queries, [*TOY_QRELS, ("q0", "blank", 1), ("qb", "d1", 1)])
    assert _run(tmp_path, folder) == 0
    assert "passages 12, blank_documents_skipped 1" in capsys.readouterr().out
    passages = list(iter_passages_tsv(str(tmp_path / "out" / "b-passages.tsv")))
    assert len(passages) == 12 and "blank" not in dict(passages)
    samples = _samples(tmp_path / "out" / "b-train.json") + _samples(tmp_path / "out" / "b-dev.json")
    assert len(samples) == 6  # qb (blank) is gone; q0 keeps its one real positive


def test_squad_of_another_version_names_the_version(tmp_path, capsys):
    (tmp_path / "v2.json").write_text(json.dumps({"version": "v2.0", "data": []}))
    ok = {
        "version": "1.1",
        "data": [
            {
                "title": "A",
                "paragraphs": [
                    {
                        "context": "Paris is in France.",
                        "qas": [{"id": "1", "question": "Where?", "answers": [{"text": "France"}]}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "ok.json").write_text(json.dumps(ok))
    code = run_cli(
        prepare_data.main,
        [
            "squad",
            "--squad_file",
            str(tmp_path / "v2.json"),
            "--eval_file",
            str(tmp_path / "ok.json"),
            "--out_dir",
            str(tmp_path / "out"),
            *FAST,
        ],
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "v2.json: expected SQuAD version 1.1, found version 'v2.0'" in err


def test_squad_structure_errors_name_the_key_path(tmp_path, capsys):
    bad = {"version": "1.1", "data": [{"title": "A", "paragraphs": [{"context": "c", "qas": [{"id": "1"}]}]}]}
    dup = {
        "version": "1.1",
        "data": [
            {
                "title": "A",
                "paragraphs": [
                    {
                        "context": "c",
                        "qas": [
                            {"id": "1", "question": "q?", "answers": [{"text": "c"}]},
                            {"id": "1", "question": "r?", "answers": []},
                        ],
                    }
                ],
            }
        ],
    }
    for name, doc, message in (
        ("bad", bad, "data[0].paragraphs[0].qas[0].question: expected str, found nothing"),
        ("dup", dup, "duplicate question id '1' (also at data[0].paragraphs[0].qas[0])"),
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        code = run_cli(
            prepare_data.main,
            [
                "squad",
                "--squad_file",
                str(tmp_path / f"{name}.json"),
                "--eval_file",
                str(tmp_path / f"{name}.json"),
                "--out_dir",
                str(tmp_path / name),
                *FAST,
            ],
        )
        assert code == 2 and message in capsys.readouterr().err


def test_missing_bm25s_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    folder = _beir_folder(tmp_path / "b", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    monkeypatch.setitem(sys.modules, "bm25s", None)  # `import bm25s` now fails as if not installed
    assert _run(tmp_path, folder) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "error: BM25 needs the bm25s package, which is not installed: pip install bm25s"
    )


def test_bad_flags_and_missing_folder_are_one_line_errors(tmp_path, capsys):
    assert run_cli(prepare_data.main, ["beir", "--beir_dir", str(tmp_path / "nope"), "--out_dir", str(tmp_path)]) == 2
    assert "corpus.jsonl: no such file" in capsys.readouterr().err
    folder = _beir_folder(tmp_path / "b", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    assert _run(tmp_path, folder, "--dev_ratio", "1.5") == 2
    assert "--dev_ratio must be in [0, 1)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- library


def test_prepare_beir_returns_the_paths_it_wrote_and_reuses_them(tmp_path):
    folder = _beir_folder(tmp_path / "b", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    settings = PrepareSettings(dev_ratio=0.2, negatives=prep.NegativeConfig(5, 3, 0), progress=False)
    prepared = prepare_beir(str(folder), str(tmp_path / "out"), eval_split=None, settings=settings)
    assert prepared.name == "b" and prepared.eval_split is None and prepared.eval_qrels is None
    assert prepared.bm25_run is None and prepared.eval_qa is None
    for path in (prepared.passages, prepared.train, prepared.dev, prepared.manifest):
        assert os.path.isfile(path) and os.path.dirname(path) == str(tmp_path / "out")
    assert [(s.stage, s.reused) for s in prepared.stages] == [
        ("passages", False),
        ("bm25-corpus", False),
        ("train", False),
    ]
    assert len(_samples(prepared.train)) + len(_samples(prepared.dev)) == 6
    again = prepare_beir(str(folder), str(tmp_path / "out"), eval_split=None, settings=settings)
    assert [(s.stage, s.reused) for s in again.stages] == [("passages", True), ("train", True)]
    with pytest.raises(ConfigError, match="train_split and eval_split are both 'train'"):
        prepare_beir(str(folder), str(tmp_path / "out"), eval_split="train", settings=settings)
    with pytest.raises(ConfigError, match=r"dev_ratio must be in \[0, 1\)"):
        PrepareSettings(dev_ratio=1.0)
