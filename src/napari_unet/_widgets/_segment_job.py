"""Running a Segment job and publishing its result (a mixin of ``SegmentWidget``).

The request is gathered on the main thread at Start; the prediction runs in
:func:`._jobs.segment_job`; its result becomes layers (:mod:`._segment_publish`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._jobs import JobFailed, SegmentOutcome, SegmentRequest, segment_job
from ._layers import LayerArray, current_slice, layer_array, level0
from ._segment_publish import publish_prediction, published_message

if TYPE_CHECKING:
    from magicgui.widgets import CheckBox, ComboBox, SpinBox

    from ..prediction.inference import PredictProgress


class SegmentJobMixin:
    """Start (request, progress total), progress lines, and the result layers."""

    image: ComboBox
    scope: ComboBox
    device: ComboBox
    output: ComboBox
    instance_method: ComboBox
    tile_size: SpinBox
    batch_size: SpinBox
    min_size: SpinBox
    tta: CheckBox
    probabilities: CheckBox
    uncertainty: CheckBox
    overwrite: CheckBox
    z_smoothing: ComboBox
    viewer: Any
    _source_name: str | None
    _where: LayerArray | None

    def _slices(self) -> list[int] | None:
        image = self.image.value
        if self.scope.value != "slice" or image is None or level0(image).ndim != 3:
            return None
        return [current_slice(self.viewer, image)]

    def build_request(self) -> SegmentRequest:
        from ..prediction.settings import PredictionSettings

        model = self.selected_model()
        assert not isinstance(model, str)  # validated before Start
        instances = self.output.value == "instances"
        slices = self._slices()
        settings = PredictionSettings(
            tile_size=int(self.tile_size.value),
            batch_size=int(self.batch_size.value),
            tta=bool(self.tta.value),
            device=self.device.value,
            instances=instances,
            min_size=int(self.min_size.value) if instances else 0,
            probabilities=bool(self.probabilities.value),
            uncertainty=bool(self.uncertainty.value),
            # with TTA on, how its 8 variants disagree; otherwise the softmax entropy
            uncertainty_method="tta" if self.tta.value and self.uncertainty.value else "entropy",
            instance_method=self.instance_method.value if instances else "components",
            # hidden for one slice, so not applied there either (it would predict the
            # neighbours too, for a check meant to take a second)
            z_smoothing=self.z_smoothing.value if slices is None else 0.0,
        )
        return SegmentRequest(model, level0(self.image.value), slices, settings)

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
        where, base = self._where, self._source_name
        assert where is not None and base is not None  # set when the job started
        layers = publish_prediction(
            self.viewer, outcome, base=base, where=where, overwrite=bool(self.overwrite.value)
        )
        self.set_status(published_message(outcome, layers), "ok")
        return layers
