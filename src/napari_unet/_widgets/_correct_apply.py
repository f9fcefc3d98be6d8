"""Applying what the row's jobs return, on the main thread (a mixin of ``TrainWidget``).

The copied slice goes into the user's own annotation layer, so the write is
careful: never over a slice painted meanwhile, never a silent change of the
layer's dtype, and one ``data_setitem`` call, which napari records as a
single undo step (Ctrl+Z on the layer takes the copy back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._correct_jobs import CopyOutcome, SuggestOutcome
from ._jobs import JobFailed
from ._layers import go_to_slice, level0

if TYPE_CHECKING:
    from napari.layers import Labels

    from ..training.correction import CopyResult


def painted_message(z: int) -> str:
    return (
        f"Slice z = {z} is already painted; erase it first (or go to an unpainted slice) "
        "to copy the prediction there."
    )


class CorrectRouting:
    """While a row job runs (``_correcting`` is set) the worker's values come here,
    not to the training handlers of :class:`._train_events.TrainRun`."""

    _correcting: str | None = None
    _sticky_status: tuple[str, str] | None = None

    def on_yielded(self, value: Any) -> None:
        if self._correcting is None:
            super().on_yielded(value)
        else:
            self.set_progress(value.done)

    def on_returned(self, value: Any) -> None:
        if self._correcting is None:
            super().on_returned(value)
        else:
            self.apply_correct_outcome(value)

    def after_job(self) -> None:
        if self._correcting is None:
            super().after_job()
            return
        self._correcting = None
        self._correct_image = self._correct_labels = None
        # the re-check that ends every job would replace the outcome with "paint a slice"
        self._sticky_status = (self.status.value, self.status_level)
        self._update_fields()
        self.enable_model_actions(self.trained is not None)

    def revalidate(self, *args: Any) -> str | None:
        problem = super().revalidate(*args)
        sticky, self._sticky_status = self._sticky_status, None
        if sticky is not None:
            self.set_status(*sticky)
        return problem


class CorrectApply:
    """Writes a copied slice (one undo step) and moves the viewer to a suggested slice."""

    def apply_correct_outcome(self, value: Any) -> None:
        if isinstance(value, JobFailed):
            self.report_error(value.message)
        elif isinstance(value, CopyOutcome):
            self._apply_copy(value)
        elif isinstance(value, SuggestOutcome):
            self._apply_suggestion(value)

    def _apply_copy(self, outcome: CopyOutcome) -> None:
        layer, z, result = self._correct_labels, outcome.z, outcome.result
        if result is None:
            self.set_status("Cancelled; the annotation was not changed.", "warn")
            return
        if layer is None or layer not in self.viewer.layers:
            self.set_status("The annotation layer was removed; nothing was copied.", "warn")
            return
        data = level0(layer)
        target = data[z] if data.ndim == 3 else data
        if z not in result.written or np.any(np.asarray(target)):
            self.set_status(painted_message(z), "warn")
            return
        new = result.slices[z]
        if self.mode.value == "dense":
            new = _above_current_ids(new, data)
        if result.upcast or int(new.max(initial=0)) > np.iinfo(data.dtype).max:
            self.set_status(self._upcast_message(layer, z, result), "error")
            return
        self._write_slice(layer, z, new.astype(data.dtype, copy=False))

    def _upcast_message(self, layer: Labels, z: int, result: CopyResult) -> str:
        return (
            f"Slice z = {z} was not copied: its new label ids do not fit the annotation's "
            f"{level0(layer).dtype}. Convert '{layer.name}' to {result.dtype} (right-click the "
            "layer > Convert datatype), or use a new annotation layer, then copy again."
        )

    def _write_slice(self, layer: Labels, z: int, new: np.ndarray) -> None:
        """One ``data_setitem`` call: one undo step, and a paint event training listens to."""
        where = np.nonzero(new)
        if not where[0].size:
            self.set_status(
                f"The model found nothing on slice z = {z}; nothing was copied.", "warn"
            )
            return
        values = new[where]
        indices = where if level0(layer).ndim == 2 else (np.full(where[0].size, z), *where)
        layer.data_setitem(indices, values)
        self.viewer.layers.selection.active = layer  # Ctrl+Z and the brush act on it
        self._revalidate_timer.stop()  # the panel re-checks as the job ends: keep this message
        kind = (
            f"{len(np.unique(values))} objects, ids {values.min()}-{values.max()}"
            if self.mode.value == "dense"
            else "every pixel labelled"
        )
        self.set_status(
            f"Copied the prediction of {self._correct_words} to slice z = {z} of "
            f"'{layer.name}' ({kind}). Correct it, then train again; Ctrl+Z undoes the copy.",
            "ok",
        )

    def _apply_suggestion(self, outcome: SuggestOutcome) -> None:
        if not outcome.ranked or outcome.raw_scores is None:
            self.set_status("Cancelled; the viewer stays on its slice.", "warn")
            return
        image = self._correct_image
        z = outcome.ranked[0][0]
        if image is not None and image in self.viewer.layers:
            go_to_slice(self.viewer, image, z)
        others = ", ".join(str(t) for t, _ in outcome.ranked[1:])
        self.set_status(
            f"Suggested slice z = {z} (uncertainty {float(outcome.raw_scores[z]):.2f})"
            + (f"; next: {others}" if others else "")
            + f". Scored by {self._correct_words}: paint it, or press Copy prediction and "
            "correct it.",
            "ok",
        )


def _above_current_ids(new: np.ndarray, data: Any) -> np.ndarray:
    """Shift the copied ids above every id in the layer now.

    The ids were chosen in the worker from the annotation as it was; a user
    who painted a new object during that second may have taken one of them.
    """
    objects = new > 0
    if not objects.any():
        return new
    top = int(np.max(data))
    low = int(new[objects].min())
    if low > top:
        return new
    shifted = new.astype(np.int64)
    shifted[objects] += top - low + 1
    return shifted
