"""DrQA/DPR answer matching, top-k accuracy and the QA file's answers column."""

from __future__ import annotations

import unicodedata

import pytest

from dpr.evaluation.qa_validation import (
    has_answer,
    parse_answers,
    regex_match,
    tokenize,
    top_k_accuracy,
)


def test_tokenize_matches_drqa_simple_tokenizer() -> None:
    # letters/digits/marks form words; every other visible char is a token of its own
    assert tokenize("U.S. Route 66, e.g.") == "u . s . route 66 , e . g .".split()
    # "_" is punctuation (Pc), not a word character; zero-width space (Cf) and tab are dropped
    assert tokenize("snake_case\u200b\tend") == ["snake", "_", "case", "end"]
    assert tokenize("日本語 text") == ["日本語", "text"]


def test_tokenize_agrees_with_the_regex_package() -> None:
    regex = pytest.importorskip("regex")
    drqa = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]")
    text = "Café — naïve «quotes» 3.14 Ωmega ½ 𝔘nicode"
    text += " _x_ İstanbul ﬁ ١٢٣ \u0301lead 🙂"
    nfd = unicodedata.normalize("NFD", text)
    assert tokenize(text) == [token.lower() for token in drqa.findall(nfd)]


def test_string_match_is_token_sequence_not_substring() -> None:
    text = "The Eiffel Tower is in Paris, France."
    assert has_answer(["paris"], text)  # case-insensitive
    assert has_answer(["Paris, France"], text)  # the comma is a token on both sides
    assert has_answer(["Eiffel Tower"], text)
    assert not has_answer(["Pari"], text)  # tokens, not substrings
    assert not has_answer(["Tower Eiffel"], text)  # order matters
    assert has_answer(["London", "France"], text)  # any answer


def test_punctuation_and_articles_are_kept_as_drqa_does() -> None:
    # DrQA keeps punctuation as tokens and articles as words (unlike SQuAD normalize_answer)
    assert has_answer(["D.C."], "He lived in Washington, D.C. for years")
    assert not has_answer(["DC"], "He lived in Washington, D.C. for years")
    assert has_answer(["The Beatles"], "In 1964 the Beatles toured")
    assert not has_answer(["The Beatles"], "Beatles songs")
    assert has_answer(["Beatles"], "The Beatles' first album")


def test_unicode_nfd_keeps_accents() -> None:
    nfc = "Café de Flore"  # é as one code point
    nfd = unicodedata.normalize("NFD", nfc)  # e + combining acute
    assert has_answer(["café"], nfd) and has_answer([nfd], nfc)  # same text, either form
    assert not has_answer(["cafe"], nfc)  # the accent is part of the token
    assert has_answer(["CAFÉ"], nfc)


def test_blank_answer_never_matches() -> None:
    # DrQA's empty token list matched every passage
    assert not has_answer(["  ", ""], "any passage at all")


def test_regex_match_is_case_insensitive_search() -> None:
    assert has_answer([r"Pari?s"], "it is in PARIS today", match="regex")
    assert has_answer([r"\b19[0-9]{2}\b"], "born in 1957.", match="regex")
    assert not has_answer([r"^paris$"], "paris, france", match="regex")
    assert regex_match("line one\nParis", r"^paris$")  # MULTILINE, as DPR compiles it
    assert has_answer([r"cafe\u0301"], "Café", match="regex")  # NFD on both sides


def test_invalid_regex_is_an_error_naming_the_pattern() -> None:
    with pytest.raises(ValueError, match=r"invalid answer regex '\(unclosed'"):
        has_answer(["(unclosed"], "text", match="regex")


def test_bad_match_type_and_string_answers() -> None:
    with pytest.raises(ValueError, match="match must be one of"):
        has_answer(["a"], "a", match="exact")
    with pytest.raises(ValueError, match="single string"):
        has_answer("paris", "paris")


def test_top_k_accuracy_hand_computed() -> None:
    hits = [
        [True, False, False],  # first hit at rank 1
        [False, False, True],  # rank 3
        [False, False, False],  # never
        [False, True],  # rank 2; shorter row = no hit at rank 3
    ]
    # k=1: 1/4; k=2: 2/4; k=3: 3/4
    assert top_k_accuracy(hits) == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="at least one question"):
        top_k_accuracy([])


def test_parse_answers_json_and_python_literals() -> None:
    assert parse_answers('["Paris", "City of Light"]', "nq.csv", 3) == ["Paris", "City of Light"]
    assert parse_answers("['O\\'Neil', \"it's\"]", "nq.csv", 3) == ["O'Neil", "it's"]
    assert parse_answers('["caf\\u00e9"]', "nq.csv", 3) == ["café"]


@pytest.mark.parametrize(
    "field,message",
    [
        ("[]", "nq.csv:7: the answers list is empty"),
        ('"Paris"', "nq.csv:7: answers must be a list, found str"),
        ("('a', 'b')", "nq.csv:7: answers must be a list, found tuple"),
        ("[1, 'a']", "nq.csv:7: answer 0 must be a string, found 1"),
        ("['  ']", "nq.csv:7: every answer is blank"),
        ("Paris", "nq.csv:7: answers must be a JSON list or a Python list literal"),
        ("__import__('os').system('true')", "nq.csv:7: answers must be a JSON list"),
    ],
)
def test_parse_answers_rejects_bad_fields_naming_path_and_line(field: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_answers(field, "nq.csv", 7)
    assert str(info.value).startswith(message)
