"""ColBERT training in 2 processes (gloo, DDP) equals one process on the global batch.

Spawned once per module: each worker trains one step of each case and writes its gradients, loss and
parameters to a JSON file; the tests compare them with one process on the whole batch, computed here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import spawn_workers

from colbert.data import Triple
from colbert.groups import Group
from colbert.model import build_colbert
from colbert.options import ColBERTConfig
from colbert.tokenization import ColBERTTokenizer
from colbert.train_options import ColBERTTrainConfig
from colbert.training import ColBERTTrainer
from dpr.configs import BackboneConfig, PrefixConfig
from dpr.data.readers import Passage
from dpr.models.hub import load_tokenizer
from dpr.training.distributed import DistributedContext, barrier, cleanup_distributed, init_distributed

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

WORLD_SIZE = 2
WORDS = ["river", "castle", "violin", "glacier", "copper", "tiger", "harbor", "meteor", "orchid", "saddle"]
# name -> (rows are groups, in-batch negatives, accum)
CASES = {
    "triples": (False, False, 1),
    "triples_in_batch": (False, True, 1),
    "triples_in_batch_accum": (False, True, 2),
    "groups_in_batch": (True, True, 1),
}


def _doc(i: int) -> Passage:
    # Lengths differ, so every process pads its documents to its own longest one.
    return Passage(" ".join(WORDS[(i * k + 1) % 10] for k in range(2 + i % 5)) + f" {i}")


def _rows(groups: bool) -> list[Triple] | list[Group]:
    if groups:  # 1 or 2 negatives: the processes hold different numbers of documents
        return [
            Group(f"query {WORDS[q]}", _doc(q), tuple(_doc(20 + 3 * q + k) for k in range(1 + q % 2))) for q in range(8)
        ]
    return [Triple(f"query {WORDS[q]} {q}", _doc(q), _doc(40 + q)) for q in range(8)]


def _trainer(model_dir: str, case: str, out: str, ctx: DistributedContext | None = None) -> ColBERTTrainer:
    groups, in_batch, accum = CASES[case]
    torch.manual_seed(0)
    config = ColBERTConfig(
        backbone=BackboneConfig(model_dir, dropout=0.0, attention_dropout=0.0),
        tuning=PrefixConfig(pre_seq_len=4, prefix_dropout=0.0),
        query_maxlen=8,
        doc_maxlen=16,
        dim=16,
    )
    model = build_colbert(config)
    tok = ColBERTTokenizer.from_config(load_tokenizer(model_dir), config)
    cfg = ColBERTTrainConfig(
        **({"dpr_train_file": ("unused.json",), "group_negatives": True} if groups else {"triples": "unused.tsv"}),
        in_batch_negatives=in_batch,
        output_dir=out,
        bsize=4,
        accum=accum,
        lr=1e-2,
        linear_lr=1e-3,
        seed=3,
    )
    return ColBERTTrainer(cfg, model, tok, _rows(groups), torch.device("cpu"), ctx=ctx)


def _one_step(trainer: ColBERTTrainer) -> dict[str, Any]:
    """The gradients and loss of step 0 (left for the optimizer), then the parameters after that step."""
    loss = trainer.accumulate()
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    grads = {n: p.grad.flatten().tolist() for n, p in named}
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.train_step()
    return {"loss": loss, "grads": grads, "params": {n: p.detach().flatten().tolist() for n, p in named}}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)  # two processes on two cores
    model_dir = Path(out_dir, "model_dir.txt").read_text()
    ctx = init_distributed(no_cuda=True)
    finished = False
    try:
        result: dict[str, Any] = {name: _one_step(_trainer(model_dir, name, out_dir, ctx)) for name in CASES}
        trainer = _trainer(model_dir, "triples", str(Path(out_dir, "run")), ctx)
        if rank == 1:  # saves first, while rank 0 waits: nothing may appear
            result["rank1_wrote"] = os.path.exists(trainer.save())
        barrier(ctx)
        if rank == 0:
            result["rank0_wrote"] = os.path.exists(trainer.save())
        del trainer
        finished = True
    finally:
        cleanup_distributed(synchronize=finished)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: str) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("colbert-ddp")
    (out_dir / "model_dir.txt").write_text(tiny_bert_dir)
    spawn_workers(_worker, out_dir, WORLD_SIZE, timeout_s=600.0)  # a shared, loaded machine is slow
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_gradients_and_step_of_one_on_the_global_batch(results, tiny_bert_dir, tmp_path, case):
    reference = _one_step(_trainer(tiny_bert_dir, case, str(tmp_path)))
    assert any(abs(g) > 1e-4 for gs in reference["grads"].values() for g in gs)  # not trivially zero
    for res in results:
        got = res[case]
        assert got["loss"] == pytest.approx(reference["loss"], abs=1e-5)
        assert got["grads"].keys() == reference["grads"].keys()
        for name, ref in reference["grads"].items():
            assert torch.allclose(torch.tensor(got["grads"][name]), torch.tensor(ref), rtol=1e-4, atol=1e-5), name
            params = torch.tensor(got["params"][name])
            assert torch.allclose(params, torch.tensor(reference["params"][name]), atol=1e-5), name


def test_only_rank_0_writes_checkpoints(results):
    assert results[1]["rank1_wrote"] is False and results[0]["rank0_wrote"] is True
