#!/usr/bin/env python3
"""Plots of training runs and of the quality table (PNG; needs matplotlib: pip install -e ".[bench]").

Training curves (``--runs``): one or more ``train_dense_encoder.py`` output folders. Each holds
``validation_log.jsonl`` (one JSON object per validation: ``metric`` ``nll`` or ``average_rank``,
``value``, ``epoch``, ``iteration``, ``global_step``, ``train_loss``) and checkpoint folders whose
``config.json`` names the tuning mode (``encoder.tuning``). Writes ``training_curves.png``: left, the
rolling training loss (solid) and the validation NLL (dashed) against the optimizer step; right, the
validation average rank (lower is better). One line per run, one colour per tuning mode.

Quality against trainable share (``--table``): one or more JSON files, each a list of rows (as
``bench/quality.py`` writes them), or CSV files with a header. Per row:

    name             str    point label, e.g. "minilm-l6-prefix-scifact"
    mode             str    finetune | prefix | prompt | bitfit | adapter | lora | zero-shot | bm25 | ...
    model            str    e.g. minilm-l6, bert-tiny (one marker shape per model)
    trainable_share  float  trained parameters / all parameters, in [0, 1]; 0 for untrained baselines
    nDCG@10, R@100   float  test metrics in [0, 1] ("ndcg10" and "r100" are accepted too)
    train_data       str    optional: what it was trained on; rows trained on other data than
                            --in_domain (default scifact) are drawn hollow (out of domain); "-" or absent: filled

Writes ``quality_vs_trainable.png``: nDCG@10 and R@100 against the trainable share (log axis); rows
with share 0 (BM25, zero-shot) are horizontal reference lines.

    python bench/plot_results.py --runs runs/quality/minilm-l6-*-scifact --table runs/quality/minilm-l6.json \\
        --out_dir runs/plots
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

MODE_COLOURS = {
    "prefix": "tab:blue",
    "prompt": "tab:orange",
    "bitfit": "tab:green",
    "adapter": "tab:purple",
    "lora": "tab:cyan",
    "finetune": "tab:red",
    "zero-shot": "tab:gray",
    "bm25": "black",
}

MODEL_MARKERS = ("o", "s", "^", "D", "v", "P")
LINE_STYLES = ("-", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)))
METRIC_KEYS = {"nDCG@10": ("nDCG@10", "ndcg10"), "R@100": ("R@100", "r100")}


def mode_colour(mode: str, fallback: str | None) -> str | None:
    """A mode's colour; a variant of a mode (``lora-r8``, ``lora-r32``) takes its mode's."""
    return MODE_COLOURS.get(mode, MODE_COLOURS.get(mode.split("-", 1)[0], fallback))


class InputError(ValueError):
    """An input file does not hold what this script reads; the message names the file, row and key."""


@dataclass(frozen=True)
class Run:
    folder: str
    mode: str
    label: str
    records: list[dict[str, Any]]  # validation_log.jsonl, in file order


def pyplot():  # -> matplotlib.pyplot; imported lazily so the project needs matplotlib only to plot
    try:
        import matplotlib
    except ImportError as err:
        raise SystemExit(f"plotting needs matplotlib: pip install -e '.[bench]' (or '.[plot]') ({err})") from err
    matplotlib.use("Agg")  # files only: no display on servers or in CI
    import matplotlib.pyplot as plt

    return plt


def run_mode(folder: str) -> str:
    """The tuning mode from the run's checkpoint config.json: the best checkpoint first, else any."""
    candidates = []
    best = os.path.join(folder, "best_checkpoint.json")
    if os.path.isfile(best):
        with open(best, encoding="utf-8") as handle:
            candidates.append(os.path.join(json.load(handle)["path"], "config.json"))
        # A run folder that moved since training: the recorded path is stale, so try its base name here.
        candidates.append(os.path.join(folder, os.path.basename(os.path.dirname(candidates[0])), "config.json"))
    candidates += sorted(glob.glob(os.path.join(folder, "*", "config.json")))
    for path in candidates:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
            try:
                tuning = config["encoder"]["tuning"]
                return str(tuning["method"] if isinstance(tuning, dict) else tuning)  # format 2 nests it
            except (KeyError, TypeError) as err:
                raise InputError(
                    f"{path}: expected a checkpoint config with key encoder.tuning, missing {err}"
                ) from err
    raise InputError(f"{folder}: no checkpoint config.json found (looked for best_checkpoint.json and */config.json)")


