"""ColBERT training on triples (ColBERT v1) or groups of negatives, optional in-batch negatives.

Every optimizer step takes ``bsize`` rows (triples or groups), cut into ``accum`` micro-batches (ColBERT
v1's meaning of the two flags); under torchrun each process takes its ``bsize / world_size`` slice
(``colbert.batch_loss`` shares the in-batch negatives) and only rank 0 validates and writes checkpoints.
The rows are read as a stream of per-epoch permutations seeded by ``(seed, epoch)`` and dropout is
re-seeded from ``(seed, step)``, so a run resumed from a checkpoint continues exactly as one that never
stopped. Gradients are clipped once per optimizer step, after unscaling.

With a dev set (``--val_every``) a new run is validated before its first step, then every ``val_every``
steps and at the end; each validation writes a checkpoint, a line of ``validation_log.jsonl`` and, when it
is the best so far, ``best_checkpoint.json`` (``dpr.training.run_dir``: the best is never pruned).

The optimizer has two parameter groups: everything the tuning mode trains at ``--lr``, and the linear
projection at ``--linear_lr`` (see ``colbert.train_options.LINEAR_LR_CAP`` for why they differ).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from colbert.batch_loss import batch_loss
from colbert.checkpoint import checkpoint_path, prune_checkpoints, save_colbert
from colbert.groups import Pool, Row
from colbert.model import ColBERT
from colbert.tokenization import ColBERTTokenizer
from colbert.train_options import ColBERTTrainConfig
from colbert.validation import validate_retrieval
from dpr.configs import ConfigError
from dpr.device import MixedPrecision
from dpr.models.encoder import parameter_counts
from dpr.training.dashboard import TrainingLogger, resolve_tensorboard
from dpr.training.distributed import DistributedContext, all_reduce_mean, barrier, wrap_ddp
from dpr.training.model_card import CardFacts, best_so_far, data_line, render_model_card
from dpr.training.run_dir import append_history, best_record, read_best, update_best
from dpr.training.validation import DevRetrieval

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


def lr_factor(warmup: int, maxsteps: int, schedule: str) -> Callable[[int], float]:
    """LambdaLR factor of step ``step``: linear warmup over ``warmup`` steps, then constant (ColBERT v1) or a
    linear decay that reaches 0 at ``maxsteps`` (``"linear"``: ColBERTv2's and DPR's schedule)."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        return max(0.0, (maxsteps - step) / max(1, maxsteps - warmup))

    return factor


