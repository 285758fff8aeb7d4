"""sentence-transformers export: the real library loads the folder offline and gives our vectors (1e-5)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types

import numpy as np
import pytest
from test_tasks import PASSAGES, make_checkpoint

from dpr.data.readers import Passage
from dpr.encoding import encode_texts
from dpr.models.checkpoint_format import load_biencoder
from dpr.models.hub import load_tokenizer
from dpr.models.st_export import SentenceTransformersExportError, _backbone_for_export, export_sentence_transformers

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = [
    "what is the capital of france?",
    "x",
    # longer than make_checkpoint's sequence_length (32): truncation must agree too
    "who wrote hamlet, the long play about a danish prince who talks to a ghost and then takes a very long "
    "time to decide what to do about his uncle the king?",
]
LONG = Passage(" ".join(f"word{i} is a token" for i in range(30)), "A long title")
ALL_PASSAGES = [*PASSAGES, LONG]
TOL = 1e-5


@pytest.fixture(scope="module")
def st():
    return pytest.importorskip("sentence_transformers")


def _ours(checkpoint: str, side: str, items, merge: bool = False) -> np.ndarray:
    model, _ = load_biencoder(checkpoint)
    if merge:  # our --merge_lora inference copy
        from dpr.models.biencoder import merge_lora

        model = merge_lora(model)
    tokenizer = load_tokenizer(model.config.backbone.pretrained_model_cfg, model.config.backbone.do_lower_case)
    length, insert_title = model.config.backbone.sequence_length, model.config.passages.insert_title
    return encode_texts(model, tokenizer, items, side, max_length=length, batch_size=2, insert_title=insert_title)


def _st_passages(title_mode: str, insert_title: bool) -> list:
    """The passages written as the exported README says."""
    if not insert_title:
        return [p.text for p in ALL_PASSAGES]
    if title_mode == "concat":
        return [f"{p.title} {p.text}".strip() for p in ALL_PASSAGES]
    return [(p.title, p.text) if p.title else p.text for p in ALL_PASSAGES]


def _st_vectors(st, folder: str, side: str, title_mode: str = "pair", insert_title: bool = True) -> np.ndarray:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: the load must not need the network
    model = st.SentenceTransformer(folder, device="cpu")
    items = QUESTIONS if side == "question" else _st_passages(title_mode, insert_title)
    return model.encode(items, batch_size=3, convert_to_numpy=True)


@pytest.fixture(scope="module")
def cased_bert_dir(tiny_bert_dir, tmp_path_factory) -> str:
    """tiny_bert_dir with a CASED tokenizer (its normaliser's lower-casing off): --do_lower_case then matters."""
    path = str(tmp_path_factory.mktemp("cased") / "model")
    shutil.copytree(tiny_bert_dir, path)
    for name, edit in (
        ("tokenizer.json", ("normalizer", "lowercase")),
        ("tokenizer_config.json", (None, "do_lower_case")),
    ):
        data = json.loads(open(os.path.join(path, name)).read())
        (data[edit[0]] if edit[0] else data)[edit[1]] = False
        open(os.path.join(path, name), "w").write(json.dumps(data))
    cased = load_tokenizer(path)
    assert cased("PARIS")["input_ids"] != cased("paris")["input_ids"]  # the vocab is uncased: capitals differ
    return path


CASES = {
    "finetune-mean-projection-normalize-pair": (
        "finetune",
        {"pooling": "mean", "projection_dim": 8, "normalize": True},
    ),
    "bitfit-cls-concat": ("bitfit", {"pooling": "cls", "title_mode": "concat"}),
    "finetune-shared-cls-no-title-lowercase": (
        "finetune",
        {"pooling": "cls", "share_encoder": True, "insert_title": False, "do_lower_case": True},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("side", ["question", "passage"])
def test_sentence_transformers_gives_our_vectors(st, case, side, tiny_bert_dir, tmp_path):
    method, settings = CASES[case]
    checkpoint = make_checkpoint(str(tmp_path / "ckpt"), tiny_bert_dir, method, 21, **settings)
    folder = export_sentence_transformers(checkpoint, str(tmp_path / "st"), side)
    ours = _ours(checkpoint, side, QUESTIONS if side == "question" else ALL_PASSAGES)
    theirs = _st_vectors(st, folder, side, settings.get("title_mode", "pair"), settings.get("insert_title", True))
    assert theirs.shape == ours.shape == (len(ours), settings.get("projection_dim") or 32)
    np.testing.assert_allclose(theirs, ours, atol=TOL, rtol=0)
    assert np.abs(ours).max() > 0.1 and np.abs(ours[0] - ours[1]).max() > 1e-3  # not a degenerate encoder


def test_do_lower_case_travels_with_the_tokenizer(st, cased_bert_dir, tmp_path):
    checkpoint = make_checkpoint(str(tmp_path / "ckpt"), cased_bert_dir, "finetune", 26, do_lower_case=True)
    folder = export_sentence_transformers(checkpoint, str(tmp_path / "st"), "question")
    shouted = [q.upper() for q in QUESTIONS]
    ours = _ours(checkpoint, "question", shouted)
    np.testing.assert_allclose(ours, _ours(checkpoint, "question", QUESTIONS), atol=TOL, rtol=0)  # lower-cased
    model = st.SentenceTransformer(folder, device="cpu")
    np.testing.assert_allclose(model.encode(shouted, convert_to_numpy=True), ours, atol=TOL, rtol=0)


def test_folder_layout_and_readme(st, tiny_bert_dir, tmp_path):
    checkpoint = make_checkpoint(
        str(tmp_path / "ckpt"), tiny_bert_dir, "finetune", 22, pooling="mean", projection_dim=8, normalize=True
    )
    folder = export_sentence_transformers(checkpoint, str(tmp_path / "st"), "passage")
    modules = json.loads(open(os.path.join(folder, "modules.json")).read())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    dense = json.loads(open(os.path.join(folder, "2_Dense", "config.json")).read())
    assert dense == {
        "in_features": 32,
        "out_features": 8,
        "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    readme = open(os.path.join(folder, "README.md")).read()
    assert "PAIR" in readme and "model.encode([(title, text)])" in readme and "max_seq_length 32" in readme
    sidecar = json.loads(open(os.path.join(folder, "dpr_export.json")).read())
    assert sidecar["side"] == "passage" and sidecar["checkpoint"] == os.path.abspath(checkpoint)
    model = st.SentenceTransformer(folder, device="cpu")
    assert model.max_seq_length == 32
    assert str(model.similarity_fn_name) == "dot"  # our score


def test_tune_side_question_exports_the_base_passage_encoder(st, tiny_bert_dir, tmp_path):
    """A --prefix --tune_side question model: its passage side is the plain base encoder, so it exports."""
    checkpoint = make_checkpoint(str(tmp_path / "ckpt"), tiny_bert_dir, "prefix", 23, tune_side="question")
    folder = export_sentence_transformers(checkpoint, str(tmp_path / "st"), "passage")
    ours = _ours(checkpoint, "passage", ALL_PASSAGES)
    np.testing.assert_allclose(_st_vectors(st, folder, "passage"), ours, atol=TOL, rtol=0)
    with pytest.raises(SentenceTransformersExportError, match="--prefix encoder adds key/value prefixes"):
        export_sentence_transformers(checkpoint, str(tmp_path / "q"), "question")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize(
    ("method", "why"),
    [
        ("prefix", "adds key/value prefixes inside every attention layer.*python -m dpr.export peft"),
        ("prompt", "prepends soft-prompt vectors"),
        ("adapter", "inserts bottleneck adapters"),
    ],
)
def test_modes_that_change_the_network_are_refused(method, why, tiny_bert_dir, tmp_path):
    checkpoint = make_checkpoint(str(tmp_path / "ckpt"), tiny_bert_dir, method, 24)
    for side in ("question", "passage"):
        with pytest.raises(SentenceTransformersExportError, match=f"--{method} encoder {why}"):
            export_sentence_transformers(checkpoint, str(tmp_path / side), side)
        assert not (tmp_path / side).exists()


def test_lora_goes_through_merged_backbone(monkeypatch):
    """The seam: a lora encoder exports ``dpr.models.lora.merged_backbone(encoder)``, imported only then."""
    merged = object()
    fake = types.ModuleType("dpr.models.lora")
    fake.merged_backbone = lambda encoder: (merged, encoder)
    monkeypatch.setitem(sys.modules, "dpr.models.lora", fake)
    encoder = types.SimpleNamespace(tuning=types.SimpleNamespace(method="lora"), backbone="plain")
    assert _backbone_for_export(encoder) == (merged, encoder)
    encoder.tuning.method = "bitfit"
    assert _backbone_for_export(encoder) == "plain"


def test_lora_merged_export_gives_our_vectors(st, tiny_bert_dir, tmp_path):
    """Runs once dpr.models.lora (LoRA tuning, merged_backbone) is merged in; skipped before."""
    pytest.importorskip("dpr.models.lora")
    checkpoint = make_checkpoint(str(tmp_path / "ckpt"), tiny_bert_dir, "lora", 25, lora_r=8, lora_alpha=16)
    for side in ("question", "passage"):
        folder = export_sentence_transformers(checkpoint, str(tmp_path / side), side)
        items = QUESTIONS if side == "question" else ALL_PASSAGES
        exported = _st_vectors(st, folder, side)
        # Our merged (--merge_lora) vectors: the same weights, so within the 1e-5 of every other mode.
        np.testing.assert_allclose(exported, _ours(checkpoint, side, items, merge=True), atol=TOL, rtol=0)
        # Against the hooked model: W + s*B@A folded into one matrix rounds differently from W x + s*B(A x)
        # summed at run time, up to about 2e-5 on these vectors (norm about 5) after 25 steps at lr 1e-2.
        np.testing.assert_allclose(exported, _ours(checkpoint, side, items), atol=5e-5, rtol=0)
