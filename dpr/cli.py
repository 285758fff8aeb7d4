"""What every command-line tool shares: logging set-up and turning known errors into one line."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import transformers

from dpr.errors import UserError

# Errors caused by the user's input: reported as one line, exit status 2, no traceback.
USER_ERRORS = (UserError, FileNotFoundError)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # transformers' load reports list the MLM head weights a BertModel does not use: expected, not news.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a user error becomes ``error: ...`` on stderr and exit status 2."""
    try:
        return main(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
