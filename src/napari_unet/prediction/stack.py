"""The one loop that predicts a stack: slice by slice, then post-processed.

:class:`PredictionEngine` holds a model ready on its device for one job;
:class:`StackPrediction` walks the slices of a stack with it and yields one
:class:`SlicePrediction` per slice (probabilities, class labels, foreground
probability and object ids as the settings ask). Everything that predicts a
stack consumes this: ``predict`` fills arrays in memory, batch writes TIFF
pages, the panels and the cluster run those. Reading and writing files stays
in the I/O modules.

Sharing the model between jobs: a job on a GPU predicts with its own copy of
the weights on that device, so the model object that the panels share never
moves between devices and two jobs (a Segment and a Batch run, say) never
pull it from under each other. On the CPU the shared weights are used as they
are (read only: inference changes nothing).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .._validation import check_finite
from ..devices import release_memory, resolve_device
from ..errors import Cancelled
from ..model.normalization import Normalization
from .settings import PredictionSettings
from .z_context import PlaneReader, resolve_z_sigma, walk_z

StopCallback = Callable[[], bool]
_UINT32_MAX = int(np.iinfo(np.uint32).max)


@dataclass
class SlicePrediction:
    """What the network and post-processing made of slice ``z``."""

    z: int
    probabilities: np.ndarray  # (C, Y, X) float32 softmax
    semantic: np.ndarray  # (Y, X) uint8 class ids
    foreground: np.ndarray | None  # (Y, X) float32 1 - p(background), when asked for
    instances: np.ndarray | None  # (Y, X) uint32 ids, unique across the stack's slices
    uncertainty: np.ndarray | None = None  # (Y, X) float32 in [0, 1], when asked for


class PredictionEngine:
    """A trained model on its device with a tile predictor, for one job.

    Use as a context manager (or call :meth:`close`) so that GPU memory is
    handed back when the job ends, whatever way it ends.
    """

    def __init__(
        self,
        trained: Any,
        settings: PredictionSettings,
        *,
        should_stop: StopCallback | None = None,
        tile_progress: Callable[[int, int], None] | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        from .overlap_tile import TilePredictor

        self.trained = trained
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.closed = False
        self._own_copy = self.device.type != "cpu" or _on_other_device(trained.model, self.device)
        net = copy.deepcopy(trained.model) if self._own_copy else trained.model
        self.predictor = TilePredictor(
            net,
            tile_size=settings.tile_size,
            batch_size=settings.batch_size,
            tta=settings.tta,
            device=self.device,
            amp=settings.amp,
            precision=settings.precision,
            progress=tile_progress,
            should_stop=should_stop,
            notice=notice,
        )

    @property
    def should_stop(self) -> StopCallback | None:
        return self.predictor.should_stop

    @should_stop.setter
    def should_stop(self, value: StopCallback | None) -> None:
        self.predictor.should_stop = value

    def close(self) -> None:
        """Drop the device copy of the weights and give cached GPU memory back.

        A closed engine refuses to predict on every device (not only where a
        copy was dropped), so a use after close fails the same way everywhere.
        """
        if self.closed:
            return
        self.closed = True
        if self._own_copy:
            self.predictor.model = None  # type: ignore[assignment]
            release_memory(self.device)

    def __enter__(self) -> PredictionEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _on_other_device(model: Any, device: Any) -> bool:
    params = getattr(model, "parameters", None)
    if params is None:
        return False
    first = next(iter(params()), None)
    return first is not None and first.device.type != device.type


class StackPrediction:
    """Walk the slices ``zs`` of a (Z, Y, X) stack, yielding :class:`SlicePrediction`.

    Normalisation statistics come from the whole stack (the model's recorded
    method) and are computed when the walk starts. Object ids continue from
    slice to slice (slice ``z``'s ids follow the previous slice's), so they
    are unique across the stack. Timings and the object count are kept as
    attributes for provenance records. ``settings`` may narrow what the
    engine's settings compute (e.g. outputs a batch already has).
    ``statistics`` gives the normalisation ``(low, high)`` instead: a block
    of a volume predicted on a cluster must use the whole volume's.
    """

    def __init__(
        self,
        engine: PredictionEngine,
        stack: Any,
        zs: Sequence[int] | None = None,
        *,
        should_stop: StopCallback | None = None,
        settings: PredictionSettings | None = None,
        statistics: tuple[float, float] | None = None,
    ) -> None:
        self.engine = engine
        self.statistics = statistics
        self.settings = engine.settings if settings is None else settings
        self.stack = stack
        self.zs = list(range(stack.shape[0])) if zs is None else [int(z) for z in zs]
        self.should_stop = should_stop
        self.low = self.high = float("nan")
        self.statistics_seconds = 0.0
        self.network_seconds = 0.0
        self.n_objects = 0
        self.z_sigma = 0.0  # resolved from settings.z_smoothing when the walk starts

    def _stop_requested(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def __iter__(self) -> Iterator[SlicePrediction]:
        from .postprocess import instance_labels, semantic_labels

        if self.engine.closed:
            raise RuntimeError("this PredictionEngine is closed; build a new one")
        settings = self.settings
        t0 = time.perf_counter()
        if self.statistics is not None:
            self.low, self.high = (float(v) for v in self.statistics)
        else:
            self.low, self.high = self.engine.trained.normalization.statistics(self.stack)
        self.statistics_seconds = time.perf_counter() - t0
        whole = len(self.zs) == int(self.stack.shape[0])
        self.z_sigma = resolve_z_sigma(settings.z_smoothing, self.stack, whole)
        self._planes = PlaneReader(self._raw, int(self.stack.shape[0]), self.engine.predictor.planes)
        # probabilities smoothed along z when z_sigma > 0; the uncertainty is the slice's own
        walk = walk_z(self.zs, int(self.stack.shape[0]), self.z_sigma, self._slice)
        for z, probs, (_, uncertainty) in walk:
            if self._stop_requested():  # also between slices the smoothing had ready
                raise Cancelled("prediction cancelled")
            semantic = semantic_labels(probs, settings.threshold)
            foreground = None
            if settings.probabilities or settings.needs_foreground:
                foreground = 1.0 - probs[0]
            ids = None
            if settings.instances:
                ids = instance_labels(
                    semantic > 0,
                    method=settings.instance_method,  # type: ignore[arg-type]
                    min_size=settings.min_size,
                    probabilities=foreground if settings.needs_foreground else None,
                )
                ids = self._continue_ids(ids)
            yield SlicePrediction(z, probs, semantic, foreground, ids, uncertainty)

    def _slice(self, z: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The network's probabilities (and uncertainty) of slice ``z`` (read with its
        neighbours when the network reads several slices)."""
        if self._stop_requested():
            raise Cancelled("prediction cancelled")
        raw = self._planes(z)
        t1 = time.perf_counter()
        out = self._network(Normalization.apply(raw, self.low, self.high))
        self.network_seconds += time.perf_counter() - t1
        return out

    def _raw(self, z: int) -> np.ndarray:
        """Slice ``z`` as stored, checked."""
        raw = np.asarray(self.stack[z])
        check_finite(raw, "image", f" (slice {z})")
        return raw

    def _network(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities of one normalised slice and, when asked, its uncertainty map."""
        from .overlap_tile import predict_slice_disagreement
        from .uncertainty import normalized_entropy

        settings, predictor = self.settings, self.engine.predictor
        if settings.uncertainty and settings.uncertainty_method == "tta":
            return predict_slice_disagreement(predictor, image)
        probs = predictor.predict_slice(image)
        return probs, normalized_entropy(probs) if settings.uncertainty else None

    def _continue_ids(self, ids: np.ndarray) -> np.ndarray:
        n = int(ids.max()) if ids.size else 0
        if self.n_objects + n > _UINT32_MAX:
            raise ValueError(f"more than {_UINT32_MAX} objects; cannot store them as uint32")
        if n:
            ids[ids > 0] += np.uint32(self.n_objects)
            self.n_objects += n
        return ids
