"""Readers: DPR JSON / JSONL (+gzip), errors that say where, upsample rates, globs, TSV and BEIR."""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import logging
import os
from pathlib import Path

import pytest

from dpr.data.readers import (
    BiEncoderSample,
    DataFormatError,
    Passage,
    expand_patterns,
    iter_beir_corpus,
    iter_passages_tsv,
    parse_upsample_rates,
    read_dpr_file,
    read_dpr_files,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data
SCIFACT_CORPUS = SHARED_DATA / "scifact" / "corpus.jsonl"


def _record(question: str, n_pos: int = 1) -> dict:
    return {
        "dataset": "nq",
        "question": question,
        "answers": [f"{question}-answer"],
        "positive_ctxs": [
            {"title": f"T{i}", "text": f"{question} pos {i}", "score": 1.0, "title_score": 0, "passage_id": f"p{i}"}
            for i in range(n_pos)
        ],
        "negative_ctxs": [{"title": "N", "text": f"{question} neg", "psg_id": 17}],
        "hard_negative_ctxs": [
            {"title": "H", "text": f"{question} hard 0", "passage_id": "h0"},
            {"title": "", "text": f"{question} hard 1", "passage_id": "h1"},
        ],
    }


RECORDS = [_record("q1", 2), _record("q2"), _record("q3")]


def _write(path: Path, records: list, jsonl: bool, gz: bool = False, blank_first: bool = False) -> Path:
    if jsonl:
        text = ("\n" if blank_first else "") + "".join(json.dumps(r) + "\n" for r in records)
    else:
        text = json.dumps(records, indent=2)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_json_record_is_read_field_by_field(tmp_path: Path) -> None:
    samples, skipped = read_dpr_file(str(_write(tmp_path / "d.json", RECORDS, jsonl=False)))
    assert skipped == 0
    assert [s.question for s in samples] == ["q1", "q2", "q3"]
    assert samples[0] == BiEncoderSample(
        question="q1",
        answers=("q1-answer",),
        positive_passages=(Passage("q1 pos 0", "T0", "p0"), Passage("q1 pos 1", "T1", "p1")),
        negative_passages=(Passage("q1 neg", "N", "17"),),  # psg_id int -> "17"
        hard_negative_passages=(Passage("q1 hard 0", "H", "h0"), Passage("q1 hard 1", "", "h1")),
        dataset="nq",
    )


@pytest.mark.parametrize(
    "name, jsonl, gz",
    [
        ("d.jsonl", True, False),
        ("d.json.gz", False, True),
        ("d.jsonl.gz", True, True),
        ("no_suffix_but_gzipped.json", False, True),
        ("no_suffix_jsonl.data", True, True),
    ],
)
def test_jsonl_and_gzip_read_like_json(tmp_path: Path, name: str, jsonl: bool, gz: bool) -> None:
    expected, _ = read_dpr_file(str(_write(tmp_path / "ref.json", RECORDS, jsonl=False)))
    got, skipped = read_dpr_file(str(_write(tmp_path / name, RECORDS, jsonl=jsonl, gz=gz)))
    assert got == expected and skipped == 0


def test_optional_fields_may_be_absent_and_ids_are_optional(tmp_path: Path) -> None:
    record = {"question": "bare", "positive_ctxs": [{"text": "only text"}]}
    (sample,), _ = read_dpr_file(str(_write(tmp_path / "d.jsonl", [record], jsonl=True)))
    assert sample == BiEncoderSample("bare", (), (Passage("only text", "", None),), (), (), "")


def test_passage_id_preferred_over_psg_id(tmp_path: Path) -> None:
    record = {"question": "q", "positive_ctxs": [{"text": "t", "passage_id": 5, "psg_id": 9}]}
    (sample,), _ = read_dpr_file(str(_write(tmp_path / "d.json", [record], jsonl=False)))
    assert sample.positive_passages[0].passage_id == "5"


def test_ctx_field_selects_the_passage_text(tmp_path: Path) -> None:
    records = copy.deepcopy(RECORDS[1:])
    for record in records:
        for key in ("positive_ctxs", "negative_ctxs", "hard_negative_ctxs"):
            for ctx in record[key]:
                ctx["abstract"] = "ABS " + ctx["text"]
    path = str(_write(tmp_path / "d.json", records, jsonl=False))
    samples, _ = read_dpr_file(path, ctx_field="abstract")
    assert samples[0].positive_passages[0] == Passage("ABS q2 pos 0", "T0", "p0")
    by_title, _ = read_dpr_file(path, ctx_field="title")
    # The title becomes the text and is not repeated as the title.
    assert by_title[0].positive_passages[0] == Passage("T0", "", "p0")

    del records[1]["hard_negative_ctxs"][1]["abstract"]
    bad = _write(tmp_path / "bad_abstract.json", records, jsonl=False)
    with pytest.raises(DataFormatError) as err:
        read_dpr_file(str(bad), ctx_field="abstract")
    message = str(err.value)
    assert "bad_abstract.json" in message and "record 2" in message
    assert "hard_negative_ctxs[1].abstract" in message and "missing" in message


def test_samples_without_positive_are_skipped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = copy.deepcopy(RECORDS)
    records[0]["positive_ctxs"] = []
    records[2]["positive_ctxs"] = []
    path = _write(tmp_path / "skips.jsonl", records, jsonl=True)
    with caplog.at_level(logging.INFO, logger="dpr.data.readers"):
        samples, skipped = read_dpr_file(str(path))
    assert [s.question for s in samples] == ["q2"] and skipped == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("skips.jsonl" in m and "2 skipped" in m for m in messages)


def _break(record: dict, how: str) -> str:
    """Damage ``record`` in place; return the field name the error must name."""
    if how == "no_question":
        del record["question"]
        return "'question'"
    if how == "int_question":
        record["question"] = 42
        return "'question'"
    if how == "positives_not_list":
        record["positive_ctxs"] = {"text": "x"}
        return "'positive_ctxs'"
    if how == "no_positives":
        del record["positive_ctxs"]
        return "'positive_ctxs'"
    if how == "text_not_string":
        record["hard_negative_ctxs"][1]["text"] = ["not", "a", "string"]
        return "'hard_negative_ctxs[1].text'"
    if how == "negatives_not_list":
        record["negative_ctxs"] = "nope"
        return "'negative_ctxs'"
    if how == "answers_not_list":
        record["answers"] = "an answer"
        return "'answers'"
    if how == "passage_not_object":
        record["positive_ctxs"][0] = "just text"
        return "'positive_ctxs[0]'"
    if how == "title_not_string":
        record["negative_ctxs"][0]["title"] = 3
        return "'negative_ctxs[0].title'"
    raise AssertionError(how)


BREAKAGES = [
    "no_question",
    "int_question",
    "positives_not_list",
    "no_positives",
    "text_not_string",
    "negatives_not_list",
    "answers_not_list",
    "passage_not_object",
    "title_not_string",
]


@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
@pytest.mark.parametrize("how", BREAKAGES)
def test_malformed_record_names_file_record_and_field(tmp_path: Path, how: str, jsonl: bool) -> None:
    records = copy.deepcopy(RECORDS)
    field = _break(records[1], how)
    path = _write(tmp_path / f"broken_{how}.data", records, jsonl=jsonl, blank_first=True)
    with pytest.raises(DataFormatError) as err:
        read_dpr_file(str(path))
    message = str(err.value)
    assert f"broken_{how}.data" in message
    assert "record 2" in message and field in message and "expected" in message
    if jsonl:  # a blank first line: record 2 sits on line 3
        assert "line 3" in message


def test_record_that_is_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path / "list.json", [RECORDS[0], [1, 2]], jsonl=False)
    with pytest.raises(DataFormatError, match=r"list\.json: record 2, field '<record>'"):
        read_dpr_file(str(path))


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    bad_json = tmp_path / "cut.json"
    bad_json.write_text(json.dumps(RECORDS, indent=1)[:-40])
    with pytest.raises(DataFormatError, match=r"cut\.json: line \d+ column \d+: malformed JSON"):
        read_dpr_file(str(bad_json))
    bad_jsonl = tmp_path / "cut.jsonl"
    lines = [json.dumps(r) for r in RECORDS]
    lines[2] = lines[2][:-5]
    bad_jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"cut\.jsonl: line 3 \(record 3\): malformed JSON"):
        read_dpr_file(str(bad_jsonl))


