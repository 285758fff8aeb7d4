"""One side of a bi-encoder -> a sentence-transformers model folder that ``SentenceTransformer(path)`` loads.

The folder is written by hand in sentence-transformers' long-standing layout (read by 3.x and by 6.x),
so exporting needs no sentence-transformers install::

    modules.json                      the pipeline below, in order
    config.json, model.safetensors    the BERT backbone (fine-tuned, BitFit or LoRA-merged weights)
    tokenizer files                   our tokenizer, lower-casing as ours does
    sentence_bert_config.json         max_seq_length = our --sequence_length
    1_Pooling/config.json             cls or mean: our --pooling
    2_Dense/                          (only with --projection_dim) nn.Linear + identity activation, bias as ours
    N_Normalize/                      (only when ours L2-normalises)
    config_sentence_transformers.json similarity "dot": our score (cosine = dot once normalised)
    README.md, dpr_export.json        what input format gives our vectors; our config and the checkpoint

Exact: fine-tuning and BitFit (the backbone is a plain BERT), and LoRA once merged into a copy of the
backbone (``dpr.models.lora.merged_backbone``, through :func:`_backbone_for_export`). Refused: prefix,
prompt and adapter encoders change what happens inside the attention or the layers; a plain
sentence-transformers Transformer module runs the unmodified BERT, so only custom module code
(``trust_remote_code``) could reproduce them, and that is not written. A prefix exports to PEFT instead.

Input format: questions are plain strings. Passages are encoded as ours are when the passage format can
be written as one string: ``--no_title`` (the text) or ``title_mode concat`` (``f"{title} {text}".strip()``).
Pair mode (``[CLS] title [SEP] text [SEP]``, segments 0 then 1) is a text pair in sentence-transformers:
``encode([(title, text)])`` gives our vectors unless truncation has to cut the title (its
"longest_first" truncation then differs from ours, which cuts the text first), and an empty title must
be given as the text alone. The folder's README says which applies.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from safetensors.torch import save_file
from transformers import BertModel

from dpr.atomic import atomic_directory
from dpr.configs import BiEncoderConfig, ConfigError
from dpr.errors import UserError
from dpr.models.checkpoint_format import load_biencoder
from dpr.models.encoder import TunedEncoder
from dpr.models.hub import load_tokenizer

logger = logging.getLogger(__name__)

SIDES = ("question", "passage")
SIDECAR_FILE = "dpr_export.json"
SIDECAR_FORMAT = "dpr-ptv2-sentence-transformers-export"
IDENTITY = "torch.nn.modules.linear.Identity"

_REFUSED = {
    "prefix": "adds key/value prefixes inside every attention layer",
    "prompt": "prepends soft-prompt vectors to the input embeddings",
    "adapter": "inserts bottleneck adapters into every layer",
}


class SentenceTransformersExportError(UserError, ValueError):
    """An encoder a plain sentence-transformers folder cannot reproduce; the message says why and what to do."""


def _backbone_for_export(encoder: TunedEncoder) -> BertModel:
    """The plain BERT whose outputs equal ``encoder``'s token states: the one seam of every exportable mode.

    Fine-tuning and BitFit use the backbone as it is; LoRA merges its low-rank updates into a copy
    (imported lazily: ``dpr.models.lora`` is only needed for LoRA checkpoints).
    """
    method = encoder.tuning.method
    if method in ("finetune", "bitfit"):
        return encoder.backbone
    if method == "lora":
        from dpr.models.lora import merged_backbone

        return merged_backbone(encoder)
    hint = " Export the prefix for PEFT instead: python -m dpr.export peft ..." if method == "prefix" else ""
    raise SentenceTransformersExportError(
        f"a --{method} encoder {_REFUSED.get(method, 'changes the network')}; a sentence-transformers "
        f"Transformer module runs the unmodified BERT, so its vectors would differ (only custom module "
        f"code, trust_remote_code, could reproduce it): export refused.{hint}"
    )


def passage_input_format(config: BiEncoderConfig) -> str:
    """How to write a passage for the exported passage side so that it gives our vector (README text)."""
    if not config.passages.insert_title:
        return "Passages: the text alone (this encoder was used with --no_title): `model.encode([text])`."
    if config.passages.title_mode == "concat":
        return 'Passages: one string, title and text joined by a space: `model.encode([f"{title} {text}".strip()])`.'
    return (
        "Passages: this encoder reads title and text as a PAIR (`[CLS] title [SEP] text [SEP]`, segments 0 "
        "and 1), which one string cannot express. Give a text pair: `model.encode([(title, text)])`; a "
        "passage without a title as the text alone: `model.encode([text])`. Equal to our vectors unless "
        "truncation has to cut the title (sentence-transformers truncates 'longest_first', we cut the "
        "text first)."
    )


def _modules(projection: bool, normalize: bool) -> list[dict[str, Any]]:
    """modules.json: Transformer -> Pooling [-> Dense] [-> Normalize], under the class names every version reads."""
    names = [("", "Transformer"), ("1_Pooling", "Pooling")]
    if projection:
        names.append(("2_Dense", "Dense"))
    if normalize:
        names.append((f"{len(names)}_Normalize", "Normalize"))
    return [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(names)
    ]


def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)


def _write_head(encoder: TunedEncoder, folder: str, modules: list[dict[str, Any]]) -> None:
    """The pooling, projection and normalisation folders of ``modules`` (ours: ``encoder.head``)."""
    assert encoder.head is not None
    hidden = encoder.backbone.config.hidden_size
    pooling = encoder.head.pooling
    _write_json(
        os.path.join(folder, "1_Pooling", "config.json"),
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    if encoder.projection is not None:
        linear = encoder.projection
        _write_json(
            os.path.join(folder, "2_Dense", "config.json"),
            {
                "in_features": linear.in_features,
                "out_features": linear.out_features,
                "bias": linear.bias is not None,
                "activation_function": IDENTITY,
            },
        )
        state = {f"linear.{name}": p.detach().cpu().float().contiguous() for name, p in linear.named_parameters()}
        save_file(state, os.path.join(folder, "2_Dense", "model.safetensors"), metadata={"format": "pt"})
    for module in modules:
        if module["type"].endswith(".Normalize"):
            os.makedirs(os.path.join(folder, module["path"]), exist_ok=True)


def _readme(config: BiEncoderConfig, side: str, source: str) -> str:
    head = config.head
    projection = f", a {head.projection_dim}-d linear projection" if head.projection_dim else ""
    normalize = ", L2-normalised" if head.normalize else ""
    inputs = "Questions: plain strings, `model.encode([question])`." if side == "question" else None
    return "\n".join(
        [
            "---",
            "library_name: sentence-transformers",
            "pipeline_tag: sentence-similarity",
            "---",
            f"# {side} encoder exported from a DPR checkpoint",
            "",
            f"Exported by `python -m dpr.export sentence-transformers` from `{source}` ({config.tuning.method}, "
            f"{head.pooling} pooling{projection}{normalize}, max_seq_length {config.backbone.sequence_length}).",
            "Score = dot product of a question vector and a passage vector.",
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            'model = SentenceTransformer("path/to/this/folder", device="cpu")',
            "```",
            "",
            inputs or passage_input_format(config),
            "",
            "Loading may report `pooler.dense.*` as MISSING: BERT's pooler was never part of this encoder and is "
            "never used (the Pooling module pools the token states).",
            "",
        ]
    )


def write_sentence_transformers(
    encoder: TunedEncoder, config: BiEncoderConfig, side: str, folder: str, source: str = "checkpoint"
) -> str:
    """Write ``encoder`` (one side of a bi-encoder built from ``config``) as a sentence-transformers folder.

    Atomic: ``folder`` appears complete or not at all. Raises SentenceTransformersExportError for an
    encoder that cannot be exported exactly (see the module docstring).
    """
    if side not in SIDES:
        raise ConfigError(f"--side must be question or passage, found {side!r}")
    if encoder.head is None:
        raise SentenceTransformersExportError("this encoder has no head (pooling): nothing to export as one vector")
    backbone = _backbone_for_export(encoder)
    tokenizer = load_tokenizer(config.backbone.pretrained_model_cfg, config.backbone.do_lower_case)
    tokenizer.model_max_length = config.backbone.sequence_length
    modules = _modules(encoder.projection is not None, bool(encoder.head.normalize))
    with atomic_directory(folder) as tmp:
        backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_json(os.path.join(tmp, "modules.json"), modules)
        _write_json(
            os.path.join(tmp, "sentence_bert_config.json"),
            {"max_seq_length": config.backbone.sequence_length, "do_lower_case": config.backbone.do_lower_case},
        )
        _write_json(
            os.path.join(tmp, "config_sentence_transformers.json"),
            {
                "model_type": "SentenceTransformer",
                "prompts": {},
                "default_prompt_name": None,
                "similarity_fn_name": "dot",
            },
        )
        _write_head(encoder, tmp, modules)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(_readme(config, side, source))
        _write_json(
            os.path.join(tmp, SIDECAR_FILE),
            {
                "format": SIDECAR_FORMAT,
                "version": 1,
                "side": side,
                "method": encoder.tuning.method,
                "encoder": config.to_dict(),
                "checkpoint": source,
            },
        )
    logger.info("wrote the %s side as a sentence-transformers folder %s", side, folder)
    return folder


def export_sentence_transformers(model_file: str, out_dir: str, side: str = "question") -> str:
    """Write the ``side`` encoder of the checkpoint ``model_file`` as a sentence-transformers folder ``out_dir``."""
    if side not in SIDES:
        raise ConfigError(f"--side must be question or passage, found {side!r}")
    model, info = load_biencoder(model_file)
    if os.path.abspath(out_dir) in (os.path.abspath(model_file), os.path.abspath(info.path)):
        raise ConfigError(f"--out_dir {out_dir} is the checkpoint itself; writing there would replace it")
    encoder = model.question_encoder if side == "question" else model.ctx_encoder
    # The passage side of a --tune_side question model is the base encoder: describe it by its own config.
    config = model.config if side == "question" else model.config.passage_config()
    return write_sentence_transformers(encoder.eval(), config, side, out_dir, source=os.path.abspath(info.path))
