"""Segment dock widget: apply a trained U-Net to the current slice or the whole stack.

The model is the one just trained in this viewer (published by the Train
widget), the shipped default when there is one, or a checkpoint file. The
prediction runs in a napari ``thread_worker`` (:func:`._jobs.segment_job`)
with a progress bar and Cancel. Results become layers named after the image
with the image's scale and translate:

- ``<image> segmentation``: Labels, uint8 class ids (semantic output), or
- ``<image> instances``: Labels, uint32 object ids (instance output), and
- ``<image> probability``: Image, float32 foreground probability (optional),
- ``<image> uncertainty``: Image, float32 0..1 (optional; the status line
  names the most uncertain slices).

Re-running replaces a result layer only when "overwrite" is checked, and
only a layer napari-unet created; otherwise a new ``<name> [k]`` layer is
added. Layers the user painted are never modified (:mod:`._segment_publish`).
The options Segment shares with Batch are built in :mod:`._choices`, the
model source in :mod:`._job_model_source`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Label

from ._choices import (
    batch_size_spin,
    device_combo,
    instance_method_combo,
    min_size_spin,
    tile_size_spin,
    tta_check,
    uncertainty_check,
    z_smoothing_combo,
)
from ._common import JobWidget, device_problem, kept_score, layer_choices
from ._job_model_source import ModelSourceMixin
from ._layers import LayerArray, image_problem, is_ours, level0
from ._segment_job import SegmentJobMixin

if TYPE_CHECKING:
    import napari

    from ..model.checkpoint import TrainedModel

logger = logging.getLogger(__name__)

#: Default tile edge used when no model is chosen yet (engine default on a CPU).
_FALLBACK_TILE = 256


def describe_model(model: TrainedModel) -> str:
    """One line about a model: size, classes, and how it was trained."""
    cfg = model.config
    classes = ", ".join(model.class_names)
    parts = [f"U-Net depth {cfg.depth}, width {cfg.base_channels}; classes: {classes}"]
    training = model.training or {}
    zs = training.get("annotated_slices")
    if zs:
        parts.append(
            f"trained on z = {', '.join(str(z) for z in zs[:8])}{' ...' if len(zs) > 8 else ''}"
        )
    if isinstance(training.get("best_val_dice"), (int, float)):
        parts.append(kept_score(model))
    return "; ".join(parts)


def _overwrite_check() -> CheckBox:
    return CheckBox(
        text="overwrite previous result",
        value=False,
        label="",
        tooltip="Replace '<image> segmentation' from an earlier run (only layers "
        "napari-unet made). Unchecked, each run adds a new layer.",
    )


class SegmentWidget(SegmentJobMixin, ModelSourceMixin, JobWidget):
    """Segment an image layer with a trained U-Net into Labels layers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, start_text="Segment")
        from napari.layers import Image

        self._tile_key: Any = None
        self._source_name: str | None = None
        self._where: LayerArray | None = None  # geometry of the image being segmented

        self.image = ComboBox(
            label="image",
            choices=layer_choices(self.viewer, Image, prefer=lambda layer: not is_ours(layer)),
        )
        self._init_model_source()
        self.model_info = Label(label="", value="")
        self.model_info.native.setWordWrap(True)
        self.scope = ComboBox(
            label="scope",
            choices=[("current slice", "slice"), ("whole stack", "stack")],
            value="stack",
            tooltip="'current slice' checks the model quickly on the slice you look at.",
        )
        self.z_smoothing = z_smoothing_combo()
        self.device = device_combo()
        self.tile_size = tile_size_spin(auto=False, value=_FALLBACK_TILE)
        self.batch_size = batch_size_spin()
        self.tta = tta_check()
        self.output = ComboBox(
            label="output",
            choices=[
                ("semantic (class labels)", "semantic"),
                ("instances (one id per object)", "instances"),
            ],
        )
        self.instance_method = instance_method_combo()
        self.min_size = min_size_spin()
        self.probabilities = CheckBox(text="add a probability layer", value=False, label="")
        self.uncertainty = uncertainty_check()
        self.overwrite = _overwrite_check()
        self.extend(
            [
                self.image,
                self.model,
                self.checkpoint,
                self.model_info,
                self.scope,
                self.z_smoothing,
                self.device,
                self.tile_size,
                self.batch_size,
                self.tta,
                self.output,
                self.instance_method,
                self.min_size,
                self.probabilities,
                self.uncertainty,
                self.overwrite,
                self.start,
                self.progress,
                self.status,
            ]
        )
        self.tidy()
        self.pack_top()
        self.image.changed.connect(self._on_image_changed)
        self.model.changed.connect(self._on_model_changed)
        self.checkpoint.changed.connect(self._on_model_changed)
        self.device.changed.connect(self._on_model_changed)
        self.output.changed.connect(self._update_fields)
        self.scope.changed.connect(self._update_fields)
        self._on_image_changed()
        self._update_fields()
        self._on_model_changed()

    # -- model choices ----------------------------------------------------------
    def _model_published(self) -> None:
        self._tile_key = None
        self._on_model_changed()

    def selected_model(self) -> TrainedModel | str:
        """The chosen model, or why there is none."""
        model = self.chosen_model()
        return self._checkpoints.load(model) if isinstance(model, Path) else model

    # -- reactions ---------------------------------------------------------------
    def _update_fields(self, *_: Any) -> None:
        self.checkpoint.visible = self.model.value == "checkpoint"
        self.min_size.visible = self.output.value == "instances"
        self.instance_method.visible = self.output.value == "instances"
        image = self.image.value
        stack = image is not None and level0(image).ndim == 3
        self.scope.enabled = stack and not self.running
        # neighbours exist only when a whole stack is segmented
        self.z_smoothing.visible = stack and self.scope.value == "stack"

    def after_job(self) -> None:
        self._update_fields()

    def _on_image_changed(self, *_: Any) -> None:
        self.watch_layer("image", self.image.value, "data")
        self._update_fields()
        self.revalidate()

    def _on_model_changed(self, *_: Any) -> None:
        self._update_fields()
        model = self.selected_model()
        self.model_info.value = describe_model(model) if not isinstance(model, str) else ""
        if not isinstance(model, str):
            self._set_tile_default(model)
        self.revalidate()

    def _set_tile_default(self, model: TrainedModel) -> None:
        """Legal tile sizes for this model, and the engine's default for the device."""
        from .. import devices
        from ..prediction.overlap_tile import TileGrid, default_tile_size

        try:
            device_type = devices.resolve_device(self.device.value).type
        except ValueError:
            return  # reported by the validation
        key = (id(model), device_type)
        if key == self._tile_key:
            return
        self._tile_key = key
        # arithmetic on the model's geometry only: the shared model is not touched
        grid = TileGrid(model.model.geometry)
        self.tile_size.min = grid.min_tile
        self.tile_size.step = grid.divisor
        self.tile_size.value = grid.round(default_tile_size(device_type))

    # -- validation -----------------------------------------------------------------
    def find_problem(self) -> str | None:
        problem = image_problem(self.image.value)
        if problem is not None:
            return problem
        model = self.selected_model()
        if isinstance(model, str):
            return model
        return device_problem(self.device.value)

    def ready_message(self) -> str:
        image = self.image.value
        where = "the current slice" if self._slices() is not None else f"all of '{image.name}'"
        return f"Ready to segment {where}. Press Segment."
