#!/usr/bin/env python3
"""Kill -9 a training run again and again, restart it until it finishes, compare with an unbroken run.

Each round trains a tiny prefix-tuned bi-encoder twice in a fresh folder: once without interruption, once
SIGKILLed and restarted until it exits 0. A kill is timed (a random delay after the start), or comes from
outside a few milliseconds after a checkpoint's temporary folder appears, or is placed exactly at one of
the moments a run folder is most fragile (``KILL_POINTS``: inside the atomic checkpoint write, between the
checkpoint's rename and its log line, half-way through the log line, between the log line and the best
record). The two folders must then hold the same checkpoints, bit-identical final tuned
weights (max |delta| = 0.0), the same ``validation_log.jsonl`` and the same ``best_checkpoint.json``.

    python bench/kill_resume.py --rounds 20 --seed 0          # about 1 s per run on an idle CPU

Runs are forked from a forkserver that imported torch once, so a restart costs training, not imports.
tests/test_resume_safety.py runs one short round of the exact kill points.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# In-checkpoint: the weights are in the temporary folder, not yet renamed. The other three are after the
# rename; "torn_log" writes half of the log line first.
KILL_POINTS = ("in_checkpoint", "after_checkpoint", "torn_log", "before_best")
PREFIX = "dpr_biencoder"


def training_argv(model_dir: str, train: str, dev: str, out: str) -> list[str]:
    """Small but complete: accumulation, a cut accumulation at validation, warmup, dropout, pruning."""
    return [
        "--pretrained_model_cfg",
        model_dir,
        "--train_file",
        train,
        "--dev_file",
        dev,
        "--output_dir",
        out,
        "--prefix",
        "--pre_seq_len",
        "4",
        "--batch_size",
        "4",
        "--dev_batch_size",
        "4",
        "--sequence_length",
        "32",
        "--seed",
        "3",
        "--learning_rate",
        "0.01",
        "--num_train_epochs",
        "2",
        "--eval_per_epoch",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--hard_negatives",
        "2",
        "--warmup_steps",
        "2",
        "--keep_checkpoints",
        "2",
        "--train_rolling_loss_step",
        "5",
        "--log_batch_step",
        "100",
    ]


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(point: str, occurrence: int) -> None:
    """Make this process SIGKILL itself at the ``occurrence``-th time it reaches ``point``."""
    import dpr.training.checkpoint as checkpoint
    import dpr.training.trainer as trainer
    from dpr.training.run_dir import HISTORY_FILE

    seen = [0]

    def due() -> bool:
        seen[0] += 1
        return seen[0] == occurrence

    if point == "in_checkpoint":
        original = checkpoint.save_tuned_weights

        def weights_then_kill(model: Any, path: str) -> None:
            original(model, path)
            if due():
                _kill_self()

        checkpoint.save_tuned_weights = weights_then_kill
    elif point == "after_checkpoint":
        save = trainer.save_checkpoint

        def save_then_kill(*args: Any, **kwargs: Any) -> str:
            path = save(*args, **kwargs)
            if due():
                _kill_self()
            return path

        trainer.save_checkpoint = save_then_kill
    elif point == "torn_log":
        append = trainer.append_history

        def torn_append(output_dir: str, record: dict) -> None:
            if due():
                line = json.dumps(record, sort_keys=True) + "\n"
                with open(os.path.join(output_dir, HISTORY_FILE), "a", encoding="utf-8") as handle:
                    handle.write(line[: len(line) // 2])
                _kill_self()
            append(output_dir, record)

        trainer.append_history = torn_append
    elif point == "before_best":
        update = trainer.update_best

        def kill_then_update(*args: Any) -> bool:
            if due():
                _kill_self()
            return update(*args)

        trainer.update_best = kill_then_update
    else:
        raise ValueError(f"unknown kill point {point!r}; one of {KILL_POINTS}")


@dataclass(frozen=True)
class Kill:
    """How one run is SIGKILLed: the ``occurrence``-th time it reaches kill point ``point`` (the process
    kills itself there), ``after_s`` seconds after its start, or (``on_write``) as soon as this process
    sees a checkpoint's temporary folder appear, ``after_s`` seconds later."""

    point: str | None = None
    occurrence: int = 1
    after_s: float | None = None
    on_write: bool = False


def _child(argv: list[str], kill: Kill | None, log_path: str) -> None:
    """One training process (forked from the forkserver): fixed threads, output to ``log_path``."""
    import torch

    import train_dense_encoder
    from dpr.cli import run_cli

    torch.set_num_threads(1)  # the same reduction order in every run, whatever the machine
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if kill is not None and kill.point is not None:
        _install_kill(kill.point, kill.occurrence)
    sys.exit(run_cli(train_dense_encoder.main, argv))


def forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "train_dense_encoder", "kill_resume"])
    return context


def run_once(context: Any, argv: list[str], log_path: str, kill: Kill | None = None, timeout_s: float = 300.0) -> int:
    """Run one training process, SIGKILLed as ``kill`` says (if still running then). Its exit code."""
    out = argv[argv.index("--output_dir") + 1]
    process = context.Process(target=_child, args=(argv, kill, log_path))
    before = _temporary_folders(out)
    process.start()
    if kill is not None and kill.on_write:
        deadline = time.monotonic() + timeout_s
        while process.is_alive() and not _temporary_folders(out) - before and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(kill.after_s or 0.0)
    elif kill is not None and kill.after_s is not None:
        process.join(kill.after_s)
    timed = kill is not None and kill.point is None
    process.join(0 if timed else timeout_s)
    if process.is_alive():
        process.kill()  # SIGKILL: no handler, no cleanup, as a crash or the OOM killer
        process.join()
        if not timed:
            raise TimeoutError(f"training did not finish in {timeout_s} s; see {log_path}")
    return process.exitcode


def run_until_done(
    context: Any, argv: list[str], log_path: str, kills: Sequence[Kill], max_restarts: int = 50
) -> tuple[list[int], list[str]]:
    """Apply ``kills`` one per run, then run to the end.

    Returns every run's exit code (-9: SIGKILL; a run that ended before its kill, 0, ends the series) and
    what each kill interrupted (``landing``).
    """
    out = argv[argv.index("--output_dir") + 1]
    codes: list[int] = []
    landings: list[str] = []
    for kill in list(kills) + [None] * max_restarts:
        before = _snapshot(out)
        code = run_once(context, argv, log_path, kill)
        codes.append(code)
        if code == 0:
            return codes, landings
        if code != -signal.SIGKILL:
            raise RuntimeError(f"training exited with {code}, not killed; see {log_path}")
        landings.append(landing(out, before))
    raise RuntimeError(f"training did not finish after {len(codes)} runs; see {log_path}")


def _temporary_folders(out: str) -> set[str]:
    """The hidden ``.<name>.<random>.tmp`` folders that dpr.atomic.atomic_directory fills before its rename."""
    if not os.path.isdir(out):
        return set()
    return {
        name
        for name in os.listdir(out)
        if name.startswith(".") and name.endswith(".tmp") and os.path.isdir(os.path.join(out, name))
    }


def _snapshot(out: str) -> dict[str, Any]:
    """What a run folder looks like from outside: visible entries, temporary folders, log and best text."""

    def text(name: str) -> str:
        path = os.path.join(out, name)
        return open(path, encoding="utf-8").read() if os.path.isfile(path) else ""

    visible = sorted(n for n in os.listdir(out) if not n.startswith(".")) if os.path.isdir(out) else []
    return {
        "visible": visible,
        "temporary": _temporary_folders(out),
        "log": text("validation_log.jsonl"),
        "best": text("best_checkpoint.json"),
    }


def landing(out: str, before: dict[str, Any]) -> str:
    """What the kill of a run interrupted, judged by what it left in ``out`` (read only: the restart must
    do the repairs) compared with ``before`` the run."""
    from dpr.training.checkpoint import read_checkpoint_info
    from dpr.training.run_dir import list_checkpoints

    after = _snapshot(out)
    if after["temporary"] - before["temporary"]:
        return "inside a checkpoint write"
    if after["log"] != before["log"] and after["log"] and not after["log"].endswith("\n"):
        return "inside a log line"
    found = list_checkpoints(out, PREFIX)
    if found and after["visible"] != before["visible"]:
        record = getattr(read_checkpoint_info(found[-1][1]), "validation", None)  # None: before this record existed
        if record is not None and json.dumps(record, sort_keys=True) not in after["log"]:
            return "between a checkpoint and its log line"
    if after == before:
        return "before any write of this run"
    return "elsewhere"


def compare_runs(reference: str, resumed: str) -> dict[str, Any]:
    """What must be equal between an unbroken and a killed-and-resumed run folder."""
    from safetensors.torch import load_file

    from dpr.training.run_dir import list_checkpoints

    def names(folder: str) -> list[str]:
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))

    def text(folder: str, name: str) -> str | None:
        path = os.path.join(folder, name)
        return open(path, encoding="utf-8").read() if os.path.isfile(path) else None

    last_a, last_b = list_checkpoints(reference, PREFIX)[-1][1], list_checkpoints(resumed, PREFIX)[-1][1]
    a = load_file(os.path.join(last_a, "model.safetensors"))
    b = load_file(os.path.join(last_b, "model.safetensors"))
    delta = max(float((a[k] - b[k]).abs().max()) for k in a) if set(a) == set(b) else float("inf")
    return {
        "same_files": names(reference) == names(resumed),
        "max_abs_delta": delta,
        "same_log": text(reference, "validation_log.jsonl") == text(resumed, "validation_log.jsonl"),
        "same_best": text(reference, "best_checkpoint.json") == text(resumed, "best_checkpoint.json"),
        "log_lines": (text(reference, "validation_log.jsonl") or "").count("\n"),
    }


