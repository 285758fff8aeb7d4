"""ColBERT training: pairwise softmax loss over (query, positive, negative) triples, optional in-batch negatives.

Every optimizer step takes ``bsize`` triples, cut into ``accum`` micro-batches (ColBERT v1's meaning of
the two flags). The triples are read as a stream of per-epoch permutations seeded by ``(seed, epoch)``
and dropout is re-seeded from ``(seed, step)``, so a run resumed from a checkpoint continues exactly as
one that never stopped. Gradients are clipped once per optimizer step, after unscaling.

The optimizer has two parameter groups: everything the tuning mode trains at ``--lr``, and the linear
projection at ``--linear_lr`` (see ``colbert.train_options.LINEAR_LR_CAP`` for why they differ).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from colbert.checkpoint import checkpoint_path, prune_checkpoints, save_colbert
from colbert.data import Triple
from colbert.groups import Group, Row
from colbert.losses import group_loss, in_batch_loss, pairwise_softmax_loss
from colbert.model import ColBERT
from colbert.scoring import maxsim, maxsim_all
from colbert.tokenization import ColBERTTokenizer
from colbert.train_options import ColBERTTrainConfig
from dpr.data.readers import Passage
from dpr.device import MixedPrecision

logger = logging.getLogger(__name__)


def batch_indices(step: int, bsize: int, count: int, seed: int) -> list[int]:
    """The triples of optimizer step ``step``: positions ``[step*bsize, (step+1)*bsize)`` of the stream
    ``perm(seed, 0) + perm(seed, 1) + ...`` of per-epoch permutations of ``range(count)``."""
    indices, position = [], step * bsize
    while len(indices) < bsize:
        epoch, offset = divmod(position, count)
        perm = np.random.default_rng([seed, epoch]).permutation(count)
        take = min(bsize - len(indices), count - offset)
        indices.extend(perm[offset : offset + take].tolist())
        position += take
    return indices


def batch_loss(
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    rows: Sequence[Row],
    *,
    in_batch_negatives: bool = False,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The training loss ``()`` of triples or groups (no backward; the caller sets modes and autocast)."""
    if all(isinstance(row, Group) for row in rows):
        return _group_batch_loss(model, tokenizer, rows, in_batch_negatives, device)  # type: ignore[arg-type]
    if not all(isinstance(row, Triple) for row in rows):
        raise TypeError("a batch holds triples or groups, not both")
    return _triples_batch_loss(model, tokenizer, rows, in_batch_negatives, device)  # type: ignore[arg-type]


