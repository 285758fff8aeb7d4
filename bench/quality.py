#!/usr/bin/env python3
"""Quality on SciFact test for each tuning mode, trained in domain (SciFact train) or out of domain (SQuAD).

For every (model, mode, training data): train with train_dense_encoder.py, embed the SciFact corpus with
the best checkpoint, evaluate on SciFact test with dense_retriever.py. Zero-shot and BM25 rows come from
the same corpus and qrels. Out of domain (``--train_data squad``) trains on a seeded SQuAD train subset
as large as SciFact train, with the same epochs, so both see the same number of steps. Writes one JSON
table (``--table``, rows: name, model, mode, train_data, trainable_share, trainable, nDCG@10, R@100, ECE,
train_seconds, step_seconds, checkpoint_bytes) that BENCHMARKS.md and bench/plot_results.py read. The table
is updated after every row and merged by name with the rows already in it; finished runs and evaluations are
reused, so a sweep can be stopped and started again, or split over calls. LoRA rows are one kind per rank
(mode ``lora-r8``, ``lora-r32``).

    python bench/quality.py --model bert-tiny --modes prefix prompt bitfit adapter lora finetune \\
        --train_data scifact squad --epochs 3 --seeds 12345 1 2 --table runs/quality/bert-tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dense_retriever  # noqa: E402
import generate_embeddings  # noqa: E402
import prepare_data  # noqa: E402
import train_dense_encoder  # noqa: E402
from dpr.atomic import atomic_file  # noqa: E402
from dpr.cli import setup_logging  # noqa: E402
from dpr.models.checkpoint_format import WEIGHTS_FILE, resolve_checkpoint, tuned_parameter_counts  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
# PT-Retrieval's published learning rates per mode; LoRA's is not PT-Retrieval's (it has no LoRA) but within
# the 2e-4 .. 5e-4 Hu et al. used for RoBERTa-base on GLUE.
DEFAULT_SEED = 12345
LEARNING_RATES = {
    "prefix": "1e-2",
    "prompt": "1e-2",
    "bitfit": "1e-2",
    "adapter": "1e-4",
    "lora": "5e-4",
    "finetune": "1e-5",
}
MODE_FLAGS = {
    "prefix": ["--prefix"],
    "prompt": ["--prompt"],
    "bitfit": ["--bitfit"],
    "adapter": ["--adapter"],
    "lora": ["--lora"],
    "finetune": [],
}


def variants(args: argparse.Namespace) -> list[tuple[str, str, int | None]]:
    """(name, mode, LoRA rank) per row kind: LoRA gives one per ``--lora_r`` (``lora-r8``), other modes one."""
    out: list[tuple[str, str, int | None]] = []
    for mode in args.modes:
        out += [(f"lora-r{r}", mode, r) for r in args.lora_r] if mode == "lora" else [(mode, mode, None)]
    return out


def mode_flags(args: argparse.Namespace, mode: str, lora_r: int | None = None) -> list[str]:
    flags = list(MODE_FLAGS[mode])
    if mode in ("prefix", "prompt"):
        flags += ["--pre_seq_len", str(args.pre_seq_len)]
    if mode == "lora":
        flags += ["--lora_r", str(lora_r), "--lora_alpha", str(args.lora_alpha)]
    if args.dropout is not None:
        flags += ["--dropout", str(args.dropout), "--prefix_dropout", str(args.dropout)]
        if mode == "lora":
            flags += ["--lora_dropout", str(args.dropout)]
    return flags


def check(code: int) -> None:
    if code != 0:
        raise SystemExit(code)


def subsample_train(data: str, size: int, seed: int = 0) -> str:
    """The first ``size`` questions of a seeded shuffle of SQuAD train: the same size as SciFact train."""
    path = os.path.join(data, f"squad-train-{size}.json")
    if not os.path.exists(path):
        with open(os.path.join(data, "squad-train.json"), encoding="utf-8") as handle:
            records = json.load(handle)
        if size > len(records):
            raise SystemExit(f"--squad_train_questions {size}: SQuAD train has only {len(records)} questions")
        random.Random(seed).shuffle(records)
        with atomic_file(path) as handle:
            json.dump(records[:size], handle)
    return path


def prepare(out: str, train_data: str) -> str:
    folder = os.path.join(out, "data", train_data)
    if train_data == "scifact":
        check(
            prepare_data.main(
                [
                    "beir",
                    "--beir_dir",
                    os.path.join(SHARED, "scifact"),
                    "--out_dir",
                    folder,
                    "--name",
                    "scifact",
                    "--dev_ratio",
                    "0.1",
                    "--seed",
                    "0",
                    "--no_progress",
                ]
            )
        )
    else:
        check(
            prepare_data.main(
                [
                    "squad",
                    "--squad_file",
                    os.path.join(SHARED, "squad1.1", "train-subset-v1.1.json"),
                    "--eval_file",
                    os.path.join(SHARED, "squad1.1", "dev-v1.1.json"),
                    "--out_dir",
                    folder,
                    "--name",
                    "squad",
                    "--dev_ratio",
                    "0.1",
                    "--seed",
                    "0",
                    "--no_progress",
                ]
            )
        )
    return folder


def evaluate(args: argparse.Namespace, name: str, model_flags: list[str]) -> dict:
    """Embed the SciFact corpus with this encoder and evaluate on SciFact test (reused when done)."""
    metrics_path = os.path.join(args.out, f"{name}-metrics.json")
    if not os.path.exists(metrics_path):
        emb = os.path.join(args.out, "embeddings", name)
        if not os.path.exists(emb + "_0"):
            check(
                generate_embeddings.main(
                    [
                        "--ctx_file",
                        args.passages,
                        "--out_file",
                        emb,
                        "--batch_size",
                        "64",
                        "--sequence_length",
                        str(args.sequence_length),
                        "--no_progress",
                        *model_flags,
                    ]
                )
            )
        check(
            dense_retriever.main(
                [
                    "--encoded_ctx_file",
                    emb + "_*",
                    "--beir_dir",
                    os.path.join(SHARED, "scifact"),
                    "--split",
                    "test",
                    "--n-docs",
                    "100",
                    "--metrics_file",
                    metrics_path,
                    "--sequence_length",
                    str(args.sequence_length),
                    "--no_progress",
                    *model_flags,
                ]
            )
        )
    with open(metrics_path, encoding="utf-8") as handle:
        return json.load(handle)


def run_name(model: str, variant: str, train_data: str, seed: int) -> str:
    """``<model>-<variant>-<data>``, with ``-s<seed>`` for seeds other than the first sweep's 12345."""
    return f"{model}-{variant}-{train_data}" + ("" if seed == DEFAULT_SEED else f"-s{seed}")


