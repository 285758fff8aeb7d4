#!/usr/bin/env python3
"""Download DPR and BEIR data by name: see dpr/commands/download.py (library: dpr.data.download)."""

from dpr.commands.download import cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
