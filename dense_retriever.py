#!/usr/bin/env python3
"""Retrieve with a FAISS index over embedding shards and evaluate.

The command lives in ``dpr.commands.retrieve``; this file keeps ``python dense_retriever.py`` working.
"""

from dpr.commands.retrieve import build_parser, cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
