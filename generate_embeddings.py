#!/usr/bin/env python3
"""Encode a passage corpus into embedding shards.

The command lives in ``dpr.commands.embed``; this file keeps ``python generate_embeddings.py`` working.
"""

from dpr.commands.embed import build_parser, cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
