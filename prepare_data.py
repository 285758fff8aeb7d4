#!/usr/bin/env python3
"""Prepare BEIR / SQuAD data for DPR: see dpr/commands/prepare.py (library: dpr.data.preparation)."""

from dpr.commands.prepare import cli, main  # noqa: F401  (main: quickstart.py and bench/ call it)

if __name__ == "__main__":
    cli()
