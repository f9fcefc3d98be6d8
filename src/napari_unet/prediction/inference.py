"""Whole-stack prediction with a trained model: probabilities, semantic and instance labels.

:func:`predict_steps` is a generator (one progress item per slice, the
:class:`Prediction` as its return value) so that a widget can run it in a
worker and cancel it; :func:`predict` drains it for scripts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import numpy as np

from .._validation import as_stack
from ..model.checkpoint import TrainedModel, load_checkpoint
from .settings import PredictionSettings


@dataclass
class Prediction:
    """Result of :func:`predict`; arrays have the input's dimensionality (2D or 3D)."""

    semantic: np.ndarray  # uint8 class ids (0 = background)
    probabilities: np.ndarray | None  # float32 (Z, C, Y, X) or (C, Y, X)
    instances: np.ndarray | None  # uint32 object ids (0 = background)
    class_names: list[str]
    #: float32 (Z, Y, X) or (Y, X) per-pixel uncertainty in [0, 1] (0 on slices
    #: not predicted); None unless ``uncertainty=True``
    uncertainty: np.ndarray | None = None
    #: float32 (Z,) per-slice score (see ``uncertainty.slice_score``), NaN for
    #: slices not predicted; (1,) for a 2D image; None unless ``uncertainty=True``
    slice_scores: np.ndarray | None = None

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


def predict_steps(
    model: TrainedModel | str | os.PathLike,
    image: Any,
    *,
    slices: Sequence[int] | None = None,
    settings: PredictionSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
    tile_progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] | None = None,
    **options: Any,
) -> Generator[PredictProgress, None, Prediction]:
    """Predict ``image`` slice by slice; yields progress, returns the :class:`Prediction`.

    How to predict is a :class:`~napari_unet.prediction.settings.PredictionSettings`
    (``settings``), or its fields as keywords (``tile_size``, ``batch_size``,
    ``tta``, ``device``, ``amp``, ``probabilities``, ``instances``,
    ``instance_method``, ``min_size``, ``threshold``, ``uncertainty``,
    ``uncertainty_method``, ...), which replace those of
    ``settings``. ``slices`` restricts prediction to some z indices (the
    others stay 0), e.g. the slice a user is looking at. Normalisation follows
    the model's recorded method, with statistics of the whole ``image`` for
    percentile models. ``notice`` hears what the engine changed on its own
    (smaller tiles after running out of GPU memory).
    """
    from .stack import PredictionEngine, StackPrediction
    from .uncertainty import slice_score

    settings = PredictionSettings.build(settings, **options)
    trained = _resolve_model(model)
    was_2d = getattr(image, "ndim", np.ndim(image)) == 2
    stack = as_stack(image, "image")
    zs = list(range(stack.shape[0])) if slices is None else [int(z) for z in slices]
    for z in zs:
        if not 0 <= z < stack.shape[0]:
            raise ValueError(f"slice {z} is outside the stack (0..{stack.shape[0] - 1})")
    z_, y_, x_ = stack.shape
    semantic = np.zeros((z_, y_, x_), np.uint8)
    probs = np.zeros((z_, trained.n_classes, y_, x_), np.float32) if settings.probabilities else None
    inst = np.zeros((z_, y_, x_), np.uint32) if settings.instances else None
    unc = np.zeros((z_, y_, x_), np.float32) if settings.uncertainty else None
    scores = np.full(z_, np.nan, np.float32) if settings.uncertainty else None
    engine = PredictionEngine(
        trained, settings, should_stop=should_stop, tile_progress=tile_progress, notice=notice
    )
    with engine:
        walk = StackPrediction(engine, stack, zs, should_stop=should_stop)
        for i, result in enumerate(walk):
            semantic[result.z] = result.semantic
            if probs is not None:
                probs[result.z] = result.probabilities
            if inst is not None:
                inst[result.z] = result.instances
            if unc is not None and scores is not None:
                unc[result.z] = result.uncertainty
                scores[result.z] = slice_score(result.uncertainty)
            yield PredictProgress(i + 1, len(zs), result.z)
    if was_2d:
        semantic = semantic[0]
        probs = None if probs is None else probs[0]
        inst = None if inst is None else inst[0]
        unc = None if unc is None else unc[0]
    return Prediction(semantic, probs, inst, list(trained.class_names), unc, scores)


def predict(model: TrainedModel | str | os.PathLike, image: Any, **kwargs: Any) -> Prediction:
    """Predict a 2D image or 3D stack; see :func:`predict_steps` for the options."""
    gen = predict_steps(model, image, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
