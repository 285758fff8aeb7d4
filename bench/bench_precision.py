#!/usr/bin/env python3
"""Precision on this machine: what ``--precision`` buys for encoding, side by side in one run.

Prints, for the machine it runs on:

- the CPU flags that decide bf16 / int8 speed (``amx_bf16``, ``avx512_bf16``, ``avx512_vnni``, ``avx_vnni``),
  the fp32 and bf16 (autocast) matmul rates, and what ``--precision auto`` resolves to here, and why;
- passages/s of our encoding loop (``dpr.encoding.encode_texts``, what ``generate_embeddings.py`` runs) in
  fp32, bf16 autocast and int8 (dynamically quantized linear layers), and of sentence-transformers'
  ``encode`` in fp32 and with the model loaded in bfloat16 (its own "bf16" recipe), on the same passages,
  max length and batch size, the variants alternating in every round (best and median over ``--repeats``);
  each as a ratio to sentence-transformers fp32;
- vector agreement: the minimum cosine of each variant's vectors to our fp32 vectors;
- with ``--ndcg``: SciFact test nDCG@10 and R@100 of the whole-corpus index each of our precisions builds
  (``embed_corpus`` -> ``retrieve`` -> ``evaluate_beir``, the path of ``quickstart.py``), and the difference
  to the fp32 index.

ONNX Runtime / OpenVINO int8 backends of sentence-transformers are measured when ``optimum`` is installed;
otherwise the report says they were skipped.

    python bench/bench_precision.py --num_passages 400 --repeats 3            # speed and agreement (~3 min)
    python bench/bench_precision.py --num_passages 400 --repeats 3 --ndcg     # + the three SciFact indexes
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_encoding import build_encoder, load_passages, load_sentence_transformer  # noqa: E402
from common import header, write_results  # noqa: E402

from dpr import device as device_seam  # noqa: E402
from dpr.embedding import EmbedConfig, embed_corpus  # noqa: E402
from dpr.encoding import encode_texts  # noqa: E402
from dpr.evaluation.evaluate import evaluate_beir, load_beir_queries  # noqa: E402
from dpr.models.hub import load_tokenizer, resolve_model_path  # noqa: E402
from dpr.retrieval import InferenceModelConfig, load_inference_model  # noqa: E402
from dpr.search import RetrieveConfig, open_shards, retrieve  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")
FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
OURS = ("fp32", "bf16", "int8")


def cpu_report() -> dict:
    """The deciding CPU flags, matmul rates and what ``auto`` picks (measured, logged reason included)."""
    flags = device_seam._cpu_flags()
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    rates = {}
    for name, context in (("fp32", None), ("bf16", torch.bfloat16)):

        def run() -> None:
            if context is None:
                torch.matmul(a, b)
            else:
                with torch.autocast("cpu", dtype=context):
                    torch.matmul(a, b)

        run()
        rates[name] = 2.0 * size**3 / device_seam._best_seconds(run, 5, 3.0) / 1e9
    os.environ.pop(device_seam.AUTO_ENV, None)  # measure what auto really does here
    fast, reason = device_seam._cpu_bf16_choice()
    return {
        "flags": sorted(flags.intersection(FLAGS)) if flags is not None else None,
        "matmul_gflops": rates,
        "auto": "bf16" if fast else "fp32",
        "auto_reason": reason,
    }


def variants(args: argparse.Namespace, passages: list) -> dict[str, Callable[[], np.ndarray]]:
    tokenizer = load_tokenizer(args.model)
    base = build_encoder(args.model, "finetune", 0, args.max_length)
    quantized = device_seam.quantize_int8(base)

    def ours(model: torch.nn.Module, precision: str) -> Callable[[], np.ndarray]:
        return lambda: encode_texts(
            model,
            tokenizer,
            passages,
            "passage",
            max_length=args.max_length,
            batch_size=args.batch_size,
            precision=precision,
        )

    runs = {f"ours {p}": ours(quantized if p == "int8" else base, p) for p in OURS}
    texts = [f"{p.title} {p.text}".strip() for p in passages]  # our title_mode="concat"
    st32 = load_sentence_transformer(args.model, args.max_length)
    st16 = load_sentence_transformer(args.model, args.max_length).to(torch.bfloat16)

    def st(model) -> Callable[[], np.ndarray]:
        return lambda: np.asarray(
            model.encode(
                texts,
                batch_size=args.batch_size,
                convert_to_numpy=False,
                convert_to_tensor=True,
                normalize_embeddings=True,
            ).float()
        )

    runs["sentence-transformers fp32"] = st(st32)
    runs["sentence-transformers bf16 weights"] = st(st16)
    try:
        if importlib.util.find_spec("optimum") is None:  # sentence-transformers' ONNX / OpenVINO backends need it
            raise ImportError("optimum is not installed (pip install 'optimum[onnxruntime]' to measure them)")
        from sentence_transformers import SentenceTransformer

        for backend in ("onnx", "openvino"):
            runs[f"sentence-transformers {backend}"] = st(
                SentenceTransformer(resolve_model_path(args.model), backend=backend, device="cpu")
            )
    except Exception as err:  # optimum / onnxruntime / openvino missing: say so, measure the rest
        print(f"sentence-transformers ONNX / OpenVINO backends skipped: {type(err).__name__}: {err}"[:300])
    return runs


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def speed(args: argparse.Namespace) -> dict:
    passages = load_passages(os.path.join(args.data, "corpus.jsonl"), args.num_passages)
    runs = variants(args, passages)
    vectors = {name: run() for name, run in runs.items()}  # untimed first pass: warm-up + the vectors
    names, times = list(runs), {name: [] for name in runs}
    for round_ in range(args.repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - started)
    reference = min(times["sentence-transformers fp32"])
    return {
        name: {
            "passages_per_s_best": len(passages) / min(seconds),
            "passages_per_s_median": len(passages) / statistics.median(seconds),
            "vs_sentence_transformers_fp32": reference / min(seconds),
            "min_cosine_to_ours_fp32": min_cosine(vectors[name], vectors["ours fp32"]),
            "seconds": seconds,
        }
        for name, seconds in times.items()
    }


def ndcg(args: argparse.Namespace) -> dict:
    """nDCG@10 / R@100 of the SciFact test split over the whole corpus, one index per precision."""
    queries = load_beir_queries(args.data, "test")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in OURS:
            cfg = InferenceModelConfig(
                encoder_overrides={"pretrained_model_cfg": args.model, "sequence_length": args.max_length},
                precision=precision,
                no_cuda=True,
            )
            model = load_inference_model(cfg)
            out = os.path.join(tmp, precision)
            started = time.perf_counter()
            embed_corpus(model, args.data, out, EmbedConfig(batch_size=64))
            seconds = time.perf_counter() - started
            found = retrieve(model, open_shards(out + "_*", queries), queries.texts, RetrieveConfig(n_docs=100))
            metrics = evaluate_beir(queries, found.ids, found.scores, 100).metrics
            results[precision] = {"nDCG@10": metrics["nDCG@10"], "R@100": metrics["R@100"], "encode_s": seconds}
    for row in results.values():
        row["nDCG@10_minus_fp32"] = row["nDCG@10"] - results["fp32"]["nDCG@10"]
    return results


def report(results: dict) -> None:
    cpu = results["cpu"]
    rates = cpu["matmul_gflops"]
    print(f"CPU flags: {', '.join(cpu['flags']) if cpu['flags'] is not None else 'unreadable'}")
    print(
        f"matmul 2048^2: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 autocast {rates['bf16']:.0f} GFLOP/s "
        f"({rates['bf16'] / rates['fp32']:.2f}x); --precision auto -> {cpu['auto']} ({cpu['auto_reason']})"
    )
    print(
        f"{results['model']}, {results['num_passages']} SciFact passages, max length {results['max_length']}, "
        f"batch {results['batch_size']}, {results['repeats']} alternating rounds"
    )
    print(f"  {'loop':<36} {'passages/s':>10} {'median':>8} {'vs ST fp32':>10} {'min cos':>9}")
    for name, row in results["speed"].items():
        print(
            f"  {name:<36} {row['passages_per_s_best']:>10.1f} {row['passages_per_s_median']:>8.1f} "
            f"{row['vs_sentence_transformers_fp32']:>9.2f}x {row['min_cosine_to_ours_fp32']:>9.5f}"
        )
    for precision, row in results.get("indexes", {}).items():
        print(
            f"  SciFact test index, ours {precision}: nDCG@10 {row['nDCG@10']:.4f} "
            f"({row['nDCG@10_minus_fp32']:+.4f} vs fp32), R@100 {row['R@100']:.4f}, corpus encoded in "
            f"{row['encode_s']:.0f} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default=DATA, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    parser.add_argument("--num_passages", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ndcg", action="store_true", help="also build and evaluate a SciFact index per precision")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    print(header(torch.get_num_threads()), flush=True)
    results = {**vars(args), "cpu": cpu_report(), "speed": speed(args)}
    if args.ndcg:
        results["indexes"] = ndcg(args)
    report(results)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