def is_equal(result: dict[str, Any]) -> bool:
    return result["same_files"] and result["same_log"] and result["same_best"] and result["max_abs_delta"] == 0.0


def make_tiny_setup(folder: str) -> tuple[str, str, str]:
    """A tiny random BERT with BERT-tiny's tokenizer, and 24 train / 8 dev DPR questions (as tests/conftest.py)."""
    import torch
    from transformers import BertConfig, BertModel

    from dpr.models.hub import load_tokenizer

    model_dir = os.path.join(folder, "tiny-bert")
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=128,
        ),
        add_pooling_layer=False,
    ).save_pretrained(model_dir)
    load_tokenizer("bert-tiny").save_pretrained(model_dir)

    def passage(i: int) -> dict:
        return {
            "title": f"topic {i}",
            "text": f"passage number {i} about subject {i % 7} and item {i * 3}",
            "passage_id": str(i),
        }

    def samples(start: int, count: int) -> list[dict]:
        return [
            {
                "question": f"what is item {i * 3} of subject {i % 7}?",
                "answers": [str(i)],
                "positive_ctxs": [passage(i)],
                "hard_negative_ctxs": [passage(1000 + i * 3 + k) for k in range(3)],
                "negative_ctxs": [passage(5000 + i)],
            }
            for i in range(start, start + count)
        ]

    paths = []
    for name, (start, count) in (("train.json", (0, 24)), ("dev.json", (100, 8))):
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "w", encoding="utf-8") as handle:
            json.dump(samples(start, count), handle)
    return model_dir, paths[0], paths[1]


def random_kill(rng: random.Random, duration_s: float) -> Kill:
    """A timed kill anywhere in a run (40 %), one 0-5 ms into a checkpoint write seen from outside (30 %),
    or an exact kill point at the first or second checkpoint of the run (30 %)."""
    draw = rng.random()
    if draw < 0.4:
        return Kill(after_s=rng.uniform(0.0, duration_s))
    if draw < 0.7:
        return Kill(on_write=True, after_s=rng.uniform(0.0, 0.005))
    return Kill(point=rng.choice(KILL_POINTS), occurrence=rng.randint(1, 2))


def describe(kill: Kill) -> str:
    if kill.point is not None:
        return f"{kill.point}#{kill.occurrence}"
    return f"write+{kill.after_s * 1000:.1f}ms" if kill.on_write else f"{kill.after_s:.2f}s"


def main() -> int:
    """Run as a script; the forked runs must find this file as the module ``kill_resume``."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import kill_resume

    return kill_resume.bench()


def bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--kills", type=int, default=6, help="kills per round (then it runs to the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/kill_resume")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.workdir, exist_ok=True)
    model_dir, train, dev = make_tiny_setup(args.workdir)
    context, rng, failures, tally = forkserver(), random.Random(args.seed), 0, collections.Counter()
    reference = os.path.join(args.workdir, "reference")
    run_until_done(context, training_argv(model_dir, train, dev, reference), reference + ".log", [])
    # A second unbroken run: its time (without the forkserver's start) spreads the timed kills over a run,
    # and it must equal the first (else the comparison below means nothing).
    again = os.path.join(args.workdir, "reference2")
    started = time.perf_counter()
    run_until_done(context, training_argv(model_dir, train, dev, again), again + ".log", [])
    duration = time.perf_counter() - started
    print(f"unbroken run: {duration:.1f} s; two unbroken runs equal: {compare_runs(reference, again)}")
    for round_ in range(args.rounds):
        out = os.path.join(args.workdir, f"round{round_}")
        kills = [random_kill(rng, duration) for _ in range(args.kills)]
        codes, landed = run_until_done(context, training_argv(model_dir, train, dev, out), out + ".log", kills)
        result = compare_runs(reference, out)
        failures += not is_equal(result)
        tally.update(landed)
        shown = [describe(kill) for kill in kills[: len(landed)]]
        print(f"round {round_}: {len(landed)} kills {list(zip(shown, landed))} -> {result}", flush=True)
    print(f"kills landed: {dict(tally)}")
    print(f"{args.rounds - failures}/{args.rounds} rounds identical to the unbroken run")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
