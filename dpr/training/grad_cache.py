"""GradCache (Gao et al. 2021, as in Tevatron): the full-batch in-batch NLL with activations for one chunk at a time.

1. Encode passages in chunks of ``p_chunk_size`` and questions in chunks of ``q_chunk_size`` without a graph,
   noting the RNG state before each chunk.
2. Make the full (B, D) / (C, D) representations leaves, compute the trainer's loss on them (scale, global
   gather under DDP, :func:`dpr.training.distributed.global_biencoder_loss`) and back-propagate it to them.
3. Encode each chunk again with a graph under its noted RNG state (the same dropout masks) and back-propagate
   the cached representation gradient through it: ``(chunk_reps * grad).sum().backward()``.

The parameter gradients equal those of the plain step (exactly, with dropout off; with dropout on, the masks
differ unless a chunk covers its whole side, as chunking draws them in another order).

DDP: the chunks run on the unwrapped model and the gradients of this micro-batch are averaged over ranks once,
at the end (:func:`dpr.training.distributed.all_reduce_gradients`). Running them through the DDP wrapper with
``no_sync`` for all but the last chunk cannot work with :func:`~dpr.training.distributed.wrap_ddp`: a last
chunk of questions leaves the passage encoder's parameters unused, which DDP without
``find_unused_parameters`` refuses, and ``BiEncoder.forward`` always encodes questions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from dpr.data.batching import BiEncoderBatch
from dpr.device import MixedPrecision
from dpr.training.distributed import DistributedContext, all_reduce_gradients, global_biencoder_loss, unwrap

logger = logging.getLogger(__name__)

__all__ = ["grad_cache_step"]

Encode = Callable[[Tensor, Tensor, Tensor], Tensor]  # (n, T) ids, mask, segments -> (n, D)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replayed_rng(state: tuple[Tensor, Tensor | None], device: torch.device) -> Iterator[None]:
    """Run under a noted RNG state; the RNG outside continues as if nothing had run."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


def _chunks(tensors: tuple[Tensor, ...], size: int) -> list[tuple[Tensor, ...]]:
    """Row slices of at most ``size`` rows of each of ``tensors`` (all (n, ...)), in order."""
    n = tensors[0].shape[0]
    return [tuple(t[start : start + size] for t in tensors) for start in range(0, n, size)]


def _encode_without_graph(
    encode: Encode, chunks: list[tuple[Tensor, ...]], amp: MixedPrecision, device: torch.device
) -> tuple[Tensor, list[tuple[Tensor, Tensor | None]]]:
    """Step 1 for one side: its (n, D) float representations and the RNG state before each chunk."""
    states, reps = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            with amp.autocast:
                reps.append(encode(*chunk).float())  # (chunk, D)
    return torch.cat(reps), states  # (n, D)


def _backward_chunks(
    encode: Encode,
    chunks: list[tuple[Tensor, ...]],
    states: list[tuple[Tensor, Tensor | None]],
    grad: Tensor,
    amp: MixedPrecision,
    device: torch.device,
) -> None:
    """Step 3 for one side: re-encode each chunk with a graph, under its RNG state, and push ``grad`` (n, D)."""
    start = 0
    for chunk, state in zip(chunks, states):
        with _replayed_rng(state, device):
            with amp.autocast:
                reps = encode(*chunk)  # (chunk, D)
            piece = grad[start : start + reps.shape[0]]  # (chunk, D)
            torch.autograd.backward(reps, grad_tensors=piece.to(reps.dtype))
        start += reps.shape[0]


def grad_cache_step(
    model: nn.Module,
    batch: BiEncoderBatch,
    *,
    scale: float,
    ctx: DistributedContext,
    amp: MixedPrecision,
    accumulation: int,
    q_chunk_size: int,
    p_chunk_size: int,
    passages: Tensor | None = None,
) -> float:
    """One micro-batch of the trainer's loss with GradCache; adds its gradients to the parameters' ``.grad``.

    Args:
        model: the BiEncoder, bare or in its DDP wrapper (the chunks run on the bare model either way).
        batch: the micro-batch (B questions, C passages).
        scale: the loss scale (scores x scale).
        ctx: the distributed context; under DDP the gradients are averaged over ranks here.
        amp: autocast and the loss backward (fp16 loss scaling is refused by TrainConfig: untested here).
        accumulation: --gradient_accumulation_steps (the loss back-propagated is ``loss / accumulation``).
        q_chunk_size, p_chunk_size: rows encoded at a time on each side.
        passages: (C, D) fixed passage vectors (question-side runs); then only the questions are encoded.

    Returns:
        The loss value (the global mean NLL, as the plain step logs).
    """
    bare, device = unwrap(model), ctx.device
    trainable = [p for p in bare.parameters() if p.requires_grad]
    # This micro-batch's gradients alone are averaged over ranks; earlier micro-batches' are added back after.
    earlier = [p.grad for p in trainable]
    if ctx.distributed:
        for p in trainable:
            p.grad = None
    q_chunks = _chunks(batch.question_inputs(device), q_chunk_size)
    # Passages first: BiEncoder.forward's order, so one chunk per side draws the plain step's dropout masks.
    if passages is None:
        p_chunks = _chunks(batch.passage_inputs(device), p_chunk_size)
        c, p_states = _encode_without_graph(bare.encode_passage, p_chunks, amp, device)  # (C, D)
        c.requires_grad_(True)
    else:
        c = passages.float()  # (C, D), no gradient
    q, q_states = _encode_without_graph(bare.encode_query, q_chunks, amp, device)  # (B, D)
    q.requires_grad_(True)

    loss, _ = global_biencoder_loss(q * scale, c, batch.positive_idx.to(device), ctx)  # ()
    amp.backward(loss / accumulation)  # fills q.grad (and c.grad), loss-scaled under fp16

    if passages is None:
        _backward_chunks(bare.encode_passage, p_chunks, p_states, c.grad, amp, device)
    _backward_chunks(bare.encode_query, q_chunks, q_states, q.grad, amp, device)
    if ctx.distributed:
        all_reduce_gradients(trainable, ctx)
        for p, old in zip(trainable, earlier):
            if old is not None:
                p.grad.add_(old)
    return float(loss.detach())