def read_run(folder: str) -> Run:
    path = os.path.join(folder, "validation_log.jsonl")
    if not os.path.isfile(path):
        raise InputError(f"{folder}: no validation_log.jsonl (is it a train_dense_encoder.py output folder?)")
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{line_no}: malformed JSON ({err.msg})") from err
            for key in ("metric", "value", "global_step"):
                if key not in record:
                    raise InputError(f"{path}:{line_no}: missing key {key!r} (found {sorted(record)})")
            records.append(record)
    mode = run_mode(folder)
    return Run(folder, mode, f"{mode} ({os.path.basename(os.path.normpath(folder))})", records)


def plot_curves(runs: list[Run], out: str) -> None:
    plt = pyplot()
    fig, (loss_ax, rank_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles: dict[str, int] = {}
    for run in runs:
        colour = mode_colour(run.mode, None)
        style = LINE_STYLES[styles.get(run.mode, 0) % len(LINE_STYLES)]  # runs of one mode: new dashes
        styles[run.mode] = styles.get(run.mode, 0) + 1
        train = [(r["global_step"], r["train_loss"]) for r in run.records if r.get("train_loss") is not None]
        nll = [(r["global_step"], r["value"]) for r in run.records if r["metric"] == "nll"]
        rank = [(r["global_step"], r["value"]) for r in run.records if r["metric"] == "average_rank"]
        if train:
            loss_ax.plot(*zip(*train), color=colour, linestyle=style, marker=".", label=f"{run.label} train")
        if nll:
            loss_ax.plot(*zip(*nll), color=colour, linestyle=style, marker="x", alpha=0.6, label=f"{run.label} dev NLL")
        if rank:
            rank_ax.plot(*zip(*rank), color=colour, linestyle=style, marker="o", label=run.label)
    loss_ax.set(title="loss (rolling train; dev NLL marked x)", xlabel="optimizer step", ylabel="NLL")
    rank_ax.set(
        title="dev average rank of the positive (lower is better)", xlabel="optimizer step", ylabel="average rank"
    )
    for ax in (loss_ax, rank_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no records", transform=ax.transAxes, ha="center", va="center", color="gray")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _number(row: dict[str, Any], keys: tuple[str, ...], where: str) -> float:
    for key in keys:
        if key in row and row[key] not in (None, ""):
            try:
                return float(row[key])
            except (TypeError, ValueError) as err:
                raise InputError(f"{where}: key {key!r}: expected a number, found {row[key]!r}") from err
    raise InputError(f"{where}: missing key {' or '.join(repr(k) for k in keys)} (found {sorted(row)})")


def read_table(path: str) -> list[dict[str, Any]]:
    """Rows of a JSON list or CSV file, checked and normalised to name/mode/model/share/metrics/train_data."""
    with open(path, encoding="utf-8", newline="") as handle:
        if path.endswith(".csv"):
            raw = list(csv.DictReader(handle))
        else:
            try:
                raw = json.load(handle)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}: malformed JSON ({err.msg}, line {err.lineno})") from err
    if not isinstance(raw, list):
        raise InputError(f"{path}: expected a list of rows, found {type(raw).__name__}")
    rows = []
    for index, row in enumerate(raw, start=1):
        where = f"{path}: row {index}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object, found {type(row).__name__}")
        for key in ("name", "mode", "model"):
            if not row.get(key):
                raise InputError(f"{where}: missing key {key!r} (found {sorted(row)})")
        share = _number(row, ("trainable_share",), where)
        if not 0.0 <= share <= 1.0:
            raise InputError(f"{where}: trainable_share must be a fraction in [0, 1], found {share}")
        rows.append(
            {
                "name": row["name"],
                "mode": row["mode"],
                "model": row["model"],
                "share": share,
                "train_data": row.get("train_data") or "-",
                **{metric: _number(row, keys, where) for metric, keys in METRIC_KEYS.items()},
            }
        )
    return rows


