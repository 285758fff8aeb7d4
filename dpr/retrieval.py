"""After training: load an encoder (or several task encoders) for inference, and search embedding shards.

:class:`InferenceModelConfig` says which encoder to load (a checkpoint, the base model, or several task
checkpoints) and on what hardware; :func:`load_inference_model` / :func:`load_task_encoder` load it.

:class:`TaskEncoder` serves several task checkpoints (prefix, prompt or adapter) on ONE frozen backbone
(:class:`dpr.models.tasks.TaskLibrary`) and encodes texts with whichever task a call names.

Embedding shards can be searched as one index or as several index groups, one at a time: each group is
built (or loaded), searched, and freed before the next, and the per-group top-k lists are merged with
:func:`dpr.indexer.faiss_index.merge_topk`. Peak memory is then one group's index, and for exact
(flat) indexes the merged result equals a single index's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dpr.atomic import atomic_directory
from dpr.configs import ARCHITECTURE_FIELDS, FLAT_FIELDS, BiEncoderConfig, ConfigError, apply_overrides, same_setting
from dpr.data.corpus import lookup_passages, resolve_corpus_path
from dpr.data.readers import Passage
from dpr.device import INFERENCE_REQUESTS, quantize_int8, resolve_precision, select_device
from dpr.embeddings_io import INDEX_SOURCE_FILE, EmbeddingsError, EmbeddingShard, RowDigest
from dpr.encoding import Side, encode_texts
from dpr.identity import EncoderIdentity
from dpr.indexer.faiss_index import DenseIndex, IndexParams, merge_topk
from dpr.models.biencoder import BiEncoder, build_biencoder, merge_lora
from dpr.models.checkpoint_format import WEIGHTS_FILE, CheckpointInfo, load_biencoder, read_checkpoint_info
from dpr.models.hub import load_backbone, load_tokenizer
from dpr.models.tasks import TaskError, TaskLibrary, same_model_name
from dpr.routing import (
    AUTO,
    SUMMARIZE_COMMAND,
    SUMMARY_FILE,
    RoutingError,
    TaskSummary,
    base_question_encoder,
    choose_routes,
    encode_questions,
    read_summary,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SOURCE_FILE = INDEX_SOURCE_FILE  # beside a saved index: which shards and encoder it was built from

_ENCODER_FIELDS = frozenset(FLAT_FIELDS)


@dataclass(frozen=True)
class InferenceModelConfig:
    """Which encoder(s) to load for inference, and on what hardware.

    ``encoder_overrides`` holds the encoder settings given explicitly (flag name -> value, the keys of
    ``BiEncoderConfig.to_flat``);
    a checkpoint fills in the rest, and an architecture field that contradicts it is an error. Without
    ``model_file`` (and ``tasks``) they describe the base model. ``tasks`` is ``((name, checkpoint), ...)``:
    several task checkpoints on one backbone (:func:`load_task_encoder`) instead of ``model_file``.
    """

    model_file: str | None = None
    encoder_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tasks: tuple[tuple[str, str], ...] = ()
    precision: str = "auto"  # auto, fp32, fp16, bf16 or int8 (CPU); resolved when the model is loaded
    no_cuda: bool = False
    merge_lora: bool = False  # fold a --lora checkpoint's deltas into one backbone copy per side (no hooks)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.encoder_overrides) - _ENCODER_FIELDS)
        if unknown:
            raise ConfigError(f"encoder_overrides: unknown encoder settings {unknown}")
        # a copy: the config is a value, later edits of the caller's dict must not reach it
        object.__setattr__(self, "encoder_overrides", dict(self.encoder_overrides))
        object.__setattr__(self, "tasks", tuple((str(n), str(p)) for n, p in self.tasks))
        if self.precision not in INFERENCE_REQUESTS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(INFERENCE_REQUESTS)}")
        if self.tasks and self.model_file:
            raise ConfigError("pass either --model_file (one checkpoint) or --task NAME=CHECKPOINT (several), not both")
        if self.merge_lora and (self.tasks or not self.model_file):
            raise ConfigError(
                "--merge_lora folds the LoRA deltas of one --model_file checkpoint into its backbone; "
                "--task checkpoints share one unmerged backbone and the base model has no deltas"
            )
        names = [name for name, _ in self.tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"--task name(s) {repeated} given more than once; each task needs its own name")

    def device(self) -> torch.device:
        return select_device(self.no_cuda, self.precision)


@dataclass(frozen=True)
class InferenceModel:
    """A bi-encoder ready to encode, its tokenizer, where its weights came from, and how it runs."""

    model: BiEncoder
    tokenizer: PreTrainedTokenizerBase
    checkpoint: str | None  # absolute checkpoint path, None for the base model
    training: dict[str, Any]  # the checkpoint's training config ({} for the base model)
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # how it encodes: fp32, fp16 or bf16 autocast, or int8 (quantized linear layers)

    def identity(self) -> EncoderIdentity:
        """The passage encoder's identity: what embeddings made with this model record."""
        return self.model.passage_identity()

    def describe(self) -> str:
        """The checkpoint path, or ``base model <name>``: how results name their encoder."""
        return self.checkpoint or f"base model {self.model.config.backbone.pretrained_model_cfg}"


