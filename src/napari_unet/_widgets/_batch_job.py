"""A batch job and its handlers on the main thread (a mixin of ``BatchWidget``).

:func:`batch_job` runs :mod:`napari_unet.prediction.batch` (the engine behind
``napari-unet segment``) in a worker thread; the mixin gathers the request
at Start and turns the engine's progress into progress bars, table rows and
the status line.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Union

from ._jobs import JobFailed, describe_error, user_error_types

if TYPE_CHECKING:
    from magicgui.widgets import CheckBox, ComboBox, FileEdit, ProgressBar, SpinBox

    from ..model.checkpoint import TrainedModel
    from ..prediction.batch import BatchOptions, BatchProgress, FileResult

logger = logging.getLogger(__name__)

#: Steps of the overall progress bar per file (the current file's slices fill one file's share).
_STEPS_PER_FILE = 100


@dataclass
class BatchRequest:
    """Everything a batch needs, gathered on the main thread at Start."""

    model: Union[TrainedModel, Path]  # the model trained in this viewer, or a checkpoint path
    inputs: list[Path]
    outdir: Path
    options: BatchOptions


@dataclass(frozen=True)
class BatchOutcome:
    """The results of the files that were handled (all of them unless cancelled)."""

    results: list[FileResult] = field(default_factory=list)
    cancelled: bool = False
    elapsed_s: float = 0.0


def batch_job(
    request: BatchRequest, cancel: threading.Event
) -> Generator[BatchProgress, None, Union[BatchOutcome, JobFailed]]:
    """Run :func:`napari_unet.prediction.batch.batch_segment_steps` (worker thread), yielding its progress.

    The engine predicts with its own device copy of the shared model and frees
    it when the batch ends; the shared model never moves.
    """
    from ..errors import Cancelled
    from ..prediction.batch import batch_segment_steps

    started = time.perf_counter()
    errors = user_error_types()
    try:
        results = yield from batch_segment_steps(
            request.model, request.inputs, request.outdir, request.options, cancel.is_set
        )
    except Cancelled as exc:
        done = list(getattr(exc, "results", []))
        return BatchOutcome(done, cancelled=True, elapsed_s=time.perf_counter() - started)
    except errors as exc:
        logger.info("batch failed: %s", exc)
        return JobFailed(describe_error(exc))
    return BatchOutcome(results, elapsed_s=time.perf_counter() - started)


class BatchJobMixin:
    """Start: the request and an empty table; then progress, rows and the summary."""

    output_folder: FileEdit
    device: ComboBox
    instance_method: ComboBox
    probability_dtype: ComboBox
    tile_size: SpinBox
    batch_size: SpinBox
    min_size: SpinBox
    tta: CheckBox
    instances: CheckBox
    probabilities: CheckBox
    overwrite: CheckBox
    z_smoothing: ComboBox
    file_progress: ProgressBar
    results: dict[int, FileResult]
    _inputs: list[Path]

    def build_request(self) -> BatchRequest:
        from ..prediction.batch import BatchOptions

        model = self.selected_model()
        files = self.expanded_inputs()
        assert not isinstance(model, str) and not isinstance(files, str)  # validated before Start
        instances = bool(self.instances.value)
        options = BatchOptions(
            instances=instances,
            probabilities=bool(self.probabilities.value),
            probability_dtype=self.probability_dtype.value,
            tile_size=int(self.tile_size.value) or None,
            batch_size=int(self.batch_size.value),
            tta=bool(self.tta.value),
            device=self.device.value,
            overwrite=bool(self.overwrite.value),
            min_size=int(self.min_size.value) if instances else 0,
            instance_method=self.instance_method.value,
            z_smoothing=self.z_smoothing.value,
        )
        return BatchRequest(model, files, Path(self.output_folder.value), options)

    def start_job(self) -> None:
        request = self.build_request()
        self._inputs = list(request.inputs)
        self.results = {}
        self._fill_table()
        n = len(self._inputs)
        self.run_job(batch_job, request, total=n * _STEPS_PER_FILE, desc="Batch segmentation")
        self.file_progress.value = 0
        self.file_progress.visible = True
        self.set_status(f"Segmenting {n} file{'s' if n != 1 else ''}...", "info")

    def on_yielded(self, value: BatchProgress) -> None:
        total = max(1, value.slices_total)
        self.file_progress.max = total
        self.file_progress.value = min(value.slices_done, total)
        share = (
            _STEPS_PER_FILE
            if value.result is not None
            else value.slices_done * _STEPS_PER_FILE // total
        )
        self.set_progress(value.file_index * _STEPS_PER_FILE + share)
        if value.result is not None:
            self._show_result(value.file_index, value.result)
        else:
            self._set_row(
                value.file_index, "running", f"slice {value.slices_done}/{value.slices_total}"
            )
        if not (self._cancel_event is not None and self._cancel_event.is_set()):
            self.set_status(
                f"File {value.file_index + 1}/{value.n_files}: {value.path.name} "
                f"({value.slices_done}/{value.slices_total} slices)",
                "info",
            )

    def on_returned(self, value: Any) -> None:
        if isinstance(value, JobFailed):
            self.report_error(value.message)
            for row in range(len(self._inputs)):
                if row not in self.results:
                    self._set_row(row, "not run", "")
            return
        assert isinstance(value, BatchOutcome)
        for row, result in enumerate(value.results):  # in input order
            if row not in self.results:
                self._show_result(row, result)
        for row in range(len(self._inputs)):
            if row not in self.results:
                self._set_row(row, "cancelled", "no output written")
        counts = {"done": 0, "skipped": 0, "failed": 0}
        for result in self.results.values():
            counts[result.status] = counts.get(result.status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        if value.cancelled:
            self.set_status(f"Cancelled: {summary}; unfinished files left no output.", "warn")
        else:
            level = "warn" if counts["failed"] else "ok"
            self.set_status(f"Batch finished in {value.elapsed_s:.1f} s: {summary}.", level)
