"""Task library: several task checkpoints on one frozen backbone; same vectors as alone; bad input named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_bert_with_bert_tiny_vocab

from dpr.configs import BiEncoderConfig
from dpr.data.readers import Passage
from dpr.encoding import encode_texts
from dpr.models.biencoder import build_biencoder
from dpr.models.checkpoint_format import load_biencoder
from dpr.models.hub import load_backbone, load_tokenizer
from dpr.models.serialization import CheckpointMismatchError, backbone_fingerprint
from dpr.models.tasks import TaskError, TaskLibrary, UnknownTaskError
from dpr.retrieval import TaskEncoder
from dpr.training.checkpoint import save_checkpoint

QUESTIONS = ["what is the capital of france?", "who wrote a much longer question about hamlet and denmark?", "x"]
PASSAGES = [
    Passage("Paris is the capital of France.", "France"),
    Passage("Hamlet is a play.", ""),
    Passage("Penguins live in Antarctica and eat a lot of fish every single day.", "Penguin"),
]


def make_checkpoint(path: str, model_name: str, tuning: str, seed: int, **kw) -> str:
    """A checkpoint whose tuned parameters are random (not zero-initialised), so every task differs."""
    torch.manual_seed(seed)
    config = BiEncoderConfig.from_flat(
        pretrained_model_cfg=model_name, tuning=tuning, pre_seq_len=4, sequence_length=32, adapter_size=8, **kw
    )
    model = build_biencoder(config)
    with torch.no_grad():
        for name in model.tuned_names:
            dict(model.named_parameters())[name].normal_(std=0.3)
    return save_checkpoint(path, model)


@pytest.fixture(scope="module")
def checkpoints(tiny_bert_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tasks")
    return {
        "scifact": make_checkpoint(str(root / "a"), tiny_bert_dir, "prefix", 1),
        "nq": make_checkpoint(str(root / "b"), tiny_bert_dir, "prefix", 2, prefix_mlp=True, prefix_hidden_size=16),
        "fiqa": make_checkpoint(str(root / "c"), tiny_bert_dir, "prompt", 3),
        "trec": make_checkpoint(str(root / "d"), tiny_bert_dir, "adapter", 4),
    }


@pytest.fixture(scope="module")
def encoder(checkpoints) -> TaskEncoder:
    return TaskEncoder.from_checkpoints(checkpoints)


def test_each_task_encodes_as_its_checkpoint_alone(checkpoints, encoder, tiny_bert_dir):
    tokenizer = load_tokenizer(tiny_bert_dir)
    alone = {}
    for task, path in checkpoints.items():
        model, _ = load_biencoder(path)
        alone[task] = [
            encode_texts(model, tokenizer, QUESTIONS, "question", max_length=32, batch_size=2),
            encode_texts(model, tokenizer, PASSAGES, "passage", max_length=32, batch_size=2),
        ]
    # interleave tasks and sides, twice over: a switch must leave nothing behind for the next call
    for _ in range(2):
        for task in checkpoints:
            q = encoder.encode(QUESTIONS, task=task, side="question", batch_size=2)  # (3, 32)
            p = encoder.encode(PASSAGES, task=task, side="passage", batch_size=3)  # (3, 32)
            assert q.shape == (3, 32) and p.shape == (3, 32)
            np.testing.assert_allclose(q, alone[task][0], atol=1e-6, rtol=0)
            np.testing.assert_allclose(p, alone[task][1], atol=1e-6, rtol=0)
    # the tasks really differ from each other (else the comparison above proves nothing)
    vectors = [encoder.encode(QUESTIONS, task=t) for t in checkpoints]
    assert all(np.abs(a - b).max() > 1e-3 for i, a in enumerate(vectors) for b in vectors[i + 1 :])


def _storage_ptrs(params) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in params}


def test_backbone_exists_once_however_many_tasks(checkpoints, tiny_bert_dir):
    one = TaskEncoder(tiny_bert_dir)
    backbone = one.library.backbone
    backbone_ptrs = _storage_ptrs(backbone.parameters())
    backbone_size = sum(p.numel() for p in backbone.parameters())
    one.register("scifact", checkpoints["scifact"])
    _, total_one = one.library.parameter_counts()
    for task, path in list(checkpoints.items())[1:]:
        one.register(task, path)
    tuned, total = one.library.parameter_counts()
    assert total == backbone_size + tuned and total - total_one < backbone_size
    for task in one.tasks:
        model = one.model(task)
        assert model.question_encoder.backbone is backbone and model.ctx_encoder.backbone is backbone
    # count storages independently of parameter_counts: the backbone's are there once, nothing copies them
    all_params = [p for task in one.tasks for p in one.model(task).parameters()]
    backbone_in_tasks = {p.untyped_storage().data_ptr() for p in all_params} & backbone_ptrs
    assert backbone_in_tasks == backbone_ptrs
    unique_elements = sum(p.numel() for p in {p.untyped_storage().data_ptr(): p for p in all_params}.values())
    assert unique_elements == total
    # switching tasks moves no backbone weight: same storages, same bits
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    for task in one.tasks:
        one.encode(QUESTIONS, task=task)
    assert _storage_ptrs(backbone.parameters()) == backbone_ptrs
    assert all(torch.equal(before[n], p) for n, p in backbone.named_parameters())


def test_unknown_task_names_the_registered_ones(encoder, checkpoints):
    with pytest.raises(
        UnknownTaskError,
        match=r"task 'scidocs' is not registered \(registered tasks: 'scifact', "
        r"'nq', 'fiqa', 'trec'\)",
    ):
        encoder.encode(QUESTIONS, task="scidocs")
    with pytest.raises(ValueError, match="side must be 'question' or 'passage'"):
        encoder.encode(QUESTIONS, task="nq", side="query")


def test_unregister_and_duplicate_and_bad_names(checkpoints, tiny_bert_dir):
    enc = TaskEncoder(tiny_bert_dir)
    enc.register("scifact", checkpoints["scifact"])
    with pytest.raises(TaskError, match="task 'scifact' is already registered"):
        enc.register("scifact", checkpoints["nq"])
    with pytest.raises(TaskError, match=r"task name 'a/b'"):
        enc.register("a/b", checkpoints["nq"])
    enc.unregister("scifact")
    assert enc.tasks == ()
    with pytest.raises(UnknownTaskError, match=r"registered tasks: none"):
        enc.encode(QUESTIONS, task="scifact")
    with pytest.raises(UnknownTaskError):
        enc.unregister("scifact")


def test_checkpoint_for_another_hidden_size_is_refused(tiny_bert_dir, tmp_path):
    other = make_checkpoint(str(tmp_path / "big"), "bert-tiny", "prefix", 5)  # hidden 128, not 32
    enc = TaskEncoder(tiny_bert_dir)
    with pytest.raises(CheckpointMismatchError) as err:
        enc.register("big", other)
    message = str(err.value)
    assert "hidden_size: checkpoint 128, backbone 32" in message and other in message
    assert "'bert-tiny'" in message and repr(tiny_bert_dir) in message
    assert enc.tasks == ()


def test_checkpoint_for_another_model_of_the_same_shape_is_refused(tiny_bert_dir, tmp_path):
    twin = str(tmp_path / "twin")
    # same shape as tiny_bert_dir, other weights: a prefix for it means nothing here
    tiny_bert_with_bert_tiny_vocab(seed=9).save_pretrained(twin)
    ckpt = make_checkpoint(str(tmp_path / "twin_ckpt"), twin, "prefix", 6)
    library = TaskLibrary(load_backbone(tiny_bert_dir), tiny_bert_dir)
    with pytest.raises(CheckpointMismatchError, match=f"trained on '{twin}', but the task library's backbone is"):
        library.add(
            "twin",
            BiEncoderConfig.from_flat(pretrained_model_cfg=twin, tuning="prefix", pre_seq_len=4),
            backbone_fingerprint(library.backbone),
            f"{ckpt}/model.safetensors",
            ckpt,
        )
    assert len(library) == 0


@pytest.mark.parametrize("tuning", ["finetune", "bitfit"])
def test_checkpoints_that_change_the_backbone_are_refused(tiny_bert_dir, tmp_path, tuning):
    ckpt = make_checkpoint(str(tmp_path / tuning), tiny_bert_dir, tuning, 7)
    enc = TaskEncoder(tiny_bert_dir)
    with pytest.raises(
        TaskError, match=f"is a {tuning} checkpoint: it changes the backbone's own weights.*--model_file"
    ):
        enc.register("ft", ckpt)