def _encode(
    model: ColBERT, tokenizer: ColBERTTokenizer, queries: list[str], docs: list[Passage], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query vectors ``(B, Lq, dim)``, document vectors ``(C, Ld, dim)`` in fp32, and the ``(C, Ld)`` score mask."""
    q_tokens, d_tokens = tokenizer.queries(queries), tokenizer.docs(docs)  # (B, Lq), (C, Ld) each
    q, d = model(
        q_tokens["input_ids"].to(device),
        q_tokens["attention_mask"].to(device),
        d_tokens["input_ids"].to(device),
        d_tokens["attention_mask"].to(device),
    )  # (B, Lq, dim), (C, Ld, dim)
    return q.float(), d.float(), d_tokens["score_mask"].to(device)  # MaxSim in fp32


def _group_batch_loss(
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    groups: Sequence[Group],
    in_batch_negatives: bool,
    device: torch.device | str,
) -> torch.Tensor:
    docs = [p for g in groups for p in g.passages]
    q, d, mask = _encode(model, tokenizer, [g.query for g in groups], docs, device)  # (B, Lq, dim), (C, Ld, dim)
    sizes = torch.tensor([len(g.passages) for g in groups], device=q.device)  # (B,)
    similarity = model.config.similarity
    if in_batch_negatives:
        return group_loss(maxsim_all(q, d, mask, similarity), sizes, True)  # (B, C) -> ()
    owner = torch.repeat_interleave(torch.arange(len(groups), device=q.device), sizes)  # (C,)
    own = maxsim(q[owner], d, mask, similarity)  # (C,): each passage against its own query only
    scores = q.new_full((len(groups), len(docs)), float("-inf"))  # (B, C)
    scores[owner, torch.arange(len(docs), device=q.device)] = own
    return group_loss(scores, sizes)


def _triples_batch_loss(
    model: ColBERT,
    tokenizer: ColBERTTokenizer,
    triples: Sequence[Triple],
    in_batch_negatives: bool,
    device: torch.device | str,
) -> torch.Tensor:
    """ColBERT v1's loss: each query's positive against its negative (or every passage, in-batch)."""
    docs = [t.positive for t in triples] + [t.negative for t in triples]
    q, d, mask = _encode(model, tokenizer, [t.query for t in triples], docs, device)  # (B, Lq, dim), (2B, Ld, dim)
    if in_batch_negatives:
        return in_batch_loss(maxsim_all(q, d, mask, model.config.similarity))  # (B, 2B) -> ()
    batch = len(triples)
    positive = maxsim(q, d[:batch], mask[:batch], model.config.similarity)  # (B,)
    negative = maxsim(q, d[batch:], mask[batch:], model.config.similarity)  # (B,)
    return pairwise_softmax_loss(positive, negative)


def param_groups(model: ColBERT, lr: float, linear_lr: float) -> list[dict[str, Any]]:
    """AdamW groups ``[tuned parameters but the projection at lr, the projection at linear_lr]``."""
    projection = [p for p in model.linear.parameters() if p.requires_grad]
    ids = {id(p) for p in projection}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": rest, "lr": lr}, {"params": projection, "lr": linear_lr}]


def _two_group_state(state: dict[str, Any], optimizer: torch.optim.Optimizer, model: ColBERT) -> dict[str, Any]:
    """An optimizer state saved with one group (before ``--linear_lr``) laid out as ``optimizer``'s groups.

    The old group held the tuned parameters in ``model.parameters()`` order; the per-parameter moments
    are moved to each parameter's index in the new groups. Hyperparameters come from ``optimizer``.
    """
    old_order = [p for p in model.parameters() if p.requires_grad]
    new_index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    (old_group,) = state["param_groups"]
    moved = {new_index[id(old_order[i])]: value for i, value in state["state"].items()}
    groups, start = [], 0
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        groups.append({**settings, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    if len(old_group["params"]) != start:
        raise ValueError(f"the stored optimizer state has {len(old_group['params'])} parameters, the model {start}")
    return {"state": moved, "param_groups": groups}


def _warmup_factor(warmup: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup over ``warmup`` steps, then constant (ColBERT v1 keeps the rate fixed)."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / (warmup + 1)) if warmup else 1.0

    return factor


class ColBERTTrainer:
    """Trains a ColBERT on triples; ``run`` returns the path of the last checkpoint written."""

    def __init__(
        self,
        cfg: ColBERTTrainConfig,
        model: ColBERT,
        tokenizer: ColBERTTokenizer,
        triples: Sequence[Row],
        device: torch.device,
        start_step: int = 0,
        training_state: dict[str, Any] | None = None,
    ) -> None:
        if not triples:
            raise ValueError("no training triples")
        self.cfg, self.tokenizer, self.triples, self.device = cfg, tokenizer, triples, device
        self.model = model.to(device)
        groups = param_groups(model, cfg.lr, cfg.linear_lr)
        self.optimizer = torch.optim.AdamW(groups, eps=1e-8, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_factor(cfg.warmup))
        self.amp = MixedPrecision(device, cfg.precision)
        if training_state is not None:
            self._restore(training_state)
        self.step = start_step
        self.losses: deque[float] = deque(maxlen=cfg.log_every)

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's training state; the learning rates are this run's (the same on a
        plain resume), so a state saved with one group (before --linear_lr) continues with two."""
        optimizer = state["optimizer"]
        if len(optimizer["param_groups"]) == 1:
            logger.warning("the optimizer state has one learning rate: the projection continues at --linear_lr")
            optimizer = _two_group_state(optimizer, self.optimizer, self.model)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.amp.load_state_dict(state.get("scaler"))
        self.scheduler.base_lrs = [self.cfg.lr, self.cfg.linear_lr]
        factor = _warmup_factor(self.cfg.warmup)(self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group.update(initial_lr=base, lr=base * factor)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def train_step(self) -> float:
        """One optimizer step over ``bsize`` triples in ``accum`` micro-batches; returns the mean loss."""
        cfg = self.cfg
        self.model.train()
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, self.step]).generate_state(1)[0]))  # dropout
        chosen = [self.triples[i] for i in batch_indices(self.step, cfg.bsize, len(self.triples), cfg.seed)]
        part = cfg.bsize // cfg.accum
        total = 0.0
        for start in range(0, cfg.bsize, part):
            with self.amp.autocast:
                loss = batch_loss(
                    self.model,
                    self.tokenizer,
                    chosen[start : start + part],
                    in_batch_negatives=cfg.in_batch_negatives,
                    device=self.device,
                )
            self.amp.backward(loss / cfg.accum)
            total += float(loss.detach()) / cfg.accum
        self.amp.step(self.optimizer, [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    def save(self) -> str:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.amp.state_dict(),
        }
        path = save_colbert(
            checkpoint_path(self.cfg.output_dir, self.step),
            self.model,
            step=self.step,
            training=self.cfg.to_dict(),
            state=state,
        )
        prune_checkpoints(self.cfg.output_dir, self.cfg.keep_checkpoints)
        return path

    def run(self, progress: bool = True) -> str:
        """Train up to ``maxsteps`` optimizer steps, saving every ``save_every`` and at the end."""
        cfg = self.cfg
        last = None
        bar = tqdm(
            total=cfg.maxsteps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not progress,
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        started, first = time.perf_counter(), self.step
        while self.step < cfg.maxsteps:
            loss = self.train_step()
            self.losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if self.step % cfg.log_every == 0 or self.step == cfg.maxsteps:
                rate = (self.step - first) * cfg.bsize / (time.perf_counter() - started)
                logger.info(
                    "step %d/%d: loss %.4f (mean of last %d %.4f), lr %.3g (projection %.3g), %.1f triples/s",
                    self.step,
                    cfg.maxsteps,
                    loss,
                    len(self.losses),
                    sum(self.losses) / len(self.losses),
                    *self.scheduler.get_last_lr(),
                    rate,
                )
            if self.step % cfg.save_every == 0 or self.step == cfg.maxsteps:
                last = self.save()
        bar.close()
        return last if last is not None else self.save()
