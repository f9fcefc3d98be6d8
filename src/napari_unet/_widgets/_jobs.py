"""The long jobs the widgets run in napari ``thread_worker``s.

Each job is a generator over the engine's own generators (the ``Trainer``,
``predict_steps``). It runs in a worker thread and never touches Qt objects
or napari layers: everything the GUI needs is *yielded* as a plain value and
handled by the widget on the main thread. Jobs import torch and the engine
only when they start.

Errors a user can act on (bad input, a checkpoint that does not fit, running
out of GPU memory, a diverging run) are caught here and returned as
:class:`JobFailed` with a readable message; anything else propagates to the
worker's ``errored`` signal (napari shows it with its traceback).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Union

import numpy as np

if TYPE_CHECKING:
    from ..model.checkpoint import TrainedModel
    from ..model.config import UNetConfig
    from ..prediction.inference import Prediction, PredictProgress
    from ..prediction.settings import PredictionSettings
    from ..training.trainer import TrainEvent, TrainingConfig

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class TrainStarted:
    """The trainer is built (targets and weight maps ready); the loop starts."""

    summary: dict[str, Any]
    reinitialised: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreviewUpdate:
    """Prediction of one slice by the model as it is at ``iteration``."""

    z: int | None  # None for a 2D image
    labels: np.ndarray  # (Y, X) uint8 class ids
    iteration: int
    final: bool = False


@dataclass(frozen=True)
class JobFailed:
    """A job stopped on an error the user can act on; ``model`` keeps what was learnt."""

    message: str
    model: TrainedModel | None = None
    iteration: int = 0


@dataclass(frozen=True)
class TrainOutcome:
    model: TrainedModel
    events: int
    cancelled: bool
    best_metric: float | None
    iterations_run: int
    elapsed_s: float


@dataclass(frozen=True)
class SegmentOutcome:
    prediction: Prediction | None  # None when cancelled
    slices: list[int] | None
    elapsed_s: float
    cancelled: bool = False


TrainMessage = Union[TrainStarted, "TrainEvent", PreviewUpdate]


@dataclass
class TrainRequest:
    """Everything a training run needs, gathered on the main thread at Start."""

    image: Any  # level-0 (Z, Y, X) or (Y, X) array, possibly lazy
    labels: np.ndarray  # snapshot of the annotation layer
    config: TrainingConfig
    model: UNetConfig | None = None  # architecture when training from scratch
    init: Path | TrainedModel | None = None  # checkpoint to fine-tune
    preview_every: int = 0  # 0: no live preview
    preview_z: Callable[[], int | None] = field(default=lambda: None)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message tells the user what to change."""
    import torch

    types: list[type[BaseException]] = [ValueError, FloatingPointError, OSError, MemoryError]
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None:
        types.append(oom)
    return tuple(types)


def describe_error(exc: BaseException) -> str:
    """A message for the status line and the notification."""
    text = str(exc) or type(exc).__name__
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return (
            f"Out of memory ({text.splitlines()[0][:160]}). Lower the batch size, patch size or "
            "tile size, or choose a smaller model."
        )
    return text