def row_name(run: str, seed: int, seeds: list[int]) -> str:
    """A seed's row name: the run's, with ``-s12345`` too when several seeds share the mean row's name."""
    return f"{run}-s{seed}" if seed == DEFAULT_SEED and len(seeds) > 1 else run


def train(
    args: argparse.Namespace, variant: tuple[str, str, int | None], data: str, train_data: str, seed: int
) -> tuple[str, float]:
    """Train one variant with one seed (a finished run is reused: its time comes from quality_train.json)."""
    name, mode, lora_r = variant
    run = os.path.join(args.out, run_name(args.model, name, train_data, seed))
    timing = os.path.join(run, "quality_train.json")
    if os.path.exists(timing):
        with open(timing, encoding="utf-8") as handle:
            return run, json.load(handle)["train_seconds"]
    train_file = os.path.join(data, f"{train_data}-train.json")
    if train_data == "squad":
        train_file = subsample_train(data, args.squad_train_questions)
    started = time.perf_counter()
    check(
        train_dense_encoder.main(
            [
                "--pretrained_model_cfg",
                args.model,
                *mode_flags(args, mode, lora_r),
                "--train_file",
                train_file,
                "--dev_file",
                os.path.join(data, f"{train_data}-dev.json"),
                "--output_dir",
                run,
                "--seed",
                str(seed),
                "--sequence_length",
                str(args.sequence_length),
                "--batch_size",
                str(args.batch_size),
                "--dev_batch_size",
                str(args.batch_size),
                "--learning_rate",
                LEARNING_RATES[mode],
                "--warmup_percentage",
                "0.05",
                "--max_grad_norm",
                "2.0",
                "--hard_negatives",
                "1",
                "--num_train_epochs",
                str(args.epochs),
                "--eval_per_epoch",
                "1",
                "--log_batch_step",
                "10",
                "--val_av_rank_start_epoch",
                str(args.av_rank_from),
                "--val_av_rank_max_qs",
                "200",
            ]
        )
    )
    seconds = time.perf_counter() - started
    with atomic_file(timing) as handle:
        json.dump({"train_seconds": seconds, "batch_size": args.batch_size}, handle)
    return run, seconds


