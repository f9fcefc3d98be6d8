"""From the Train panel's form to a run: the checks, the ready line, the request.

:class:`TrainRequestBuilder` is a mixin of :class:`.train_widget.TrainWidget`.
It answers the questions ``JobWidget.revalidate`` asks (what is wrong, what
will run), keeps the "will use" summary of the annotation up to date as the
user paints, and gathers the :class:`._jobs.TrainRequest` for the worker on
the main thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._common import device_problem, empty_path
from ._jobs import TrainRequest
from ._layers import current_slice, image_problem, labels_problem, level0, snapshot

if TYPE_CHECKING:
    from ..model.checkpoint import TrainedModel
    from ..training.annotations import AnnotationSummary


class _SliceTracker:
    """The z the viewer shows, written on the main thread and read by the worker.

    Only an int attribute is shared; assigning and reading it are atomic in
    Python, so no lock is needed and the worker never calls into napari.
    """

    def __init__(self, z: int | None) -> None:
        self.z = z

    def __call__(self) -> int | None:
        return self.z


class TrainRequestBuilder:
    """Validation, the ready line and the request (mixed into a ``JobWidget``).

    Uses the form's fields and the widget's ``_slice_stats`` / ``_stats_key``
    / ``_dirty_slices`` (the per-slice summaries kept stroke by stroke),
    ``_checkpoints`` and ``_shipped``; sets ``_tracker`` for the run.
    """

    def _annotation_summary(self) -> AnnotationSummary | None:
        """What training will use, updated incrementally as the user paints.

        A full pass (every slice) happens only when the layer, the mode or the
        whole array changes; a stroke re-summarises just the slices it touched.
        """
        from ..training.annotations import (
            AnnotationSettings,
            AnnotationSummary,
            annotated_slices,
            summarize,
        )

        labels = self.annotation.value
        if labels is None:
            return None
        data = level0(labels)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            return None
        settings = AnnotationSettings(mode=self.mode.value)
        key = (id(labels), self.mode.value, tuple(data.shape))
        if self._slice_stats is None or key != self._stats_key:
            zs = annotated_slices(data)
            self._slice_stats = {z: summarize(data[z : z + 1], settings) for z in zs}
            self._stats_key = key
        else:
            for z in sorted(self._dirty_slices):
                if 0 <= z < data.shape[0]:
                    stats = summarize(data[z : z + 1], settings)
                    if stats.slices:
                        self._slice_stats[z] = stats
                    else:
                        self._slice_stats.pop(z, None)
        self._dirty_slices = set()
        stats = self._slice_stats
        return AnnotationSummary(
            slices=tuple(sorted(stats)),
            n_objects=sum(s.n_objects for s in stats.values()),
            classes=tuple(sorted({c for s in stats.values() for c in s.classes})),
            mode=settings.mode,
        )

    def _init_model(self) -> TrainedModel | str | None:
        """The model to start from: a TrainedModel, a problem (str), or None for scratch."""
        start = self.start_from.value
        if start == "checkpoint":
            if empty_path(self.checkpoint.value):
                return "Choose a checkpoint file (.pt) to start from."
            return self._checkpoints.load(Path(self.checkpoint.value))
        if start == "builtin" and self._shipped is not None:
            return self._checkpoints.load(self._shipped)
        return None

    def find_problem(self) -> str | None:
        image, labels = self.image.value, self.annotation.value
        problem = image_problem(image)
        if problem is None:
            problem = labels_problem(labels, image)
        summary = self._annotation_summary() if problem is None else None
        self.summary.value = "" if summary is None else self._summary_text(summary)
        if problem is not None:
            return problem
        problem = device_problem(self.device.value)
        if problem is not None:
            return problem
        init = self._init_model()
        if isinstance(init, str):
            return init
        if summary is None or not summary.slices:
            return (
                "No annotated slice yet: paint objects on at least one slice of the "
                "annotation layer."
            )
        return None

    def _summary_text(self, summary: AnnotationSummary) -> str:
        text = str(summary)
        if self.image.value is not None and level0(self.image.value).ndim == 2 and summary.slices:
            text = text.split("; ", 1)[-1] if "; " in text else "painted"
        return text

    def ready_message(self) -> str:
        start = self.start_from.value
        if start == "scratch":
            what = f"a new '{self.model_size.value}' U-Net"
        elif start == "builtin" and self._shipped is None:
            what = "a new default U-Net"
        else:
            what = "fine-tuning the chosen model"
        limit = float(self.minutes.value)
        budget = f" or {limit:g} min, whichever comes first" if limit > 0 else ""
        return f"Ready: {what}, {self.iterations.value} iterations{budget}. Press Start."

    def build_request(self) -> TrainRequest:
        """Settings and data for the worker, gathered on the main thread."""
        from ..model.config import preset
        from ..training.annotations import AnnotationSettings
        from ..training.trainer import TrainingConfig

        image, labels = self.image.value, self.annotation.value
        config = TrainingConfig(
            iterations=int(self.iterations.value),
            time_limit_s=float(self.minutes.value) * 60.0 if self.minutes.value > 0 else None,
            batch_size=int(self.batch_size.value),
            patch_size=int(self.patch_size.value),
            learning_rate=float(self.learning_rate.value),
            annotation=AnnotationSettings(
                mode=self.mode.value, w0=float(self.w0.value), sigma=float(self.sigma.value),
                balance=self.class_balance.value,
            ),
            seed=int(self.seed.value),
            input_slices=int(self.input_slices.value) or None,  # 0: as the starting model
            device=self.device.value,
        )
        init = self._init_model()
        model = None
        if init is None:
            model = preset(
                self.model_size.value if self.start_from.value == "scratch" else "default"
            )
        assert not isinstance(init, str)  # validated before Start
        self._tracker = _SliceTracker(current_slice(self.viewer, image))
        return TrainRequest(
            image=level0(image),
            labels=snapshot(level0(labels)),
            config=config,
            model=model,
            init=init,
            preview_every=int(self.preview_every.value),
            preview_z=self._tracker,
        )
