"""A training run as the Train panel sees it: start, events, previews, outcome.

:class:`TrainRun` is a mixin of :class:`.train_widget.TrainWidget`. Each
yielded training event moves the progress bars and adds a point to the live
plot; every N iterations the job also predicts the slice the user is looking
at, shown in a "<image> preview" Labels layer. The finished (or cancelled, or
failed-but-validated) model is published to the viewer's
:class:`._state.ViewerModels`, where the Segment widget picks it up.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import kept_score, score_text
from ._jobs import JobFailed, PreviewUpdate, TrainOutcome, TrainStarted, train_job
from ._layers import METADATA_KEY, current_slice, is_ours, layer_array, unique_name
from ._state import models_for

if TYPE_CHECKING:
    from ..model.checkpoint import TrainedModel


class TrainRun:
    """Runs the job and shows what it reports (mixed into a ``JobWidget``).

    Uses ``build_request`` (the request builder), the form's ``plot`` and
    ``save``, and the widget's ``_tracker``, ``_job_image``, ``_kept_score``
    and ``trained``.
    """

    def start_job(self) -> None:
        request = self.build_request()
        self._job_image = self.image.value
        self.plot.reset(request.config.iterations)
        self._kept_score = None
        self.viewer.dims.events.current_step.connect(self._track_slice)
        self.run_job(train_job, request, total=request.config.iterations, desc="Training U-Net")
        self.set_status("Preparing the annotated slices...", "info")

    def after_job(self) -> None:
        self.viewer.dims.events.current_step.disconnect(self._track_slice)
        self._tracker = None
        self._job_image = None
        self._update_fields()
        self.enable_model_actions(self.trained is not None)

    def _track_slice(self, *_: Any) -> None:
        image = self._job_image
        if self._tracker is not None and image is not None:
            self._tracker.z = current_slice(self.viewer, image)

    def on_yielded(self, value: Any) -> None:
        from ..training.trainer import TrainEvent

        if isinstance(value, TrainEvent):
            self._on_train_event(value)
        elif isinstance(value, PreviewUpdate):
            self.show_preview(value)
        elif isinstance(value, TrainStarted):
            s = value.summary
            zs = ", ".join(map(str, s["annotated_slices"]))
            self.set_status(
                f"Training on {s['device']}: slices z = {zs}, validation on {s['validation']}...",
                "info",
            )

    def _on_train_event(self, event: Any) -> None:
        if event.done:
            self.plot.redraw()  # axes fitted exactly to what ran
            return
        # by iterations, or by time when a time limit is further along
        self.set_progress(round(event.fraction * event.total))
        self.plot.add_point(event.iteration, event.loss, event.val_metric)
        if event.is_best and event.val_metric is not None:
            self._kept_score = (event.val_metric, event.iteration)  # the weights kept so far
        parts = [f"Iteration {event.iteration}/{event.total}", f"loss {event.loss:.3f}"]
        if self._kept_score is not None and math.isfinite(self._kept_score[0]):
            parts.append(score_text(*self._kept_score))
        eta = event.eta_s
        if math.isfinite(eta):
            parts.append(f"{eta:.0f} s left")
        if not (self._cancel_event is not None and self._cancel_event.is_set()):
            self.set_status(", ".join(parts), "info")

    def show_preview(self, update: PreviewUpdate) -> None:
        """Show the preview slice in the '<image> preview' layer (created once, then updated)."""
        image = self._job_image
        if image is None:
            return
        where = layer_array(image)
        data = update.labels.astype(np.uint8, copy=False)
        translate = list(where.translate)
        if update.z is not None:
            # a one-slice layer placed at slice z: visible exactly where it was predicted
            data = data[None]
            translate[-3] += update.z * where.scale[-3]
        name = f"{where.name} preview"
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is not None and is_ours(layer, "preview") and layer.data.shape == data.shape:
            layer.data = data
            layer.translate = translate
        else:
            active = self.viewer.layers.selection.active
            layer = self.viewer.add_labels(
                data,
                name=unique_name(self.viewer, name),
                scale=where.scale,
                translate=translate,
                opacity=0.5,
                metadata={METADATA_KEY: {"role": "preview", "source": where.name}},
            )
            # keep the user's layer (say, the annotation being painted) selected
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
        layer.metadata[METADATA_KEY]["iteration"] = update.iteration

    def on_returned(self, value: Any) -> None:
        image_name = self._job_image.name if self._job_image is not None else "image"
        if isinstance(value, JobFailed):
            self.report_error(value.message)
            if value.model is not None:
                self._keep_model(
                    value.model,
                    f"on '{image_name}', stopped by an error, {kept_score(value.model)}",
                )
                self.set_status(
                    f"{value.message} The model as last validated before the error is kept.",
                    "error",
                )
            return
        assert isinstance(value, TrainOutcome)
        # the kept weights' score, worded as in the Segment and Batch panels
        dice_text = kept_score(value.model)
        self._keep_model(value.model, f"on '{image_name}', {dice_text}")
        if value.cancelled:
            self.set_status(
                f"Cancelled at iteration {value.iterations_run}; kept the model so far "
                f"({dice_text}). It is ready in the Segment widget.",
                "warn",
            )
        else:
            self.set_status(
                f"Done in {value.elapsed_s:.0f} s: {dice_text}. "
                "The model is ready in the Segment widget; save it below.",
                "ok",
            )

    def _keep_model(self, model: TrainedModel, description: str) -> None:
        self.trained = model
        models_for(self.viewer).publish(model, description)
        self.enable_model_actions(True)
