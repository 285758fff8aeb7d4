"""Shared pytest setup: tests never touch the network (no Hugging Face Hub downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
