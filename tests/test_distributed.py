"""The process-group / DDP seam (dpr.training.distributed), including a real 2-process Gloo run.

The 2-process run happens once per module (spawning costs seconds): each worker writes its
observations to a JSON file and the tests below compare them with a single process on the whole
batch, computed in the parent.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import spawn_workers
from torch import Tensor, nn

from dpr.losses import biencoder_nll, dot_scores
from dpr.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    configure_logging,
    gather_with_grad,
    global_biencoder_loss,
    init_distributed,
    unwrap,
    wrap_ddp,
)

WORLD_SIZE = 2
IN_DIM, EMB_DIM = 6, 4
# Global batch: 4 questions, 2 per rank; 9 passages, 4 on rank 0 and 5 on rank 1.
Q_SPLIT = (2, 2)
P_SPLIT = (4, 5)
GLOBAL_POSITIVES = (0, 2, 4, 7)  # columns in the global passage list
# gather_with_grad check: unequal row counts per rank.
GATHER_ROWS = (3, 1)
SPAWN_TIMEOUT_S = 120.0


class TinyBiEncoder(nn.Module):
    """Linear question and passage "encoders"; one forward per step, like the real biencoder."""

    def __init__(self) -> None:
        super().__init__()
        self.q_enc = nn.Linear(IN_DIM, EMB_DIM)
        self.p_enc = nn.Linear(IN_DIM, EMB_DIM)

    def forward(self, q_x: Tensor, p_x: Tensor) -> tuple[Tensor, Tensor]:
        return self.q_enc(q_x), self.p_enc(p_x)  # (B, EMB_DIM), (C, EMB_DIM)


def _model() -> TinyBiEncoder:
    # float64 so that the comparison tests the maths, not float32 summation order.
    torch.manual_seed(0)
    return TinyBiEncoder().double()


def _global_batch() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    q_x = torch.randn(sum(Q_SPLIT), IN_DIM, generator=gen, dtype=torch.float64)  # (4, IN_DIM)
    p_x = torch.randn(sum(P_SPLIT), IN_DIM, generator=gen, dtype=torch.float64)  # (9, IN_DIM)
    return q_x, p_x, torch.tensor(GLOBAL_POSITIVES)


def _local_batch(rank: int) -> tuple[Tensor, Tensor, Tensor]:
    q_x, p_x, positives = _global_batch()
    q_lo, p_lo = sum(Q_SPLIT[:rank]), sum(P_SPLIT[:rank])
    q_hi, p_hi = q_lo + Q_SPLIT[rank], p_lo + P_SPLIT[rank]
    # Positives index the LOCAL passages, as the data pipeline produces them.
    return q_x[q_lo:q_hi], p_x[p_lo:p_hi], positives[q_lo:q_hi] - p_lo


def _gather_rows(rank: int) -> Tensor:
    start = sum(GATHER_ROWS[:rank])
    n = GATHER_ROWS[rank]
    return torch.arange(start * 3, (start + n) * 3, dtype=torch.float64).view(n, 3)  # (n, 3)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)  # two processes on two cores
    ctx = init_distributed(no_cuda=True)
    finished = False
    try:
        # The DDP model lives only inside _observe: it holds the process group and must be gone
        # before the group is destroyed (see cleanup_distributed).
        result = _observe(ctx, rank)
        finished = True
    finally:
        cleanup_distributed(synchronize=finished)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _observe(ctx: DistributedContext, rank: int) -> dict[str, Any]:
    result: dict[str, Any] = {"rank": ctx.rank, "is_main": ctx.is_main, "device": str(ctx.device)}
    logging.getLogger().setLevel(logging.INFO)
    configure_logging(ctx)
    result["root_level"] = logging.getLogger().level

    # gather_with_grad with 3 rows on rank 0 and 1 row on rank 1.
    t = _gather_rows(rank).requires_grad_(True)  # (n_local, 3)
    gathered, offset = gather_with_grad(t, ctx)  # (4, 3)
    weights = torch.arange(gathered.numel(), dtype=torch.float64).view_as(gathered)
    (gathered * weights).sum().backward()
    result["gathered"] = gathered.detach().tolist()
    result["offset"] = offset
    result["local_grad"] = t.grad.tolist()
    result["expected_local_grad"] = weights[offset : offset + t.shape[0]].tolist()

    result["mean"] = all_reduce_mean(2.0 * rank + 1.0, ctx)
    result["sum"] = all_reduce_sum(2.0 * rank + 1.0, ctx)
    barrier(ctx)

    model = wrap_ddp(_model(), ctx)
    result["wrapped"] = type(model).__name__
    q_x, p_x, local_pos = _local_batch(rank)
    q, p = model(q_x, p_x)  # (2, EMB_DIM), (4 or 5, EMB_DIM)
    loss, correct = global_biencoder_loss(q, p, local_pos, ctx)
    loss.backward()
    result["loss"] = loss.item()
    result["correct"] = int(correct.item())
    params = unwrap(model).named_parameters()
    result["grads"] = {n: prm.grad.flatten().tolist() for n, prm in params}
    return result


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    spawn_workers(_worker, out_dir, WORLD_SIZE, SPAWN_TIMEOUT_S)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def _single_process_reference() -> tuple[float, int, dict[str, list[float]]]:
    model = _model()
    q_x, p_x, positives = _global_batch()
    q, p = model(q_x, p_x)  # (4, EMB_DIM), (9, EMB_DIM)
    loss, correct = biencoder_nll(dot_scores(q, p), positives)
    loss.backward()
    grads = {n: prm.grad.flatten().tolist() for n, prm in model.named_parameters()}
    return loss.item(), int(correct.item()), grads


def test_ddp_loss_and_gradients_equal_single_process(ddp_results: list[dict[str, Any]]) -> None:
    ref_loss, ref_correct, ref_grads = _single_process_reference()
    assert any(abs(g) > 1e-3 for gs in ref_grads.values() for g in gs)  # not trivially zero
    for res in ddp_results:
        assert res["wrapped"] == "DistributedDataParallel"
        assert res["loss"] == pytest.approx(ref_loss, abs=1e-6)
        assert res["correct"] == ref_correct
        assert res["grads"].keys() == ref_grads.keys()
        for name, ref in ref_grads.items():
            got = torch.tensor(res["grads"][name])
            assert torch.allclose(got, torch.tensor(ref), rtol=0.0, atol=1e-6), name


def test_gather_with_grad_unequal_sizes(ddp_results: list[dict[str, Any]]) -> None:
    expected = torch.cat([_gather_rows(r) for r in range(WORLD_SIZE)]).tolist()  # (4, 3)
    assert [res["offset"] for res in ddp_results] == [0, GATHER_ROWS[0]]
    for res in ddp_results:
        assert res["gathered"] == expected
        # Only this rank's rows carry a graph: its grad is exactly its slice of the weights.
        assert res["local_grad"] == res["expected_local_grad"]


def test_context_reductions_and_quiet_ranks(ddp_results: list[dict[str, Any]]) -> None:
    for res in ddp_results:
        assert res["device"] == "cpu"
        assert res["mean"] == pytest.approx(2.0)  # mean of 1 and 3
        assert res["sum"] == pytest.approx(4.0)
    assert [res["is_main"] for res in ddp_results] == [True, False]
    assert [res["root_level"] for res in ddp_results] == [logging.INFO, logging.WARNING]


@pytest.fixture
def single_ctx(monkeypatch: pytest.MonkeyPatch) -> DistributedContext:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return init_distributed(no_cuda=True)


def test_single_process_context_is_identity(single_ctx: DistributedContext) -> None:
    assert single_ctx == DistributedContext(0, 1, 0, torch.device("cpu"), True)
    assert not single_ctx.distributed
    t = torch.randn(3, 2)
    gathered, offset = gather_with_grad(t, single_ctx)
    assert gathered is t and offset == 0
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, single_ctx) is model and unwrap(model) is model
    assert all_reduce_mean(1.5, single_ctx) == 1.5
    barrier(single_ctx)


def test_single_process_global_loss_is_plain_nll(single_ctx: DistributedContext) -> None:
    gen = torch.Generator().manual_seed(2)
    q, p = torch.randn(3, 4, generator=gen), torch.randn(7, 4, generator=gen)
    idx = torch.tensor([0, 3, 5])
    loss, correct = global_biencoder_loss(q, p, idx, single_ctx)
    ref_loss, ref_correct = biencoder_nll(dot_scores(q, p), idx)
    assert torch.equal(loss, ref_loss) and torch.equal(correct, ref_correct)


def test_init_distributed_requires_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK"):
        init_distributed(no_cuda=True)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed(no_cuda=True)
