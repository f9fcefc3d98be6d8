"""Which slice to paint next: the one the network is least sure about.

Active learning for "label a few slices": predict the slices nobody has
painted yet, score each by its uncertainty
(:func:`~napari_unet.prediction.uncertainty.slice_score`) and rank them.
Neighbouring EM slices look alike, so the slice next to a painted one teaches
little that the painted one did not; a diversity term down-weights slices
close to painted (and already suggested) slices.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Generator, Sequence

import numpy as np

from .annotations import AnnotationSettings, summarize

#: Default diversity length (in slices): a slice next to a painted one keeps
#: 1 - exp(-1/2) = 39 % of its score, one 5 slices away 92 %.
DEFAULT_DIVERSITY = 2.0


def _check_range(z_range: tuple[int, int] | None, n_slices: int) -> tuple[int, int]:
    if z_range is None:
        return 0, n_slices
    start, stop = (int(v) for v in z_range)
    if not 0 <= start < stop <= n_slices:
        raise ValueError(
            f"z_range must be (start, stop) with 0 <= start < stop <= {n_slices} "
            f"(stop exclusive), got {tuple(z_range)}"
        )
    return start, stop


def _nothing_left(start: int, stop: int) -> ValueError:
    return ValueError(
        f"no unpainted slice left to suggest in z = {start}..{stop - 1}: every slice there "
        "is painted (or was not scored); widen z_range or train on what you have"
    )


def _distance_weight(z: int, taken: list[int], diversity: float) -> float:
    """``1 - exp(-d / diversity)``, d = distance to the nearest taken slice (1 when none)."""
    if diversity == 0 or not taken:
        return 1.0
    d = min(abs(z - t) for t in taken)
    return float(1.0 - np.exp(-d / diversity))


def rank_slices(
    scores: Sequence[float] | np.ndarray,
    painted: Sequence[int],
    n: int = 1,
    *,
    z_range: tuple[int, int] | None = None,
    diversity: float = DEFAULT_DIVERSITY,
) -> list[tuple[int, float]]:
    """The ``n`` best unpainted slices as ``(z, weighted score)``, best first.

    Args:
        scores: one uncertainty score per slice (higher: less sure); NaN marks
            a slice that was not scored, which is never suggested.
        painted: z indices already painted; never suggested.
        n: how many slices to suggest (fewer when fewer are left).
        z_range: ``(start, stop)``, start inclusive, stop exclusive, like
            ``range``; None: the whole stack.
        diversity: length in slices of the diversity term: each score is
            multiplied by ``1 - exp(-d / diversity)`` with ``d`` the distance to
            the nearest painted or already chosen slice. 0 disables it.

    Raises:
        ValueError: no unpainted, scored slice is left in range (or bad arguments).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one number per slice, got shape {scores.shape}")
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n!r}")
    if not float(diversity) >= 0:
        raise ValueError(f"diversity must be >= 0 (0 disables it), got {diversity!r}")
    start, stop = _check_range(z_range, len(scores))
    taken = sorted({int(z) for z in painted})
    candidates = [
        z for z in range(start, stop) if z not in taken and np.isfinite(scores[z])
    ]
    if not candidates:
        raise _nothing_left(start, stop)
    chosen: list[tuple[int, float]] = []
    for _ in range(min(int(n), len(candidates))):
        weighted = [(scores[z] * _distance_weight(z, taken, float(diversity)), z) for z in candidates]
        best, z = max(weighted, key=lambda item: (item[0], -item[1]))
        chosen.append((z, float(best)))
        candidates.remove(z)
        taken.append(z)
    return chosen


def _painted_slices(labels: Any, annotation: AnnotationSettings, shape: tuple[int, ...]) -> list[int]:
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    if labels.shape != shape:
        raise ValueError(f"labels have shape {labels.shape}, the image {shape}; they must match")
    return list(summarize(labels, annotation).slices)


def score_steps(
    model: Any | str | os.PathLike,
    image: Any,
    zs: Sequence[int],
    *,
    method: str = "entropy",
    settings: Any | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Any, None, np.ndarray]:
    """Score slices ``zs`` of ``image`` by uncertainty, yielding progress per slice.

    Returns one score per slice of the stack (NaN where not scored). Walks the
    one prediction loop but keeps only the scores: no probability or
    uncertainty maps of the whole stack are held, whatever its size. ``method``
    is ``"entropy"`` or ``"tta"`` (which turns test-time augmentation on).
    """
    from .._validation import as_stack
    from ..prediction.inference import PredictProgress, _resolve_model
    from ..prediction.settings import PredictionSettings
    from ..prediction.stack import PredictionEngine, StackPrediction
    from ..prediction.uncertainty import slice_score

    extra = {"tta": True} if method == "tta" else {}
    settings = PredictionSettings.build(
        settings, probabilities=False, instances=False, uncertainty=True,
        uncertainty_method=method, **extra,
    )
    trained = _resolve_model(model)
    stack = as_stack(image, "image")
    scores = np.full(stack.shape[0], np.nan, np.float32)
    with PredictionEngine(trained, settings, should_stop=should_stop) as engine:
        walk = StackPrediction(engine, stack, zs, should_stop=should_stop)
        for i, result in enumerate(walk):
            scores[result.z] = slice_score(result.uncertainty)
            yield PredictProgress(i + 1, len(zs), result.z)
    return scores


def suggest_slices(
    model: Any | str | os.PathLike,
    image: Any,
    labels: Any,
    n: int = 1,
    *,
    z_range: tuple[int, int] | None = None,
    diversity: float = DEFAULT_DIVERSITY,
    method: str = "entropy",
    settings: Any | None = None,
    annotation: AnnotationSettings | None = None,
) -> list[tuple[int, float]]:
    """Predict the unpainted slices of ``image`` and suggest the ``n`` to paint next.

    ``labels`` is the annotation stack (same shape as ``image``); which slices
    are painted follows :func:`~napari_unet.training.annotations.summarize`
    with ``annotation`` (default: the model's annotation settings). Only the
    candidate slices are predicted. ``method`` is an uncertainty method
    (``"entropy"`` or ``"tta"``, which turns test-time augmentation on);
    ``settings`` are :class:`~napari_unet.prediction.settings.PredictionSettings`
    (device, tiles, ...). See :func:`rank_slices` for ``z_range`` and
    ``diversity``. Returns ``(z, score)`` pairs, best first.
    """
    from .._validation import as_stack
    from ..prediction.inference import _resolve_model

    trained = _resolve_model(model)
    stack = as_stack(image, "image")
    annotation = annotation if annotation is not None else trained.annotation
    painted = _painted_slices(labels, annotation, tuple(stack.shape))
    start, stop = _check_range(z_range, stack.shape[0])
    candidates = [z for z in range(start, stop) if z not in set(painted)]
    if not candidates:
        raise _nothing_left(start, stop)
    steps = score_steps(trained, stack, candidates, method=method, settings=settings)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            scores = done.value
            break
    return rank_slices(scores, painted, n, z_range=(start, stop), diversity=diversity)