class ColBERTTrainer:
    """Trains a ColBERT on triples or groups; ``run`` returns the path of the last checkpoint written.

    ``ctx`` (default: one process): with several processes the model is wrapped in DDP, each process
    takes its slice of every micro-batch (``micro_batches``), and only rank 0 validates and writes
    checkpoints. ``dev`` (rank 0's): validate every ``--val_every`` steps and keep the best checkpoint.
    """

    def __init__(
        self,
        cfg: ColBERTTrainConfig,
        model: ColBERT,
        tokenizer: ColBERTTokenizer,
        triples: Sequence[Row | Pool],
        device: torch.device,
        start_step: int = 0,
        training_state: dict[str, Any] | None = None,
        *,
        ctx: DistributedContext | None = None,
        dev: DevRetrieval | None = None,
    ) -> None:
        if not triples:
            raise ValueError("no training triples")
        self.ctx = ctx or DistributedContext(rank=0, world_size=1, local_rank=0, device=device, is_main=True)
        if cfg.bsize % (self.ctx.world_size * cfg.accum):
            raise ConfigError(
                f"--bsize {cfg.bsize} must be divisible by {self.ctx.world_size} processes x --accum {cfg.accum} "
                f"(every process takes an equal slice of each batch, in --accum parts)"
            )
        if cfg.val_every and self.ctx.is_main and dev is None:
            raise ValueError("--val_every: rank 0 needs the dev set (colbert.validation.read_dev)")
        self.cfg, self.tokenizer, self.triples, self.device, self.dev = cfg, tokenizer, triples, device, dev
        self.model = model.to(device)
        self.wrapped = wrap_ddp(self.model, self.ctx)  # the module to call forward on
        groups = param_groups(model, cfg.lr, cfg.linear_lr)
        self.optimizer = torch.optim.AdamW(groups, eps=1e-8, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg.warmup, cfg.maxsteps, cfg.lr_schedule)
        )
        self.amp = MixedPrecision(device, cfg.precision)
        if training_state is not None:
            self._restore(training_state)
        self.step = start_step
        self.losses: deque[float] = deque(maxlen=cfg.log_every)
        self.dashboard = TrainingLogger.inactive(cfg.output_dir)  # run() opens the real one

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
        factor = lr_factor(self.cfg.warmup, self.cfg.maxsteps, self.cfg.lr_schedule)(self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group.update(initial_lr=base, lr=base * factor)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def micro_batches(self) -> list[list[Row]]:
        """This process's rows of step ``self.step``, in ``accum`` micro-batches: micro-batch ``k`` is rows
        ``[k*m, (k+1)*m)`` of the global batch (``m = bsize / accum``, as in one process) and each process
        takes its ``m / world_size`` of it, so in-batch negatives are those of one process's micro-batch."""
        cfg, ctx = self.cfg, self.ctx
        chosen = [self.triples[i] for i in batch_indices(self.step, cfg.bsize, len(self.triples), cfg.seed)]
        chosen = [self._drawn(row, k) for k, row in enumerate(chosen)]
        micro = cfg.bsize // cfg.accum
        part = micro // ctx.world_size
        return [chosen[k + ctx.rank * part : k + (ctx.rank + 1) * part] for k in range(0, cfg.bsize, micro)]

    def _drawn(self, row: Row | Pool, position: int) -> Row:
        """A pool's row of this step (its negatives drawn from ``(seed, step, position)``: a resumed run draws
        the same ones), or a fixed row as it is."""
        if not isinstance(row, Pool):
            return row
        rng = np.random.default_rng([self.cfg.seed, self.step, position])
        return row.draw(rng, self.cfg.hard_negatives, self.cfg.group_negatives)

    def accumulate(self) -> float:
        """Forward and backward over this step's rows in ``accum`` micro-batches (the gradients are left in
        ``.grad``, averaged over processes by DDP); returns the step's loss, averaged over processes."""
        cfg = self.cfg
        self.model.train()
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, self.step]).generate_state(1)[0]))  # dropout
        total = 0.0
        for rows in self.micro_batches():
            with self.amp.autocast:
                loss = batch_loss(
                    self.wrapped,
                    self.tokenizer,
                    rows,
                    in_batch_negatives=cfg.in_batch_negatives,
                    device=self.device,
                    ctx=self.ctx,
                )
            self.amp.backward(loss / cfg.accum)
            total += float(loss.detach()) / cfg.accum
        return all_reduce_mean(total, self.ctx)

    def train_step(self) -> float:
        """One optimizer step over ``bsize`` rows in ``accum`` micro-batches; returns the mean loss."""
        loss = self.accumulate()
        self.amp.step(self.optimizer, [p for p in self.model.parameters() if p.requires_grad], self.cfg.max_grad_norm)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss

    def save(self, validation: dict[str, Any] | None = None) -> str:
        """Write ``colbert-<step>`` (rank 0 only; the others return its path) and prune older checkpoints;
        ``validation``: the record of this step's validation, for the model card."""
        path = checkpoint_path(self.cfg.output_dir, self.step)
        if not self.ctx.is_main:
            return path
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.amp.state_dict(),
        }
        card = self.model_card(path, validation)
        save_colbert(path, self.model, step=self.step, training=self.cfg.to_dict(), state=state, card=card)
        prune_checkpoints(self.cfg.output_dir, self.cfg.keep_checkpoints)
        return path

    def model_card(self, path: str, validation: dict[str, Any] | None) -> str:
        """The README.md of checkpoint ``path`` (``dpr.training.model_card``)."""
        cfg, config = self.cfg, self.model.config
        trainable, total = parameter_counts(self.model)
        what = "groups" if cfg.group_negatives else "triples"
        data = [data_line("train", [cfg.triples] if cfg.triples else cfg.dpr_train_file, len(self.triples), what)]
        if self.dev is not None:
            data.append(data_line("dev", cfg.dev_file, len(self.dev.questions), "questions"))
            data.append(f"dev corpus: `{os.path.basename(self.dev.corpus)}` ({len(self.dev.passages):,} passages)")
        candidate = best_record(path, validation) if validation is not None else None
        facts = CardFacts(
            kind="ColBERT",
            name=os.path.basename(path),
            base_model=config.backbone.pretrained_model_cfg,
            tuning=config.tuning.to_dict(),
            config=config.to_dict(),
            trainable=trainable,
            total=total,
            data=tuple(data),
            progress=f"optimizer step {self.step} of {cfg.maxsteps} ({cfg.bsize} {what} a step)",
            precision=self.amp.precision,
            validation=validation,
            best=best_so_far(read_best(cfg.output_dir), candidate),
            usage=_usage(path),
        )
        return render_model_card(facts)

    def validate_and_save(self) -> str:
        """Validate on the dev corpus (rank 0), save, log the value and record the best checkpoint."""
        cfg, path = self.cfg, checkpoint_path(self.cfg.output_dir, self.step)
        if self.ctx.is_main:
            assert self.dev is not None
            result = validate_retrieval(
                self.model, self.tokenizer, self.dev, cfg.val_metric, precision=self.amp.precision, device=self.device
            )
            record = {
                "metric": result.metric,
                "value": result.value,
                "epoch": self._epoch(),
                "iteration": self.step,
                "global_step": self.step,
                "details": result.details,
            }
            self.save(record)
            append_history(cfg.output_dir, record)
            if update_best(cfg.output_dir, best_record(path, record)):
                prune_checkpoints(cfg.output_dir, cfg.keep_checkpoints)  # the previous best may go now
            self.dashboard.log_validation(record)
        barrier(self.ctx)
        return path

    def _log_train(self, loss: float, rate: float) -> None:
        """The log line and its train_log.jsonl record (and TensorBoard scalars) after step ``self.step``."""
        mean, (lr, linear_lr) = sum(self.losses) / len(self.losses), self.scheduler.get_last_lr()
        logger.info(
            "step %d/%d: loss %.4f (mean of last %d %.4f), lr %.3g (projection %.3g), %.1f rows/s",
            self.step,
            self.cfg.maxsteps,
            loss,
            len(self.losses),
            mean,
            lr,
            linear_lr,
            rate,
        )
        record = {"step": self.step, "epoch": self._epoch(), "loss": loss, "loss_mean": mean, "lr": lr}
        self.dashboard.log_train({**record, "linear_lr": linear_lr, "samples_per_s": rate})

    def _epoch(self) -> int:
        """Passes over the rows completed (the rows are a stream of per-epoch permutations)."""
        return self.step * self.cfg.bsize // len(self.triples)

    def _checkpoint_due(self) -> bool:
        cfg = self.cfg
        return self.step % cfg.save_every == 0 or self.step == cfg.maxsteps

    def _validation_due(self) -> bool:
        cfg = self.cfg
        return cfg.val_every > 0 and (self.step % cfg.val_every == 0 or self.step == cfg.maxsteps)

    def run(self, progress: bool = True) -> str:
        """Train up to ``maxsteps`` optimizer steps, saving every ``save_every`` and at the end; with a dev
        set, validating (and saving) every ``val_every`` steps, at the end and before a new run's first step."""
        cfg = self.cfg
        self.dashboard = TrainingLogger(
            cfg.output_dir,
            order=("step",),
            resume_at=(self.step,),
            resume_step=self.step,
            tensorboard=resolve_tensorboard(cfg.tensorboard),
            enabled=self.ctx.is_main,
        )
        try:
            last = self._run(progress)
            self.dashboard.write_curves()
        finally:
            self.dashboard.close()
        return last

    def _run(self, progress: bool) -> str:
        cfg = self.cfg
        last = None
        if cfg.val_every and self.step == 0:
            last = self.validate_and_save()  # the untrained model: does training help at all?
        bar = tqdm(
            total=cfg.maxsteps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not progress or not self.ctx.is_main,
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        seconds, first = 0.0, self.step  # time in training steps only: validations and saves are not in the rate
        while self.step < cfg.maxsteps:
            started = time.perf_counter()
            loss = self.train_step()
            seconds += time.perf_counter() - started
            self.losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if self.step % cfg.log_every == 0 or self.step == cfg.maxsteps:
                self._log_train(loss, (self.step - first) * cfg.bsize / seconds)
            if self._validation_due():
                last = self.validate_and_save()
            elif self._checkpoint_due():
                last = self.save()
        bar.close()
        return last if last is not None else self.save()


def _usage(path: str) -> tuple[tuple[str, str, str], ...]:
    """How to load ColBERT checkpoint ``path``: in Python, and to index and search a collection."""
    return (
        (
            "In Python (rebuilt from `config.json`):",
            "python",
            f"from colbert.checkpoint import load_colbert\n\nmodel, info = load_colbert({path!r})",
        ),
        (
            "Index a collection and search it:",
            "bash",
            f"python -m colbert.index --checkpoint {path} --collection passages.tsv --index_root indexes "
            "--index_name mycorpus\n"
            "python -m colbert.retrieve --index_root indexes --index_name mycorpus --queries queries.tsv",
        ),
    )