@pytest.mark.parametrize(
    "text, expected",
    [("1,4", (1, 4)), ("[1, 4]", (1, 4)), ("1 4", (1, 4)), (" 2 ", (2,)), ("(3,1,1)", (3, 1, 1)), ("[7]", (7,))],
)
def test_parse_upsample_rates_accepts(text: str, expected: tuple[int, ...]) -> None:
    assert parse_upsample_rates(text) == expected


@pytest.mark.parametrize(
    "text", ["", "[]", "0,1", "-1", "1.5", "a", "1,,4", "1,4,", "[1,4", "__import__('os')", "1 4,5"]
)
def test_parse_upsample_rates_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="upsample rates"):
        parse_upsample_rates(text)


def test_parse_upsample_rates_as_argparse_type(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=parse_upsample_rates)
    assert parser.parse_args(["--rates", "[1, 4]"]).rates == (1, 4)
    with pytest.raises(SystemExit):
        parser.parse_args(["--rates", "1;4"])
    assert "upsample rates" in capsys.readouterr().err


def test_upsample_rates_repeat_each_pattern(tmp_path: Path) -> None:
    _write(tmp_path / "a-1.json", RECORDS[:1], jsonl=False)
    _write(tmp_path / "a-2.jsonl", RECORDS[1:2], jsonl=True)
    _write(tmp_path / "b.json", RECORDS[2:], jsonl=False)
    patterns = [str(tmp_path / "a-*"), str(tmp_path / "b.json")]
    questions = [s.question for s in read_dpr_files(patterns, upsample_rates=(1, 3))]
    assert questions == ["q1", "q2", "q3", "q3", "q3"]
    assert [s.question for s in read_dpr_files(patterns)] == ["q1", "q2", "q3"]
    with pytest.raises(ValueError, match=r"1 upsample rates .* 2 file patterns"):
        read_dpr_files(patterns, upsample_rates=[2])
    with pytest.raises(ValueError, match="positive"):
        read_dpr_files(patterns, upsample_rates=[1, 0])


