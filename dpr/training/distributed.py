"""The process-group / DistributedDataParallel seam of training.

Everything that knows about ranks, process groups and collectives lives here, so models stay
device-agnostic and the trainer reads as plain PyTorch. Device choice, autocast and loss scaling are
:mod:`dpr.device` (shared with inference).

Launch: ``torchrun --nproc_per_node N train_dense_encoder.py ...`` (env ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); the legacy ``torch.distributed.launch`` and its
``--local_rank`` argument still work. Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) everything
here is a no-op around a single process.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dpr.device import select_device
from dpr.losses import biencoder_nll, dot_scores

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "init_distributed",
    "cleanup_distributed",
    "gather_with_grad",
    "global_biencoder_loss",
    "wrap_ddp",
    "unwrap",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_reduce_gradients",
    "barrier",
    "configure_logging",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs. Built once by :func:`init_distributed`, passed by value.

    Attributes:
        rank: global rank, 0 in a single process.
        world_size: number of processes, 1 in a single process.
        local_rank: rank on this node (selects the CUDA device); 0 in a single process unless
            ``--local_rank`` named a GPU.
        device: the device this process computes on.
        is_main: True on the process that logs, validates and writes checkpoints (rank 0).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        """True when several processes take part (collectives are real)."""
        return self.world_size > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer; found {value!r}") from None


def init_distributed(no_cuda: bool = False, local_rank: int = -1, precision: str = "fp32") -> DistributedContext:
    """Read the launcher's environment, pick the device (:func:`dpr.device.select_device`) and join the group.

    Args:
        no_cuda: stay on CPU even when CUDA is available (the ``--no_cuda`` flag).
        local_rank: the legacy ``--local_rank`` argument; ``LOCAL_RANK`` from the
            environment (torchrun) wins when both are given. -1 means "not given".
        precision: checked against the device here, so fp16 without CUDA fails before any work.

    Returns:
        The context. With ``WORLD_SIZE`` unset or 1 no process group is created; otherwise the
        group uses NCCL on CUDA and Gloo on CPU, and the CUDA device is set to ``local_rank``.
    """
    world_size = _env_int("WORLD_SIZE") or 1
    env_local_rank = _env_int("LOCAL_RANK")
    if env_local_rank is not None:
        local_rank = env_local_rank

    if world_size == 1:
        local_rank = max(local_rank, 0)
        device = select_device(no_cuda, precision, index=local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        logger.info("single process on %s", device)
        return DistributedContext(rank=0, world_size=1, local_rank=local_rank, device=device, is_main=True)

    rank = _env_int("RANK")
    if rank is None:
        raise ValueError(f"WORLD_SIZE={world_size} but RANK is not set; launch with torchrun")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun")
    device = select_device(no_cuda, precision, index=max(local_rank, 0))
    if device.type == "cuda":
        if local_rank < 0:
            raise ValueError("multi-process CUDA run without LOCAL_RANK or --local_rank: cannot choose a GPU")
        # Set before init so NCCL binds this process to its own GPU, not all to GPU 0.
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        # Local rank only selects a GPU; on CPU any value will do, keep it meaningful for logs.
        local_rank = max(local_rank, 0)
        backend = "gloo"

    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise RuntimeError(
            f"a process group already exists with rank {dist.get_rank()}/{dist.get_world_size()}, "
            f"but the environment says {rank}/{world_size}"
        )
    logger.info("rank %d/%d (local %d) on %s, backend %s", rank, world_size, local_rank, device, backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, is_main=rank == 0)


def cleanup_distributed(synchronize: bool = True) -> None:
    """Leave the process group, if one was joined; safe to call in a single process.

    With ``synchronize`` (a normal end) the ranks first meet at a barrier, so none tears its gloo
    connections down while a peer still works on the last collective: the peer's gloo worker thread then
    dies with SIGABRT ("terminate called without an active exception"). After an error, pass False: a
    failed peer may never reach the barrier. Release what holds the group (a DDP wrapper, pending work)
    before calling; the garbage collection here frees what only reference cycles keep alive, so the
    group's worker threads are joined now rather than during interpreter shutdown.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()


def _gather_sizes(n_local: int, ctx: DistributedContext, device: torch.device) -> list[int]:
    size = torch.tensor([n_local], dtype=torch.long, device=device)  # (1,)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]  # world_size x (1,)
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def gather_with_grad(t: Tensor, ctx: DistributedContext) -> tuple[Tensor, int]:
    """Concatenate every rank's rows, keeping this rank's rows in the autograd graph.

    Ranks may hold different numbers of rows (the last batch of an epoch, different numbers of
    hard negatives); all other dimensions and the dtype must agree.

    Args:
        t: this rank's rows, shape (n_local, ...).
        ctx: the distributed context.

    Returns:
        ``(gathered, offset)``: ``gathered`` has shape (n_total, ...) in rank order; its rows
        ``offset : offset + n_local`` are ``t`` itself (gradients flow back to this rank's
        encoder), all other rows are constants. With one process: ``(t, 0)``.
    """
    if not ctx.distributed:
        return t, 0
    sizes = _gather_sizes(t.shape[0], ctx, t.device)
    max_n = max(sizes)
    # all_gather needs equal shapes: pad to the largest rank, then trim each piece.
    padded = t.detach().new_zeros((max_n, *t.shape[1:]))  # (max_n, ...)
    padded[: t.shape[0]] = t.detach()
    pieces = [torch.empty_like(padded) for _ in range(ctx.world_size)]  # world_size x (max_n, ...)
    dist.all_gather(pieces, padded.contiguous())
    trimmed = [piece[:n] for piece, n in zip(pieces, sizes)]  # rank r: (sizes[r], ...)
    # all_gather returns constants; put the original tensor back so its graph survives.
    trimmed[ctx.rank] = t
    offset = sum(sizes[: ctx.rank])
    return torch.cat(trimmed, dim=0), offset  # (n_total, ...)


