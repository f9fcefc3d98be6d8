"""Batch dock widget: segment a folder (or a list) of TIFF stacks into an output folder.

The GUI face of :mod:`napari_unet.batch` (the engine behind ``napari-unet
segment``): the same options as the command line, run in a napari
``thread_worker`` (:func:`batch_job`) with Start/Cancel, an overall progress
bar (files) and one for the file being segmented (slices). A table lists
every input with its status: *waiting*, *running*, *done*, *skipped* (its
outputs exist) or *failed* with the reason; the batch goes on after a failed
file. Double-clicking a finished row (or "Open selected") opens its outputs
in the viewer: labels/instances as Labels layers, probabilities as an Image.

Cancel stops after the current slice; the file being written is discarded
(the engine writes to hidden temporary files), finished files are kept and a
later run skips them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Union

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ._choices import INSTANCE_METHOD_CHOICES, INSTANCE_METHOD_LABEL, INSTANCE_METHOD_TOOLTIP
from ._common import (
    CheckpointCache,
    JobWidget,
    device_choices,
    device_problem,
    empty_path,
    model_source_choices,
    show_auto_at_minimum,
)
from ._jobs import JobFailed, describe_error, user_error_types
from ._state import models_for

if TYPE_CHECKING:
    import napari

    from ..batch import BatchOptions, BatchProgress, FileResult
    from ..checkpoint import TrainedModel

logger = logging.getLogger(__name__)

#: Table columns.
COL_FILE, COL_STATUS, COL_DETAILS = 0, 1, 2
#: Steps of the overall progress bar per file (the current file's slices fill one file's share).
_STEPS_PER_FILE = 100


# --------------------------------------------------------------------------- the job
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
    """Run :func:`napari_unet.batch.batch_segment_steps` (worker thread), yielding its progress.

    The engine predicts with its own device copy of the shared model and frees
    it when the batch ends; the shared model never moves.
    """
    from ..batch import batch_segment_steps
    from ..errors import Cancelled

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


# --------------------------------------------------------------------------- the widget
class BatchWidget(JobWidget):
    """Segment many TIFF stacks with one model; a table shows what happened to each."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, start_text="Start batch")
        from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget

        from ..pretrained import default_checkpoint

        self._shipped = default_checkpoint()
        self._checkpoints = CheckpointCache("segments")
        self._store = models_for(self.viewer)
        self._inputs: list[Path] = []  # files of the running / last batch, one per table row
        self.results: dict[int, FileResult] = {}  # table row -> its result

        self.source = ComboBox(
            label="input", choices=[("a folder of TIFFs", "folder"), ("files", "files")]
        )
        self.input_folder = FileEdit(label="input folder", mode="d")
        self.input_files = FileEdit(
            label="input files", mode="rm", filter="*.tif *.tiff", visible=False
        )
        self.output_folder = FileEdit(label="output folder", mode="d")
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt", visible=False)
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.tile_size = SpinBox(
            label="tile size (px)",
            min=0,
            max=8192,
            step=16,
            value=0,
            tooltip="Output tile edge. Bigger tiles are faster but need more memory; it is rounded "
            "to a size the network accepts. 'auto' suits the model and device.",
        )
        show_auto_at_minimum(self.tile_size)
        self.batch_size = SpinBox(
            label="batch size", min=1, max=256, value=4, tooltip="Tiles per forward pass."
        )
        self.tta = CheckBox(
            text="test-time augmentation (8x slower)",
            value=False,
            label="",
            tooltip="Average over the 8 flips/rotations of each tile: slightly more accurate.",
        )
        self.instances = CheckBox(text="write instances (one id per object)", value=False, label="")
        self.instance_method = ComboBox(
            label=INSTANCE_METHOD_LABEL, choices=INSTANCE_METHOD_CHOICES, value="components",
            visible=False, tooltip=INSTANCE_METHOD_TOOLTIP,
        )
        self.min_size = SpinBox(
            label="min object size (px)",
            min=0,
            max=100_000_000,
            value=0,
            visible=False,
            tooltip="Objects smaller than this (pixels per slice) are removed from the instances.",
        )
        self.probabilities = CheckBox(text="write probabilities", value=False, label="")
        self.probability_dtype = ComboBox(
            label="probability type",
            choices=[("uint8 (0-255)", "uint8"), ("float16", "float16")],
            visible=False,
        )
        self.overwrite = CheckBox(
            text="overwrite existing outputs",
            value=False,
            label="",
            tooltip="Unchecked, files whose outputs exist are skipped (a batch resumes).",
        )
        self.file_progress = ProgressBar(value=0, min=0, max=1, label="file", visible=False)

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["file", "status", "details"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(
            COL_DETAILS, QHeaderView.ResizeMode.Stretch
        )
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(140)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_outputs(row))
        self.table.itemSelectionChanged.connect(self._update_open_button)
        self.table_box = Container(labels=False, label="")
        self.table_box.native.layout().addWidget(self.table)
        self.open_selected = PushButton(text="Open selected in viewer", label="", enabled=False)
        self.open_selected.changed.connect(self._on_open_clicked)

        self.extend(
            [
                self.source,
                self.input_folder,
                self.input_files,
                self.output_folder,
                self.model,
                self.checkpoint,
                self.device,
                self.tile_size,
                self.batch_size,
                self.tta,
                self.instances,
                self.instance_method,
                self.min_size,
                self.probabilities,
                self.probability_dtype,
                self.overwrite,
                self.start,
                self.progress,
                self.file_progress,
                self.status,
                self.table_box,
                self.open_selected,
            ]
        )
        self.tidy()
        for w in (
            self.source,
            self.input_folder,
            self.input_files,
            self.output_folder,
            self.model,
            self.checkpoint,
            self.device,
            self.instances,
            self.probabilities,
        ):
            w.changed.connect(self._on_settings_changed)
        self._store.changed.connect(self._on_models_published)
        self._on_settings_changed()

    # -- model ----------------------------------------------------------------------
    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return model_source_choices(self._store.latest, self._shipped)

    def _on_models_published(self) -> None:
        self.model.reset_choices()
        if not self.running:
            self.model.value = "trained"
            self._on_settings_changed()

    def selected_model(self) -> Union[TrainedModel, Path, str]:
        """The model to run (in-memory, or a checkpoint path), or why there is none."""
        choice = self.model.value
        if choice == "trained":
            latest = self._store.latest
            return latest.model if latest is not None else "No model trained yet in this viewer."
        if choice == "builtin" and self._shipped is not None:
            path = Path(self._shipped)
        elif empty_path(self.checkpoint.value):
            return "Choose a model: train one in the Train widget, or pick a checkpoint file (.pt)."
        else:
            path = Path(self.checkpoint.value)
        loaded = self._checkpoints.load(path)
        return loaded if isinstance(loaded, str) else path

    # -- inputs ----------------------------------------------------------------------
    def input_items(self) -> list[Path]:
        """What the user chose as input: the folder, or the files (empty when nothing)."""
        if self.source.value == "folder":
            value = self.input_folder.value
            return [] if empty_path(value) else [Path(value)]
        value = self.input_files.value
        if value is None:
            return []
        items = [value] if isinstance(value, (str, Path)) else list(value)
        return [Path(p) for p in items if not empty_path(p)]

    def expanded_inputs(self) -> list[Path] | str:
        """The TIFF files the batch will segment, or why there are none."""
        from ..batch import expand_inputs

        items = self.input_items()
        if not items:
            what = "an input folder" if self.source.value == "folder" else "input files"
            return f"Choose {what} with .tif/.tiff stacks."
        try:
            return expand_inputs(items)
        except ValueError as exc:
            return f"Input: {exc}."

    # -- reactions -------------------------------------------------------------------------
    def _update_fields(self, *_: Any) -> None:
        self.input_folder.visible = self.source.value == "folder"
        self.input_files.visible = self.source.value == "files"
        self.checkpoint.visible = self.model.value == "checkpoint"
        self.instance_method.visible = bool(self.instances.value)
        self.min_size.visible = bool(self.instances.value)
        self.probability_dtype.visible = bool(self.probabilities.value)

    def _on_settings_changed(self, *_: Any) -> None:
        self._update_fields()
        self.revalidate()

    def after_job(self) -> None:
        self._update_fields()
        self.file_progress.visible = False
        self._update_open_button()

    def input_widgets(self) -> list[Any]:
        keep = {id(self.file_progress), id(self.table_box), id(self.open_selected)}
        return [w for w in super().input_widgets() if id(w) not in keep]

    # -- validation --------------------------------------------------------------------------
    def find_problem(self) -> str | None:
        files = self.expanded_inputs()
        if isinstance(files, str):
            return files
        out = self.output_folder.value
        if empty_path(out):
            return "Choose an output folder (it is created if it does not exist)."
        if Path(out).exists() and not Path(out).is_dir():
            return f"Output folder '{out}' is a file, not a folder."
        model = self.selected_model()
        if isinstance(model, str):
            return model
        return device_problem(self.device.value)

    def ready_message(self) -> str:
        files = self.expanded_inputs()
        n = len(files) if not isinstance(files, str) else 0
        return f"Ready to segment {n} file{'s' if n != 1 else ''}. Press Start batch."

    # -- the job -------------------------------------------------------------------------------
    def build_request(self) -> BatchRequest:
        from ..batch import BatchOptions

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

    # -- the table -------------------------------------------------------------------------------
    def _fill_table(self) -> None:
        self.table.setRowCount(0)
        self.table.setRowCount(len(self._inputs))
        for row, path in enumerate(self._inputs):
            self._set_row(row, "waiting", "", name=path.name)
        self._update_open_button()

    def _set_row(self, row: int, status: str, details: str, *, name: str | None = None) -> None:
        from qtpy.QtWidgets import QTableWidgetItem

        if not 0 <= row < self.table.rowCount():
            return
        values = {COL_STATUS: status, COL_DETAILS: details}
        if name is not None:
            values[COL_FILE] = name
        for col, text in values.items():
            item = QTableWidgetItem(text)
            item.setToolTip(text)
            self.table.setItem(row, col, item)

    def _show_result(self, row: int, result: FileResult) -> None:
        self.results[row] = result
        if result.status == "done":
            outputs = ", ".join(p.name for p in result.outputs if p.suffix != ".json")
            details = f"{result.seconds:.1f} s -> {outputs}"
        else:
            details = result.reason
        self._set_row(row, result.status, details)
        self._update_open_button()

    def row_status(self, row: int) -> str:
        """The status shown in the table for ``row`` (for tests and scripts)."""
        item = self.table.item(row, COL_STATUS)
        return item.text() if item is not None else ""

    def row_details(self, row: int) -> str:
        item = self.table.item(row, COL_DETAILS)
        return item.text() if item is not None else ""

    def _openable(self, row: int) -> list[Path]:
        result = self.results.get(row)
        if result is None or result.status not in ("done", "skipped"):
            return []
        return [p for p in result.outputs if p.suffix.lower() in (".tif", ".tiff") and p.is_file()]

    def _selected_row(self) -> int | None:
        rows = {index.row() for index in self.table.selectionModel().selectedRows()}
        return min(rows) if rows else None

    def _update_open_button(self) -> None:
        row = self._selected_row()
        self.open_selected.enabled = row is not None and bool(self._openable(row))

    def _on_open_clicked(self, *_: Any) -> None:
        row = self._selected_row()
        if row is not None:
            self.open_outputs(row)

    def open_outputs(self, row: int) -> list[Any]:
        """Add the outputs of a finished row to the viewer: labels as Labels, probabilities as Image."""
        from .._reader import read_tiff_layers

        paths = self._openable(row)
        if not paths:
            self.set_status("This file has no finished output to open.", "warn")
            return []
        layers = []
        for path in paths:
            try:
                data, kwargs, _kind = read_tiff_layers(path)[0]
            except (OSError, ValueError) as exc:
                self.report_error(f"Cannot open '{path.name}': {exc}")
                continue
            if path.stem.endswith("_probabilities"):
                kwargs.setdefault("colormap", "magma")
                kwargs["blending"] = "additive"
                layers.append(self.viewer.add_image(data, **kwargs))
            else:
                kwargs.pop("contrast_limits", None)
                layers.append(self.viewer.add_labels(data, **kwargs))
        if layers:
            names = ", ".join(f"'{layer.name}'" for layer in layers)
            self.set_status(f"Opened {names}.", "ok")
        return layers