def resolve_encoder_config(
    overrides: Mapping[str, Any], stored: BiEncoderConfig | None = None, source: str = "checkpoint"
) -> BiEncoderConfig:
    """``stored`` (default: the defaults) with ``overrides`` applied; contradicted architecture fields raise."""
    return apply_overrides(stored, overrides, source=source)


def load_inference_model(cfg: InferenceModelConfig, device: torch.device | None = None) -> InferenceModel:
    """The encoder of ``cfg.model_file`` (its stored config decides the network), or the base model.

    Without a checkpoint, fine-tuning / BitFit encoders are the pretrained model on both sides, so they
    share one backbone (half the memory); prefix / prompt / adapter parameters would be random.
    ``device`` defaults to ``cfg.device()``.
    """
    if cfg.tasks:
        raise ConfigError("this config names --task checkpoints: load them with load_task_encoder")
    device = cfg.device() if device is None else device
    if cfg.model_file:
        model, info = load_biencoder(cfg.model_file, cfg.encoder_overrides)
        checkpoint, training = os.path.abspath(info.path), info.training
    else:
        config = resolve_encoder_config(cfg.encoder_overrides)
        if config.tuning.method in ("finetune", "bitfit") and "share_encoder" not in cfg.encoder_overrides:
            config = config.with_settings(share_encoder=True)
        elif config.frozen_backbone:
            logger.warning(
                "no --model_file: the %s parameters are randomly initialised, so these vectors "
                "are not a trained retriever's",
                config.tuning.method,
            )
        model, checkpoint, training = build_biencoder(config), None, {}
    if cfg.merge_lora:
        model = merge_lora(model)
    tokenizer = load_tokenizer(model.config.backbone.pretrained_model_cfg, model.config.backbone.do_lower_case)
    model.to(device).eval()
    precision = resolve_precision(cfg.precision, device)
    if precision == "int8":
        model = quantize_int8(model)
    return InferenceModel(model, tokenizer, checkpoint, training, device, precision)


def load_task_encoder(cfg: InferenceModelConfig, device: torch.device | None = None) -> "TaskEncoder":
    """One backbone (the first task's) with every ``cfg.tasks`` checkpoint registered on it.

    ``cfg.encoder_overrides`` must agree with every checkpoint's architecture; unset settings come from it.
    """
    if not cfg.tasks:
        raise ConfigError("a task encoder needs at least one --task NAME=CHECKPOINT")
    configs = {
        name: resolve_encoder_config(cfg.encoder_overrides, read_checkpoint_info(path).encoder, source=path)
        for name, path in cfg.tasks
    }
    device = cfg.device() if device is None else device
    precision = resolve_precision(cfg.precision, device)
    if precision == "int8":
        raise ConfigError("--precision int8 is not supported with --task (several checkpoints on one backbone) yet")
    encoder = TaskEncoder(configs[cfg.tasks[0][0]].backbone.pretrained_model_cfg, device, precision=precision)
    for name, path in cfg.tasks:
        encoder.register(name, path, configs[name])
    return encoder


