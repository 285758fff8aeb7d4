#!/usr/bin/env python3
"""Train a DPR bi-encoder.

The command lives in ``dpr.commands.train``; this file keeps ``python train_dense_encoder.py`` working.
"""

from dpr.commands.train import build_parser, cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
