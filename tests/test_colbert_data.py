"""ColBERT training input: the triples file is checked whole before training, and its form is told robustly."""

from __future__ import annotations

import gzip
import json

import pytest
from helpers import colbert_train_argv

from colbert import train as colbert_train
from colbert.data import read_queries, read_triples, triples_format
from dpr.cli import run_cli
from dpr.data.readers import DataFormatError

GOOD = "".join(f"query {i}\tpositive {i}\tnegative {i}\n" for i in range(11))
LATIN1 = "caf\xe9 query\tpositive\tnegative\n".encode("latin-1")


@pytest.fixture
def ids(tmp_path):
    """queries.tsv and collection.tsv for id triples."""
    (tmp_path / "queries.tsv").write_text("q1\tfirst query\nq2\tsecond query\n")
    (tmp_path / "collection.tsv").write_text("".join(f"d{i}\tpassage {i}\n" for i in range(4)))
    return str(tmp_path / "queries.tsv"), str(tmp_path / "collection.tsv")


# ---------------------------------------------------------------------------------------- encoding


def test_a_line_that_is_not_utf8_fails_when_the_file_is_opened(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_bytes(GOOD.encode() + LATIN1)  # line 12: reached at step 11 of a bsize-1 run
    with pytest.raises(
        DataFormatError,
        match=r"triples.tsv:12: expected UTF-8 text, found byte b'\\xe9' at "
        r"column 4; convert the file to UTF-8",
    ):
        read_triples(str(path))


def test_a_gzipped_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "triples.tsv.gz"
    path.write_bytes(gzip.compress(GOOD.encode() + LATIN1))
    with pytest.raises(DataFormatError, match=r"triples.tsv.gz:12: expected UTF-8 text"):
        read_triples(str(path))


def test_queries_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "queries.tsv"
    path.write_bytes(b"q1\tfine\n" + b"q2\tcaf\xe9\n")
    with pytest.raises(DataFormatError, match=r"queries.tsv:2: expected UTF-8 text"):
        read_queries(str(path))


def test_a_byte_order_mark_is_not_part_of_the_first_query(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert read_triples(str(path))[0].query == "query 0"


def test_the_cli_refuses_bad_triples_before_training(tmp_path, tiny_bert_dir, capsys):
    path = tmp_path / "triples.tsv"
    path.write_bytes(GOOD.encode() + LATIN1)
    out = tmp_path / "run"
    argv = colbert_train_argv(tiny_bert_dir, str(path), str(out), "--bsize", "1", "--maxsteps", "20")
    assert run_cli(colbert_train.main, argv) == 2
    assert "triples.tsv:12: expected UTF-8 text" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # no step ran, no checkpoint written


# ------------------------------------------------------------------------------------------- form


def test_a_text_query_that_starts_with_a_bracket_is_a_text_triple(tmp_path):
    for name in ("triples.tsv", "triples.train"):  # by the name, and by parsing the first line
        path = tmp_path / name
        path.write_text("[draft] what is a prefix\tprefix tuning prepends vectors\tthe nile\n" + GOOD)
        triples = read_triples(str(path))
        assert len(triples) == 12 and triples[0].query == "[draft] what is a prefix"


def test_the_form_is_told_by_the_name_then_by_the_first_line(tmp_path):
    (tmp_path / "a").write_text('\n["q1", "d0", 3]\n')
    (tmp_path / "b").write_text('["q1"]\tpositive\tnegative\n')
    (tmp_path / "c").write_text("just one column\n")
    assert triples_format(str(tmp_path / "a")) == ("ids", "line 2 is a JSON list [qid, pid+, pid-]")
    assert triples_format(str(tmp_path / "b"))[0] == "text"
    assert triples_format(str(tmp_path / "x.jsonl.gz"))[0] == "ids"  # by the name: the file is not opened
    with pytest.raises(DataFormatError, match=r"c:1: expected a text triple .* or a JSON list"):
        triples_format(str(tmp_path / "c"))


def test_a_file_that_mixes_the_two_forms_names_the_odd_line(tmp_path, ids):
    text = tmp_path / "mixed.tsv"
    text.write_text(GOOD + '["q1", "d0", "d1"]\n')
    with pytest.raises(
        DataFormatError,
        match=r"mixed.tsv:12: found a JSON list \[qid, pid\+, pid-\], but the "
        r"file holds text triples \(its name ends in .tsv\); .* one form",
    ):
        read_triples(str(text))
    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_text('["q1", "d0", "d1"]\nquery\tpositive\tnegative\n')
    with pytest.raises(DataFormatError, match=r"mixed.jsonl:2: found a text triple .* holds id triples"):
        read_triples(str(jsonl), *ids)
    unnamed = tmp_path / "mixed"
    unnamed.write_text('["q1", "d0", "d1"]\nquery\tpositive\tnegative\n')
    with pytest.raises(DataFormatError, match=r"mixed:2: found a text triple .* \(line 1 is a JSON list"):
        read_triples(str(unnamed), *ids)


def test_dpr_json_given_as_triples_says_where_it_goes(tmp_path, ids):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"question": "q", "positive_ctxs": []}], indent=1))
    with pytest.raises(DataFormatError, match=r"train.json:1: .*DPR JSON goes to --dpr_train_file"):
        read_triples(str(path), *ids)


# ---------------------------------------------------------------------------------- other problems


def test_bad_text_triples_name_file_line_and_what_was_found(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text(GOOD + "a query\twith\tone tab too many\there\n")
    with pytest.raises(DataFormatError, match=r"t.tsv:12: expected 3 tab-separated columns .*found 4: 'a query"):
        read_triples(str(path))
    path.write_text(" \tpositive\tnegative\n")
    with pytest.raises(DataFormatError, match=r"t.tsv:1: column 'query' is empty"):
        read_triples(str(path))


def test_ids_missing_from_the_queries_or_the_collection_name_the_line(tmp_path, ids):
    path = tmp_path / "t.jsonl"
    path.write_text('["q1", "d0", "d1"]\n["q9", "d0", "d1"]\n')
    with pytest.raises(
        DataFormatError,
        match=r"t.jsonl:2: qid 'q9' is not in the queries file .*queries.tsv "
        r"\(its qids look like 'q1', 'q2'\)",
    ):
        read_triples(str(path), *ids)
    path.write_text('["q1", "x0", "x1"]\n')  # no pid of the triples is in the collection
    with pytest.raises(
        DataFormatError,
        match=r"t.jsonl:1: pid 'x0' is not in the collection .*collection.tsv "
        r"\(its pids look like 'd0', 'd1', 'd2'\)",
    ):
        read_triples(str(path), *ids)
    path.write_text('["q1", "d0"]\n')
    with pytest.raises(DataFormatError, match=r"t.jsonl:1: expected a JSON list \[qid, pid\+, pid-\] \(ids as "):
        read_triples(str(path), *ids)
    path.write_text('["q1", "d0", \n')
    with pytest.raises(DataFormatError, match=r"t.jsonl:1: malformed JSON"):
        read_triples(str(path), *ids)
