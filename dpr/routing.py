"""Per-query task routing: which registered task a question most resembles, or none (the base model).

A task's :class:`TaskSummary` describes its training questions as the BASE model (the frozen backbone with
no task active, pooled as the tasks pool) sees them: ``k`` unit centroids (spherical k-means) and, for
questions held out of the centroid fit, the distribution of their cosine similarity to the nearest
centroid. The routing threshold is a low quantile of that distribution (5% by default): a question less
similar to the task than 95% of the task's own held-out questions is not the task's. It is stored as
``task_summary.json`` (versioned JSON) in the task's checkpoint folder.

:func:`choose_routes` sends each question to the task whose centroids it is most similar to among the
tasks whose threshold it passes, else to :data:`BASE_ROUTE`. Base-model vectors are made once per
question, by :func:`encode_questions` with a plain :class:`~dpr.models.encoder.TunedEncoder` over the
shared backbone; :class:`dpr.retrieval.TaskEncoder` then encodes each group with its task.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dpr.atomic import atomic_file
from dpr.configs import ConfigError, FinetuneConfig, HeadConfig
from dpr.data.batching import tokenize_questions
from dpr.data.files import read_versioned_json
from dpr.data.readers import iter_json_records
from dpr.encoding import encode_sorted
from dpr.errors import UserError
from dpr.models.biencoder import resolve_config
from dpr.models.checkpoint_format import read_checkpoint_info
from dpr.models.encoder import TunedEncoder
from dpr.models.hub import load_backbone, load_tokenizer

if TYPE_CHECKING:
    from transformers import BertModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SUMMARY_FILE = "task_summary.json"
FORMAT = "dpr-task-summary"
VERSION = 1
AUTO = "auto"  # the task name that asks for routing; no task may be registered under it
BASE_ROUTE = "(base)"  # the route of a question that resembles no task; no task name can be spelled so
SUMMARIZE_COMMAND = "python -m dpr.route summarize --model_file CHECKPOINT --questions TRAIN_QUESTIONS"


class RoutingError(UserError, ValueError):
    """A task summary that cannot be made, read or used (too few questions, another base model, no file)."""


@dataclass(frozen=True)
class SummaryConfig:
    """How a task summary is made from its training questions."""

    clusters: int = 1  # k of the spherical k-means (1: the normalised centroid)
    held_out_fraction: float = 0.2  # questions kept out of the fit: the threshold is set on them
    quantile: float = 0.05  # the threshold: this quantile of the held-out questions' similarities
    max_questions: int = 2000  # questions sampled (fit + held out); the base encoding is the cost
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.clusters < 1:
            raise ConfigError(f"--clusters must be >= 1, found {self.clusters}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ConfigError(f"--held_out_fraction must be in (0, 1), found {self.held_out_fraction}")
        if not 0.0 <= self.quantile < 1.0:
            raise ConfigError(f"--quantile must be in [0, 1), found {self.quantile}")
        if self.max_questions < 2 or self.batch_size < 1:
            raise ConfigError(f"--max_questions must be >= 2 and --batch_size >= 1, found {self}")


@dataclass(frozen=True)
class TaskSummary:
    """What routing knows of one task: its questions' base-model centroids and a similarity threshold."""

    model_name: str  # the backbone's --pretrained_model_cfg
    pooling: str  # how base vectors were pooled (cls or mean): routing must pool the same way
    centroids: np.ndarray  # (k, D) float32, unit rows
    threshold: float  # below it a question is not this task's
    quantile: float  # which quantile of the held-out similarities the threshold is
    held_out_scores: tuple[float, ...]  # the held-out similarities' percentiles 0, 1, ..., 100
    questions: int  # questions the centroids were fitted on
    held_out: int  # questions the threshold was set on
    source: str = ""  # where the questions came from

    def similarity(self, vectors: np.ndarray) -> np.ndarray:
        """Cosine similarity of each of ``vectors`` (N, D) to its nearest centroid -> (N,)."""
        if vectors.shape[1] != self.centroids.shape[1]:
            raise RoutingError(
                f"base vectors have dimension {vectors.shape[1]}, "
                f"the task summary's centroids {self.centroids.shape[1]}"
            )
        return (_unit(vectors) @ self.centroids.T).max(axis=1)  # (N, k) -> (N,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_name": self.model_name,
            "pooling": self.pooling,
            "centroids": self.centroids.tolist(),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "held_out_scores": list(self.held_out_scores),
            "questions": self.questions,
            "held_out": self.held_out,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> TaskSummary:
        try:
            centroids = np.asarray(data["centroids"], dtype=np.float32)
            summary = cls(
                model_name=str(data["model_name"]),
                pooling=str(data["pooling"]),
                centroids=centroids,
                threshold=float(data["threshold"]),
                quantile=float(data["quantile"]),
                held_out_scores=tuple(float(v) for v in data["held_out_scores"]),
                questions=int(data["questions"]),
                held_out=int(data["held_out"]),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise RoutingError(f"{where}: not a task summary ({type(err).__name__}: {err})") from None
        if centroids.ndim != 2 or len(centroids) == 0 or not np.isfinite(centroids).all():
            raise RoutingError(f"{where}: 'centroids' must be a non-empty (k, D) list of finite numbers")
        return summary


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def spherical_kmeans(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 30) -> np.ndarray:
    """``k`` unit centroids of ``vectors`` (N, D) under cosine similarity (k-means++ start) -> (k, D)."""
    x = _unit(vectors)
    if k > len(x):
        raise RoutingError(f"{k} clusters need at least {k} questions, found {len(x)}")
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        distance = np.clip(1.0 - (x @ np.stack(centers).T).max(axis=1), 0.0, None)  # (N,)
        p = distance / distance.sum() if distance.sum() > 0 else None
        centers.append(x[rng.choice(len(x), p=p)])
    c = np.stack(centers)  # (k, D)
    for _ in range(iterations):
        assign = (x @ c.T).argmax(axis=1)  # (N,)
        sums = np.stack([x[assign == j].sum(axis=0) if (assign == j).any() else c[j] for j in range(k)])
        new = _unit(sums)
        if np.allclose(new, c, atol=1e-6):
            break
        c = new
    return c


def fit_summary(
    fit: np.ndarray,
    held_out: np.ndarray,
    cfg: SummaryConfig,
    *,
    model_name: str,
    pooling: str,
    source: str = "",
) -> TaskSummary:
    """The summary of a task from base vectors of its questions: ``fit`` (N, D) and ``held_out`` (M, D)."""
    if len(fit) < cfg.clusters or len(held_out) < 1:
        raise RoutingError(
            f"{source or 'task questions'}: {len(fit)} questions to fit {cfg.clusters} centroid(s) and "
            f"{len(held_out)} held out; need at least {cfg.clusters} and 1"
        )
    centroids = spherical_kmeans(fit, cfg.clusters, cfg.seed)
    scores = (_unit(held_out) @ centroids.T).max(axis=1)  # (M,)
    return TaskSummary(
        model_name=model_name,
        pooling=pooling,
        centroids=centroids,
        threshold=float(np.quantile(scores, cfg.quantile)),
        quantile=cfg.quantile,
        held_out_scores=tuple(float(v) for v in np.percentile(scores, np.arange(101))),
        questions=len(fit),
        held_out=len(held_out),
        source=source,
    )


def choose_routes(summaries: Mapping[str, TaskSummary], vectors: np.ndarray) -> list[str]:
    """Per base vector (N, D): the most similar task whose threshold it reaches, else :data:`BASE_ROUTE`."""
    if not summaries:
        raise RoutingError("routing needs at least one task summary")
    names = list(summaries)
    sims = np.stack([summaries[t].similarity(vectors) for t in names], axis=1)  # (N, T)
    thresholds = np.array([summaries[t].threshold for t in names], dtype=np.float32)  # (T,)
    eligible = np.where(sims >= thresholds, sims, -np.inf)  # (N, T)
    best = eligible.argmax(axis=1)  # (N,)
    return [names[b] if np.isfinite(eligible[i, b]) else BASE_ROUTE for i, b in enumerate(best)]


def base_question_encoder(backbone: BertModel, head: HeadConfig) -> TunedEncoder:
    """The base model's question encoder: ``backbone`` with no task active, pooled and normalised per ``head``.

    A projection would be a task's own (randomly started) weights, so it is refused.
    """
    if head.pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be resolved to cls or mean, got {head.pooling!r}")
    if head.projection_dim:
        raise RoutingError(
            f"the base model has no projection, but the tasks project to {head.projection_dim} dimensions: "
            f"routing needs tasks without --projection_dim"
        )
    return TunedEncoder(backbone, FinetuneConfig(), head).eval()


def encode_questions(
    encoder: TunedEncoder,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """``questions`` encoded by ``encoder`` exactly as ``encode_texts`` encodes questions -> (N, D) float32."""
    device = next(encoder.parameters()).device if device is None else device
    return encode_sorted(
        encoder,
        lambda texts: tokenize_questions(tokenizer, texts, max_length),
        list(questions),
        batch_size=batch_size,
        device=device,
        precision=precision,
        progress=progress,
        desc="encoding questions (base model)",
        unit="questions",
    )


def sample_questions(questions: Sequence[str], cfg: SummaryConfig, source: str) -> tuple[list[str], list[str]]:
    """Distinct questions, at most ``cfg.max_questions`` sampled, split into (fit, held out)."""
    distinct = list(dict.fromkeys(q for q in questions if q.strip()))
    rng = random.Random(cfg.seed)
    if len(distinct) > cfg.max_questions:
        distinct = rng.sample(distinct, cfg.max_questions)
    else:
        rng.shuffle(distinct)
    held = max(1, round(len(distinct) * cfg.held_out_fraction))
    if len(distinct) - held < cfg.clusters:
        raise RoutingError(
            f"{source}: {len(distinct)} distinct questions; a summary with {cfg.clusters} centroid(s) and "
            f"--held_out_fraction {cfg.held_out_fraction} needs at least {cfg.clusters + 1}"
        )
    return distinct[held:], distinct[:held]


def summarize_questions(
    encoder: TunedEncoder,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    cfg: SummaryConfig,
    *,
    model_name: str,
    max_length: int,
    precision: str = "fp32",
    source: str = "",
    progress: bool = False,
) -> TaskSummary:
    """Encode a sample of ``questions`` with the base ``encoder`` and fit the task's summary."""
    fit, held = sample_questions(questions, cfg, source or "task questions")
    vectors = encode_questions(
        encoder,
        tokenizer,
        fit + held,
        max_length=max_length,
        batch_size=cfg.batch_size,
        precision=precision,
        progress=progress,
    )  # (N, D)
    pooling = encoder.head.pooling
    summary = fit_summary(
        vectors[: len(fit)], vectors[len(fit) :], cfg, model_name=model_name, pooling=pooling, source=source
    )
    logger.info(
        "task summary of %s: %d questions, %d centroid(s), threshold %.4f (%.0f%% of %d held out below it)",
        source or "questions",
        summary.questions,
        cfg.clusters,
        summary.threshold,
        100 * cfg.quantile,
        summary.held_out,
    )
    return summary


def summary_path(checkpoint: str) -> str:
    return os.path.join(checkpoint, SUMMARY_FILE)


def write_summary(checkpoint: str, summary: TaskSummary) -> str:
    """Write ``summary`` into the checkpoint folder (atomically); returns the file's path."""
    path = summary_path(checkpoint)
    with atomic_file(path) as handle:
        json.dump(summary.to_dict(), handle, indent=1)
    return path


def read_summary(checkpoint: str) -> TaskSummary | None:
    """The summary in a checkpoint folder, None when it has none."""
    path = summary_path(checkpoint)
    if not os.path.isfile(path):
        return None
    data = read_versioned_json(path, max_version=VERSION, min_version=1, format=FORMAT, error=RoutingError)
    return TaskSummary.from_dict(data, path)


def read_questions(paths: Sequence[str], only_ids: set[str] | None = None) -> list[str]:
    """The question texts of DPR JSON / JSONL files (``question``) or BEIR ``queries.jsonl`` (``_id``, ``text``).

    ``only_ids`` keeps the BEIR queries with these ids (e.g. those judged in ``qrels/train.tsv``: a
    queries file holds the test queries too, and a summary must not see them).
    """
    questions: list[str] = []
    for path in paths:
        for record, loc in iter_json_records(path):
            if isinstance(record, dict) and isinstance(record.get("question"), str):
                if only_ids is not None:
                    raise RoutingError(f"{path}: --qrels selects BEIR query ids; a DPR file has none")
                questions.append(record["question"])
            elif isinstance(record, dict) and isinstance(record.get("text"), str) and "_id" in record:
                if only_ids is None or str(record["_id"]) in only_ids:
                    questions.append(record["text"])
            else:
                raise loc.error("question", "a DPR record ('question') or a BEIR query ('_id', 'text')", record)
    if not questions:
        raise RoutingError(f"{', '.join(paths)}: no question found" + (" with a --qrels id" if only_ids else ""))
    return questions


def summarize_checkpoint(
    checkpoint: str,
    questions: Sequence[str],
    cfg: SummaryConfig = SummaryConfig(),
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    source: str = "",
    progress: bool = False,
) -> tuple[str, TaskSummary]:
    """The summary of a task checkpoint (folder, or a run folder's best) from its training ``questions``.

    Loads only the checkpoint's backbone (the base model: the task's own weights are not needed) and
    returns the resolved checkpoint folder with the summary; :func:`write_summary` stores it.
    """
    info = read_checkpoint_info(checkpoint)
    config = resolve_config(info.encoder)
    if not config.frozen_backbone:
        raise RoutingError(
            f"{info.path} is a {config.tuning.method} checkpoint: only task-library checkpoints (a frozen "
            f"backbone: prefix, prompt or adapters) are routed to"
        )
    name = config.backbone.pretrained_model_cfg
    backbone = load_backbone(name).requires_grad_(False).to(device)
    encoder = base_question_encoder(backbone, config.head)
    tokenizer = load_tokenizer(name, config.backbone.do_lower_case)
    summary = summarize_questions(
        encoder,
        tokenizer,
        questions,
        cfg,
        model_name=name,
        max_length=config.backbone.sequence_length,
        precision=precision,
        source=source,
        progress=progress,
    )
    return info.path, summary
