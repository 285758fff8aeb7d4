#!/usr/bin/env python3
"""Encoding speed: our inference loop against sentence-transformers' ``encode`` on the same weights (CPU).

Prints, measured side by side in one run (the variants alternate within every repeat, so drifting
machine load hits them alike; best and median over ``--repeats``):

- passages/s of ``dpr.encoding.encode_texts`` (what ``generate_embeddings.py`` runs: token-length
  sorted, dynamically padded, inference mode) with the base ``--model`` and of
  ``SentenceTransformer.encode`` on the same folder, same max length, batch size and passages
  ("title text", as sentence-transformers models are used on BEIR), fp32; the ratio (target >= 1.3x);
- that both give the same vectors (max |difference| of the L2-normalised vectors), so the comparison
  is fair, and how many padded tokens each computes per real token;
- this machine's fp32 matrix-multiply rate (``torch.matmul`` of two square matrices), the FLOPs our
  loop computes and the fraction of the matmul rate it achieves;
- the cost of a deep prefix: passages/s of a ``--pre_seq_len`` (64) prefix model against the base
  model, same loop (the prefix is random: values do not change the time).

FLOPs count only the matrix multiplies of the encoder layers, at the PADDED width each batch is
actually computed at (recorded with a forward hook). Per layer, for a batch of B rows padded to T
tokens (P prefix keys/values, hidden H, feed-forward I):

    2*B*T*(4*H^2 + 2*H*I)       Q, K, V and output projections (4 H x H) and the feed-forward (H x I, I x H)
  + 4*B*T*(T + P)*H             scores Q K^T and the weighted sum A V, each B*T*(T+P)*H multiply-adds

(2 FLOPs per multiply-add). Embeddings, LayerNorm, softmax, GELU and pooling are left out (element-wise,
a few % at most), so the achieved fraction is slightly understated. Times include tokenization for
both loops: each is measured as a user runs it, texts in, vectors out.

    python bench/bench_encoding.py --num_passages 1000 --batch_size 32 --max_length 256 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from common import header, write_results  # noqa: E402

from dpr.configs import BiEncoderConfig  # noqa: E402
from dpr.data.readers import Passage, iter_beir_corpus  # noqa: E402
from dpr.encoding import encode_texts  # noqa: E402
from dpr.models.biencoder import BiEncoder, build_biencoder  # noqa: E402
from dpr.models.hub import load_tokenizer, resolve_model_path  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact", "corpus.jsonl")


def load_passages(path: str, count: int) -> list[Passage]:
    """The first ``count`` passages of a BEIR corpus (file order, so every run encodes the same ones)."""
    passages = [p for _, p in itertools.islice(iter_beir_corpus(path), count)]
    if len(passages) < count:
        logger.warning("%s holds only %d passages (asked for %d)", path, len(passages), count)
    return passages


def matmul_gflops(size: int, repeats: int) -> float:
    """Best fp32 rate of ``size x size @ size x size`` over ``repeats`` runs, in GFLOP/s (2 n^3 FLOPs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def encoder_flops(shapes: list[tuple[int, int]], config: transformers.BertConfig, prefix_len: int = 0) -> float:
    """Matrix-multiply FLOPs of the encoder layers over batches of ``(B, T)`` (see the module doc)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = sum(2 * b * t * (4 * h * h + 2 * h * i) + 4 * b * t * (t + prefix_len) * h for b, t in shapes)
    return float(per_layer * layers)


@contextlib.contextmanager
def recorded_shapes(module: torch.nn.Module, shapes: list[tuple[int, int]]) -> Iterator[None]:
    """Append the ``(B, T)`` of every ``input_ids`` that enters ``module`` to ``shapes``."""

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            shapes.append(tuple(ids.shape))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def bert_module(model: torch.nn.Module) -> transformers.BertModel:
    """The BertModel inside a sentence-transformers pipeline (whatever its wrapper calls it)."""
    for module in model.modules():
        if isinstance(module, transformers.BertModel):
            return module
    raise ValueError(f"no BertModel inside {type(model).__name__}; this benchmark needs a BERT encoder")


def build_encoder(model: str, tuning: str, pre_seq_len: int, max_length: int) -> BiEncoder:
    """A bi-encoder whose passage side we time; ``share_encoder`` keeps one backbone for finetune."""
    config = BiEncoderConfig.from_flat(
        pretrained_model_cfg=model,
        tuning=tuning,
        pre_seq_len=pre_seq_len,
        sequence_length=max_length,
        title_mode="concat",
        share_encoder=tuning == "finetune",
    )
    return build_biencoder(config).eval()


def load_sentence_transformer(model: str, max_length: int):  # -> SentenceTransformer (imported lazily)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise SystemExit(f"this benchmark needs sentence-transformers: pip install -e '.[bench]' ({err})") from err
    st = SentenceTransformer(resolve_model_path(model), device="cpu")
    st.max_seq_length = max_length  # counts [CLS] and [SEP], as our max_length does
    return st


def timed(fn: Callable[[], np.ndarray]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


Variants = dict[str, tuple[Callable[[], np.ndarray], torch.nn.Module]]  # name -> (run, module to hook)


def build_variants(args: argparse.Namespace, passages: list[Passage]) -> tuple[Variants, transformers.BertConfig]:
    """The loops to time, each with the embeddings module whose inputs show the widths it computes.

    Hooks sit on the embeddings because sentence-transformers calls ``BertModel.forward`` directly,
    past module hooks.
    """
    texts = [f"{p.title} {p.text}".strip() for p in passages]  # exactly our title_mode="concat"
    tokenizer = load_tokenizer(args.model)
    base = build_encoder(args.model, "finetune", 0, args.max_length)
    st = load_sentence_transformer(args.model, args.max_length)

    def ours(model: BiEncoder) -> Callable[[], np.ndarray]:
        return lambda: encode_texts(
            model, tokenizer, passages, "passage", max_length=args.max_length, batch_size=args.batch_size
        )

    # Fair only if both run the same arithmetic: fp32 weights, the same attention kernel.
    st_bert = bert_module(st)
    for name, module in (("ours", base.backbone), ("sentence-transformers", st_bert)):
        dtypes = {p.dtype for p in module.parameters()}
        if dtypes != {torch.float32}:
            raise SystemExit(f"{name} has {dtypes} weights; this benchmark compares fp32 encoders")
    if base.backbone.config._attn_implementation != st_bert.config._attn_implementation:
        logger.warning(
            "attention kernels differ: ours %s, sentence-transformers %s",
            base.backbone.config._attn_implementation,
            st_bert.config._attn_implementation,
        )
    variants: Variants = {
        "ours": (ours(base), base.ctx_encoder.backbone.embeddings),
        "sentence-transformers": (
            lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True),
            st_bert.embeddings,
        ),
    }
    if args.pre_seq_len > 0:
        prefix = build_encoder(args.model, "prefix", args.pre_seq_len, args.max_length)
        variants[prefix_name(args.pre_seq_len)] = (ours(prefix), prefix.ctx_encoder.backbone.embeddings)
    return variants, base.backbone.config


def prefix_name(pre_seq_len: int) -> str:
    return f"ours + {pre_seq_len}-token prefix"


def first_pass(variants: Variants) -> tuple[dict[str, list[tuple[int, int]]], float]:
    """Untimed run of every variant: warms allocators and thread pools, records the ``(B, T)`` of every
    batch each loop computes, and returns the max |difference| of ours and sentence-transformers'
    L2-normalised vectors (the comparison is only fair if they compute the same thing)."""
    shapes: dict[str, list[tuple[int, int]]] = {name: [] for name in variants}
    outputs = {}
    for name, (run, module) in variants.items():
        with recorded_shapes(module, shapes[name]):
            outputs[name] = run()
    ours = outputs["ours"] / np.linalg.norm(outputs["ours"], axis=1, keepdims=True)  # (N, D)
    return shapes, float(np.abs(ours - outputs["sentence-transformers"]).max())


def timed_rounds(variants: Variants, repeats: int, matmul_size: int) -> tuple[dict[str, list[float]], float]:
    """Seconds per run of each variant over ``repeats`` rounds, and the best matmul rate seen.

    The order rotates every round so no variant always runs first (or right after the same other);
    the matmul rate is measured in every round too, so it sees the same load as the encoders.
    """
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    rates = []
    for round_ in range(repeats):
        rates.append(matmul_gflops(matmul_size, 3))
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(variants[name][0]))
    return times, max(rates)


def summarise(
    args: argparse.Namespace,
    n: int,
    real_tokens: int,
    shapes: dict[str, list[tuple[int, int]]],
    times: dict[str, list[float]],
    matmul_rate: float,
    bert_config: transformers.BertConfig,
) -> dict:
    """Rates, padding, FLOPs and the ratios, as one JSON-ready dict."""
    results: dict = {
        "header": header(torch.get_num_threads()),
        "model": args.model,
        "passages": n,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "matmul_gflops": matmul_rate,
        "matmul_size": args.matmul_size,
        "real_tokens": real_tokens,
        "sentence_transformers": _st_version(),
        "variants": {},
    }
    for name, seconds in times.items():
        best, median = min(seconds), statistics.median(seconds)
        prefix_len = args.pre_seq_len if name == prefix_name(args.pre_seq_len) else 0
        flops = encoder_flops(shapes[name], bert_config, prefix_len)
        results["variants"][name] = {
            "passages_per_s_best": n / best,
            "passages_per_s_median": n / median,
            "seconds": seconds,
            "computed_tokens": sum(b * t for b, t in shapes[name]),
            "padding_overhead": sum(b * t for b, t in shapes[name]) / real_tokens,
            "gflop": flops / 1e9,
            "achieved_gflops": flops / best / 1e9,
            "fraction_of_matmul": flops / best / 1e9 / matmul_rate,
        }
    v = results["variants"]

    def ratio(a: str, b: str) -> dict[str, float]:
        return {k: v[a][f"passages_per_s_{k}"] / v[b][f"passages_per_s_{k}"] for k in ("best", "median")}

    results["ours_over_sentence_transformers"] = ratio("ours", "sentence-transformers")
    if args.pre_seq_len > 0:
        name = prefix_name(args.pre_seq_len)
        results["prefix_over_base"] = {**ratio(name, "ours"), "flop_ratio": v[name]["gflop"] / v["ours"]["gflop"]}
    return results


def _st_version() -> str:
    import sentence_transformers

    return sentence_transformers.__version__


def real_lengths(tokenizer, texts: list[str], max_length: int) -> list[int]:
    """Tokens per text with [CLS]/[SEP], truncated as both loops truncate: the work with no padding."""
    ids = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False)["input_ids"]
    return [len(row) for row in ids]


def report(results: dict) -> None:
    v = results["variants"]
    print(
        f"{results['model']}, {results['passages']} SciFact passages, batch {results['batch_size']}, "
        f"max length {results['max_length']}, fp32, {results['repeats']} alternating rounds "
        f"(sentence-transformers {results['sentence_transformers']})"
    )
    for name, r in v.items():
        print(
            f"  {name:<26}: {r['passages_per_s_best']:8.1f} passages/s best, {r['passages_per_s_median']:8.1f} "
            f"median; {r['padding_overhead']:.3f} computed tokens per real token"
        )
    ratio = results["ours_over_sentence_transformers"]
    # The verdict uses the best times: other load on the machine only ever adds time.
    print(
        f"ours / sentence-transformers throughput: {ratio['best']:.3f} best, {ratio['median']:.3f} median "
        f"(target >= 1.3) -> {'OK' if ratio['best'] >= 1.3 else 'MISSED'}"
    )
    print(
        f"same vectors: max |ours - sentence-transformers| after L2 normalisation = "
        f"{results['max_abs_diff_vs_sentence_transformers']:.2e}"
    )
    ours = v["ours"]
    print(
        f"fp32 matmul ({results['matmul_size']}^2, best): {results['matmul_gflops']:.1f} GFLOP/s; ours computes "
        f"{ours['gflop']:.1f} GFLOP -> {ours['achieved_gflops']:.1f} GFLOP/s (best run) = "
        f"{100 * ours['fraction_of_matmul']:.1f}% of the matmul rate"
    )
    if "prefix_over_base" in results:
        p = results["prefix_over_base"]
        print(
            f"{results['pre_seq_len']}-token prefix: {p['best']:.3f}x the base model's passages/s (best; median "
            f"{p['median']:.3f}); it computes {p['flop_ratio']:.3f}x the FLOPs"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6", help="a sentence-transformers BERT folder or short name")
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="BEIR corpus.jsonl")
    parser.add_argument("--num_passages", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--pre_seq_len", type=int, default=64, help="prefix length whose cost is measured (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; best and median reported")
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(header(torch.get_num_threads()), flush=True)

    passages = load_passages(args.corpus, args.num_passages)
    variants, bert_config = build_variants(args, passages)
    shapes, max_diff = first_pass(variants)
    times, matmul_rate = timed_rounds(variants, args.repeats, args.matmul_size)
    texts = [f"{p.title} {p.text}".strip() for p in passages]
    real_tokens = sum(real_lengths(load_tokenizer(args.model), texts, args.max_length))
    results = summarise(args, len(passages), real_tokens, shapes, times, matmul_rate, bert_config)
    results.update(max_abs_diff_vs_sentence_transformers=max_diff, pre_seq_len=args.pre_seq_len)
    report(results)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
