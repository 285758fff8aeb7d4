"""Readers on awkward input (issue 12): stray quotes, reordered headers, repeated ids, runaway JSON
nesting, empty training data and bytes that are not UTF-8. Each is read right or refused naming the file."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from pathlib import Path

import pytest

from dpr.data import corpus, prepare
from dpr.data.corpus import iter_unique_passages, read_corpus
from dpr.data.files import read_versioned_json
from dpr.data.queries import read_beir_queries, read_qa_tsv, read_qrels
from dpr.data.readers import DataFormatError, Passage, iter_beir_corpus, iter_passages_tsv, read_dpr_files
from dpr.data.sources import load_beir_queries, load_squad
from dpr.errors import UserError

DEEP = "[" * 100_000  # deeper than the JSON decoder can recurse


def _positive(question: str, with_positive: bool = True) -> dict:
    return {"question": question, "positive_ctxs": [{"text": f"{question} pos"}] if with_positive else []}


def _texts(path: Path) -> list[tuple[str, str, str]]:
    return [(pid, p.text, p.title) for pid, p in iter_passages_tsv(str(path))]


# ------------------------------------------------------------------------------- 1. stray quotes


STRAY = [
    '"Weird Al" Yankovic is a parodist',
    'a 5" floppy disk',
    '"an opening quote never closed',
    'ends with a quote"',
    '"quoted" and "quoted"',
    '"',
]


def test_stray_quotes_never_merge_passage_rows(tmp_path: Path) -> None:
    rows = [(str(i), STRAY[i % len(STRAY)] if i % 3 == 0 else f"plain text {i}", f"T{i}") for i in range(20)]
    path = tmp_path / "stray.tsv"
    path.write_text("id\ttext\ttitle\n" + "".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    assert _texts(path) == rows


def test_csv_written_passages_read_back_exactly(tmp_path: Path) -> None:
    passages = [
        Passage('Aaron ( or ; "Aharon") is a prophet', "Aaron", "1"),
        Passage('"Hi" she said', '"T"', "2"),
        Passage('5" floppy', "", "3"),
        Passage("plain", "Plain", "4"),
    ]
    path = tmp_path / "written.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        writer.writerows([p.passage_id, p.text, p.title] for p in passages)
    assert [p for _, p in iter_passages_tsv(str(path))] == passages


def test_prepared_passages_with_newlines_stay_one_per_line(tmp_path: Path) -> None:
    path = str(tmp_path / "prepared.tsv")
    prepare.write_passages_tsv(path, [Passage("line one\nline two\tcol", "T", "1"), Passage("x", "", "2")])
    assert [(pid, p.text) for pid, p in iter_passages_tsv(path)] == [("1", "line one line two col"), ("2", "x")]


def test_passage_line_with_extra_field_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "extra.tsv"
    path.write_text("id\ttext\ttitle\n1\tone\tOne\n2\ttwo\tTwo\tsurplus\n")
    with pytest.raises(DataFormatError, match=r"extra\.tsv:3: expected 3 tab-separated columns .* found 4"):
        list(iter_passages_tsv(str(path)))


def test_qa_file_with_stray_quotes(tmp_path: Path) -> None:
    path = tmp_path / "qa.tsv"
    questions = ['"Weird Al" Yankovic was born where?', '"an unclosed quote here', "plain question?"]
    path.write_text("".join(f'{q}\t["a{i}"]\n' for i, q in enumerate(questions)), encoding="utf-8")
    pairs = read_qa_tsv(str(path))
    assert [(p.question, p.answers, p.line) for p in pairs] == [(q, (f"a{i}",), i + 1) for i, q in enumerate(questions)]


def test_qa_file_written_with_csv_quoting_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "qa.tsv"
    query = prepare.Query("1", '"Bairn" and "hyem" come from what culture?', ("Scots", 'the "Geordie"'), (), "0")
    prepare.write_qa_tsv(str(path), [query])
    with path.open("a", encoding="utf-8", newline="") as out:  # a fully CSV-quoted line, as DPR's files
        csv.writer(out, delimiter="\t", lineterminator="\n").writerow(['say "x"', json.dumps(["y"])])
    first, second = read_qa_tsv(str(path))
    assert (first.question, first.answers) == (query.question, query.answers)
    assert (second.question, second.answers) == ('say "x"', ("y",))


# ---------------------------------------------------------------------------- 2. header order


@pytest.mark.parametrize(
    "header, row",
    [
        ("text\tid\ttitle", "seven\t7\tSeven"),
        ("title\ttext\tid", "Seven\tseven\t7"),
        ("ID\tTitle\tText", "7\tSeven\tseven"),
        ("id\ttext\ttitle\turl", "7\tseven\tSeven\thttp://x"),
    ],
)
def test_header_in_any_order_and_case(tmp_path: Path, header: str, row: str) -> None:
    path = tmp_path / "p.tsv"
    path.write_text(f"{header}\n{row}\n")
    assert list(iter_passages_tsv(str(path))) == [("7", Passage("seven", "Seven", "7"))]


def test_header_without_title_and_no_header(tmp_path: Path) -> None:
    (tmp_path / "two.tsv").write_text("text\tid\nseven\t7\n")
    assert list(iter_passages_tsv(str(tmp_path / "two.tsv"))) == [("7", Passage("seven", "", "7"))]
    (tmp_path / "bom.tsv").write_bytes("\ufeffid\ttext\ttitle\n7\tseven\tSeven\n".encode())
    assert list(iter_passages_tsv(str(tmp_path / "bom.tsv"))) == [("7", Passage("seven", "Seven", "7"))]


@pytest.mark.parametrize("header", ["id\ttitle\tbody", "text\ttitle\tname", "id\ttext\ttext"])
def test_header_missing_or_repeating_a_column_is_refused(tmp_path: Path, header: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(f"{header}\n7\tseven\tSeven\n")
    with pytest.raises(DataFormatError, match=r"bad\.tsv:1: header: expected the columns id, text"):
        list(iter_passages_tsv(str(path)))


def test_qrels_header_in_another_order_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text("corpus-id\tquery-id\tscore\nd1\tq1\t1\n")
    with pytest.raises(DataFormatError, match=r"test\.tsv:1: header: expected the columns query-id, corpus-id, score"):
        read_qrels(str(path))
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert read_qrels(str(path)) == {"q1": {"d1": 1}}


# ------------------------------------------------------------------------------- 3. repeated ids


def _corpus_files(tmp_path: Path) -> dict[str, Path]:
    tsv = tmp_path / "psgs.tsv"
    tsv.write_text("id\ttext\ttitle\n1\tone\tOne\n2\ttwo\tTwo\n\n3\tthree\tThree\n2\tagain\tTwo\n")
    beir = tmp_path / "corpus.jsonl"
    docs = [{"_id": i, "title": "", "text": f"doc {i}"} for i in ("a", "b", "c", "b")]
    beir.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return {"tsv": tsv, "beir": beir}


def count_passages(path: str, limit: int | None = None) -> int:
    """Every row parsed and checked for repeated ids, as embedding a corpus does."""
    return sum(1 for _ in iter_unique_passages(path, limit))


@pytest.mark.parametrize("kind, where, first", [("tsv", "psgs.tsv:6", 3), ("beir", "corpus.jsonl:4", 2)])
@pytest.mark.parametrize("reader", [count_passages, read_corpus])
def test_repeated_passage_id_names_id_and_both_lines(tmp_path: Path, reader, kind: str, where: str, first: int) -> None:
    path = _corpus_files(tmp_path)[kind]
    duplicate = "'2'" if kind == "tsv" else "'b'"
    with pytest.raises(DataFormatError, match=rf"{where}: duplicate passage id {duplicate} \(first on line {first}\)"):
        reader(str(path))
    assert count_passages(str(path), limit=3) == 3  # the repeat lies beyond the passages used


def test_hash_collisions_are_not_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "hash", lambda _: 7, raising=False)  # every id collides
    path = tmp_path / "ok.tsv"
    path.write_text("1\tone\n2\ttwo\n3\tthree\n")
    assert count_passages(str(path)) == 3
    path.write_text("1\tone\n2\ttwo\n1\tthree\n")
    with pytest.raises(DataFormatError, match=r"ok\.tsv:3: duplicate passage id '1' \(first on line 1\)"):
        count_passages(str(path))


# ------------------------------------------------------------------------ 4. runaway JSON nesting


@pytest.mark.parametrize(
    "name, text",
    [("deep.json", DEEP), ("deep.jsonl", json.dumps(_positive("q")) + "\n" + DEEP), ("deep-gz.json", None)],
)
def test_deep_dpr_json_is_a_format_error(tmp_path: Path, name: str, text: str | None) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(DEEP.encode()) if text is None else text.encode())
    with pytest.raises(DataFormatError, match=rf"{name}.*nested too deeply"):
        read_dpr_files([str(path)])


def test_deep_json_in_beir_queries_squad_and_qa_files(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text(DEEP + "\n")
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:1: JSON nested too deeply"):
        list(iter_beir_corpus(str(tmp_path / "corpus.jsonl")))
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "hi"}\n' + DEEP + "\n")
    for reader in (read_beir_queries, load_beir_queries):
        with pytest.raises(DataFormatError, match=r"queries\.jsonl:2: JSON nested too deeply"):
            reader(str(tmp_path / "queries.jsonl"))
    (tmp_path / "squad.json").write_text(DEEP)
    with pytest.raises(DataFormatError, match=r"squad\.json: JSON nested too deeply"):
        load_squad(str(tmp_path / "squad.json"))
    (tmp_path / "qa.tsv").write_text(f'ok?\t["a"]\nwhat?\t{DEEP}\n')
    with pytest.raises(DataFormatError, match=r"qa\.tsv:2: answers nested too deeply"):
        read_qa_tsv(str(tmp_path / "qa.tsv"))


# ------------------------------------------------------------------------- 5. empty training data


@pytest.mark.parametrize(
    "content, found",
    [
        ("[]", "no record"),
        ("", "no record"),
        ("\n\n", "no record"),
        (json.dumps([_positive("a", False), _positive("b", False)]), "2 records, none with a positive passage"),
    ],
)
def test_no_usable_sample_is_an_error_naming_the_files(tmp_path: Path, content: str, found: str) -> None:
    (tmp_path / "empty-1.json").write_text(content)
    (tmp_path / "empty-2.json").write_text("[]")
    with pytest.raises(DataFormatError, match=rf"no usable samples in .*empty-1\.json, .*empty-2\.json .*{found}"):
        read_dpr_files([str(tmp_path / "empty-*.json")])


def test_one_empty_pattern_among_others_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "full.json").write_text(json.dumps([_positive("a")]))
    with caplog.at_level(logging.WARNING, logger="dpr.data.readers"):
        samples = read_dpr_files([str(tmp_path / "empty.json"), str(tmp_path / "full.json")], [2, 3])
    assert [s.question for s in samples] == ["a"] * 3
    assert any("no usable sample" in r.getMessage() and "empty.json" in r.getMessage() for r in caplog.records)


def test_pattern_matching_no_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "full.json").write_text(json.dumps([_positive("a")]))
    with pytest.raises(FileNotFoundError, match="nothing-\\*"):  # checked before any file is read
        read_dpr_files([str(tmp_path / "full.json"), str(tmp_path / "nothing-*")])


# ------------------------------------------------------------------------------ non-UTF-8 bytes


BAD = b"caf\xe9"  # Latin-1, not UTF-8


@pytest.mark.parametrize(
    "name, data, read",
    [
        ("p.tsv", b"id\ttext\ttitle\n1\tok\tOk\n2\t" + BAD + b"\tT\n", lambda p: list(iter_passages_tsv(p))),
        ("p.tsv.gz", gzip.compress(b"1\tok\n2\tok\n3\t" + BAD + b"\n"), lambda p: list(iter_passages_tsv(p))),
        (
            "corpus.jsonl",
            b'{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "x"}\n{"_id": "3", "text": "' + BAD + b'"}\n',
            lambda p: list(iter_beir_corpus(p)),
        ),
        ("d.jsonl", json.dumps(_positive("a")).encode() + b"\n\n" + BAD + b"\n", lambda p: read_dpr_files([p])),
        ("qa.tsv", b'ok?\t["a"]\nok?\t["b"]\n' + BAD + b'?\t["c"]\n', read_qa_tsv),
        ("queries.jsonl", b'{"_id": "q", "text": "ok"}\n\n{"_id": "r", "text": "' + BAD + b'"}\n', read_beir_queries),
        ("qrels.tsv", b"query-id\tcorpus-id\tscore\nq\td\t1\n" + BAD + b"\td\t1\n", read_qrels),
    ],
)
def test_non_utf8_bytes_name_file_and_line(tmp_path: Path, name: str, data: bytes, read) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataFormatError, match=rf"{name}:3: not UTF-8") as err:
        read(str(path))
    assert isinstance(err.value, UserError)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(gzip.compress(b"id\ttext\n" + b"1\tsome text\n" * 1000)[:-20])
    with pytest.raises(DataFormatError, match=r"cut\.tsv\.gz: broken gzip stream"):
        list(iter_passages_tsv(str(path)))


def test_qrels_trec_layout_and_gzip(tmp_path: Path) -> None:
    trec = tmp_path / "qrels.dev"
    trec.write_text("q1 0 d3 1\nq2\t0\td2\t2\n")
    assert read_qrels(str(trec)) == {"q1": {"d3": 1}, "q2": {"d2": 2}}
    trec.write_text("q1 0 d3 1\nq1 0 d3\n")
    with pytest.raises(DataFormatError, match=r"qrels\.dev:2: expected 'qid 0 docid relevance'"):
        read_qrels(str(trec))
    packed = tmp_path / "test.tsv.gz"
    packed.write_bytes(gzip.compress(b"query-id\tcorpus-id\tscore\nq1\td1\t1\n"))
    assert read_qrels(str(packed)) == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    "body, kwargs, message",
    [
        ('{"format": "x", "version": 1, "a": 1}', {}, None),
        ('{"format": "x"}', {}, None),  # no version field: version 0
        ('{"format": "x", "version": 3}', {}, r"h\.json: version 3 is newer than this code \(2\)"),
        ('{"format": "x", "version": 0}', {"min_version": 1}, r"h\.json: version 0 is older than this code reads"),
        ('{"format": "y", "version": 1}', {}, r"h\.json: format 'y', expected 'x'"),
        ('{"format": "x", "version": "1"}', {}, r"h\.json: version '1' is not an integer"),
        ('{"format": "x", "version": 1}', {"required": ("a", "b")}, r"h\.json: missing keys \['a', 'b'\]"),
        ("[1, 2]", {}, r"h\.json: expected a JSON object, found list"),
        ('{"format": "x",\n "version": }', {}, r"h\.json:2: not valid JSON"),
    ],
)
def test_read_versioned_json(tmp_path: Path, body: str, kwargs: dict, message: str | None) -> None:
    path = tmp_path / "h.json"
    path.write_text(body)
    if message is None:
        assert read_versioned_json(path, max_version=2, format="x", **kwargs)["format"] == "x"
        return
    with pytest.raises(DataFormatError, match=message):
        read_versioned_json(path, max_version=2, format="x", **kwargs)


def test_read_versioned_json_raises_the_callers_error(tmp_path: Path) -> None:
    class HeaderError(UserError, ValueError):
        pass

    path = tmp_path / "h.json"
    path.write_text('{"format": "dpr", "version": 1}')
    with pytest.raises(HeaderError, match=r"format 'dpr', expected 'colbert' \(a DPR file\)"):
        read_versioned_json(
            path, max_version=1, format="colbert", error=HeaderError, format_hints={"dpr": " (a DPR file)"}
        )
