"""The one way data files are opened and split: UTF-8 (gzip sniffed), JSON that fails cleanly, TSV lines.

Every problem with a file's bytes raises :class:`DataFormatError` naming the file and, where it can be
known, the line. Readers of particular formats (``readers``, ``queries``, ``sources``) build on these.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import IO, Any, TextIO

from dpr.errors import UserError

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"


class DataFormatError(UserError, ValueError):
    """A data file does not hold what it should; the message says where and what."""


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as raw:
        return raw.read(2) == GZIP_MAGIC


def open_binary(path: str) -> IO[bytes]:
    """Open ``path`` for reading bytes, decompressing when it starts with the gzip magic bytes."""
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def open_text(path: str, newline: str | None = None) -> TextIO:
    """Open ``path`` as UTF-8 text (a leading byte-order mark is dropped), gzip decompressed if need be.

    ``newline`` is as for :func:`open`; TSV readers pass ``"\\n"`` so that a stray carriage return
    inside a field does not split its line.
    """
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def _undecodable_line(path: str) -> int | None:
    """The 1-based number of the first line that is not UTF-8 (only called once decoding failed)."""
    with contextlib.suppress(OSError, EOFError, zlib.error), open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):  # b"\n" never occurs inside a UTF-8 sequence
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line_no
    return None


@contextlib.contextmanager
def decoding_errors(path: str) -> Iterator[None]:
    """Turn undecodable bytes or a broken gzip stream into a DataFormatError naming the file (and line)."""
    try:
        yield
    except UnicodeDecodeError as err:
        line = _undecodable_line(path)
        where = f"{path}:{line}" if line is not None else path
        raise DataFormatError(
            f"{where}: not UTF-8 text (plain or gzipped): {err.reason} (byte 0x{err.object[err.start]:02x})"
        ) from err
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataFormatError(f"{path}: broken gzip stream: {err}") from err


def parse_json(text: str, where: str, at_position: bool = False) -> Any:
    """``json.loads(text)``; malformed or too deeply nested JSON raises DataFormatError starting with ``where``.

    ``at_position`` adds the line and column of a syntax error (for a whole file parsed at once).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f" line {err.lineno} column {err.colno}:" if at_position else ""
        raise DataFormatError(f"{where}:{at} malformed JSON: {err.msg}") from err
    except RecursionError as err:  # the decoder recurses once per nested list / object
        raise DataFormatError(f"{where}: JSON nested too deeply to read (a runaway '[' or '{{'?)") from err


def read_json_file(path: str | os.PathLike[str], *, error: Callable[[str], Exception] = DataFormatError) -> Any:
    """``json.load`` of a UTF-8 file the program wrote (a header, an id list, a config).

    Raises:
        ``error`` naming the file (and the line of a syntax error): not JSON, not UTF-8, nested too deeply.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise error(f"{os.fspath(path)}:{err.lineno}: not valid JSON: {err.msg}") from err
    except UnicodeDecodeError as err:
        raise error(f"{os.fspath(path)}: not valid JSON: not UTF-8 text ({err.reason})") from err
    except RecursionError as err:
        raise error(f"{os.fspath(path)}: JSON nested too deeply to read") from err


def read_versioned_json(
    path: str | os.PathLike[str],
    *,
    max_version: int,
    min_version: int = 0,
    format: str | None = None,
    required: Collection[str] = (),
    version_key: str = "version",
    error: Callable[[str], Exception] = DataFormatError,
    format_hints: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON object of a versioned header file (``{"format": ..., "version": N, ...}``), checked.

    Args:
        path: the file (UTF-8 JSON).
        max_version: the newest version this code reads; a newer file is refused ("newer than this code").
        min_version: the oldest version this code reads. A file without ``version_key`` counts as version 0
            (headers written before the field existed).
        format: when given, the value the ``"format"`` key must hold.
        required: keys that must be present.
        version_key: the name of the version field (``"format_version"`` in FAISS index folders).
        error: the exception type raised (called with the message), e.g. a module's own UserError subclass.
        format_hints: ``{found format: advice}`` appended to a wrong-format message.

    Raises:
        ``error`` naming the file (and the line of a JSON syntax error): not JSON, not a JSON object, wrong
        format, version out of range or not an integer, missing keys.
    """
    path = os.fspath(path)
    data = read_json_file(path, error=error)
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}")
    if format is not None and data.get("format") != format:
        found = data.get("format")
        hint = (format_hints or {}).get(found, "") if isinstance(found, str) else ""
        raise error(f"{path}: format {found!r}, expected {format!r}{hint}")
    version = data.get(version_key, 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise error(f"{path}: {version_key} {version!r} is not an integer")
    if version > max_version:
        raise error(f"{path}: {version_key} {version} is newer than this code ({max_version}); update the code")
    if version < min_version:
        raise error(f"{path}: {version_key} {version} is older than this code reads ({min_version}); rebuild it")
    missing = sorted(set(required) - set(data))
    if missing:
        raise error(f"{path}: missing keys {missing}")
    return data


def unquote_tsv_field(field: str) -> str:
    """The value of one TSV field: a field written by a CSV writer loses its quoting, any other is literal.

    A CSV-quoted field is wholly enclosed in double quotes, with every double quote inside doubled
    (``"say ""hi"" twice"`` is ``say "hi" twice``). A field that merely contains or starts with a quote (``"Weird Al"
    Yankovic``, ``5" floppy``) is kept as it is: one stray quote never swallows the following fields
    or lines, as it would for a CSV reader.
    """
    if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        inner = field[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return field


def split_tsv_line(line: str) -> list[str]:
    """The fields of one TSV line: split on every tab (the line ending dropped), each field unquoted."""
    fields = line.rstrip("\r\n").split("\t")
    return [unquote_tsv_field(field) for field in fields] if '"' in line else fields


def iter_tsv_rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` for every non-blank line of a TSV file (UTF-8, may be gzipped).

    One record per line: fields are never quoted across tabs or lines (see :func:`unquote_tsv_field`).
    """
    with open_text(path, newline="\n") as handle, decoding_errors(path):
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                yield line_no, split_tsv_line(line)