def plot_quality(rows: list[dict[str, Any]], in_domain: str, out: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    models = list(dict.fromkeys(r["model"] for r in rows if r["share"] > 0))
    # untrained rows repeated across tables (BM25 in every table) are drawn once
    baselines = list({(r["name"], r["nDCG@10"], r["R@100"]): r for r in rows if r["share"] == 0}.values())
    trained = [r for r in rows if r["share"] > 0]
    for ax, metric in zip(axes, METRIC_KEYS):
        for i, r in enumerate(baselines):  # untrained: no x position on a log axis, so a line
            ax.axhline(
                r[metric],
                color=mode_colour(r["mode"], "gray"),
                linewidth=1,
                linestyle=LINE_STYLES[1 + i % (len(LINE_STYLES) - 1)],
                label=r["name"],
            )
        for r in trained:
            colour = mode_colour(r["mode"], "tab:brown")
            filled = r["train_data"] in (in_domain, "-")  # no train_data: no out-of-domain claim
            marker = MODEL_MARKERS[models.index(r["model"]) % len(MODEL_MARKERS)]
            ax.scatter(
                100 * r["share"],
                r[metric],
                s=55,
                marker=marker,
                edgecolors=colour,
                linewidths=1.5,
                facecolors=colour if filled else "none",
                zorder=3,
            )
            ax.annotate(
                r["mode"],
                (100 * r["share"], r[metric]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
                color=colour,
            )
        if trained:
            ax.set_xscale("log")
        ax.set(title=f"SciFact test {metric}", xlabel="trainable parameters (% of the model, log scale)", ylabel=metric)
        ax.grid(alpha=0.3, which="both")
    # One legend below both panels (same lines, markers and fills on each side), clear of the points.
    _quality_legend(fig, axes[1], models, any(r["train_data"] not in (in_domain, "-") for r in trained), in_domain)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _quality_legend(fig, ax, models: list[str], any_out_of_domain: bool, in_domain: str) -> None:
    """A legend of what the marker shapes and fills mean (colours are named beside every point)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker=MODEL_MARKERS[i % len(MODEL_MARKERS)], color="gray", linestyle="none", label=model)
        for i, model in enumerate(models)
    ]
    handles.append(Line2D([], [], marker="o", color="gray", linestyle="none", label=f"trained on {in_domain}"))
    if any_out_of_domain:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                color="gray",
                markerfacecolor="none",
                linestyle="none",
                label="trained on other data (out of domain)",
            )
        )
    baseline_handles, _ = ax.get_legend_handles_labels()
    fig.legend(handles=baseline_handles + handles, fontsize=8, loc="lower center", ncol=4, frameon=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[], help="training output folders (globs are expanded)")
    parser.add_argument("--table", nargs="*", default=[], help="quality tables: JSON lists or CSV files")
    parser.add_argument("--in_domain", default="scifact", help="train_data value drawn as filled (in domain)")
    parser.add_argument("--out_dir", default="plots")
    parser.add_argument("--json", default=None, help="also write what was plotted (paths, rows) here")
    args = parser.parse_args(argv)
    if not args.runs and not args.table:
        parser.error("nothing to plot: give --runs and/or --table")
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}"
    )
    os.makedirs(args.out_dir, exist_ok=True)
    written: dict[str, Any] = {}
    try:
        if args.runs:
            folders = sorted({f for pattern in args.runs for f in (glob.glob(pattern) or [pattern])})
            runs = [read_run(folder) for folder in folders]
            written["training_curves"] = os.path.join(args.out_dir, "training_curves.png")
            plot_curves(runs, written["training_curves"])
            written["runs"] = [{"folder": r.folder, "mode": r.mode, "validations": len(r.records)} for r in runs]
        if args.table:
            rows = [row for path in args.table for row in read_table(path)]
            written["quality_vs_trainable"] = os.path.join(args.out_dir, "quality_vs_trainable.png")
            plot_quality(rows, args.in_domain, written["quality_vs_trainable"])
            written["rows"] = rows
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key in ("training_curves", "quality_vs_trainable"):
        if key in written:
            print(f"wrote {written[key]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(written, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
