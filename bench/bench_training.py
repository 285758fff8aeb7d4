#!/usr/bin/env python3
"""Training cost: prefix tuning (P-tuning v2) against full fine-tuning at the same batch (CPU).

Prints, measured in one run:

- seconds per training step (forward of both encoders + in-batch NLL + backward + gradient clipping +
  AdamW step, as ``BiEncoderTrainer`` does it in fp32 without accumulation) of the two modes, timed in
  interleaved rounds on the SAME pre-tokenized batch (median and best; target: prefix <= 0.6x);
- peak memory of a training run of each mode, and the memory of the model weights alone: one backbone
  shared by the question and passage encoders (prefix mode) against two copies (fine-tuning; target:
  shared <= 0.55x). Weights are counted two ways: bytes of unique parameter and buffer storage
  (tensors de-duplicated by storage address), and measured resident memory.

Memory method (CPU): torch allocates with plain malloc, so ``tracemalloc`` sees none of it; resident
memory (RSS) is what counts. Each mode runs in a FRESH subprocess (no leftovers of the other mode, no
allocator reuse between them), which, once imports and the batch are ready, notes its RSS, builds the
bi-encoder and reads every weight once (RSS growth = the weights, as resident), then resets the
kernel's RSS high-water mark (``/proc/self/clear_refs`` <- 5, Linux; so the transients of loading the
checkpoint do not count) and runs ``--memory_steps`` steps. The high-water mark ``VmHWM`` at the end
minus the first RSS is the peak training memory: weights + gradients + AdamW state + activations.
Where the mark cannot be reset, ``ru_maxrss`` is used and the report says so (then a peak reached
while loading could hide a lower training peak).

Batch: ``--batch_size`` SciFact questions, each with one positive and one hard negative passage (the
two encoders see B questions and 2B passages), texts cut to ``--sequence_length`` tokens.

    python bench/bench_training.py --model minilm-l6 --batch_size 16 --sequence_length 256 --pre_seq_len 64
    python bench/bench_training.py --model bert-tiny --batch_size 32
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from common import header, write_results  # noqa: E402

from dpr.configs import BiEncoderConfig  # noqa: E402
from dpr.data.batching import BiEncoderBatch, build_biencoder_batch  # noqa: E402
from dpr.data.readers import BiEncoderSample, iter_beir_corpus  # noqa: E402
from dpr.losses import biencoder_nll, dot_scores  # noqa: E402
from dpr.models.biencoder import BiEncoder, build_biencoder, resolve_config  # noqa: E402
from dpr.models.encoder import parameter_counts  # noqa: E402
from dpr.models.hub import load_tokenizer  # noqa: E402
from dpr.options import TrainConfig  # noqa: E402
from dpr.training.trainer import build_optimizer  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")
MODES = ("prefix", "finetune")
# The learning rates of the README's recipes; they do not change the time of a step.
LEARNING_RATES = {"prefix": 1e-2, "finetune": 2e-5}


def make_batch(args: argparse.Namespace) -> BiEncoderBatch:
    """B SciFact questions, question i paired with passage i (positive) and passage B+i (hard negative).

    The pairs are not relevant ones: only the text lengths matter for the cost of a step.
    """
    with open(os.path.join(args.data, "queries.jsonl"), encoding="utf-8") as handle:
        questions = [json.loads(line)["text"] for line in itertools.islice(handle, args.batch_size)]
    passages = [
        p for _, p in itertools.islice(iter_beir_corpus(os.path.join(args.data, "corpus.jsonl")), 2 * args.batch_size)
    ]
    if len(questions) < args.batch_size or len(passages) < 2 * args.batch_size:
        raise SystemExit(
            f"{args.data}: need {args.batch_size} queries and {2 * args.batch_size} passages, "
            f"found {len(questions)} and {len(passages)}"
        )
    samples = [
        BiEncoderSample(
            question=q,
            answers=(),
            positive_passages=(passages[i],),
            negative_passages=(),
            hard_negative_passages=(passages[args.batch_size + i],),
        )
        for i, q in enumerate(questions)
    ]
    # The model's own title format ("title text" for sentence-transformers folders), as the trainer uses.
    title_mode = resolve_config(build_config(args, "prefix")).passages.title_mode
    return build_biencoder_batch(
        samples,
        load_tokenizer(args.model),
        np.random.default_rng(0),
        max_length=args.sequence_length,
        hard_negatives=1,
        title_mode=title_mode,
    )


def build_config(args: argparse.Namespace, mode: str) -> BiEncoderConfig:
    return BiEncoderConfig.from_flat(
        pretrained_model_cfg=args.model,
        tuning=mode,
        pre_seq_len=args.pre_seq_len,
        sequence_length=args.sequence_length,
        dropout=args.dropout,
        prefix_dropout=args.dropout,
    )


def forward(model: BiEncoder, batch: BiEncoderBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Question and passage vectors of ``batch``: (B, D), (C, D)."""
    return model(*batch.question_inputs(), *batch.passage_inputs())


