"""What a training run gives back: its networks as :class:`TrainedModel`s with how they were made.

:class:`RunResults` is the part of :class:`~napari_unet.training.trainer.Trainer` that turns
the kept weights (or the weights of the moment) into a model to predict with or
to save; it reads the trainer's settings and split and changes nothing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from ..model.checkpoint import TrainedModel
from ..model.normalization import Normalization
from ..model.unet import UNet
from .augment import AugmentConfig, resolved_augment
from .held_out import Split
from .kept_weights import KeptWeights
from .losses import objects_on_background, resolved_loss

if TYPE_CHECKING:
    from .annotations import AnnotatedSlice
    from .config import TrainingConfig

__all__ = ["RunResults"]


class RunResults:
    """:meth:`kept_model` and :meth:`snapshot` for a trainer with these attributes."""

    config: TrainingConfig
    model: UNet
    normalization: Normalization
    class_names: list[str]
    slices: list[AnnotatedSlice]
    split: Split
    device: torch.device
    kept: KeptWeights | None

    @cached_property
    def _objects_on_background(self) -> bool:
        """What both "auto" rules read from the painted training slices; counted once,
        since the split and the annotation mode are fixed when the trainer is made."""
        return objects_on_background([s.target for s in self.split.train],
                                     scribbles=self.config.annotation.mode == "scribbles")

    @property
    def loss_name(self) -> str:
        """The loss this run trains with (``"auto"`` resolved from the painted targets)."""
        return resolved_loss(self.config.loss, self._objects_on_background)

    @property
    def augment(self) -> AugmentConfig | None:
        """The augmentation this run trains with (``p_affine="auto"`` resolved likewise)."""
        return resolved_augment(self.config.augment, self._objects_on_background)

    def _wrap(
        self,
        net: UNet,
        training: dict[str, Any],
        optimizer_state: dict[str, Any] | None = None,
        normalization: Normalization | None = None,
    ) -> TrainedModel:
        """The one place a network of this run becomes a :class:`TrainedModel`."""
        net.eval()
        return TrainedModel(
            model=net,
            normalization=self.normalization if normalization is None else normalization,
            annotation=self.config.annotation,
            class_names=list(self.class_names),
            training=training,
            optimizer_state=optimizer_state,
        )

    def kept_model(
        self, *, iterations_run: int | None = None, stopped_by_error: str | None = None
    ) -> TrainedModel | None:
        """A fresh CPU model with the kept weights and how they were made; None before any.

        The trainer's result at the end of a run; after an error inside the loop
        (say, out of memory at iteration 400) the panels call it to keep what was
        learnt up to the last validation.
        """
        kept = self.kept
        if kept is None:
            return None
        net = UNet(self.model.config)
        net.load_state_dict(kept.state)
        metric = kept.metric
        augment = self.augment
        training: dict[str, Any] = {
            # the whole recipe, typed back by TrainedModel.training_config() (--resume uses it)
            "settings": self.config.to_dict(recipe=True),
            "loss": self.loss_name,
            "augment": None if augment is None else augment.to_dict(),
            "iteration": int(kept.iteration),
            "iterations_run": int(kept.iteration if iterations_run is None else iterations_run),
            "best_val_dice": None if metric is None or math.isnan(metric) else float(metric),
            "validation": "held-out" if self.split.held_out else "training pixels",
            "annotated_slices": [int(s.z) for s in self.slices],
            "device": str(self.device),
        }
        if stopped_by_error is not None:
            training["stopped_by_error"] = stopped_by_error
        return self._wrap(net, training, kept.optimizer)

    def snapshot(self) -> TrainedModel:
        """The weights as they are right now, frozen, for a live preview between iterations.

        A copy on the training device (no transfer); percentile statistics are
        fixed to the training stack's so a preview never rescans the stack.
        """
        norm = self.normalization
        if norm.method == "percentile":
            norm = replace(norm, method="fixed")
        return self._wrap(copy.deepcopy(self.model), {}, normalization=norm)
