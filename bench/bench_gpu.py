#!/usr/bin/env python3
"""GPU check (run by bench/gpu.sh, at most 8 minutes): bf16 encoding and a bf16 training step on one GPU.

Prints, for the GPU it runs on:

- the GPU's measured bf16 matmul rate (an 8192^2 matmul, best of 10): the peak the rest is compared to;
- encoding: passages/s of ``dpr.encoding.encode_texts`` in bf16 autocast (minilm-l6, ``--num_passages`` SciFact
  passages, 256 tokens, batch ``--batch_size``), the encoder FLOPs it computed (at the padded widths) and their
  rate as a fraction of the measured peak; and the minimum cosine of its vectors to CPU fp32 vectors of the
  first 64 passages;
- training: seconds per step of a both-sides 64-token prefix and of fine-tuning (``--train_batch`` questions,
  one positive and one hard negative each, 256 tokens), bf16 autocast through ``dpr.device.MixedPrecision``,
  with the FLOP rate of the step as a fraction of the peak (forward FLOPs x 3 for fine-tuning, x 2 for the
  prefix, which skips the backbone's weight gradients).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_encoding import build_encoder, encoder_flops, load_passages, recorded_shapes  # noqa: E402
from bench_train_speed import Stepper  # noqa: E402
from bench_training import DATA, make_batch  # noqa: E402
from common import header  # noqa: E402

from dpr.encoding import encode_texts  # noqa: E402
from dpr.models.hub import load_tokenizer  # noqa: E402


def bf16_peak(size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(a, b)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


def timed(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--num_passages", type=int, default=4000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--train_batch", type=int, default=64)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (bench/gpu.sh)")
        return 2
    transformers.logging.set_verbosity_error()
    print(header(torch.get_num_threads()), flush=True)
    print(f"GPU: {torch.cuda.get_device_name()}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    peak = bf16_peak()
    print(f"measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s")

    passages = load_passages(os.path.join(args.data, "corpus.jsonl"), args.num_passages)
    tokenizer = load_tokenizer(args.model)
    model = build_encoder(args.model, "finetune", 0, 256)
    reference = encode_texts(model, tokenizer, passages[:64], "passage", max_length=256, batch_size=32)  # CPU fp32
    model.cuda()

    def encode() -> np.ndarray:
        return encode_texts(
            model, tokenizer, passages, "passage", max_length=256, batch_size=args.batch_size, precision="bf16"
        )

    shapes: list[tuple[int, int]] = []
    with recorded_shapes(model.ctx_encoder.backbone.embeddings, shapes):
        vectors = encode()
    seconds = timed(encode, 3)
    flops = encoder_flops(shapes, model.backbone.config)
    cosine = (vectors[:64] * reference).sum(1) / (
        np.linalg.norm(vectors[:64], axis=1) * np.linalg.norm(reference, axis=1)
    )
    print(
        f"encoding bf16: {len(passages) / seconds:.0f} passages/s, {flops / seconds / 1e12:.1f} TFLOP/s = "
        f"{100 * flops / seconds / peak:.1f}% of the measured peak (tokenization included); "
        f"min cosine to CPU fp32 vectors {cosine.min():.5f}"
    )

    args.batch_size, args.sequence_length, args.pre_seq_len, args.dropout = args.train_batch, 256, 64, 0.1
    batch = make_batch(args)
    batch = type(batch)(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in vars(batch).items()})
    tokens = batch.question_ids.numel() + batch.context_ids.numel()
    for tuning, factor in (("prefix", 2.0), ("finetune", 3.0)):
        stepper = Stepper(args, tuning, "bf16", 0.1, 0.0, device="cuda")
        stepper.step(batch)
        seconds = timed(lambda: stepper.step(batch), 5)
        per_token = 2 * sum(
            p.numel() for n, p in stepper.model.question_encoder.backbone.named_parameters() if "embeddings" not in n
        )
        step_flops = factor * per_token * tokens
        print(
            f"training step bf16, {tuning}: {seconds:.3f} s for {args.train_batch} questions + "
            f"{2 * args.train_batch} passages; ~{step_flops / seconds / 1e12:.1f} TFLOP/s = "
            f"{100 * step_flops / seconds / peak:.1f}% of the peak (linear layers only)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
