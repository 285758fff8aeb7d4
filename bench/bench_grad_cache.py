#!/usr/bin/env python3
"""GradCache memory and cost: peak training memory of a large batch with GradCache against a small one without.

Each variant runs in a FRESH subprocess (as bench_training.py measures memory): build the both-sides prefix
bi-encoder and its batch, reset the kernel's RSS high-water mark (Linux), run ``--steps`` training steps through
``BiEncoderTrainer``'s GradCache step (``dpr.training.grad_cache.grad_cache_step``) or the plain forward +
backward, and report the peak resident memory above the RSS before the first step, and seconds per step and
per sample (best step).

    python bench/bench_grad_cache.py --small_batch 32 --large_batch 128 --chunk 16 --sequence_length 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_train_speed import Stepper  # noqa: E402
from bench_training import DATA, _status_bytes, make_batch, peak_rss, reset_peak_rss  # noqa: E402
from common import header, write_results  # noqa: E402

from dpr.training.distributed import DistributedContext  # noqa: E402
from dpr.training.grad_cache import grad_cache_step  # noqa: E402


def child(args: argparse.Namespace) -> int:
    """One variant in this process; prints one JSON line."""
    args.batch_size, args.dropout = args.batch, 0.1
    batch = make_batch(args)
    stepper = Stepper(args, "prefix", args.precision, 0.1, 0.0)
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)

    def step() -> None:
        if args.chunk:
            grad_cache_step(
                stepper.model,
                batch,
                scale=stepper.scale,
                ctx=ctx,
                amp=stepper.amp,
                accumulation=1,
                q_chunk_size=args.chunk,
                p_chunk_size=args.chunk,
            )
            stepper.amp.step(stepper.optimizer, stepper.trainable, 2.0)
            stepper.optimizer.zero_grad(set_to_none=True)
        else:
            stepper.step(batch)

    rss0 = _status_bytes("VmRSS") or 0
    was_reset = reset_peak_rss()
    seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "peak_bytes": peak_rss() - rss0,
                "peak_reset": was_reset,
                "seconds_best": min(seconds),
                "seconds": seconds,
                "samples": args.batch,
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--small_batch", type=int, default=32)
    parser.add_argument("--large_batch", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=16, help="GradCache chunk size (questions and passages)")
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--pre_seq_len", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    if args.child:
        return child(args)
    print(header(torch.get_num_threads()), flush=True)
    variants = {
        f"batch {args.small_batch}, no GradCache": (args.small_batch, 0),
        f"batch {args.large_batch}, GradCache chunk {args.chunk}": (args.large_batch, args.chunk),
        f"batch {args.small_batch}, GradCache chunk {args.chunk}": (args.small_batch, args.chunk),
    }
    results = {}
    for name, (size, chunk) in variants.items():
        cmd = [sys.executable, __file__, "--child", "--batch", str(size), "--chunk", str(chunk)]
        for flag in ("model", "data", "sequence_length", "pre_seq_len", "precision", "steps"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[name] = json.loads(out)
        r = results[name]
        print(
            f"  {name:<34}: peak training memory {r['peak_bytes'] / 2**30:.2f} GiB, "
            f"{r['seconds_best']:.2f} s per step, {1000 * r['seconds_best'] / r['samples']:.0f} ms per question "
            "(+2 passages)",
            flush=True,
        )
    write_results(args.json, {**vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
