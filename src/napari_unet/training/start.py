"""Where a training run starts: a fresh network, a checkpoint to fine-tune, or a run to resume."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..model.checkpoint import TrainedModel, load_checkpoint, transfer_weights
from ..model.config import UNetConfig
from ..model.unet import UNet

__all__ = ["StartingPoint", "starting_point"]


@dataclass
class StartingPoint:
    """The network a run starts from and, when resuming, where its schedule stood."""

    model: UNet
    reinitialised: list[str] = field(default_factory=list)  # layers the checkpoint could not fill
    start_iteration: int = 0
    optimizer_state: dict[str, Any] | None = None


def starting_point(
    n_classes: int,
    *,
    model: UNetConfig | None,
    init: str | Path | TrainedModel | None,
    resume: bool,
    iterations: int,
    seed: int,
    input_slices: int | None = None,
) -> StartingPoint:
    """The network for ``n_classes`` classes: from ``init`` (its architecture kept, the
    head re-initialised when the classes differ) or, without one, a new ``model``
    seeded with ``seed``. ``resume`` continues ``init``'s own run, which must have
    run fewer than ``iterations``. ``input_slices`` (None: the model's own) widens
    a 2D network to read neighbouring slices (see :func:`transfer_weights`)."""
    if init is None:
        if resume:
            raise ValueError("resume needs a checkpoint to resume from (init=...)")
        torch.manual_seed(seed)
        config = (model or UNetConfig()).with_classes(n_classes)
        if input_slices is not None:
            config = replace(config, input_slices=input_slices)
        return StartingPoint(UNet(config))
    base = load_checkpoint(init) if isinstance(init, (str, Path)) else init
    if model is not None and model != base.config:
        raise ValueError(
            "give either a model config (train from scratch) or a checkpoint to start from, not both"
        )
    config = base.config.with_classes(n_classes)
    if input_slices is not None and input_slices != config.input_slices:
        if resume:
            raise ValueError(
                f"cannot resume with {input_slices} input slices: the checkpoint reads "
                f"{config.input_slices}; fine-tune from it instead (resume=False)"
            )
        config = replace(config, input_slices=input_slices)
    net = UNet(config)
    skipped = transfer_weights(base.model, net)
    if not resume:
        return StartingPoint(net, skipped)
    if skipped:
        raise CheckpointError(
            "cannot resume: the checkpoint was trained for different classes; "
            "fine-tune from it instead (resume=False)"
        )
    start = int(base.training.get("iteration", 0))
    if start >= iterations:
        raise ValueError(
            f"the checkpoint already ran {start} iterations; ask for more "
            f"than that to resume (iterations={iterations})"
        )
    return StartingPoint(net, skipped, start, base.optimizer_state)
