"""Whole-stack prediction with a trained model: probabilities, semantic and instance labels.

:func:`predict_steps` is a generator (one progress item per slice, the
:class:`Prediction` as its return value) so that a widget can run it in a
worker and cancel it; :func:`predict` drains it for scripts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Generator, Literal

import numpy as np

from ._validation import as_stack, check_finite, check_positive_int
from .checkpoint import TrainedModel, load_checkpoint
from .devices import release_memory
from .errors import Cancelled
from .normalization import Normalization


@dataclass
class Prediction:
    """Result of :func:`predict`; arrays have the input's dimensionality (2D or 3D)."""

    semantic: np.ndarray  # uint8 class ids (0 = background)
    probabilities: np.ndarray | None  # float32 (Z, C, Y, X) or (C, Y, X)
    instances: np.ndarray | None  # uint32 object ids (0 = background)
    class_names: list[str]

    @property
    def foreground_probability(self) -> np.ndarray | None:
        """Probability of not-background, the usual map to show for a 2-class model."""
        if self.probabilities is None:
            return None
        axis = 1 if self.probabilities.ndim == 4 else 0
        return 1.0 - np.take(self.probabilities, 0, axis=axis)


@dataclass(frozen=True)
class PredictProgress:
    done: int
    total: int
    z: int


def _resolve_model(model: TrainedModel | str | os.PathLike) -> TrainedModel:
    if isinstance(model, TrainedModel):
        return model
    return load_checkpoint(model)


def foreground_from_semantic(semantic: np.ndarray) -> np.ndarray:
    """Object pixels: every class but background (class 0)."""
    return semantic > 0


def predict_steps(
    model: TrainedModel | str | os.PathLike,
    image: Any,
    *,
    slices: list[int] | None = None,
    tile_size: int | None = None,
    batch_size: int = 4,
    tta: bool = False,
    device: str = "auto",
    amp: bool = True,
    probabilities: bool = True,
    instances: bool = False,
    instance_method: Literal["components", "watershed", "fill"] = "components",
    min_size: int = 0,
    threshold: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    tile_progress: Callable[[int, int], None] | None = None,
) -> Generator[PredictProgress, None, Prediction]:
    """Predict ``image`` slice by slice; yields progress, returns the :class:`Prediction`.

    ``slices`` restricts prediction to some z indices (the others stay 0), e.g.
    the slice a user is looking at. Normalisation follows the model's recorded
    method, with statistics of the whole ``image`` for percentile models.
    """
    from .overlap_tile import TilePredictor
    from .postprocess import instance_labels, semantic_labels

    trained = _resolve_model(model)
    batch_size = check_positive_int(batch_size, "batch_size")
    check_positive_int(min_size, "min_size", minimum=0)
    was_2d = getattr(image, "ndim", np.ndim(image)) == 2
    stack = as_stack(image, "image")
    zs = list(range(stack.shape[0])) if slices is None else [int(z) for z in slices]
    for z in zs:
        if not 0 <= z < stack.shape[0]:
            raise ValueError(f"slice {z} is outside the stack (0..{stack.shape[0] - 1})")
    low, high = trained.normalization.statistics(stack)
    predictor = TilePredictor(
        trained.model,
        tile_size=tile_size,
        batch_size=batch_size,
        tta=tta,
        device=device,
        amp=amp,
        progress=tile_progress,
        should_stop=should_stop,
    )
    z_, y_, x_ = stack.shape
    n_classes = trained.n_classes
    semantic = np.zeros((z_, y_, x_), np.uint8)
    probs = np.zeros((z_, n_classes, y_, x_), np.float32) if probabilities else None
    # watershed and fill draw boundaries where the network was least sure: keep the
    # foreground probability for them even when the caller did not ask for probabilities
    keep_fg = instances and instance_method in ("watershed", "fill") and probs is None
    fg_prob = np.zeros((z_, y_, x_), np.float32) if keep_fg else None
    try:
        for i, z in enumerate(zs):
            if should_stop is not None and should_stop():
                raise Cancelled("prediction cancelled")
            raw = np.asarray(stack[z])
            check_finite(raw, "image", f" (slice {z})")
            p = predictor.predict_slice(Normalization.apply(raw, low, high))
            semantic[z] = semantic_labels(p, threshold)
            if probs is not None:
                probs[z] = p
            if fg_prob is not None:
                fg_prob[z] = 1.0 - p[0]
            yield PredictProgress(i + 1, len(zs), z)
    finally:
        if predictor.device.type != "cpu":  # hand the GPU memory back between jobs
            trained.model.to("cpu")
            release_memory(predictor.device)
    inst = None
    if instances:
        inst = np.zeros((z_, y_, x_), np.uint32)
        fg = foreground_from_semantic(semantic[zs])
        if fg_prob is not None:
            pfg = fg_prob[zs]
        else:
            pfg = None if probs is None else 1.0 - probs[zs, 0]
        inst[zs] = instance_labels(
            fg, method=instance_method, min_size=min_size, probabilities=pfg, per_slice=True
        )
    if was_2d:
        semantic = semantic[0]
        probs = None if probs is None else probs[0]
        inst = None if inst is None else inst[0]
    return Prediction(semantic, probs, inst, list(trained.class_names))


def predict(model: TrainedModel | str | os.PathLike, image: Any, **kwargs: Any) -> Prediction:
    """Predict a 2D image or 3D stack; see :func:`predict_steps` for the options."""
    gen = predict_steps(model, image, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
