"""One pass of the training loop, step by step: what :meth:`Trainer.__iter__` drives.

A :class:`TrainingRun` holds what exists only while a run goes: the network on
the device, the optimiser, the batch feed, the timing and the best validation
Dice seen. It calls back into its :class:`~napari_unet.training.trainer.Trainer` for the
learning rate, the step and validation (``Trainer._validate`` is replaced in
tests), and writes the trainer's kept weights, history and result.
"""

from __future__ import annotations

import gc
import math
import time
from typing import TYPE_CHECKING

import torch

from .. import devices
from .config import TrainEvent
from .hard_pixels import refreshed_pools
from .kept_weights import KeptWeights, cpu_state
from .losses import get_loss
from .step import BatchFeed, Throughput

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["HARD_MARKS", "TrainingRun", "refresh_hard_pixels"]

#: Shares of a run after which the hard pixels (``hard_fraction``) are found again.
HARD_MARKS = (0.05, 0.25, 0.5, 0.75)


class TrainingRun:
    """The state of one run of ``trainer``; set up on construction, torn down by :meth:`close`."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = tr = trainer
        cfg, dev = tr.config, tr.device
        model = self.model = tr.model.to(dev)
        self.channels_last = dev.type == "cuda"
        if self.channels_last:
            model = self.model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        if tr._optimizer_state is not None:
            opt.load_state_dict(tr._optimizer_state)
        amp_dtype = devices.training_dtype(dev, cfg.amp)
        self.scaler = devices.grad_scaler(dev, amp_dtype)
        self.loss_fn = get_loss(tr.loss_name)
        torch.manual_seed(cfg.seed + tr.start_iteration)

        sampler = self.sampler = tr._sampler()
        self.next_hard = 0  # the next of HARD_MARKS
        self.hard_turn = 0  # the sampler slice the next refresh starts with
        self.feed = BatchFeed(
            sampler, cfg.iterations - tr.start_iteration, batch_size=cfg.batch_size,
            prefetch=cfg.prefetch, pin=dev.type == "cuda",
        )
        self.best_metric: float | None = None  # the best validation Dice seen
        self.t0 = time.perf_counter()
        self.last_validation = self.t0
        self.validation_s = 0.0  # how long the last validation took
        self.throughput = Throughput(self.t0)
        self.last: TrainEvent | None = None

    def consider(self, val: float, iteration: int) -> bool:
        """Keep the current weights if ``Trainer._keep`` says so; returns whether it did."""
        tr = self.trainer
        if not tr._keep(val, self.best_metric):
            return False
        best = self.best_metric
        self.best_metric = val if best is None or math.isnan(best) else max(best, val)
        tr.kept = KeptWeights(cpu_state(self.model.state_dict()), cpu_state(self.opt.state_dict()), iteration, val)
        return True

    def time_fraction(self) -> float:
        """Share of the time budget spent (0 without one)."""
        limit = self.trainer.config.time_limit_s
        return (time.perf_counter() - self.t0) / limit if limit else 0.0

    def out_of_time(self) -> bool:
        return self.time_fraction() >= 1.0

    def _validation_due(self, it: int, now: float) -> bool:
        """Every ``val_every`` iterations and at the last one; with a time budget also
        every twentieth of it (a long iteration cap still validates about 20 times),
        but never more than 5 % of the time (a 1-minute run on a CPU spent 15 %)."""
        tr, limit = self.trainer, self.trainer.config.time_limit_s
        if (it + 1) % tr.val_every == 0 or it + 1 == tr.config.iterations:
            return True
        gap = max(limit / 20, 20 * self.validation_s) if limit else math.inf
        return now - self.last_validation >= gap

    def iteration(self, it: int) -> TrainEvent:
        """Train on one batch at (0-based) iteration ``it``, validating when due."""
        tr = self.trainer
        cfg = tr.config
        x, t, w = (b.to(tr.device, non_blocking=True) for b in self.feed.get())
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = cfg.learning_rate * tr._lr_factor(it, self.time_fraction())
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss_value, notice = tr._step(self.model, (x, t, w), self.opt, self.scaler, self.loss_fn)
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"training diverged at iteration {it + 1} (loss {loss_value}); lower the learning rate"
            )
        now = time.perf_counter()
        rate = self.throughput.add(now, cfg.batch_size)
        val = None
        is_best = False
        if self._validation_due(it, now):
            val = tr._validate()
            is_best = self.consider(val, it + 1)
            self.last_validation = time.perf_counter()
            self.validation_s = self.last_validation - now
            refresh_hard_pixels(self, it)
        if notice is not None:
            tr.notices.append(notice)
        self.last = TrainEvent(
            notice=notice, iteration=it + 1, total=cfg.iterations, loss=loss_value, lr=lr,
            patches_per_s=rate, elapsed_s=now - self.t0, val_metric=val,
            best_metric=self.best_metric, is_best=is_best, time_limit_s=cfg.time_limit_s,
        )
        tr.history.append(self.last)
        return self.last

    def finish(self) -> TrainEvent:
        """Settle the kept weights into the trainer's model and result; the final event."""
        tr = self.trainer
        last = self.last
        cancelled = tr._cancel.is_set()
        done_it = last.iteration if last is not None else tr.start_iteration
        if last is not None and last.val_metric is None:
            # stopped between validations (cancel, time budget spent; a run that reaches
            # its last iteration validates there): validate the current weights once more
            # so nothing better is lost
            self.consider(tr._validate(), last.iteration)
        if tr.kept is None:  # cancelled before the first iteration
            tr.kept = KeptWeights(cpu_state(self.model.state_dict()), None, tr.start_iteration, None)
        tr.model.load_state_dict(tr.kept.state)
        tr.result = tr.kept_model(iterations_run=done_it)
        final = TrainEvent(
            iteration=done_it,
            total=tr.config.iterations,
            loss=last.loss if last else float("nan"),
            lr=last.lr if last else 0.0,
            patches_per_s=last.patches_per_s if last else 0.0,
            elapsed_s=time.perf_counter() - self.t0,
            val_metric=None,
            best_metric=self.best_metric,
            done=True,
            cancelled=cancelled,
            time_limit_s=tr.config.time_limit_s,
        )
        tr.history.append(final)
        return final

    def close(self) -> None:
        """Stop the batch thread and hand the device's memory back (the model ends on the CPU)."""
        self.feed.close()
        del self.opt, self.scaler
        tr = self.trainer
        tr.model.to("cpu")
        if self.channels_last:
            tr.model.to(memory_format=torch.contiguous_format)
        del self.model
        gc.collect()
        devices.release_memory(tr.device)


def refresh_hard_pixels(run: TrainingRun, it: int) -> None:
    """After a validation that passed the next of :data:`HARD_MARKS` (the run's progress,
    by iterations or by its time budget): the painted pixels the model now gets wrong,
    for the sampler's hard patches. Decided by progress, not by the clock, so that
    a run without a time budget stays reproducible."""
    tr = run.trainer
    cfg = tr.config
    if cfg.hard_fraction <= 0 or run.next_hard >= len(HARD_MARKS):
        return
    progress = max((it + 1) / cfg.iterations, run.time_fraction())
    if progress < HARD_MARKS[run.next_hard] or progress >= 1.0:
        return
    while run.next_hard < len(HARD_MARKS) and progress >= HARD_MARKS[run.next_hard]:
        run.next_hard += 1
    run.hard_turn, pixels = refreshed_pools(tr.model, run.sampler, run.hard_turn, tr._normalised,
                                            batch_size=cfg.batch_size, device=tr.device, amp=cfg.amp)
    # the first batch the feed has not started yet (see PatchSampler.set_hard)
    run.sampler.set_hard(pixels, from_batch=it - tr.start_iteration + 1 + run.feed.ahead)
