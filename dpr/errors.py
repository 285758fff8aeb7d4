"""The one base class of errors caused by the user's input (files, flags, folders).

The command-line tools print such an error as one line and exit with status 2, no traceback; every other
exception is a bug and keeps its traceback. Subclasses also derive from the builtin type that fits
(``ValueError``, ``OSError``, ...) so library callers can catch them either way.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file (line, record or key), what was expected and what was found."""