# --------------------------------------------------------------------------- training
def predict_slice(
    model: TrainedModel, image: Any, z: int | None, *, device: str, batch_size: int
) -> np.ndarray:
    """Semantic labels of one (Y, X) slice; reads only that slice of a lazy stack (and its
    neighbours for a network that reads several slices)."""
    from ..prediction.inference import predict

    n = model.config.input_slices
    if z is None or n == 1:
        plane = np.asarray(image if z is None else image[z])
        return predict(model, plane, device=device, batch_size=batch_size, probabilities=False).semantic
    from ..prediction.z_context import input_planes

    # the slice's window as a small stack: its middle slice reads exactly these planes
    window = input_planes(lambda i: np.asarray(image[i]), z, int(image.shape[0]), n)
    return predict(model, window, slices=[n // 2], device=device, batch_size=batch_size,
                   probabilities=False).semantic[n // 2]


def _release(device: str) -> None:
    """Hand cached GPU memory back once the copies used for a preview are gone."""
    import gc

    from .. import devices

    gc.collect()
    devices.release_memory(devices.resolve_device(device))


def _preview_due(request: TrainRequest, event: Any) -> bool:
    """Every ``preview_every`` iterations, and once early in a run from scratch.

    A new network has no starting prediction to show, and a user waiting for
    the first of every 25 iterations saw nothing for 10 s or more; a fifth of
    the way there it already shows the network at work.
    """
    every = request.preview_every
    if not every or event.done:
        return False
    early = request.init is None and every >= 5 and event.iteration == every // 5
    return early or event.iteration % every == 0


def train_job(
    request: TrainRequest, cancel: threading.Event
) -> Generator[TrainMessage, None, TrainOutcome | JobFailed]:
    """Build a trainer, run it, and yield events and live previews.

    ``cancel`` is set from the main thread; the trainer is asked to stop after
    the current iteration and still returns its model so far.
    """
    from ..training.trainer import Trainer

    started = time.perf_counter()
    errors = user_error_types()
    try:
        trainer = Trainer(
            request.image, request.labels, request.config, model=request.model, init=request.init
        )
    except errors as exc:
        logger.info("training not started: %s", exc)
        return JobFailed(describe_error(exc))
    if cancel.is_set():  # cancelled while the weight maps were computed
        trainer.cancel()
    yield TrainStarted(trainer.summary(), tuple(trainer.reinitialised))
    device = str(trainer.device)
    if request.preview_every and request.init is not None and not cancel.is_set():
        # fine-tuning starts from a model that already segments: show what it does
        # now, seconds after Start, instead of after the first N iterations
        z = request.preview_z()
        labels = predict_slice(
            trainer.snapshot(), request.image, z, device=device, batch_size=request.config.batch_size
        )
        yield PreviewUpdate(z, labels, trainer.start_iteration)
    n_events = 0
    last: TrainEvent | None = None
    # closed explicitly: a worker aborted between two events must still stop the
    # trainer's producer thread and hand its device memory back
    events = iter(trainer)
    try:
        for event in events:
            if cancel.is_set():
                trainer.cancel()
            n_events += 1
            last = event
            yield event
            if cancel.is_set():
                trainer.cancel()
            if _preview_due(request, event) and not trainer.cancelled:
                z = request.preview_z()
                labels = predict_slice(
                    trainer.snapshot(),
                    request.image,
                    z,
                    device=device,
                    batch_size=request.config.batch_size,
                )
                yield PreviewUpdate(z, labels, event.iteration)
    except errors as exc:
        message = describe_error(exc)
        logger.warning("training stopped by an error: %s", message)
        kept = trainer.kept_model(stopped_by_error=message)
        return JobFailed(message, kept, last.iteration if last else 0)
    finally:
        events.close()
    result = trainer.result
    assert result is not None  # the trainer sets it when its loop ends normally
    if request.preview_every:
        # the final model on the slice in view (the engine uses its own device copy)
        z = request.preview_z()
        try:
            labels = predict_slice(
                result, request.image, z, device=device, batch_size=request.config.batch_size
            )
        finally:
            _release(device)
        yield PreviewUpdate(z, labels, last.iteration if last else 0, final=True)
    return TrainOutcome(
        model=result,
        events=n_events,
        cancelled=bool(last.cancelled) if last else True,
        best_metric=last.best_metric if last else None,
        iterations_run=last.iteration if last else 0,
        elapsed_s=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------- segmentation
@dataclass
class SegmentRequest:
    """A Segment panel run: the shared model (never moved), the image, and how to predict."""

    model: TrainedModel
    image: Any
    slices: list[int] | None
    settings: PredictionSettings


def segment_job(
    request: SegmentRequest, cancel: threading.Event
) -> Generator[PredictProgress, None, SegmentOutcome | JobFailed]:
    """Predict slice by slice, yielding progress; cancel stops between tiles.

    On a GPU the engine predicts with its own copy of the weights and frees it
    at the end, so the shared model stays where it is (on the CPU).
    """
    from ..errors import Cancelled
    from ..prediction.inference import predict_steps

    started = time.perf_counter()
    errors = user_error_types()
    try:
        prediction = yield from predict_steps(
            request.model,
            request.image,
            slices=request.slices,
            settings=request.settings,
            should_stop=cancel.is_set,
        )
    except Cancelled:
        return SegmentOutcome(None, request.slices, time.perf_counter() - started, cancelled=True)
    except errors as exc:
        logger.info("segmentation failed: %s", exc)
        return JobFailed(describe_error(exc))
    return SegmentOutcome(prediction, request.slices, time.perf_counter() - started)