class Stepper:
    """One mode's bi-encoder, optimizer and step, mirroring ``BiEncoderTrainer`` (fp32, no accumulation)."""

    def __init__(self, args: argparse.Namespace, mode: str) -> None:
        torch.manual_seed(0)
        self.model: BiEncoder = build_biencoder(build_config(args, mode)).train()
        cfg = TrainConfig(train_file=("bench",), learning_rate=LEARNING_RATES[mode], max_grad_norm=2.0)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scale = cfg.scale_for(bool(self.model.config.head.normalize))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.max_grad_norm = cfg.max_grad_norm

    def step(self, batch: BiEncoderBatch) -> float:
        """One optimizer step on ``batch``; returns the loss."""
        q, c = forward(self.model, batch)  # (B, D), (2B, D)
        loss, _ = biencoder_nll(dot_scores(q * self.scale, c), batch.positive_idx)  # ()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def unique_storage_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameter and buffer storage, each storage counted once (a shared backbone once)."""
    seen: dict[int, int] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def touch(module: torch.nn.Module) -> None:
    """Read every weight once: weights loaded by memory-mapping the checkpoint count in RSS only once
    their pages are read, which a forward pass would do anyway."""
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            tensor.sum()


def _status_bytes(key: str) -> int | None:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status in bytes (None off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    hwm = _status_bytes("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(args: argparse.Namespace) -> int:
    """Memory of one mode in this fresh process; prints one JSON line."""
    batch = make_batch(args)
    rss0 = _status_bytes("VmRSS") or 0
    stepper = Stepper(args, args.child)
    touch(stepper.model)
    rss_model = _status_bytes("VmRSS") or 0
    peak_build = peak_rss() - rss0  # includes imports' peak if it was higher: for information only
    # Reset here: the training peak should not include transients of loading the checkpoint.
    was_reset = reset_peak_rss()
    for _ in range(args.memory_steps):
        stepper.step(batch)
    trainable, total = parameter_counts(stepper.model)
    print(
        json.dumps(
            {
                "mode": args.child,
                "rss_before": rss0,
                "weights_rss": rss_model - rss0,
                "peak_build": peak_build,
                "peak_training": peak_rss() - rss0,
                "peak_method": "VmHWM after clear_refs" if was_reset else "ru_maxrss (not reset)",
                "unique_weight_bytes": unique_storage_bytes(stepper.model),
                "trainable": trainable,
                "total": total,
            }
        )
    )
    return 0


def measure_memory(args: argparse.Namespace, mode: str) -> dict:
    """Run :func:`child` for ``mode`` in a fresh interpreter and read its JSON line."""
    command = [sys.executable, os.path.abspath(__file__), "--child", mode, *_passed_on(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"memory run for {mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _passed_on(args: argparse.Namespace) -> list[str]:
    return [
        "--model",
        args.model,
        "--data",
        args.data,
        "--batch_size",
        str(args.batch_size),
        "--sequence_length",
        str(args.sequence_length),
        "--pre_seq_len",
        str(args.pre_seq_len),
        "--memory_steps",
        str(args.memory_steps),
        "--threads",
        str(torch.get_num_threads()),
        "--dropout",
        str(args.dropout),
    ]


def time_steps(args: argparse.Namespace, batch: BiEncoderBatch) -> dict[str, list[float]]:
    """Seconds per step of each mode: both models live here, stepping in alternating rounds."""
    steppers = {mode: Stepper(args, mode) for mode in MODES}
    for stepper in steppers.values():  # warm-up: allocator, thread pool, AdamW state
        for _ in range(args.warmup_steps):
            stepper.step(batch)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:  # neither mode always goes first
            for _ in range(args.steps_per_round):
                start = time.perf_counter()
                steppers[mode].step(batch)
                times[mode].append(time.perf_counter() - start)
    return times


def report(results: dict) -> None:
    t, m = results["step_seconds"], results["memory"]
    print(
        f"{results['model']}, batch {results['batch_size']} questions + {2 * results['batch_size']} passages "
        f"(widths {results['question_width']} / {results['passage_width']} tokens), prefix {results['pre_seq_len']} "
        f"tokens, fp32, {results['rounds']} rounds x {results['steps_per_round']} steps per mode"
    )
    for mode in MODES:
        mem = m[mode]
        print(
            f"  {mode:<9}: step {statistics.median(t[mode]):7.3f} s median, {min(t[mode]):7.3f} s best; "
            f"trainable {mem['trainable']:,} of {mem['total']:,}; weights {mem['unique_weight_bytes'] / 2**20:7.1f} "
            f"MiB unique, {mem['weights_rss'] / 2**20:7.1f} MiB RSS; "
            f"training peak +{mem['peak_training'] / 2**20:7.1f} "
            f"MiB RSS ({mem['peak_method']})"
        )
    r = results["ratios"]
    # The verdict uses the best times: other load on the machine only ever adds time.
    print(
        f"prefix / fine-tuning step time: {r['step_best']:.3f} best, {r['step_median']:.3f} median "
        f"(target <= 0.6) -> {'OK' if r['step_best'] <= 0.6 else 'MISSED'}"
    )
    print(f"prefix / fine-tuning peak training memory: {r['peak_training']:.3f}")
    verdict = {key: "OK" if r[key] <= 0.55 else "MISSED" for key in ("weights_unique", "weights_rss")}
    print(
        f"shared backbone / two copies, model weights (target <= 0.55): {r['weights_unique']:.3f} unique bytes "
        f"-> {verdict['weights_unique']}, {r['weights_rss']:.3f} RSS -> {verdict['weights_rss']}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6", help="backbone: short name (minilm-l6, bert-tiny) or folder")
    parser.add_argument("--data", default=DATA, help="BEIR folder with queries.jsonl and corpus.jsonl")
    parser.add_argument("--batch_size", type=int, default=16, help="questions per batch (each +1 pos, +1 hard neg)")
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--pre_seq_len", type=int, default=64)
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="backbone and prefix dropout of both modes (0.1 as P-tuning v2; 0 is ~3x faster on CPU)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--steps_per_round", type=int, default=2)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--memory_steps", type=int, default=3, help="steps of each memory subprocess")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.child:
        return child(args)
    print(header(torch.get_num_threads()), flush=True)
    # Memory first, each mode in its own process, before this process holds any model.
    memory = {mode: measure_memory(args, mode) for mode in MODES}
    batch = make_batch(args)
    times = time_steps(args, batch)
    pre, fine = memory["prefix"], memory["finetune"]
    results = {
        "header": header(torch.get_num_threads()),
        "model": args.model,
        "batch_size": args.batch_size,
        "sequence_length": args.sequence_length,
        "pre_seq_len": args.pre_seq_len,
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
        "question_width": int(batch.question_ids.shape[1]),
        "passage_width": int(batch.context_ids.shape[1]),
        "step_seconds": times,
        "memory": memory,
        "ratios": {
            "step_median": statistics.median(times["prefix"]) / statistics.median(times["finetune"]),
            "step_best": min(times["prefix"]) / min(times["finetune"]),
            "peak_training": pre["peak_training"] / fine["peak_training"],
            "weights_unique": pre["unique_weight_bytes"] / fine["unique_weight_bytes"],
            "weights_rss": pre["weights_rss"] / fine["weights_rss"],
        },
    }
    report(results)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