def step_seconds(run: str) -> float | None:
    """Median seconds per training step from the run's train_log.jsonl (each record's samples/s is measured
    over its epoch up to that batch, so validations are not in it); None when nothing was logged."""
    path = os.path.join(run, "train_log.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    with open(os.path.join(run, "quality_train.json"), encoding="utf-8") as handle:
        batch = json.load(handle).get("batch_size")  # runs timed before the step time was kept lack it
    if batch is None:
        return None
    rates = [r["samples_per_s"] for r in records if r.get("samples_per_s")]
    return statistics.median(batch / rate for rate in rates) if rates else None


def row(
    name: str,
    mode: str,
    train_data: str,
    metrics: dict,
    checkpoint: str | None,
    seconds: float,
    model: str,
    run: str | None = None,
) -> dict:
    """One table row; ``run`` (the training folder) gives the step time, ``checkpoint`` the size and share."""
    share, trainable, size = 0.0, 0, None
    if checkpoint:
        trainable, total = tuned_parameter_counts(checkpoint)
        share = trainable / total
        size = os.path.getsize(os.path.join(checkpoint, WEIGHTS_FILE))
    m = metrics["metrics"]
    return {
        "name": name,
        "model": model,
        "mode": mode,
        "train_data": train_data,
        "trainable": trainable,
        "trainable_share": share,
        "nDCG@10": m["nDCG@10"],
        "R@100": m["R@100"],
        "ECE": metrics.get("ece_top5"),
        "train_seconds": round(seconds, 1),
        "step_seconds": step_seconds(run) if run else None,
        "checkpoint_bytes": size,
        "checkpoint": checkpoint,
    }


def aggregate(name: str, runs: list[dict]) -> dict:
    """One row for several seeds of a (model, mode, data): the mean of each metric and its standard deviation."""
    out = {**runs[0], "name": name, "seeds": len(runs), "checkpoint": [r["checkpoint"] for r in runs]}
    for key in ("nDCG@10", "R@100", "ECE", "train_seconds", "step_seconds"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.fmean(values) if values else None
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def _metric(r: dict, key: str) -> str:
    if r.get("seeds", 1) > 1:
        return f"{r[key]:.4f} ± {r[key + '_std']:.4f}"
    return f"{r[key]:.4f}"


def _size(n: int) -> str:
    if n >= 100_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB" if n >= 1000 else f"{n} B"


def save_table(table: str, rows: list[dict]) -> list[dict]:
    """Merge ``rows`` into the table file by name (rows of earlier calls stay) and write it atomically."""
    merged: list[dict] = []
    if os.path.exists(table):
        with open(table, encoding="utf-8") as handle:
            merged = json.load(handle)
    index = {r["name"]: i for i, r in enumerate(merged)}
    for r in rows:
        if r["name"] in index:
            merged[index[r["name"]]] = r
        else:
            index[r["name"]] = len(merged)
            merged.append(r)
    with atomic_file(table) as handle:
        json.dump(merged, handle, indent=2)
    return merged


def markdown(rows: list[dict]) -> str:
    """The table as Markdown, as BENCHMARKS.md shows it."""
    lines = [
        "| run | trained on | seeds | nDCG@10 | R@100 | ECE | trainable | train s | s/step | checkpoint |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ece = f"{r['ECE']:.3f}" if r["ECE"] is not None else "-"
        share = f"{100 * r['trainable_share']:.2f}%" if r["trainable"] else "-"
        seconds = f"{r['train_seconds']:.0f}" if r["train_seconds"] else "-"
        step = f"{r['step_seconds']:.2f}" if r.get("step_seconds") else "-"
        size = _size(r["checkpoint_bytes"]) if r.get("checkpoint_bytes") else "-"
        lines.append(
            f"| {r['name']} | {r['train_data']} | {r.get('seeds', 1)} | {_metric(r, 'nDCG@10')} "
            f"| {_metric(r, 'R@100')} | {ece} | {share} | {seconds} | {step} | {size} |"
        )
    return "\n".join(lines)


MODE_LABELS = {
    "prefix": "prefix (P-tuning v2)",
    "prompt": "prompt",
    "bitfit": "BitFit",
    "adapter": "adapters",
    "lora": "LoRA",
    "finetune": "full fine-tuning",
}


def markdown_by_mode(rows: list[dict], in_domain: str = "scifact", out_domain: str = "squad") -> str:
    """One line per (model, mode): in-domain and out-of-domain metrics side by side, and the nDCG@10 change."""
    by_name = {r["name"]: r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows if r["mode"] in MODE_LABELS or r["mode"].startswith("lora")))

    def cell(r: dict | None) -> str:
        return "not run" if r is None else f"{_metric(r, 'nDCG@10')} / {_metric(r, 'R@100')} / {r['ECE']:.3f}"

    lines = [
        f"| model | mode | trainable | {in_domain}-trained nDCG@10 / R@100 / ECE | {out_domain}-trained "
        "nDCG@10 / R@100 / ECE | out-of-domain change in nDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    present = dict.fromkeys(r["mode"] for r in rows)
    kinds = [
        (kind, MODE_LABELS.get(kind) or f"LoRA r{kind[len('lora-r') :]}")
        for kind in [
            *MODE_LABELS,
            *sorted((k for k in present if k.startswith("lora-r")), key=lambda k: int(k[len("lora-r") :])),
        ]
    ]
    for model in models:
        for mode, label in kinds:
            inside, outside = (by_name.get(f"{model}-{mode}-{d}") for d in (in_domain, out_domain))
            if inside is None and outside is None:
                continue
            change = f"{outside['nDCG@10'] - inside['nDCG@10']:+.4f}" if inside and outside else "-"
            share = 100 * (inside or outside)["trainable_share"]
            lines.append(f"| {model} | {label} | {share:.2f}% | {cell(inside)} | {cell(outside)} | {change} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert-tiny")
    parser.add_argument("--modes", nargs="+", default=list(MODE_FLAGS), choices=list(MODE_FLAGS))
    parser.add_argument("--train_data", nargs="+", default=["scifact", "squad"], choices=["scifact", "squad"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[DEFAULT_SEED],
        help="training seeds; with several, each (mode, data) also gets a row with the mean and standard "
        "deviation (comparisons between methods want >= 3)",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--pre_seq_len", type=int, default=32, help="prefix / prompt length")
    parser.add_argument(
        "--lora_r", type=int, nargs="+", default=[8], help="LoRA ranks (--modes lora): one row kind per rank"
    )
    parser.add_argument("--lora_alpha", type=float, default=16.0, help="LoRA alpha (--modes lora)")
    parser.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="backbone and prefix dropout for training (default: the trainer's 0.1)",
    )
    parser.add_argument(
        "--squad_train_questions",
        type=int,
        default=None,
        help="SQuAD questions to train on (default: as many as SciFact train)",
    )
    parser.add_argument("--av_rank_from", type=int, default=0, help="average-rank validation from this epoch")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--table", default=None, help="JSON table to write (default <out>/<model>.json)")
    parser.add_argument("--report", action="store_true", help="only print the table (--table) as Markdown")
    args = parser.parse_args()
    if args.report:
        with open(args.table or os.path.join(args.out, f"{args.model}.json"), encoding="utf-8") as handle:
            rows = json.load(handle)
        print(markdown(rows) + "\n\n" + markdown_by_mode(rows))
        return 0
    setup_logging()
    os.makedirs(args.out, exist_ok=True)
    scifact = prepare(args.out, "scifact")
    args.passages = os.path.join(scifact, "scifact-passages.tsv")
    with open(os.path.join(scifact, "scifact-test-bm25.json"), encoding="utf-8") as handle:
        bm25 = json.load(handle)
    rows = [
        {
            "name": "BM25",
            "model": "bm25s",
            "mode": "bm25",
            "train_data": "-",
            "trainable": 0,
            "trainable_share": 0.0,
            "nDCG@10": bm25["metrics"]["nDCG@10"],
            "R@100": bm25["metrics"]["R@100"],
            "ECE": None,
            "train_seconds": 0.0,
            "checkpoint": None,
        }
    ]
    rows.append(
        row(
            f"{args.model} zero-shot",
            "zero-shot",
            "-",
            evaluate(args, f"{args.model}-zero-shot", ["--pretrained_model_cfg", args.model]),
            None,
            0.0,
            args.model,
        )
    )
    table = args.table or os.path.join(args.out, f"{args.model}.json")
    save_table(table, rows)
    if args.squad_train_questions is None:
        with open(os.path.join(scifact, "scifact-train.json"), encoding="utf-8") as handle:
            args.squad_train_questions = len(json.load(handle))
    for train_data in args.train_data:
        data = scifact if train_data == "scifact" else prepare(args.out, "squad")
        for variant in variants(args):
            per_seed = []
            for seed in args.seeds:
                run, seconds = train(args, variant, data, train_data, seed)
                best = resolve_checkpoint(run)
                name = run_name(args.model, variant[0], train_data, seed)
                metrics = evaluate(args, name, ["--model_file", best])
                per_seed.append(
                    row(
                        row_name(name, seed, args.seeds),
                        variant[0],
                        train_data,
                        metrics,
                        best,
                        seconds,
                        args.model,
                        run,
                    )
                )
                print(json.dumps(per_seed[-1]), flush=True)
            rows += (
                per_seed
                if len(per_seed) == 1
                else [*per_seed, aggregate(f"{args.model}-{variant[0]}-{train_data}", per_seed)]
            )
            save_table(table, rows)
    print(markdown(save_table(table, rows)))
    print(f"table -> {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
