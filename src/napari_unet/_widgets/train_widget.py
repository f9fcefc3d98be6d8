"""Train dock widget: paint a few slices, press Start, watch the model learn.

The widget gathers everything on the main thread (layer arrays, a snapshot
of the annotation, the settings), then runs :func:`._jobs.train_job` in a
napari ``thread_worker``. Each yielded training event moves the progress bars
and adds a point to the live plot; every N iterations the job also predicts
the slice the user is looking at and the widget shows it in a
"<image> preview" Labels layer. Cancel keeps the model so far. The
finished model is published to the viewer's :class:`._state.ViewerModels`,
where the Segment widget picks it up, and can be saved as a checkpoint.

The panel is one object (tests and users reach every field as an attribute
of it) made of one unit per idea:

- :mod:`._train_form`: the settings form, its order and which fields show;
- :mod:`._train_request`: the checks, the ready line and the "will use"
  summary, and the :class:`._jobs.TrainRequest` for the worker;
- :mod:`._train_events`: the run: events, previews, the outcome;
- :mod:`._train_saving`: Save model, with its rescue file;
- :mod:`._correct`: the "Copy prediction" / "Suggest next slice" row;
- this module: the state, the wiring, and the reactions to the user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import CheckpointCache, JobWidget
from ._correct import CorrectRow
from ._layers import image_problem, layer_array, level0, touched_slices, unique_name
from ._train_events import TrainRun
from ._train_form import LR_FINETUNE, LR_SCRATCH, MODE_HELP, TrainForm, _start_from_choices
from ._train_request import TrainRequestBuilder, _SliceTracker
from ._train_saving import TrainSaving

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

    from ..model.checkpoint import TrainedModel
    from ..training.annotations import AnnotationSummary

# re-exported: the panel's constants and helpers are still reachable from here
__all__ = [
    "LR_FINETUNE",
    "LR_SCRATCH",
    "MODE_HELP",
    "TrainWidget",
    "_SliceTracker",
    "_start_from_choices",
]


class TrainWidget(CorrectRow, TrainForm, TrainRequestBuilder, TrainRun, TrainSaving, JobWidget):
    """Train (or fine-tune) a U-Net on the painted slices of an annotation layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, start_text="Start training")
        from ..model.pretrained import default_checkpoint

        self._shipped = default_checkpoint()
        # per-slice summaries of the annotation layer, kept up to date stroke by stroke
        self._slice_stats: dict[int, AnnotationSummary] | None = None
        self._stats_key: Any = None
        self._dirty_slices: set[int] = set()
        self._checkpoints = CheckpointCache("trains")
        self._tracker: _SliceTracker | None = None
        self._job_image: Image | None = None  # the image being trained on (for the preview)
        self.trained: TrainedModel | None = None
        self._kept_score: tuple[float, int] | None = None  # (Dice, iteration) of the kept weights

        self.build_form()
        # "Copy prediction" / "Suggest next slice": under Start, one row
        self.insert(self.index(self.start) + 1, self.build_correct_row())
        self._connect()

        from .. import devices

        warning = devices.cpu_only_torch_warning()
        if warning:
            self.device_warning.value = warning
            self.device_warning.visible = True
        self._on_image_changed()
        self._on_annotation_changed()
        self._update_fields()
        self.revalidate()

    def _connect(self) -> None:
        self.image.changed.connect(self._on_image_changed)
        self.annotation.changed.connect(self._on_annotation_changed)
        self.new_annotation.changed.connect(self.create_annotation_layer)
        self.mode.changed.connect(self._on_mode_changed)
        self.start_from.changed.connect(self._on_start_from_changed)
        # every setting the ready line names re-checks (and re-words) it
        for w in (self.checkpoint, self.device, self.model_size, self.iterations, self.minutes):
            w.changed.connect(self.revalidate)
        self.show_advanced.changed.connect(self._update_fields)
        self.save.changed.connect(self.save_model)
        self.export.changed.connect(self.export_model)

    # -- reactions to the user --------------------------------------------------
    def _on_image_changed(self, *_: Any) -> None:
        image = self.image.value
        self.watch_layer("image", image, "data")
        # prefer an annotation that fits the new image
        self.annotation.reset_choices()
        current = self.annotation.value
        if image is not None and (current is None or not self._fits_image(current)):
            fitting = [layer for layer in self.annotation.choices if self._fits_image(layer)]
            if fitting:
                self.annotation.value = fitting[0]
        self.revalidate()

    def _on_annotation_changed(self, *_: Any) -> None:
        self.watch_layer("annotation", self.annotation.value, "paint", callback=self._on_painted)
        self.watch_layer(
            "annotation data", self.annotation.value, "data", callback=self._on_labels_replaced
        )
        self._slice_stats = None
        self.revalidate()

    def _on_painted(self, event: Any = None) -> None:
        """A stroke: re-summarise only the slices it touched (once painting pauses)."""
        labels = self.annotation.value
        touched = None
        if event is not None and labels is not None:
            touched = touched_slices(getattr(event, "value", None), tuple(level0(labels).shape))
        if touched is None:
            self._slice_stats = None
        else:
            self._dirty_slices |= touched
        self.schedule_revalidate()

    def _on_labels_replaced(self, *_: Any) -> None:
        self._slice_stats = None
        self.schedule_revalidate()

    def _on_mode_changed(self, *_: Any) -> None:
        self._update_fields()
        self.revalidate()

    def _on_start_from_changed(self, *_: Any) -> None:
        start = self.start_from.value
        fine_tune = start == "checkpoint" or (start == "builtin" and self._shipped is not None)
        self.learning_rate.value = LR_FINETUNE if fine_tune else LR_SCRATCH
        self._update_fields()
        self.revalidate()

    def create_annotation_layer(self, *_: Any) -> Labels | None:
        """Add an empty Labels layer matching the image (shape, scale, translate) and select it."""
        image = self.image.value
        if image is None or image_problem(image) is not None:
            self.set_status(image_problem(image) or "Choose an image first.", "error")
            return None
        where = layer_array(image)
        data = np.zeros(where.shape, dtype=np.uint32)  # zeros are lazily allocated by the OS
        layer = self.viewer.add_labels(
            data,
            name=unique_name(self.viewer, f"{where.name} annotation"),
            scale=where.scale,
            translate=where.translate,
        )
        self.annotation.reset_choices()
        self.annotation.value = layer
        layer.mode = "paint"
        return layer
