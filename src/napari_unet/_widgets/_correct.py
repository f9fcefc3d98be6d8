"""The Train panel's "Copy prediction" / "Suggest next slice" row (a mixin of ``TrainWidget``).

Correcting a mostly right prediction is faster than painting a slice from
scratch, and the slice the model is least sure about teaches it the most.
Both buttons predict with :meth:`CorrectRow.correction_model` in a worker
(:mod:`._correct_jobs`; Start becomes Cancel meanwhile). The results are
applied on the main thread: the copied slice is written with
``Labels.data_setitem`` (one step of napari's undo history), and the viewer
moves to the suggested slice (:mod:`._correct_apply`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, PushButton

from ._correct_apply import CorrectApply, CorrectRouting, painted_message
from ._correct_jobs import CorrectRequest, copy_job, suggest_job
from ._layers import current_slice, image_problem, labels_problem, level0
from ._state import models_for

if TYPE_CHECKING:
    from ..model.checkpoint import TrainedModel

NO_MODEL = "Train first (or choose a model to start from) to {what}."


class CorrectRow(CorrectRouting, CorrectApply):
    """The two buttons, the checks before a run, and the job routing."""

    def build_correct_row(self) -> Container:
        self.copy_prediction = PushButton(
            text="Copy prediction",
            tooltip="Predict the slice in view and write it into the annotation as a starting "
            "point to correct (only an unpainted slice; Ctrl+Z undoes it).",
        )
        self.suggest = PushButton(
            text="Suggest next slice",
            tooltip="Predict the unpainted slices and go to the one the model is least sure "
            "about (far from the painted ones).",
        )
        self.copy_prediction.changed.connect(self.copy_prediction_to_annotation)
        self.suggest.changed.connect(self.suggest_next_slice)
        self.correct_row = Container(
            widgets=[self.copy_prediction, self.suggest], layout="horizontal", labels=False,
            label="",
        )
        self.correct_row.margins = (0, 0, 0, 0)
        return self.correct_row

    def correction_model(self) -> tuple[TrainedModel | None, str]:
        """The model just trained here, else the one the panel would fine-tune; and its words."""
        latest = models_for(self.viewer).latest
        if latest is not None:
            return latest.model, "the model just trained"
        init = self._init_model()
        if init is None or isinstance(init, str):
            return None, "" if init is None else init
        where = "built-in model" if self.start_from.value == "builtin" else "chosen checkpoint"
        return init, f"the {where}"

    def _correct_inputs(self) -> str | None:
        """Why the row cannot run now, or None."""
        if self.running:
            return "A job is running; wait for it or cancel it."
        image, labels = self.image.value, self.annotation.value
        return image_problem(image) or labels_problem(labels, image)

    def _correct_request(self, model: Any, zs: list[int], painted: tuple[int, ...] = ()) -> Any:
        image, labels = level0(self.image.value), level0(self.annotation.value)
        if image.ndim == 2:
            image, labels = image[None], labels[None]
        return CorrectRequest(
            model, image, labels, zs, self.mode.value, self.device.value,
            int(self.batch_size.value), painted,
        )

    def copy_prediction_to_annotation(self, *_: Any) -> None:
        """Predict the slice in view and (on return) write it into the unpainted annotation slice."""
        problem = self._correct_inputs()
        model, words = self.correction_model()
        if problem is not None or model is None:
            self.set_status(problem or words or NO_MODEL.format(what="copy its prediction"), "warn")
            return
        z = current_slice(self.viewer, self.image.value) or 0
        labels = level0(self.annotation.value)
        if np.any(np.asarray(labels[z] if labels.ndim == 3 else labels)):
            self.set_status(painted_message(z), "warn")
            return
        self._start_correct("copy", copy_job, self._correct_request(model, [z]), words)
        self.set_status(f"Predicting slice z = {z} with {words}...", "info")

    def suggest_next_slice(self, *_: Any) -> None:
        """Predict the unpainted slices, rank them by uncertainty, go to the best."""
        problem = self._correct_inputs()
        model, words = self.correction_model()
        if problem is None and level0(self.image.value).ndim != 3:
            problem = "Suggest needs a 3D stack: a 2D image has only one slice."
        if problem is not None or model is None:
            self.set_status(problem or words or NO_MODEL.format(what="rank the slices"), "warn")
            return
        summary = self._annotation_summary()
        painted = tuple(summary.slices) if summary is not None else ()
        zs = [z for z in range(level0(self.image.value).shape[0]) if z not in painted]
        if not zs:
            self.set_status("Every slice is painted: nothing left to suggest.", "warn")
            return
        self._start_correct("suggest", suggest_job, self._correct_request(model, zs, painted), words)
        self.set_status(f"Scoring {len(zs)} unpainted slices with {words}...", "info")

    def _start_correct(self, kind: str, job: Any, request: CorrectRequest, words: str) -> None:
        self._correcting = kind
        self._correct_image = self.image.value
        self._correct_labels = self.annotation.value
        self._correct_words = words
        desc = "Predicting slice" if kind == "copy" else "Scoring slices"
        self.run_job(job, request, total=len(request.zs), desc=desc)
