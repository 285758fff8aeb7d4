"""The model card: ``README.md`` in every checkpoint folder, saying what the checkpoint is and how to load it.

A card is rendered from plain facts (:class:`CardFacts`) that each training loop gathers when it saves
(``dpr.training.trainer`` here, ``colbert.training`` for ColBERT, which adds its own loading snippets). The
tuning settings are listed from the tuning config's own ``to_dict``, so a new tuning mode needs nothing
here. The card is written inside the checkpoint's atomic folder write and never read back: loading
ignores it, and checkpoints without one load the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dpr.configs import BiEncoderConfig
from dpr.data.readers import expand_patterns
from dpr.models.biencoder import BiEncoder
from dpr.models.encoder import parameter_counts
from dpr.training.run_dir import BestRecord, best_record, replaces_best

__all__ = ["CardFacts", "best_so_far", "biencoder_card", "biencoder_usage", "data_line", "render_model_card"]


@dataclass(frozen=True)
class CardFacts:
    """What a model card says. ``usage``: ``(caption, language, code)`` snippets, in order."""

    kind: str  # "DPR bi-encoder", "ColBERT"
    name: str  # the checkpoint folder's name
    base_model: str
    tuning: Mapping[str, Any]  # the tuning config's to_dict(): {"method": ..., its settings}
    config: Mapping[str, Any]  # the whole model config (to_dict), shown for the record
    trainable: int
    total: int
    data: tuple[str, ...]  # one line per data source
    progress: str  # where training stood, in the loop's words
    precision: str
    validation: Mapping[str, Any] | None = None  # this checkpoint's record: metric, value
    best: BestRecord | None = None  # the best checkpoint so far, this one counted
    usage: tuple[tuple[str, str, str], ...] = ()


def best_so_far(previous: BestRecord | None, candidate: BestRecord | None) -> BestRecord | None:
    """The run's best once ``candidate`` (this checkpoint's, if validated) is counted: ``update_best``'s rule."""
    if candidate is not None and replaces_best(previous, candidate):
        return candidate
    return previous


def data_line(role: str, patterns: Sequence[str], count: int, what: str = "samples", note: str = "") -> str:
    """``"train: `a.json` (24 samples)"``; several files share one count (the readers count per run, not file)."""
    try:
        files = expand_patterns(list(patterns))
    except FileNotFoundError:  # moved since it was read: the patterns say where it came from
        files = list(patterns)
    names = ", ".join(f"`{os.path.basename(f)}`" for f in files) or "(none)"
    return f"{role}: {names} ({count:,} {what}{' in all' if len(files) > 1 else ''}{note})"


def _cell(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) or value is None else str(value)
    return text.replace("|", "\\|")


def _value(record: Mapping[str, Any]) -> str:
    return f"{record['metric']} {float(record['value']):.4f}"


def render_model_card(facts: CardFacts) -> str:
    """The Markdown of the card."""
    method = facts.tuning.get("method", "?")
    share = 100.0 * facts.trainable / max(facts.total, 1)
    rows = [
        ("model", facts.kind),
        ("base model", f"`{facts.base_model}`"),
        ("tuning mode", f"`{method}`"),
        ("trainable parameters", f"{facts.trainable:,} of {facts.total:,} ({share:.3g}%)"),
        ("training", facts.progress),
        ("precision", facts.precision),
        ("validation", _value(facts.validation) + " at this checkpoint" if facts.validation else "none"),
    ]
    if facts.best is not None:
        rows.append(("best so far", f"{_value(asdict(facts.best))} (`{os.path.basename(facts.best.path)}`)"))
    lines = [f"# {facts.name}", "", f"A {facts.kind} checkpoint: `{method}` tuning of `{facts.base_model}`.", ""]
    lines += ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows), ""]
    lines += ["## Tuning settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in facts.tuning.items()]
    lines += ["", "## Data", "", *(f"- {line}" for line in facts.data), ""]
    if facts.usage:
        lines += ["## How to load", ""]
        for caption, language, code in facts.usage:
            lines += [caption, "", f"```{language}", code.rstrip("\n"), "```", ""]
    lines += ["## Model config", "", "```json", json.dumps(facts.config, indent=2, sort_keys=True), "```", ""]
    lines += [
        "Written when the checkpoint was saved: the run folder's `validation_log.jsonl` and "
        "`best_checkpoint.json` say what came after.",
        "",
    ]
    return "\n".join(lines)


def biencoder_usage(path: str, config: BiEncoderConfig) -> tuple[tuple[str, str, str], ...]:
    """How to load a DPR checkpoint at ``path``: Python, the retrieval commands, PEFT export for a prefix."""
    snippets = [
        (
            "In Python, ready to encode (tokenizer, device, precision):",
            "python",
            "from dpr.retrieval import InferenceModelConfig, load_inference_model\n\n"
            f"model = load_inference_model(InferenceModelConfig(model_file={path!r}))",
        ),
        (
            "The bi-encoder alone (rebuilt from `config.json`):",
            "python",
            f"from dpr.models.checkpoint_format import load_biencoder\n\nbiencoder, info = load_biencoder({path!r})",
        ),
    ]
    if config.frozen_backbone:
        snippets.append(
            (
                "Beside other tasks on one frozen backbone:",
                "python",
                "from dpr.retrieval import TaskEncoder\n\n"
                f"encoder = TaskEncoder.from_checkpoints({{'mytask': {path!r}}})\n"
                "vectors = encoder.encode(['a question'], task='mytask')  # (1, D)",
            )
        )
    snippets.append(
        (
            "Embed a corpus and search it:",
            "bash",
            f"python generate_embeddings.py --model_file {path} --ctx_file passages.tsv --out_file emb/corpus\n"
            f'python dense_retriever.py --model_file {path} --encoded_ctx_file "emb/corpus_*" \\\n'
            "    --beir_dir data/mybeir --split test --out_file run.trec",
        )
    )
    if config.tuning.method == "prefix":
        snippets.append(
            (
                "As a Hugging Face PEFT prefix-tuning adapter (one per side):",
                "bash",
                f"python export_peft.py export --model_file {path} --side question --out_dir peft_question",
            )
        )
    return tuple(snippets)


def biencoder_card(
    model: BiEncoder,
    path: str,
    *,
    progress: str,
    precision: str,
    data: tuple[str, ...],
    validation: Mapping[str, Any] | None,
    previous_best: BestRecord | None,
) -> str:
    """The card of DPR checkpoint ``path`` of ``model``; ``validation`` is the record it is saved with."""
    config = model.config
    trainable, total = parameter_counts(model)
    candidate = best_record(path, validation) if validation is not None else None
    facts = CardFacts(
        kind="DPR bi-encoder",
        name=os.path.basename(path),
        base_model=config.backbone.pretrained_model_cfg,
        tuning=config.tuning.to_dict(),
        config=config.to_dict(),
        trainable=trainable,
        total=total,
        data=data,
        progress=progress,
        precision=precision,
        validation=validation,
        best=best_so_far(previous_best, candidate),
        usage=biencoder_usage(path, config),
    )
    return render_model_card(facts)