class TaskEncoder:
    """Several task checkpoints on one frozen backbone, encoding texts with the task a call names.

    >>> encoder = TaskEncoder.from_checkpoints({"scifact": "ckpt/scifact", "nq": "ckpt/nq"})
    >>> vectors = encoder.encode(["what causes scurvy?"], task="scifact")       # (1, D) float32
    >>> vectors, routes = encoder.encode(questions, task="auto", return_routes=True)  # per-query routing

    The backbone ``pretrained_model_cfg`` is loaded once; every registered checkpoint must have been
    trained on it (checked by name and shape). Switching tasks between calls moves no backbone weights.
    ``task="auto"`` routes each question to the task it most resembles (``dpr.routing``; every task needs
    its ``task_summary.json``) or to the base model (the backbone with no task active).
    """

    def __init__(self, pretrained_model_cfg: str, device: torch.device | str = "cpu", precision: str = "fp32") -> None:
        # Dropout settings do not matter: the backbone only ever runs in eval mode here.
        self.library = TaskLibrary(load_backbone(pretrained_model_cfg), pretrained_model_cfg).to(device)
        self.precision = precision  # the default autocast of encode()
        self._checkpoints: dict[str, str] = {}
        self._summaries: dict[str, TaskSummary | None] = {}  # routing summaries (task_summary.json)
        self._tokenizers: dict[bool, PreTrainedTokenizerBase] = {}  # by do_lower_case: tasks may differ only in that

    @classmethod
    def from_checkpoints(cls, checkpoints: Mapping[str, str], device: torch.device | str = "cpu") -> "TaskEncoder":
        """Load the backbone named by the first checkpoint and register every ``{task: checkpoint folder}``."""
        if not checkpoints:
            raise ConfigError("a task encoder needs at least one task checkpoint")
        first = read_checkpoint_info(next(iter(checkpoints.values())))
        encoder = cls(first.encoder.backbone.pretrained_model_cfg, device)
        for name, path in checkpoints.items():
            encoder.register(name, path)
        return encoder

    @property
    def tasks(self) -> tuple[str, ...]:
        """Registered task names, in registration order."""
        return self.library.tasks

    def register(self, name: str, checkpoint_path: str, config: BiEncoderConfig | None = None) -> CheckpointInfo:
        """Register the checkpoint folder ``checkpoint_path`` (or a training run folder: its best) as task ``name``.

        ``config`` (default: the checkpoint's) may change settings that do not alter the network, such
        as ``sequence_length``; an architecture field that differs from the checkpoint's is an error.
        """
        if name == AUTO:
            raise TaskError(f"task name {AUTO!r} is reserved: encode(task={AUTO!r}) routes each query to a task")
        info = read_checkpoint_info(checkpoint_path)
        checkpoint_path = info.path  # a training output folder stands for its best checkpoint
        if config is None:
            config = info.encoder
        ours, stored = config.to_flat(), info.encoder.to_flat()
        diffs = [
            f"{f}: {ours[f]!r} vs checkpoint {stored[f]!r}"
            for f in ARCHITECTURE_FIELDS
            if not same_setting(f, ours[f], stored[f])
        ]
        if diffs:
            raise ConfigError(f"task {name!r}: config contradicts {checkpoint_path} ({'; '.join(diffs)})")
        summary = read_summary(info.path)  # before registering: a damaged file must not leave a half-registered task
        self.library.add(name, config, info.backbone, os.path.join(checkpoint_path, WEIGHTS_FILE), checkpoint_path)
        self._checkpoints[name] = os.path.abspath(checkpoint_path)
        self._summaries[name] = summary
        return info

    def unregister(self, name: str) -> None:
        self.library.remove(name)
        del self._checkpoints[name]
        del self._summaries[name]

    def summary(self, task: str) -> TaskSummary | None:
        """The routing summary of ``task`` (None when its checkpoint has no task_summary.json)."""
        self.library.model(task)
        return self._summaries[task]

    def set_summary(self, task: str, summary: TaskSummary) -> None:
        """Use ``summary`` to route to ``task`` (instead of, or lacking, its checkpoint's file)."""
        self.library.model(task)
        self._summaries[task] = summary

    def model(self, task: str) -> BiEncoder:
        return self.library.model(task)

    def checkpoint(self, task: str) -> str:
        """Absolute path of the checkpoint registered as ``task``."""
        self.library.model(task)  # unknown names get the error listing registered tasks
        return self._checkpoints[task]

    def identity(self, task: str) -> EncoderIdentity:
        """The passage-encoder identity of ``task``, to check against an index (``check_identity``)."""
        return self.library.model(task).passage_identity()

    def tokenizer(self, do_lower_case: bool) -> PreTrainedTokenizerBase:
        if do_lower_case not in self._tokenizers:
            self._tokenizers[do_lower_case] = load_tokenizer(self.library.model_name, do_lower_case)
        return self._tokenizers[do_lower_case]

    def encode(
        self,
        texts: Sequence[str] | Sequence[Passage],
        task: str,
        side: Side = "question",
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        precision: str | None = None,
        progress: bool = False,
        return_routes: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]:
        """Encode questions (strings) or passages with task ``task``; returns (N, D) float32 in input order.

        ``max_length`` defaults to the task's ``sequence_length``, ``precision`` to the encoder's; passages
        are formatted as the task's checkpoint says (title mode, --no_title). ``task="auto"`` (questions
        only) encodes each question with the task :meth:`route` picks for it; ``return_routes`` then also
        returns those picks (a task name or ``dpr.routing.BASE_ROUTE`` per question).
        """
        if task == AUTO:
            if side != "question":
                raise TaskError(f"task={AUTO!r} routes questions; encode passages with a named task")
            routes, base = self._route(texts, batch_size, max_length, precision, progress)
            vectors = self._encode_routed(texts, routes, base, batch_size, max_length, precision, progress)
            return (vectors, routes) if return_routes else vectors
        if return_routes:
            raise TaskError(f"return_routes needs task={AUTO!r}")
        model = self.library.model(task)
        config = model.config
        return encode_texts(
            model,
            self.tokenizer(config.backbone.do_lower_case),
            texts,
            side,
            max_length=max_length or config.backbone.sequence_length,
            batch_size=batch_size,
            device=self.library.device,
            precision=precision or self.precision,
            insert_title=config.passages.insert_title,
            progress=progress,
        )

    def route(
        self, questions: Sequence[str], *, batch_size: int = 32, precision: str | None = None, progress: bool = False
    ) -> list[str]:
        """Per question the task it most resembles (above that task's threshold), else ``BASE_ROUTE``."""
        return self._route(questions, batch_size, None, precision, progress)[0]

    def base_encode(
        self,
        questions: Sequence[str],
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        precision: str | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Questions encoded by the base model (the shared backbone, no task active) -> (N, D) float32."""
        first = self.library.model(self.tasks[0]).config if self.tasks else None
        if first is None:
            raise TaskError("no task is registered")
        return encode_questions(
            base_question_encoder(self.library.backbone, self.library.base_head()),
            self.tokenizer(first.backbone.do_lower_case),
            questions,
            max_length=max_length or first.backbone.sequence_length,
            batch_size=batch_size,
            device=self.library.device,
            precision=precision or self.precision,
            progress=progress,
        )

    def _route(
        self,
        questions: Sequence[str],
        batch_size: int,
        max_length: int | None,
        precision: str | None,
        progress: bool,
    ) -> tuple[list[str], np.ndarray]:
        """The routes of ``questions`` and their base vectors (N, D): reused for those routed to the base."""
        missing = [t for t in self.tasks if self._summaries.get(t) is None]
        if missing or not self.tasks:
            raise RoutingError(
                f"task={AUTO!r} needs a {SUMMARY_FILE} in every task's checkpoint; missing for "
                + (", ".join(f"{t!r} ({self._checkpoints[t]})" for t in missing) or "every task (none registered)")
                + f"; make one with: {SUMMARIZE_COMMAND}"
            )
        summaries = {t: self._summaries[t] for t in self.tasks}
        pooling = self.library.base_head().pooling
        for task, summary in summaries.items():
            if summary.pooling != pooling or not same_model_name(summary.model_name, self.library.model_name):
                raise RoutingError(
                    f"task {task!r}: its summary was made with base model {summary.model_name!r} ({summary.pooling} "
                    f"pooling), the library's is {self.library.model_name!r} ({pooling} pooling); remake it with: "
                    f"{SUMMARIZE_COMMAND}"
                )
        base = self.base_encode(
            questions, batch_size=batch_size, max_length=max_length, precision=precision, progress=progress
        )  # (N, D)
        routes = choose_routes(summaries, base) if len(questions) else []
        return routes, base

    def _encode_routed(
        self,
        questions: Sequence[str],
        routes: Sequence[str],
        base: np.ndarray,
        batch_size: int,
        max_length: int | None,
        precision: str | None,
        progress: bool,
    ) -> np.ndarray:
        """Each question's vector from its route's encoder, in input order -> (N, D) float32."""
        out = base.copy()  # (N, D): the base model's vectors stay for questions routed to it
        for task in self.tasks:
            rows = [i for i, r in enumerate(routes) if r == task]
            if rows:
                out[rows] = self.encode(
                    [questions[i] for i in rows],
                    task,
                    batch_size=batch_size,
                    max_length=max_length,
                    precision=precision,
                    progress=progress,
                )  # (n_task, D)
        return out


def group_shards(shards: Sequence[EmbeddingShard], num_groups: int) -> list[list[EmbeddingShard]]:
    """Split shards (in order) into ``num_groups`` contiguous groups whose sizes differ by at most one."""
    if not 1 <= num_groups <= len(shards):
        raise ConfigError(
            f"--num_index_shards must be between 1 and the number of embedding shards "
            f"({len(shards)}), found {num_groups}"
        )
    base, extra = divmod(len(shards), num_groups)
    groups, start = [], 0
    for g in range(num_groups):
        end = start + base + (1 if g < extra else 0)
        groups.append(list(shards[start:end]))
        start = end
    return groups


def build_index(shards: Sequence[EmbeddingShard], kind: str, params: IndexParams, buffer: int) -> DenseIndex:
    """An index over the shards' vectors, added ``buffer`` rows at a time (shards are memory-mapped)."""
    index = DenseIndex(shards[0].header.dim, kind, params)
    for shard in shards:
        for vectors, ids in shard.chunks(buffer):
            try:
                index.add(vectors, ids)  # (≤buffer, D)
            except ValueError as err:  # duplicate ids across shards, bad values, training failure
                raise EmbeddingsError(f"{shard.path}: {err}") from err
    logger.info("built %r from %d shard(s)", index, len(shards))
    return index


def _source_record(shards: Sequence[EmbeddingShard], kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "encoder_digest": shards[0].header.encoder_digest,
        "shards": [[s.header.shard_id, s.header.num_shards, s.header.count] for s in shards],
    }


def default_index_dir(shards: Sequence[EmbeddingShard], kind: str) -> str:
    """``<out_file>_index_<kind>`` beside the shards (``<out_file>_<id>``)."""
    stem = re.sub(r"_\d+$", "", shards[0].path)
    return f"{stem}_index_{re.sub(r'[^A-Za-z0-9]+', '-', kind).strip('-')}"


def load_or_build(
    shards: Sequence[EmbeddingShard], kind: str, params: IndexParams, buffer: int, index_dir: str | None
) -> DenseIndex:
    """Load the index saved in ``index_dir`` if it was built from these shards, else build (and save).

    A saved index from other embeddings (another encoder, other shards, another kind) is an error, not
    a silent reuse: the message says which folder to delete.
    """
    if index_dir is None:
        return build_index(shards, kind, params, buffer)
    expected = _source_record(shards, kind)
    source_path = os.path.join(index_dir, SOURCE_FILE)
    if os.path.isfile(source_path):
        with open(source_path, encoding="utf-8") as handle:
            found = json.load(handle)
        if found != expected:
            raise EmbeddingsError(
                f"{source_path}: the index in {index_dir} was built from other embeddings "
                f"or another --index_type ({found}, expected {expected}); delete the folder "
                f"or pass another --index_path"
            )
        try:
            index = DenseIndex.load(index_dir)
        except (ValueError, RuntimeError) as err:
            raise EmbeddingsError(f"{index_dir}: cannot load the saved index: {err}") from err
        logger.info("loaded %r from %s", index, index_dir)
        return index
    index = build_index(shards, kind, params, buffer)
    with atomic_directory(index_dir) as tmp:
        index.save(tmp)
        with open(os.path.join(tmp, SOURCE_FILE), "w", encoding="utf-8") as handle:
            json.dump(expected, handle, indent=2)
    logger.info("saved the index to %s", index_dir)
    return index


def search_groups(
    groups: Sequence[Sequence[EmbeddingShard]],
    queries: np.ndarray,
    k: int,
    kind: str,
    params: IndexParams,
    buffer: int,
    index_dir: str | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Top-k of ``queries`` (Q, D) over every group: one index per group, searched then freed, merged.

    Returns scores (Q, k') float32, best first, and the ids per query. With ``index_dir``, group g is
    saved to / loaded from ``<index_dir>/group_<g>`` (or ``index_dir`` itself for a single group).
    """
    results = []
    for g, group in enumerate(groups):
        folder = (
            None if index_dir is None else (index_dir if len(groups) == 1 else os.path.join(index_dir, f"group_{g}"))
        )
        index = load_or_build(group, kind, params, buffer, folder)
        results.append(index.search(queries, k))
        del index  # free this group's index before building the next one
    return results[0] if len(results) == 1 else merge_topk(results, k)


def lookup_corpus_passages(path: str, wanted: Collection[str], shard: EmbeddingShard) -> dict[str, Passage]:
    """The passages of ``wanted`` from the corpus ``path``, checking it is the version ``shard`` was encoded from.

    One streaming pass collects the wanted ids and digests the first ``total_passages`` rows; a digest other
    than the shard's ``corpus_digest`` is refused (answers would be matched against texts that were never
    encoded). Shards without a digest (format version 1) are not checked. DataFormatError names missing ids.
    """
    header = shard.header
    check = header.corpus_digest is not None
    digest = RowDigest()
    found = lookup_passages(path, wanted, visit_rows=header.total_passages if check else 0, visit=digest.update)
    if check and digest.hexdigest() != header.corpus_digest:
        raise EmbeddingsError(
            f"{resolve_corpus_path(path)} is not the corpus version the embeddings were encoded from: its first "
            f"{digest.count} rows have digest {digest.hexdigest()[:12]}, {shard.meta_path} records "
            f"{header.corpus_digest[:12]} over {header.total_passages} rows of {header.ctx_file}; pass that "
            f"file as --ctx_file, or regenerate the embeddings from this one"
        )
    return found
