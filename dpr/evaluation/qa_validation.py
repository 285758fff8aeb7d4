"""DrQA / DPR answer matching: does a retrieved passage contain one of a question's answers?

``has_answer`` reproduces DPR's ``has_answer`` (from DrQA) so top-k accuracies are comparable
with published DPR numbers:

- "string": both sides are NFD-normalised, split with DrQA's ``SimpleTokenizer`` regex
  ``[\\p{L}\\p{N}\\p{M}]+|[^\\p{Z}\\p{C}]`` and lower-cased; an answer matches when its token
  sequence occurs contiguously in the passage's. Punctuation characters are tokens of their own
  and articles are kept (this is *not* SQuAD's ``normalize_answer``): "D.C." is
  ``d . c .`` and does not match "DC"; "The Beatles" does not match a passage that only says
  "Beatles". Accents survive NFD as combining marks inside the token, so "Café" does not
  match "cafe", while NFC "Café" and NFD "Cafe\\u0301" do match.
- "regex": the answer is a regular expression (CuratedTREC), searched case-insensitively in
  the NFD passage text with Python's ``re``.

The ``regex`` package is not required: the tokenizer's Unicode classes are built with the
standard library from ``unicodedata`` categories (identical to ``regex`` for every character
this Python's Unicode database assigns; they differ only on code points it leaves unassigned).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import re
import sys
import unicodedata
from collections.abc import Sequence

logger = logging.getLogger(__name__)

MATCH_TYPES = ("string", "regex")
_REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE  # DPR's flags


def _char_class(ranges: list[tuple[int, int]]) -> str:
    """A ``re`` character-class body for inclusive code point ranges."""
    return "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges
    )


def _category_ranges() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Code point ranges of (marks \\p{M}, everything outside \\p{Z} and \\p{C}); one pass."""
    marks: list[tuple[int, int]] = []
    visible: list[tuple[int, int]] = []
    open_at = {"M": -1, "V": -1}
    for cp in range(sys.maxunicode + 2):
        major = unicodedata.category(chr(cp))[0] if cp <= sys.maxunicode else "C"
        for key, inside, out in (("M", major == "M", marks), ("V", major not in "ZC", visible)):
            if inside and open_at[key] < 0:
                open_at[key] = cp
            elif not inside and open_at[key] >= 0:
                out.append((open_at[key], cp - 1))
                open_at[key] = -1
    return marks, visible


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    """DrQA's SimpleTokenizer regex, in stdlib ``re``; built once (~0.3 s) on first use.

    ``[^\\W_]`` is exactly \\p{L}|\\p{N} in Python's ``re``. The large mark / visible classes
    are slow in ``re``, so ASCII (never a mark, punctuation listed explicitly) takes a fast
    path and only non-ASCII characters reach them: ~5x faster, on par with ``regex``.
    """
    marks, visible = _category_ranges()
    mark = f"(?:(?=[^\\x00-\\x7f])[{_char_class(marks)}])"
    letter = r"[^\W_]"
    word = f"{letter}+(?:{mark}+{letter}*)*|{mark}+(?:{letter}+{mark}*)*"
    other = f"[!-/:-@\\[-`{{-~]|(?=[^\\x00-\\x7f])[{_char_class(visible)}]"
    return re.compile(f"{word}|{other}")


def tokenize(text: str) -> list[str]:
    """NFD-normalised, lower-cased DrQA SimpleTokenizer tokens of ``text``."""
    normalized = unicodedata.normalize("NFD", text)
    # DrQA lower-cases each token after tokenising; same order here
    return [token.lower() for token in _token_pattern().findall(normalized)]


@functools.lru_cache(maxsize=65536)
def _answer_tokens(answer: str) -> tuple[str, ...]:
    # answers repeat for every retrieved passage (100s per question): tokenise them once
    return tuple(tokenize(answer))


@functools.lru_cache(maxsize=65536)
def _compile_answer_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(unicodedata.normalize("NFD", pattern), flags=_REGEX_FLAGS)
    except re.error as err:
        # DPR returned False here, silently scoring a broken pattern as "never found"
        raise ValueError(f"invalid answer regex {pattern!r}: {err}") from err


def regex_match(text: str, pattern: str) -> bool:
    """Whether ``pattern`` (case-insensitive, NFD) occurs anywhere in NFD ``text``."""
    compiled = _compile_answer_regex(pattern)
    return compiled.search(unicodedata.normalize("NFD", text)) is not None


def _contains(tokens: Sequence[str], answer: tuple[str, ...]) -> bool:
    width = len(answer)
    return any(tuple(tokens[i : i + width]) == answer for i in range(len(tokens) - width + 1))


def has_answer(answers: Sequence[str], text: str, match: str = "string") -> bool:
    """Whether any of ``answers`` occurs in ``text`` under DPR's ``match`` rule.

    match: "string" (token-sequence match) or "regex" (each answer is a pattern). An answer
    with no tokens (blank) never matches; DrQA let it match every passage.
    """
    if match not in MATCH_TYPES:
        raise ValueError(f"match must be one of {MATCH_TYPES}, found {match!r}")
    if isinstance(answers, str):
        raise ValueError("answers must be a sequence of strings, found a single string")
    if match == "regex":
        return any(regex_match(text, pattern) for pattern in answers)
    tokens = tokenize(text)
    for answer in answers:
        answer_tokens = _answer_tokens(answer)
        if answer_tokens and _contains(tokens, answer_tokens):
            return True
    return False


def top_k_accuracy(hits: Sequence[Sequence[bool]]) -> list[float]:
    """Accuracy at every k = 1..K: the fraction of questions with a hit in their top k.

    hits: (Q, K_q) one row per question, has_answer of its ranked passages; K = max K_q
    (a shorter row counts as having no hit past its end). Returns K floats, non-decreasing.
    """
    if not hits:
        raise ValueError("top_k_accuracy needs at least one question")
    depth = max(len(row) for row in hits)
    if depth == 0:
        raise ValueError("every question has an empty hit list")
    first_hit_counts = [0] * depth  # questions whose first hit is at rank index i
    for row in hits:
        first = next((i for i, hit in enumerate(row) if hit), None)
        if first is not None:
            first_hit_counts[first] += 1
    accuracies, found = [], 0
    for count in first_hit_counts:
        found += count
        accuracies.append(found / len(hits))
    return accuracies


def parse_answers(field: str, path: str, line: int) -> list[str]:
    """The answers column of a DPR QA TSV row: a JSON list, else a Python list literal.

    ``ast.literal_eval`` (never ``eval``) covers files written with Python's ``str(list)``,
    i.e. single quotes. Raises ValueError naming ``path:line`` for anything else, an empty
    list, a non-string element, or a list whose answers are all blank.
    """
    where = f"{path}:{line}"
    try:
        value = json.loads(field)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(field.strip())
        except (ValueError, SyntaxError, TypeError, RecursionError) as err:
            raise ValueError(
                f"{where}: answers must be a JSON list or a Python list literal, found {field[:80]!r}"
            ) from err
    if not isinstance(value, list):
        raise ValueError(f"{where}: answers must be a list, found {type(value).__name__}")
    if not value:
        raise ValueError(f"{where}: the answers list is empty")
    for position, answer in enumerate(value):
        if not isinstance(answer, str):
            raise ValueError(f"{where}: answer {position} must be a string, found {answer!r}")
    if not any(answer.strip() for answer in value):
        raise ValueError(f"{where}: every answer is blank")
    return value
