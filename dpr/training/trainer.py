"""The bi-encoder training loop: in-batch negatives, gradient accumulation, validate_and_save, resume.

Resuming is exact: the data order depends only on (seed, epoch), negative sampling on
(seed, epoch, iteration, rank), and dropout is re-seeded from the same tuple before every step, so a
run restarted from a checkpoint continues bit-for-bit like one that never stopped (the checkpoint also
carries the loss scaler and the rolling loss window, so the logged training loss matches too).

A non-finite loss, tuned weight or validation value stops the run with TrainingDivergedError before
anything is saved: the last good checkpoint stays the latest, and NaN never becomes the best.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dpr.data.batching import build_biencoder_batch
from dpr.data.iterator import ShardedDataIterator
from dpr.data.readers import BiEncoderSample
from dpr.device import MixedPrecision
from dpr.errors import UserError
from dpr.models.biencoder import BiEncoder
from dpr.options import TrainConfig, val_metric
from dpr.training.checkpoint import TrainingPosition, checkpoint_name, save_checkpoint
from dpr.training.dashboard import TrainingLogger, resolve_tensorboard
from dpr.training.distributed import (
    DistributedContext,
    barrier,
    global_biencoder_loss,
    unwrap,
    wrap_ddp,
)
from dpr.training.grad_cache import grad_cache_step
from dpr.training.model_card import biencoder_card, data_line
from dpr.training.passage_cache import PassageVectorCache, all_passages
from dpr.training.run_dir import (
    BestRecord,
    append_history,
    best_record,
    latest_checkpoint,
    prune_checkpoints,
    read_best,
    repair_run_dir,
    update_best,
)
from dpr.training.validation import (
    DevRetrieval,
    ValidationResult,
    fixed_corpus_vectors,
    read_dev_retrieval,
    validate_average_rank,
    validate_nll,
    validate_retrieval,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")


class TrainingDivergedError(UserError, RuntimeError):
    """The loss, the tuned weights or a validation value became NaN or infinite."""


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm (as BERT/DPR)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.learning_rate, eps=cfg.adam_eps, betas=cfg.adam_betas
    )


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup`` steps, then linear decay to 0 at ``total`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def eval_points(iterations_per_epoch: int, eval_per_epoch: int) -> set[int]:
    """Iteration indices after which to validate: ``eval_per_epoch`` evenly spaced, always the last."""
    n = min(eval_per_epoch, iterations_per_epoch)
    return {math.ceil(iterations_per_epoch * k / n) - 1 for k in range(1, n + 1)}


def optimizer_steps_per_epoch(iterations: int, accumulation: int, evals: set[int]) -> int:
    """Optimizer steps in one epoch: every ``accumulation`` batches, and at each validation point."""
    steps, pending = 0, 0
    for i in range(iterations):
        pending += 1
        if pending == accumulation or i in evals:
            steps, pending = steps + 1, 0
    return steps


def step_seed(seed: int, epoch: int, iteration: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, iteration, rank]).generate_state(1)[0])


class BiEncoderTrainer:
    """Trains a BiEncoder on DPR samples; ``run`` returns the best checkpoint record (if validated)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: BiEncoder,
        tokenizer: PreTrainedTokenizerBase,
        train: Sequence[BiEncoderSample],
        dev: Sequence[BiEncoderSample],
        ctx: DistributedContext,
        start: TrainingPosition = TrainingPosition(),
        training_state: dict[str, Any] | None = None,
    ) -> None:
        if not train:
            raise ValueError("no training samples: nothing to train on")
        self.cfg, self.tokenizer, self.dev, self.ctx = cfg, tokenizer, dev, ctx
        self.model = model.to(ctx.device)
        self.scale = cfg.scale_for(bool(model.config.head.normalize))
        self.amp = MixedPrecision(ctx.device, cfg.precision)  # auto resolved once, for steps and encoding
        self.cache = self._passage_cache(train) if model.config.sides.tune_side == "question" else None
        self.dev_retrieval, self.dev_corpus_vectors = self._dev_retrieval(train)
        self.ddp_model = wrap_ddp(self.model, ctx)
        self.iterator = ShardedDataIterator(
            train, cfg.batch_size, shard_id=ctx.rank, num_shards=ctx.world_size, shuffle=True, seed=cfg.seed
        )
        self.evals = eval_points(self.iterator.iterations_per_epoch, cfg.eval_per_epoch)
        self.total_steps = cfg.num_train_epochs * optimizer_steps_per_epoch(
            self.iterator.iterations_per_epoch, cfg.gradient_accumulation_steps, self.evals
        )
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = linear_schedule(self.optimizer, cfg.warmup_for(self.total_steps), self.total_steps)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.position = start
        self.pending = 0  # micro-batches accumulated since the last optimizer step
        self.losses: deque[float] = deque(maxlen=cfg.train_rolling_loss_step)
        # train_log.jsonl, TensorBoard, the curves: opened by run() (a resumed run's log is cut back then).
        self.dashboard = TrainingLogger.inactive(cfg.output_dir)
        self.data = self._data_lines(len(train), len(dev))
        if training_state is not None:
            self._restore(training_state)
        logger.info(
            "%d training samples, %d iterations per epoch per rank, %d optimizer steps in all, "
            "warmup %d, loss scale %g",
            len(train),
            self.iterator.iterations_per_epoch,
            self.total_steps,
            cfg.warmup_for(self.total_steps),
            self.scale,
        )

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's training state, with this run's hyperparameters.

        The optimizer state brings the stored learning rate, betas, eps and weight decay with it, and the
        scheduler its base learning rate: they are set again from ``cfg``, which changes nothing when the
        settings are the same and honours new ones under --allow_changed_settings.
        """
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.amp.load_state_dict(state.get("scaler"))
        self.losses.extend(state.get("rolling_losses", ()))
        self.scheduler.base_lrs = [self.cfg.learning_rate] * len(settings)
        step = self.scheduler.last_epoch
        for group, fresh, factor in zip(self.optimizer.param_groups, settings, self.scheduler.lr_lambdas):
            group.update(
                betas=fresh["betas"],
                eps=fresh["eps"],
                weight_decay=fresh["weight_decay"],
                initial_lr=self.cfg.learning_rate,
                lr=self.cfg.learning_rate * factor(step),
            )
        # What get_last_lr() reports (logging only) until the next scheduler step.
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _data_lines(self, train: int, dev: int) -> tuple[str, ...]:
        """The model card's data section: the files and their sample counts."""
        cfg = self.cfg
        rates = (
            f", upsampled {','.join(map(str, cfg.train_files_upsample_rates))}"
            if cfg.train_files_upsample_rates
            else ""
        )
        lines = [data_line("train", cfg.train_file, train, note=rates)]
        if cfg.dev_file:
            lines.append(data_line("dev", cfg.dev_file, dev))
        if cfg.val_ctx_file:
            lines.append(f"dev corpus: `{os.path.basename(cfg.val_ctx_file)}`")
        return tuple(lines)

    def _passage_cache(self, train: Sequence[BiEncoderSample]) -> PassageVectorCache:
        """Fixed passage vectors for question-side training: from --ctx_embeddings, or encoded once now."""
        if self.cfg.ctx_embeddings:
            return PassageVectorCache.from_shards(self.cfg.ctx_embeddings, self.model, train, self.ctx.device)
        return PassageVectorCache.encode(
            self.model,
            self.tokenizer,
            train,
            batch_size=self.cfg.val_av_rank_bsz,
            insert_title=self.model.config.passages.insert_title,
            device=self.ctx.device,
            precision=self.amp.precision,
        )

    def _dev_retrieval(self, train: Sequence[BiEncoderSample]) -> tuple[DevRetrieval | None, torch.Tensor | None]:
        """A retrieval --val_metric's dev corpus and qrels, read now (bad files fail before training), and for
        question-side runs the corpus's fixed passage vectors (the training cache's where they are the same)."""
        if val_metric(self.cfg.val_metric).key is None or not self.dev:
            return None, None
        dev = read_dev_retrieval(self.cfg.val_ctx_file, self.dev, self.cfg.val_av_rank_max_qs)
        if self.cache is None:
            return dev, None  # the passage side is trained: the corpus is encoded again at each validation
        vectors = fixed_corpus_vectors(
            self.model, self.tokenizer, dev, self.cache, all_passages(train), self.ctx, **self._encoding()
        )
        return dev, vectors

    def _encoding(self) -> dict[str, Any]:
        """How validation encodes: the model's length and passage format, the run's precision, --val_av_rank_bsz."""
        return dict(
            max_length=self.model.config.backbone.sequence_length,
            insert_title=self.model.config.passages.insert_title,
            precision=self.amp.precision,
            batch_size=self.cfg.val_av_rank_bsz,
        )

    def run(self) -> BestRecord | None:
        if self.ctx.is_main:  # what a kill between a checkpoint and its log line, best record or pruning missed
            repair_run_dir(self.cfg.output_dir, self.cfg.checkpoint_file_name)
            prune_checkpoints(self.cfg.output_dir, self.cfg.checkpoint_file_name, self.cfg.keep_checkpoints)
        barrier(self.ctx)
        start = self.position
        self.dashboard = TrainingLogger(
            self.cfg.output_dir,
            order=("epoch", "iteration"),
            resume_at=(start.epoch, start.iteration),
            resume_step=start.global_step,
            tensorboard=resolve_tensorboard(self.cfg.tensorboard),
            enabled=self.ctx.is_main,
        )
        epoch, start_iteration = start.epoch, start.iteration
        if start_iteration >= self.iterator.iterations_per_epoch:
            epoch, start_iteration = epoch + 1, 0
        try:
            for current in range(epoch, self.cfg.num_train_epochs):
                self._train_epoch(current, start_iteration if current == epoch else 0)
            self.dashboard.write_curves()
        finally:
            self.dashboard.close()
        return read_best(self.cfg.output_dir)

    def _train_epoch(self, epoch: int, start_iteration: int) -> None:
        self.model.train()
        iterations = self.iterator.iterations_per_epoch
        # Redirected output (logs, CI) gets a line every 30 s rather than one per batch. Closed on errors
        # too, so an error message starts a line of its own.
        with tqdm(
            total=iterations,
            initial=start_iteration,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not self.ctx.is_main,
            dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        ) as bar:
            started, seen = time.perf_counter(), 0
            for shard_batch in self.iterator.iterate(epoch, start_iteration):
                i = shard_batch.iteration
                loss = self._micro_step(epoch, shard_batch.items, i)
                if not math.isfinite(loss):  # the loss is global: every rank stops here together
                    self._diverged(f"the training loss is {loss}", epoch, i)
                self.losses.append(loss)
                seen += len(shard_batch.items) * self.ctx.world_size
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if self.pending == self.cfg.gradient_accumulation_steps or i in self.evals:
                    self._optimizer_step()
                    self._check_weights(epoch, i)
                self.position = TrainingPosition(epoch, i + 1, self.position.global_step)
                if (i + 1) % self.cfg.log_batch_step == 0:
                    self._log_train(epoch, i + 1, loss, seen / (time.perf_counter() - started))
                if i in self.evals:
                    self.validate_and_save()
                    self.model.train()

    def _log_train(self, epoch: int, iteration: int, loss: float, rate: float) -> None:
        """The log line and its train_log.jsonl record (and TensorBoard scalars) after batch ``iteration``."""
        rolling, lr = sum(self.losses) / len(self.losses), self.scheduler.get_last_lr()[0]
        logger.info(
            "epoch %d step %d/%d: loss %.4f (rolling %.4f), lr %.3g, %.1f samples/s",
            epoch,
            iteration,
            self.iterator.iterations_per_epoch,
            loss,
            rolling,
            lr,
            rate,
        )
        self.dashboard.log_train(
            {
                "step": self.position.global_step,
                "epoch": epoch,
                "iteration": iteration,
                "loss": loss,
                "loss_mean": rolling,
                "lr": lr,
                "samples_per_s": rate,
            }
        )

    def _micro_step(self, epoch: int, samples: list[BiEncoderSample], iteration: int) -> float:
        cfg, ctx = self.cfg, self.ctx
        rng = self.iterator.batch_rng(epoch, iteration)
        batch = build_biencoder_batch(
            samples,
            self.tokenizer,
            rng,
            max_length=self.model.config.backbone.sequence_length,
            hard_negatives=cfg.hard_negatives,
            other_negatives=cfg.other_negatives,
            shuffle_positives=cfg.shuffle_positive_ctx,
            shuffle_negatives=True,
            insert_title=self.model.config.passages.insert_title,
            tokenize_contexts=self.cache is None,
            title_mode=self.model.config.passages.title_mode,
        )
        torch.manual_seed(step_seed(cfg.seed, epoch, iteration, ctx.rank))  # dropout, reproducible on resume
        device = ctx.device
        if cfg.grad_cache:
            loss_value = grad_cache_step(
                self.ddp_model,
                batch,
                scale=self.scale,
                ctx=ctx,
                amp=self.amp,
                accumulation=cfg.gradient_accumulation_steps,
                q_chunk_size=cfg.gc_q_chunk_size,
                p_chunk_size=cfg.gc_p_chunk_size,
                passages=None if self.cache is None else self.cache.lookup(batch.contexts),
            )
            self.pending += 1
            return loss_value
        with self.amp.autocast:
            if self.cache is not None:  # question-side tuning: passages are looked up, not encoded
                q, _ = self.ddp_model(*batch.question_inputs(device))
                c = self.cache.lookup(batch.contexts)  # (C, D)
            else:
                q, c = self.ddp_model(*batch.question_inputs(device), *batch.passage_inputs(device))
        # Scaling the questions scales every score: the inverse temperature of the softmax.
        loss, _ = global_biencoder_loss(q.float() * self.scale, c.float(), batch.positive_idx.to(device), ctx)
        self.amp.backward(loss / cfg.gradient_accumulation_steps)
        self.pending += 1
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        if self.pending == 0:
            return
        if self.pending != self.cfg.gradient_accumulation_steps:
            # A validation point cut the accumulation short: average over the batches actually seen.
            scale = self.cfg.gradient_accumulation_steps / self.pending
            for param in self.model.parameters():
                if param.grad is not None:
                    param.grad.mul_(scale)
        # Clipped once per optimizer step (not per micro-batch), after unscaling.
        self.amp.step(self.optimizer, self.trainable, self.cfg.max_grad_norm)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        self.position = TrainingPosition(self.position.epoch, self.position.iteration, self.position.global_step + 1)

    def _check_weights(self, epoch: int, iteration: int) -> None:
        """After an optimizer step: one reduction over the tuned parameters only (the backbone is fixed)."""
        if self.trainable and not bool(torch.stack([torch.isfinite(p).all() for p in self.trainable]).all()):
            self._diverged("the tuned weights are no longer finite after an optimizer step", epoch, iteration)

    def _diverged(self, what: str, epoch: int, iteration: int) -> None:
        last = latest_checkpoint(self.cfg.output_dir, self.cfg.checkpoint_file_name)
        kept = (
            f"its last good checkpoint {last} is kept (restart with --allow_changed_settings and the new "
            f"values to continue from it)"
            if last
            else "no checkpoint was written"
        )
        raise TrainingDivergedError(
            f"training diverged at epoch {epoch}, batch {iteration} (optimizer step {self.position.global_step}): "
            f"{what}; {kept}. Try a lower --learning_rate (now {self.cfg.learning_rate:g}), more --warmup_steps "
            f"or --max_grad_norm clipping (now {self.cfg.max_grad_norm:g})"
            + (", or fp32 instead of --fp16" if self.amp.precision == "fp16" else "")
        )

    def validate(self) -> ValidationResult | None:
        if not self.dev:
            return None
        cfg, model = self.cfg, unwrap(self.ddp_model)
        metric = cfg.val_metric_at(self.position.epoch)
        if self.dev_retrieval is not None:
            return validate_retrieval(
                model,
                self.dev_retrieval,
                self.tokenizer,
                metric=metric,
                ctx=self.ctx,
                passage_vectors=self.dev_corpus_vectors,
                **self._encoding(),
            )
        if metric == "average_rank":
            return validate_average_rank(
                model,
                self.dev,
                self.tokenizer,
                hard_negatives=cfg.val_av_rank_hard_neg,
                other_negatives=cfg.val_av_rank_other_neg,
                max_questions=cfg.val_av_rank_max_qs,
                ctx=self.ctx,
                **self._encoding(),
            )
        return validate_nll(
            model,
            self.dev,
            self.tokenizer,
            hard_negatives=cfg.hard_negatives,
            other_negatives=cfg.other_negatives,
            seed=cfg.seed,
            scale=self.scale,
            ctx=self.ctx,
            **{**self._encoding(), "batch_size": cfg.dev_batch_size},
        )

    def validate_and_save(self) -> None:
        """Validate, write a checkpoint, keep the best by the current metric, prune the others."""
        result = self.validate()
        pos = self.position
        if result is not None and not math.isfinite(result.value):  # all-reduced: the same on every rank
            self._diverged(f"the validation {result.metric} is {result.value}", pos.epoch, pos.iteration - 1)
        path = os.path.join(
            self.cfg.output_dir, checkpoint_name(self.cfg.checkpoint_file_name, pos.epoch, pos.iteration)
        )
        record = (
            None
            if result is None
            else {
                "metric": result.metric,
                "value": result.value,
                "greater_is_better": result.greater_is_better,
                "epoch": pos.epoch,
                "iteration": pos.iteration,
                "global_step": pos.global_step,
                **result.details,
                "train_loss": sum(self.losses) / max(len(self.losses), 1),
            }
        )
        if self.ctx.is_main:
            model = unwrap(self.ddp_model)
            card = biencoder_card(
                model,
                path,
                progress=f"epoch {pos.epoch + 1} of {self.cfg.num_train_epochs}, batch {pos.iteration} of "
                f"{self.iterator.iterations_per_epoch}; optimizer step {pos.global_step} of {self.total_steps}",
                precision=self.amp.precision,
                data=self.data,
                validation=record,
                previous_best=read_best(self.cfg.output_dir),
            )
            # The checkpoint carries its validation record: a kill before the next two writes is repaired
            # from it on restart (repair_run_dir).
            save_checkpoint(
                path,
                model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                position=pos,
                training=self.cfg.to_dict(),
                validation=record,
                extra_state={"scaler": self.amp.state_dict(), "rolling_losses": list(self.losses)},
                card=card,
            )
            if record is not None:
                append_history(self.cfg.output_dir, record)
                update_best(self.cfg.output_dir, best_record(path, record))
                self.dashboard.log_validation(record)
            prune_checkpoints(self.cfg.output_dir, self.cfg.checkpoint_file_name, self.cfg.keep_checkpoints)
        barrier(self.ctx)
