"""Batch dock widget: segment a folder (or a list) of TIFF stacks into an output folder.

The GUI face of :mod:`napari_unet.prediction.batch` (the engine behind ``napari-unet
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

The parts: inputs and output folder (:mod:`._batch_inputs`), the job and its
handlers (:mod:`._batch_job`), the results table (:mod:`._batch_table`); the
options shared with Segment come from :mod:`._choices`, the model source from
:mod:`._job_model_source`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from magicgui.widgets import CheckBox, ComboBox, ProgressBar

from ._batch_inputs import BatchInputsMixin
from ._batch_job import BatchJobMixin, BatchOutcome, BatchRequest, batch_job
from ._batch_table import COL_DETAILS, COL_FILE, COL_STATUS, BatchTableMixin
from ._choices import (
    batch_size_spin,
    device_combo,
    instance_method_combo,
    min_size_spin,
    tile_size_spin,
    tta_check,
    z_smoothing_combo,
)
from ._common import JobWidget, device_problem
from ._job_model_source import ModelSourceMixin

if TYPE_CHECKING:
    import napari

    from ..model.checkpoint import TrainedModel

__all__ = [
    "COL_DETAILS",
    "COL_FILE",
    "COL_STATUS",
    "BatchOutcome",
    "BatchRequest",
    "BatchWidget",
    "batch_job",
]


class BatchWidget(BatchJobMixin, BatchTableMixin, BatchInputsMixin, ModelSourceMixin, JobWidget):
    """Segment many TIFF stacks with one model; a table shows what happened to each."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, start_text="Start batch")
        self._inputs: list[Path] = []  # files of the running / last batch, one per table row

        self._init_inputs()
        self._init_model_source()
        self.device = device_combo()
        self.tile_size = tile_size_spin(auto=True)
        self.batch_size = batch_size_spin()
        self.z_smoothing = z_smoothing_combo()
        self.tta = tta_check()
        self.instances = CheckBox(text="write instances (one id per object)", value=False, label="")
        self.instance_method = instance_method_combo()
        self.min_size = min_size_spin()
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
        self._init_table()

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
                self.z_smoothing,
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
        self._on_settings_changed()

    # -- model ----------------------------------------------------------------------
    def _model_published(self) -> None:
        self._on_settings_changed()

    def selected_model(self) -> Union[TrainedModel, Path, str]:
        """The model to run (in-memory, or a checkpoint path), or why there is none."""
        model = self.chosen_model()
        if not isinstance(model, Path):
            return model
        loaded = self._checkpoints.load(model)
        return loaded if isinstance(loaded, str) else model

    # -- reactions -------------------------------------------------------------------------
    def _update_fields(self, *_: Any) -> None:
        self._update_input_fields()
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
        problem = self.output_problem()
        if problem is not None:
            return problem
        model = self.selected_model()
        if isinstance(model, str):
            return model
        return device_problem(self.device.value)

    def ready_message(self) -> str:
        files = self.expanded_inputs()
        n = len(files) if not isinstance(files, str) else 0
        return f"Ready to segment {n} file{'s' if n != 1 else ''}. Press Start batch."