def test_glob_patterns_are_sorted_and_must_match(tmp_path: Path) -> None:
    for name in ("c-2.json", "c-10.json", "c-1.json", "other.json"):
        _write(tmp_path / name, RECORDS[:1], jsonl=False)
    (tmp_path / "c-dir.json").mkdir()  # directories never count as matches
    found = expand_patterns(str(tmp_path / "c-*.json"))
    assert [os.path.basename(p) for p in found] == ["c-1.json", "c-10.json", "c-2.json"]
    both = expand_patterns([str(tmp_path / "other.json"), str(tmp_path / "c-1*")])
    assert [os.path.basename(p) for p in both] == ["other.json", "c-1.json", "c-10.json"]
    with pytest.raises(FileNotFoundError, match="nothing-here-"):
        expand_patterns([str(tmp_path / "c-1.json"), str(tmp_path / "nothing-here-*.json")])
    with pytest.raises(FileNotFoundError, match="c-dir"):
        read_dpr_files([str(tmp_path / "c-dir.json")])
    assert len(read_dpr_files(str(tmp_path / "c-*.json"))) == 3  # one pattern given as a str


def test_passages_tsv_with_header_quotes_and_gzip(tmp_path: Path) -> None:
    text = 'id\ttext\ttitle\n1\t"Aaron ( or ; ""Aharon"") is a prophet"\tAaron\n\n2\tplain text\t\n'
    for name, data in (("p.tsv", text.encode()), ("p.tsv.gz", gzip.compress(text.encode()))):
        (tmp_path / name).write_bytes(data)
        assert list(iter_passages_tsv(str(tmp_path / name))) == [
            ("1", Passage('Aaron ( or ; "Aharon") is a prophet', "Aaron", "1")),
            ("2", Passage("plain text", "", "2")),
        ]


def test_passages_tsv_without_header_and_column_errors(tmp_path: Path) -> None:
    (tmp_path / "nohead.tsv").write_text("7\tseven\tSeven\n8\teight\tEight\n")
    assert [pid for pid, _ in iter_passages_tsv(str(tmp_path / "nohead.tsv"))] == ["7", "8"]
    (tmp_path / "short.tsv").write_text("id\ttext\ttitle\n1\tone\tOne\n2\ttwo only\n")
    with pytest.raises(DataFormatError, match=r"short\.tsv:3: expected 3 tab-separated columns"):
        list(iter_passages_tsv(str(tmp_path / "short.tsv")))
    (tmp_path / "noid.tsv").write_text("id\ttext\ttitle\n\tone\tOne\n")
    with pytest.raises(DataFormatError, match=r"noid\.tsv:2: column 'id'"):
        list(iter_passages_tsv(str(tmp_path / "noid.tsv")))


def test_beir_corpus_errors_name_path_and_line(tmp_path: Path) -> None:
    good = {"_id": 10, "title": "T", "text": "body"}
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"_id": "11", "title": "x"}) + "\n")
    reader = iter_beir_corpus(str(path))
    assert next(reader) == ("10", Passage("body", "T", "10"))
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: field 'text': expected a string"):
        next(reader)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: malformed JSON"):
        list(iter_beir_corpus(str(path)))


@pytest.mark.skipif(not SCIFACT_CORPUS.is_file(), reason="shared SciFact corpus not available")
def test_real_scifact_corpus() -> None:
    docs = list(iter_beir_corpus(str(SCIFACT_CORPUS)))
    assert len(docs) == 5183
    assert len({doc_id for doc_id, _ in docs}) == 5183
    doc_id, first = docs[0]
    assert doc_id == "4983" and first.passage_id == "4983"
    assert first.title.startswith("Microstructural development of human newborn cerebral white")
    assert first.text.startswith("Alterations of the architecture of cerebral white matter")
