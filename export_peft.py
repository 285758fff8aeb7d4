#!/usr/bin/env python3
"""Prefix checkpoints <-> PEFT adapter folders: see dpr/commands/export_peft.py (library: dpr.training.peft_export)."""

from dpr.commands.export_peft import cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
