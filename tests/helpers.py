"""Small builders shared by several test modules (imported as a plain module: tests/ is on sys.path)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.multiprocessing as mp
from transformers import BertConfig, BertModel


def tiny_bert(seed: int = 0, vocab_size: int = 99, max_position_embeddings: int = 64, **config) -> BertModel:
    """A random BERT of 2 layers, hidden size 32 and 4 heads (no pooler), drawn after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return BertModel(
        BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=max_position_embeddings,
            **config,
        ),
        add_pooling_layer=False,
    )


def tiny_bert_with_bert_tiny_vocab(seed: int = 0) -> BertModel:
    """tiny_bert() with BERT-tiny's vocabulary size and positions, so that BERT-tiny's tokenizer fits it."""
    return tiny_bert(seed, vocab_size=30522, max_position_embeddings=128)


def embed_in_shards(flags: list[str], out: str, num_shards: int = 3) -> None:
    """Run generate_embeddings.py once per shard of ``out`` (shard ids 0 .. num_shards - 1); each run must succeed."""
    import generate_embeddings

    for shard_id in range(num_shards):
        argv = [*flags, "--out_file", out, "--shard_id", str(shard_id), "--num_shards", str(num_shards)]
        assert generate_embeddings.main(argv) == 0


def dpr_train_argv(model_dir: str, train: str, dev: str, out: str, *extra: str) -> list[str]:
    """train_dense_encoder.py's model, data and output flags, then ``extra``."""
    return ["--pretrained_model_cfg", model_dir, "--train_file", train, "--dev_file", dev, "--output_dir", out, *extra]


def colbert_train_argv(model_dir: str, triples: str, out: str, *extra: str) -> list[str]:
    """colbert/train.py with a 4-vector prefix, 12-token queries, 32-token documents, 16-dim vectors; then ``extra``."""
    return [
        "--pretrained_model_cfg",
        model_dir,
        "--prefix",
        "--pre_seq_len",
        "4",
        "--triples",
        triples,
        "--query_maxlen",
        "12",
        "--doc_maxlen",
        "32",
        "--dim",
        "16",
        "--output_dir",
        out,
        "--no_progress",
        *extra,
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_once(worker: Callable[[int, int, str], None], out_dir: Path, nprocs: int, timeout_s: float) -> None:
    procs = mp.spawn(worker, args=(_free_port(), str(out_dir)), nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        # join() returns False as soon as one worker exits while the other still runs, and
        # raises if a worker failed; loop until all have exited or the deadline passes.
        while not procs.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                pytest.fail(f"{nprocs}-process gloo run did not finish in {timeout_s} s")
    finally:
        for proc in procs.processes:
            if proc.is_alive():
                proc.terminate()


def spawn_workers(
    worker: Callable[[int, int, str], None], out_dir: Path, nprocs: int = 2, timeout_s: float = 120.0
) -> None:
    """Run ``worker(rank, port, out_dir)`` in ``nprocs`` processes (a module-level function: spawn pickles it)."""
    try:
        _spawn_once(worker, out_dir, nprocs, timeout_s)
    except mp.ProcessRaisedException as err:
        # The free port is only reserved until the socket closes: another process on the machine
        # may take it before the workers bind it. One retry with a new port covers that race, and
        # only that one: any other failure (a crash at shutdown included) fails the test.
        if "address already in use" not in str(err).lower() and "EADDRINUSE" not in str(err):
            raise
        _spawn_once(worker, out_dir, nprocs, timeout_s)
