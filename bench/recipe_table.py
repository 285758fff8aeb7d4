#!/usr/bin/env python3
"""The table of run_scripts/cpu_scifact_recipe.sh's runs: mean and standard deviation over seeds per MODE.

    python bench/recipe_table.py --root runs/recipe-minilm-l6

Reads every ``<root>/<mode>-s<seed>/scifact-test-metrics.json`` (and ``round2/`` below it, the ANCE
round) with the run's best checkpoint, and prints BENCHMARKS.md section 11's rows: seeds, nDCG@10 and
R@100 as mean ± std, MRR@10, the trainable share and the dev nDCG@10 that chose each checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpr.models.checkpoint_format import resolve_checkpoint, tuned_parameter_counts  # noqa: E402

MODES = ("prefix-both", "prefix-question", "finetune")
RUN = re.compile(r"^(?P<mode>[a-z-]+)-s(?P<seed>\d+)$")


def trainable_share(checkpoint: str) -> tuple[int, float]:
    trainable, total = tuned_parameter_counts(checkpoint)
    return trainable, trainable / total


def read_run(folder: str) -> dict | None:
    """One finished run's numbers, or None while it has no test metrics."""
    metrics_file = os.path.join(folder, "scifact-test-metrics.json")
    if not os.path.exists(metrics_file):
        return None
    with open(metrics_file, encoding="utf-8") as handle:
        metrics = json.load(handle)["metrics"]
    with open(os.path.join(folder, "best_checkpoint.json"), encoding="utf-8") as handle:
        best = json.load(handle)
    trainable, share = trainable_share(resolve_checkpoint(folder))
    return {
        "nDCG@10": metrics["nDCG@10"],
        "R@100": metrics["R@100"],
        "MRR@10": metrics["MRR@10"],
        "dev": best["value"],
        "epoch": best["epoch"],
        "trainable": trainable,
        "share": share,
    }


def collect(root: str) -> dict[str, dict[int, dict]]:
    """``label -> seed -> run`` for every finished run under ``root`` (label: MODE, or MODE round2)."""
    found: dict[str, dict[int, dict]] = {}
    for name in sorted(os.listdir(root)):
        match = RUN.match(name)
        if not match or match["mode"] not in MODES:
            continue
        for label, folder in ((match["mode"], name), (f"{match['mode']} round2", os.path.join(name, "round2"))):
            run = read_run(os.path.join(root, folder))
            if run is not None:
                found.setdefault(label, {})[int(match["seed"])] = run
    return found


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown(found: dict[str, dict[int, dict]]) -> str:
    lines = [
        "| MODE | seeds | nDCG@10 | R@100 | MRR@10 | per seed nDCG@10 | best epoch (dev nDCG@10) | trainable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in found.items():
        seeds = sorted(runs)
        column = {key: [runs[s][key] for s in seeds] for key in ("nDCG@10", "R@100", "MRR@10")}
        per_seed = ", ".join(f"{s}: {runs[s]['nDCG@10']:.4f}" for s in seeds)
        chosen = ", ".join(f"{runs[s]['epoch']} ({runs[s]['dev']:.4f})" for s in seeds)
        first = runs[seeds[0]]
        lines.append(
            f"| {label} | {len(seeds)} | {cell(column['nDCG@10'])} | {cell(column['R@100'])} | "
            f"{cell(column['MRR@10'])} | {per_seed} | {chosen} | {first['trainable']:,} ({100 * first['share']:.2f}%) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/recipe-minilm-l6", help="the recipe's ROOT")
    args = parser.parse_args()
    found = collect(args.root)
    if not found:
        print(f"no finished recipe run under {args.root}", file=sys.stderr)
        return 1
    print(markdown(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