def global_biencoder_loss(q: Tensor, p: Tensor, positive_idx: Tensor, ctx: DistributedContext) -> tuple[Tensor, Tensor]:
    """In-batch NLL over the questions and passages of ALL ranks.

    Every question is scored against every passage of the global batch, so each rank's
    passages are in-batch negatives for every other rank's questions.

    Args:
        q: this rank's question embeddings, shape (B_local, D).
        p: this rank's passage embeddings, shape (C_local, D); C_local may differ across ranks.
        positive_idx: positive column of each local question, indexing the LOCAL passages,
            shape (B_local,), dtype long.
        ctx: the distributed context.

    Returns:
        ``(loss, correct)``: ``loss`` (shape ()) has the VALUE of the mean NLL over all
        B_total questions (identical on every rank, log it as is); ``correct`` (shape (), long)
        counts the B_total questions whose top-1 passage is their positive (do not sum it
        across ranks again).

    Gradient scaling: the global loss L depends on every rank's rows, but on rank r only the
    local rows carry a graph, so ``backward`` gives rank r the partial gradient g_r and
    ``sum_r g_r`` is the full dL/dtheta. DDP all-reduces by AVERAGING, which would yield
    ``dL/dtheta / world_size``. The returned loss therefore back-propagates ``world_size * L``
    while its value stays exactly L (``L.detach() + (wL - wL.detach())``): after DDP's average
    the parameter gradients equal those of one process on the whole global batch, and learning
    rates carry over between 1 GPU and N GPUs with the same global batch. This assumes DDP's
    default averaging; with ``world_size == 1`` the loss is plain ``biencoder_nll``.
    """
    if not ctx.distributed:
        return biencoder_nll(dot_scores(q, p), positive_idx)

    global_q, _ = gather_with_grad(q, ctx)  # (B_total, D)
    global_p, p_offset = gather_with_grad(p, ctx)  # (C_total, D)
    # Shift before gathering: local column j of this rank is global column p_offset + j.
    global_idx, _ = gather_with_grad(positive_idx + p_offset, ctx)  # (B_total,)
    loss, correct = biencoder_nll(dot_scores(global_q, global_p), global_idx)  # (), ()

    scaled = loss * ctx.world_size  # ()
    # Value L exactly (x - x == 0 in floating point), gradient world_size * dL.
    return loss.detach() + (scaled - scaled.detach()), correct


def wrap_ddp(model: nn.Module, ctx: DistributedContext, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap in DistributedDataParallel when several processes run; else return ``model``.

    The model must already be on ``ctx.device``. Call the wrapper's ``forward`` (not
    ``unwrap(model).encode_*``) once per backward, or DDP will not synchronise gradients.
    Frozen parameters (prefix / BitFit / adapter modes) are skipped by DDP automatically.
    """
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        return DistributedDataParallel(
            model,
            device_ids=[ctx.device.index],
            output_device=ctx.device.index,
            find_unused_parameters=find_unused_parameters,
        )
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP wrapper (for saving, evaluation); ``model`` otherwise."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _all_reduce_sum_tensor(value: float, ctx: DistributedContext) -> Tensor:
    # float64 so that summing step counts or losses over ranks does not round; on the compute
    # device because NCCL only reduces CUDA tensors.
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)  # (1,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_sum(value: float, ctx: DistributedContext) -> float:
    """Sum of ``value`` over ranks (e.g. counts in validation); ``value`` in one process."""
    if not ctx.distributed:
        return float(value)
    return float(_all_reduce_sum_tensor(value, ctx).item())


def all_reduce_mean(value: float, ctx: DistributedContext) -> float:
    """Mean of ``value`` over ranks (e.g. a per-rank loss for logging); ``value`` in one process."""
    if not ctx.distributed:
        return float(value)
    return float(_all_reduce_sum_tensor(value, ctx).item()) / ctx.world_size


def all_reduce_gradients(params: list[Tensor], ctx: DistributedContext) -> None:
    """Average ``params``' gradients over ranks in one collective, as DDP would (a missing one counts as 0).

    For steps that run the bare model instead of the DDP wrapper (GradCache); no-op in one process.
    """
    if not ctx.distributed or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    start = 0
    for p, g in zip(params, grads):
        p.grad = flat[start : start + g.numel()].view_as(g).clone()
        start += g.numel()


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (e.g. before rank 0 reads what all ranks wrote); no-op in one process."""
    if not ctx.distributed:
        return
    if ctx.device.type == "cuda":
        # Naming the device stops NCCL from guessing (and warning about) the GPU to use.
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def configure_logging(ctx: DistributedContext) -> None:
    """Quiet ranks above 0: root logger level WARNING there. Handlers are the CLIs' business."""
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)
