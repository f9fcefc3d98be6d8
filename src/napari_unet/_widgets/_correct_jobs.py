"""The worker side of the Train panel's "Copy prediction" and "Suggest next slice".

Like :mod:`._jobs`, these generators run in a napari ``thread_worker``, use
the engine only, and never touch Qt or layers: the panel writes the copied
slice (with undo) and moves the viewer on the main thread
(:mod:`._correct`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator

import numpy as np

from ..prediction.settings import PredictionSettings
from ._jobs import JobFailed, describe_error, user_error_types

if TYPE_CHECKING:
    from ..model.checkpoint import TrainedModel
    from ..prediction.inference import PredictProgress
    from ..training.correction import CopyResult


@dataclass
class CorrectRequest:
    """One slice to copy (``zs`` = [z]) or the candidates to rank (``zs`` = unpainted slices)."""

    model: TrainedModel
    image: Any  # level-0 (Z, Y, X) stack, possibly lazy; (1, Y, X) for a 2D image
    annotation: Any  # the layer's level-0 array (copy: read for its largest id)
    zs: list[int]
    mode: str  # "dense" or "scribbles"
    device: str
    batch_size: int
    painted: tuple[int, ...] = ()


@dataclass(frozen=True)
class CopyOutcome:
    z: int
    result: CopyResult | None  # None when cancelled


@dataclass(frozen=True)
class SuggestOutcome:
    ranked: list[tuple[int, float]]  # (z, weighted score), best first; [] when cancelled
    raw_scores: np.ndarray | None  # the model's per-slice uncertainty (NaN: not predicted)


def copy_job(
    request: CorrectRequest, cancel: threading.Event
) -> Generator[PredictProgress, None, CopyOutcome | JobFailed]:
    """Predict slice ``zs[0]`` and turn it into annotation ids (not written: the panel does).

    Only that slice is predicted and kept (the stack's normalisation statistics
    still come from the whole stack, as in the Segment panel): no stack-sized
    result arrays for one slice.
    """
    from ..errors import Cancelled
    from ..prediction.inference import PredictProgress
    from ..prediction.stack import PredictionEngine, StackPrediction
    from ..training.correction import copy_prediction

    (z,) = request.zs
    dense = request.mode == "dense"
    settings = PredictionSettings(
        device=request.device, batch_size=request.batch_size, probabilities=False, instances=dense
    )
    try:
        with PredictionEngine(request.model, settings, should_stop=cancel.is_set) as engine:
            (result,) = StackPrediction(engine, request.image, [z], should_stop=cancel.is_set)
        yield PredictProgress(1, 1, z)
        predicted = result.instances if dense else result.semantic
        copied = copy_prediction(request.annotation, predicted, [z], mode=request.mode)
    except Cancelled:
        return CopyOutcome(z, None)
    except user_error_types() as exc:
        return JobFailed(describe_error(exc))
    return CopyOutcome(z, copied)


def suggest_job(
    request: CorrectRequest, cancel: threading.Event
) -> Generator[PredictProgress, None, SuggestOutcome | JobFailed]:
    """Score the unpainted slices by uncertainty and rank them (3 best)."""
    from ..errors import Cancelled
    from ..training.suggest import rank_slices, score_steps

    settings = PredictionSettings(device=request.device, batch_size=request.batch_size)
    try:
        scores = yield from score_steps(
            request.model, request.image, request.zs, settings=settings, should_stop=cancel.is_set
        )
        ranked = rank_slices(scores, request.painted, 3)
    except Cancelled:
        return SuggestOutcome([], None)
    except user_error_types() as exc:
        return JobFailed(describe_error(exc))
    return SuggestOutcome(ranked, scores)
