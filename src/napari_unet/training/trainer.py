"""Few-slice training: a loop that can be iterated step by step or run to the end.

:class:`Trainer` is a generator of :class:`TrainEvent`s: a script drains it with
:func:`train`, a widget runs the same generator in a worker thread and turns
each event into a progress bar and plot point. Cancelling is cooperative
(checked every iteration) and always leaves the best model so far in
:attr:`Trainer.result`; GPU memory is handed back when the loop ends.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import devices
from .._validation import as_stack, check_finite, check_labels
from ..model.checkpoint import TrainedModel
from ..model.config import FINETUNE_LEARNING_RATE, UNetConfig
from ..model.normalization import Normalization
from ..model.unet import UNet
from ..prediction.z_context import input_planes
from .annotations import class_names_for, n_classes_for, prepare_slices
from .config import HARDWARE_FIELDS as HARDWARE_FIELDS
from .config import TrainEvent, TrainingConfig
from .held_out import foreground_dice as foreground_dice
from .held_out import held_out_dice
from .held_out import split_slices as _split
from .kept_weights import KeptWeights, replaces_kept
from .loop import TrainingRun
from .results import RunResults
from .sampling import PatchSampler
from .start import starting_point
from .step import lr_factor, optimiser_step

__all__ = ["FINETUNE_LEARNING_RATE", "KeptWeights", "TrainEvent", "Trainer", "TrainingConfig", "train"]


class Trainer(RunResults):
    """Train a U-Net on the annotated slices of a stack.

    Args:
        image: (Z, Y, X) or (Y, X) stack (uint8/uint16/float; lazy arrays are fine).
        labels: annotations of the same shape; see :mod:`napari_unet.training.annotations`.
        config: training settings.
        model: architecture for training from scratch (default :class:`UNetConfig`).
        init: checkpoint path or :class:`TrainedModel` to fine-tune from. Its
            architecture is kept; the output head is re-initialised when the
            number of classes differs.
        resume: continue ``init``'s own run (optimizer state and iteration count)
            up to ``config.iterations`` instead of starting a new schedule.

    Iterate over the trainer to run it; :attr:`result` holds the best model.
    """

    def __init__(
        self,
        image: Any,
        labels: Any,
        config: TrainingConfig | None = None,
        *,
        model: UNetConfig | None = None,
        init: str | Path | TrainedModel | None = None,
        resume: bool = False,
    ) -> None:
        self.config = cfg = config or TrainingConfig()
        self.stack = as_stack(image, "image")
        self.labels = check_labels(labels, tuple(self.stack.shape), "labels")
        self.device = devices.resolve_device(cfg.device)
        settings = cfg.annotation
        self.slices = prepare_slices(self.labels, settings)
        n_classes = n_classes_for(self.labels, settings)
        start = starting_point(
            n_classes, model=model, init=init, resume=resume, iterations=cfg.iterations, seed=cfg.seed,
            input_slices=cfg.input_slices,
        )
        self.model: UNet = start.model
        self.reinitialised = start.reinitialised
        self.start_iteration = start.start_iteration
        self._optimizer_state: dict[str, Any] | None = start.optimizer_state
        if self.model.config.in_channels != 1:
            raise ValueError("only single-channel (grey) images are supported for training")

        self.normalization = cfg.normalization.fit(self.stack)
        self.class_names = class_names_for(n_classes, settings)
        geom = self.model.geometry
        self.input_size = geom.input_size_for_output(cfg.patch_size)
        self.output_size = geom.output_size(self.input_size)
        self.split = _split(self.slices, cfg.val_fraction)
        self.val_every = cfg.val_every or max(10, cfg.iterations // 20)
        self.result: TrainedModel | None = None
        #: The weights the run keeps so far (updated at each validation, see ``keep``).
        self.kept: KeptWeights | None = None
        self.history: list[TrainEvent] = []
        self._cancel = threading.Event()
        #: Patches per forward pass; lowered when the device runs out of memory.
        self.micro_batch = self.config.batch_size
        #: What the trainer changed on its own, for the user.
        self.notices: list[str] = []

    # -- public controls -------------------------------------------------
    def cancel(self) -> None:
        """Ask the loop to stop after the current iteration (keeps the best model)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def summary(self) -> dict[str, Any]:
        return {
            "annotated_slices": [s.z for s in self.slices],
            "validation": "held-out" if self.split.held_out else "training pixels",
            "input_size": self.input_size,
            "output_size": self.output_size,
            "device": str(self.device),
            "parameters": self.model.n_parameters(),
        }

    # -- the loop ----------------------------------------------------------
    def _normalised(self, z: int) -> np.ndarray:
        """Slice ``z`` as the network reads it: normalised, with its neighbours for a 2.5D network."""
        return input_planes(self._normalised_slice, z, int(self.stack.shape[0]), self.model.config.input_slices)

    def _normalised_slice(self, z: int) -> np.ndarray:
        sl = np.asarray(self.stack[z])
        check_finite(sl, "image", f" (slice {z})")
        return Normalization.apply(sl, self.normalization.low, self.normalization.high)

    def _sampler(self) -> PatchSampler:
        cfg = self.config
        train = self.split.train
        return PatchSampler(
            [self._normalised(s.z) for s in train],
            [s.target for s in train],
            [s.weight for s in train],
            input_size=self.input_size,
            output_size=self.output_size,
            foreground_fraction=cfg.foreground_fraction,
            scribbles=cfg.annotation.mode == "scribbles",
            augment=self.augment,
            seed=cfg.seed,
            zs=[s.z for s in train],
            hard_fraction=cfg.hard_fraction,
        )

    def _lr_factor(self, it: int, time_fraction: float = 0.0) -> float:
        cfg = self.config
        return lr_factor(it, cfg.iterations, cfg.warmup, cfg.schedule, time_fraction)

    def _keep(self, val: float, best: float | None) -> bool:
        """Whether weights validated at ``val`` replace the kept ones (see :func:`replaces_kept`)."""
        return replaces_kept(val, best, self.config.keep, self.config.selection_tolerance)

    def _validate(self) -> float:
        """Foreground Dice of the current weights on the held-out pixels."""
        cfg = self.config
        return held_out_dice(
            self.model, self.split.val, self._normalised,
            batch_size=cfg.batch_size, device=self.device, amp=cfg.amp,
        )

    def _step(
        self,
        model: UNet,
        batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        loss_fn: Callable[..., torch.Tensor],
    ) -> tuple[float, str | None]:
        """One optimiser step; returns ``(loss, notice)``. Out of memory, the batch is split
        (see :func:`optimiser_step`) and the smaller size kept for the rest of the run."""
        loss, notice, self.micro_batch = optimiser_step(
            model, batch, opt, scaler, loss_fn, device=self.device, amp=self.config.amp,
            micro_batch=self.micro_batch,
        )
        return loss, notice

    def __iter__(self) -> Iterator[TrainEvent]:
        run = TrainingRun(self)
        try:
            for it in range(self.start_iteration, self.config.iterations):
                if self._cancel.is_set() or run.out_of_time():
                    break
                yield run.iteration(it)
            yield run.finish()
        finally:
            run.close()


def train(
    image: Any,
    labels: Any,
    config: TrainingConfig | None = None,
    *,
    model: UNetConfig | None = None,
    init: str | Path | TrainedModel | None = None,
    resume: bool = False,
    callback: Callable[[TrainEvent], None] | None = None,
    **overrides: Any,
) -> TrainedModel:
    """Train to completion and return the best model.

    Keyword ``overrides`` replace fields of ``config``, e.g.
    ``train(image, labels, iterations=300, device="cuda")``.
    """
    config = config or TrainingConfig()
    if overrides:
        config = replace(config, **overrides)
    trainer = Trainer(image, labels, config, model=model, init=init, resume=resume)
    for event in trainer:
        if callback is not None:
            callback(event)
    assert trainer.result is not None
    return trainer.result
