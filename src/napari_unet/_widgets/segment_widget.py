"""Segment dock widget: apply a trained U-Net to the current slice or the whole stack.

The model is the one just trained in this viewer (published by the Train
widget), the shipped default when there is one, or a checkpoint file. The
prediction runs in a napari ``thread_worker`` (:func:`._jobs.segment_job`)
with a progress bar and Cancel. Results become layers named after the image
with the image's scale and translate:

- ``<image> segmentation``: Labels, uint8 class ids (semantic output), or
- ``<image> instances``: Labels, uint32 object ids (instance output), and
- ``<image> probability``: Image, float32 foreground probability (optional).

Re-running replaces a result layer only when "overwrite" is checked, and
only a layer napari-unet created; otherwise a new ``<name> [k]`` layer is
added. Layers the user painted are never modified.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, SpinBox

from ._choices import INSTANCE_METHOD_CHOICES, INSTANCE_METHOD_LABEL, INSTANCE_METHOD_TOOLTIP
from ._common import (
    CheckpointCache,
    JobWidget,
    device_choices,
    device_problem,
    empty_path,
    kept_score,
    layer_choices,
    model_source_choices,
)
from ._jobs import JobFailed, SegmentOutcome, SegmentRequest, segment_job
from ._layers import (
    LayerArray,
    current_slice,
    image_problem,
    is_ours,
    layer_array,
    level0,
    put_result_layer,
)
from ._state import models_for

if TYPE_CHECKING:
    import napari

    from ..checkpoint import TrainedModel
    from ..inference import PredictProgress

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


class SegmentWidget(JobWidget):
    """Segment an image layer with a trained U-Net into Labels layers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, start_text="Segment")
        from napari.layers import Image

        from ..pretrained import default_checkpoint

        self._shipped = default_checkpoint()
        self._checkpoints = CheckpointCache("segments")
        self._tile_key: Any = None
        self._source_name: str | None = None
        self._where: LayerArray | None = None  # geometry of the image being segmented
        self._store = models_for(self.viewer)

        self.image = ComboBox(
            label="image",
            choices=layer_choices(self.viewer, Image, prefer=lambda layer: not is_ours(layer)),
        )
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt", visible=False)
        self.model_info = Label(label="", value="")
        self.model_info.native.setWordWrap(True)
        self.scope = ComboBox(
            label="scope",
            choices=[("current slice", "slice"), ("whole stack", "stack")],
            value="stack",
            tooltip="'current slice' checks the model quickly on the slice you look at.",
        )
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.tile_size = SpinBox(
            label="tile size (px)",
            min=16,
            max=8192,
            step=16,
            value=_FALLBACK_TILE,
            tooltip="Output tile edge. Bigger tiles are faster but need more memory; it is rounded "
            "to a size the network accepts. The default suits the model and device.",
        )
        self.batch_size = SpinBox(
            label="batch size", min=1, max=256, value=4, tooltip="Tiles per forward pass."
        )
        self.tta = CheckBox(
            text="test-time augmentation (8x slower)",
            value=False,
            label="",
            tooltip="Average over the 8 flips/rotations of each tile: slightly more accurate.",
        )
        self.output = ComboBox(
            label="output",
            choices=[
                ("semantic (class labels)", "semantic"),
                ("instances (one id per object)", "instances"),
            ],
        )
        self.instance_method = ComboBox(
            label=INSTANCE_METHOD_LABEL,
            choices=INSTANCE_METHOD_CHOICES,
            value="components",
            visible=False,
            tooltip=INSTANCE_METHOD_TOOLTIP,
        )
        self.min_size = SpinBox(
            label="min object size (px)",
            min=0,
            max=100_000_000,
            value=0,
            visible=False,
            tooltip="Objects smaller than this (pixels per slice) are removed from the instances.",
        )
        self.probabilities = CheckBox(text="add a probability layer", value=False, label="")
        self.overwrite = CheckBox(
            text="overwrite previous result",
            value=False,
            label="",
            tooltip="Replace '<image> segmentation' from an earlier run (only layers "
            "napari-unet made). Unchecked, each run adds a new layer.",
        )
        self.extend(
            [
                self.image,
                self.model,
                self.checkpoint,
                self.model_info,
                self.scope,
                self.device,
                self.tile_size,
                self.batch_size,
                self.tta,
                self.output,
                self.instance_method,
                self.min_size,
                self.probabilities,
                self.overwrite,
                self.start,
                self.progress,
                self.status,
            ]
        )
        self.tidy()
        self.image.changed.connect(self._on_image_changed)
        self.model.changed.connect(self._on_model_changed)
        self.checkpoint.changed.connect(self._on_model_changed)
        self.device.changed.connect(self._on_model_changed)
        self.output.changed.connect(self._update_fields)
        self._store.changed.connect(self._on_models_published)
        self._on_image_changed()
        self._update_fields()
        self._on_model_changed()

    # -- model choices ----------------------------------------------------------
    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return model_source_choices(self._store.latest, self._shipped)

    def _on_models_published(self) -> None:
        """A new model was trained: offer it and select it (unless a job is running)."""
        self.model.reset_choices()
        if not self.running:
            self.model.value = "trained"
            self._tile_key = None
            self._on_model_changed()

    def selected_model(self) -> TrainedModel | str:
        """The chosen model, or why there is none."""
        choice = self.model.value
        if choice == "trained":
            latest = self._store.latest
            return latest.model if latest is not None else "No model trained yet in this viewer."
        if choice == "builtin" and self._shipped is not None:
            return self._checkpoints.load(self._shipped)
        if empty_path(self.checkpoint.value):
            return "Choose a model: train one in the Train widget, or pick a checkpoint file (.pt)."
        return self._checkpoints.load(Path(self.checkpoint.value))

    # -- reactions ---------------------------------------------------------------
    def _update_fields(self, *_: Any) -> None:
        self.checkpoint.visible = self.model.value == "checkpoint"
        self.min_size.visible = self.output.value == "instances"
        self.instance_method.visible = self.output.value == "instances"
        image = self.image.value
        self.scope.enabled = image is not None and level0(image).ndim == 3 and not self.running

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
        from ..overlap_tile import TileGrid, default_tile_size

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

    # -- the job ----------------------------------------------------------------------
    def _slices(self) -> list[int] | None:
        image = self.image.value
        if self.scope.value != "slice" or image is None or level0(image).ndim != 3:
            return None
        return [current_slice(self.viewer, image)]

    def build_request(self) -> SegmentRequest:
        from ..prediction_settings import PredictionSettings

        model = self.selected_model()
        assert not isinstance(model, str)  # validated before Start
        instances = self.output.value == "instances"
        settings = PredictionSettings(
            tile_size=int(self.tile_size.value),
            batch_size=int(self.batch_size.value),
            tta=bool(self.tta.value),
            device=self.device.value,
            instances=instances,
            min_size=int(self.min_size.value) if instances else 0,
            probabilities=bool(self.probabilities.value),
            instance_method=self.instance_method.value if instances else "components",
        )
        return SegmentRequest(model, level0(self.image.value), self._slices(), settings)

    def start_job(self) -> None:
        request = self.build_request()
        image = self.image.value
        self._source_name = image.name
        self._where = layer_array(image)
        total = (
            len(request.slices)
            if request.slices is not None
            else (level0(image).shape[0] if level0(image).ndim == 3 else 1)
        )
        self.run_job(segment_job, request, total=total, desc="Segmenting")
        self.set_status("Segmenting...", "info")

    def on_yielded(self, value: PredictProgress) -> None:
        self.set_progress(value.done)
        if not (self._cancel_event is not None and self._cancel_event.is_set()):
            self.set_status(f"Segmented slice z = {value.z} ({value.done}/{value.total})", "info")

    def on_returned(self, value: Any) -> None:
        if isinstance(value, JobFailed):
            self.report_error(value.message)
            return
        assert isinstance(value, SegmentOutcome)
        if value.cancelled or value.prediction is None:
            self.set_status("Cancelled; no layer was added or changed.", "warn")
            return
        self.add_result_layers(value)

    def add_result_layers(self, outcome: SegmentOutcome) -> list[Any]:
        """Put the prediction into layers named after the image (main thread)."""
        pred = outcome.prediction
        assert pred is not None
        where, base = self._where, self._source_name
        assert where is not None and base is not None  # set when the job started
        overwrite = bool(self.overwrite.value)
        layers = []
        if pred.instances is not None:
            layers.append(
                put_result_layer(
                    self.viewer,
                    f"{base} instances",
                    pred.instances,
                    kind="labels",
                    where=where,
                    role="instances",
                    overwrite=overwrite,
                )
            )
        else:
            layers.append(
                put_result_layer(
                    self.viewer,
                    f"{base} segmentation",
                    pred.semantic,
                    kind="labels",
                    where=where,
                    role="segmentation",
                    overwrite=overwrite,
                )
            )
        prob = pred.foreground_probability
        if prob is not None:
            layers.append(
                put_result_layer(
                    self.viewer,
                    f"{base} probability",
                    prob.astype("float32", copy=False),
                    kind="image",
                    where=where,
                    role="probability",
                    overwrite=overwrite,
                    colormap="magma",
                    contrast_limits=(0.0, 1.0),
                    blending="additive",
                    opacity=0.6,
                )
            )
        n = (
            len(outcome.slices)
            if outcome.slices is not None
            else (pred.semantic.shape[0] if pred.semantic.ndim == 3 else 1)
        )
        what = "slice" if n == 1 else "slices"
        names = ", ".join(f"'{layer.name}'" for layer in layers)
        self.set_status(f"Segmented {n} {what} in {outcome.elapsed_s:.1f} s -> {names}.", "ok")
        return layers
