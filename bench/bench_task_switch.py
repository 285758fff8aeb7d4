#!/usr/bin/env python3
"""Per-request task-switch overhead of the task library (target: under 1 ms on CPU).

Two prefix task checkpoints (random prefixes; the values do not matter for timing) are registered on
one backbone. One short query is encoded per request, alternating tasks A, B, A, B, ... and, as the
control, with the same task every time. Both sequences are timed in interleaved rounds so drift in
machine load hits them equally; the per-switch overhead is the difference of the median per-request
times. The only work a switch adds is choosing another task's few-KB prefix: no backbone weight moves.

    python bench/bench_task_switch.py --model bert-tiny --repeats 2000
    python bench/bench_task_switch.py --model minilm-l6 --pre_seq_len 32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dpr.configs import BiEncoderConfig  # noqa: E402
from dpr.models.biencoder import build_biencoder  # noqa: E402
from dpr.retrieval import TaskEncoder  # noqa: E402
from dpr.training.checkpoint import save_checkpoint  # noqa: E402

QUERY = "what causes vitamin c deficiency?"


def make_tasks(model: str, pre_seq_len: int, folder: str) -> dict[str, str]:
    paths = {}
    for seed, task in enumerate(("A", "B")):
        torch.manual_seed(seed)
        biencoder = build_biencoder(
            BiEncoderConfig.from_flat(
                pretrained_model_cfg=model, tuning="prefix", pre_seq_len=pre_seq_len, sequence_length=64
            )
        )
        paths[task] = save_checkpoint(os.path.join(folder, task), biencoder)
    return paths


def time_requests(encoder: TaskEncoder, order: list[str]) -> list[float]:
    """Seconds per request, one query each, tasks in ``order``."""
    times = []
    for task in order:
        began = time.perf_counter()
        encoder.encode([QUERY], task=task, batch_size=1)
        times.append(time.perf_counter() - began)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert-tiny", help="backbone (short name or folder)")
    parser.add_argument("--pre_seq_len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2000, help="requests per sequence")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the repeats are split into")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least noise)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # the MLM-head load report is not news here
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as folder:
        encoder = TaskEncoder.from_checkpoints(make_tasks(args.model, args.pre_seq_len, folder))
    time_requests(encoder, ["A", "B"] * 20)  # warm-up: allocator, tokenizer caches
    per_round = max(2, args.repeats // args.rounds)
    switching, same = [], []
    for _ in range(args.rounds):
        switching += time_requests(encoder, ["A", "B"] * (per_round // 2))
        same += time_requests(encoder, ["A"] * per_round)
    med_switch, med_same = statistics.median(switching), statistics.median(same)
    overhead_ms = (med_switch - med_same) * 1e3
    tuned, total = encoder.library.parameter_counts()
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
        f"{args.model}, 2 prefix tasks of {args.pre_seq_len} tokens ({tuned:,} tuned + "
        f"{total - tuned:,} shared backbone parameters)"
    )
    print(f"one-query request, same task every time : median {med_same * 1e3:.3f} ms  (n={len(same)})")
    print(f"one-query request, task switches A/B    : median {med_switch * 1e3:.3f} ms  (n={len(switching)})")
    print(f"per-switch overhead: {overhead_ms:+.3f} ms (target < 1 ms) -> {'OK' if overhead_ms < 1.0 else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
