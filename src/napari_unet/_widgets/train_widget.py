"""Train dock widget: paint a few slices, press Start, watch the model learn.

The widget gathers everything on the main thread (layer arrays, a snapshot
of the annotation, the settings), then runs :func:`._jobs.train_job` in a
napari ``thread_worker``. Each yielded training event moves the progress bars
and adds a point to the live plot; every N iterations the job also predicts
the slice the user is looking at and the widget shows it in a
"<image> preview" Labels layer. Cancel keeps the model so far. The
finished model is published to the viewer's :class:`._state.ViewerModels`,
where the Segment widget picks it up, and can be saved as a checkpoint.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from ..config import FINETUNE_LEARNING_RATE, PRESETS
from ._common import (
    CheckpointCache,
    JobWidget,
    device_choices,
    device_problem,
    empty_path,
    kept_score,
    layer_choices,
    score_text,
)
from ._jobs import JobFailed, PreviewUpdate, TrainOutcome, TrainRequest, TrainStarted, train_job
from ._layers import (
    METADATA_KEY,
    current_slice,
    image_problem,
    is_ours,
    labels_problem,
    layer_array,
    level0,
    snapshot,
    touched_slices,
    unique_name,
)
from ._plot import TrainingPlot
from ._state import models_for

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

    from ..annotations import AnnotationSummary
    from ..checkpoint import TrainedModel

logger = logging.getLogger(__name__)

MODE_HELP = {
    "dense": (
        "Paint whole slices: one id per object, background left at 0. Unpainted slices are ignored."
    ),
    "scribbles": (
        "Paint strokes anywhere: 1 = background, 2, 3, ... = classes. Unpainted pixels are ignored."
    ),
}
#: Learning rates that work: from scratch, and when fine-tuning a trained model.
LR_SCRATCH = 1e-3
LR_FINETUNE = FINETUNE_LEARNING_RATE


def _start_from_choices() -> list[tuple[str, str]]:
    from ..pretrained import default_checkpoint

    builtin = (
        "built-in default (pretrained EM model)"
        if default_checkpoint() is not None
        else "built-in default (untrained: no pretrained model ships yet)"
    )
    return [
        (builtin, "builtin"),
        ("checkpoint file", "checkpoint"),
        ("scratch (new model, size below)", "scratch"),
    ]


class _SliceTracker:
    """The z the viewer shows, written on the main thread and read by the worker.

    Only an int attribute is shared; assigning and reading it are atomic in
    Python, so no lock is needed and the worker never calls into napari.
    """

    def __init__(self, z: int | None) -> None:
        self.z = z

    def __call__(self) -> int | None:
        return self.z


class TrainWidget(JobWidget):
    """Train (or fine-tune) a U-Net on the painted slices of an annotation layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, start_text="Start training")
        from napari.layers import Image, Labels

        from ..pretrained import default_checkpoint

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

        v = self.viewer
        self.image = ComboBox(
            label="image",
            choices=layer_choices(v, Image, prefer=lambda layer: not is_ours(layer)),
            tooltip="The grey-level EM image or stack to learn from.",
        )
        self.annotation = ComboBox(
            label="annotation",
            choices=layer_choices(v, Labels, prefer=self._fits_image),
            tooltip="The Labels layer you paint. napari-unet only reads it, never changes it.",
        )
        self.new_annotation = PushButton(
            text="New annotation layer",
            label="",
            tooltip="An empty Labels layer with the image's shape, scale and position, "
            "ready to paint.",
        )
        self.mode = ComboBox(
            label="annotation mode",
            choices=[("dense slices", "dense"), ("scribbles", "scribbles")],
        )
        self.mode_help = Label(label="", value=MODE_HELP["dense"])
        self.summary = Label(label="will use", value="")
        self.start_from = ComboBox(
            label="start from",
            choices=_start_from_choices(),
            value="builtin" if self._shipped is not None else "scratch",
        )
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt", visible=False)
        self.model_size = ComboBox(
            label="model size",
            choices=list(PRESETS),
            value="small",
            tooltip="tiny: instant demos; small: fast on a CPU; default: the recommended U-Net; "
            "large/paper: more capacity, for a GPU.",
        )
        self.iterations = SpinBox(label="iterations", min=1, max=1_000_000, step=50, value=200)
        self.learning_rate = FloatSpinBox(
            label="learning rate",
            min=1e-5,
            max=1.0,
            step=1e-5,
            # the initial choice of "start from" is the shipped model when there is one
            value=LR_FINETUNE if self._shipped is not None else LR_SCRATCH,
            tooltip="1e-3 trains a new model; 3e-4 fine-tunes one without losing what it knows.",
        )
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.device_warning = Label(label="", value="", visible=False)
        self.device_warning.native.setWordWrap(True)
        self.device_warning.native.setStyleSheet("color: #e3b617;")
        self.preview_every = SpinBox(
            label="preview every N it.",
            min=0,
            max=100_000,
            step=5,
            value=25,
            tooltip="Every N iterations the current model segments the slice you are looking at "
            "(layer '<image> preview'). 0 turns the preview off.",
        )
        self.show_advanced = CheckBox(text="advanced settings", value=False, label="")
        self.w0 = FloatSpinBox(
            label="boundary weight w0",
            min=0.0,
            max=100.0,
            step=0.5,
            value=10.0,
            visible=False,
            tooltip="Extra loss weight on thin background between touching objects (the U-Net "
            "paper's w0; dense mode).",
        )
        self.sigma = FloatSpinBox(
            label="boundary width sigma",
            min=0.5,
            max=50.0,
            step=0.5,
            value=5.0,
            visible=False,
            tooltip="How far (pixels) the extra boundary weight reaches (the paper's sigma).",
        )
        self.class_balance = ComboBox(
            label="class balancing",
            choices=[("auto", "auto"), ("on", True), ("off", False)],
            value="auto",
            visible=False,
            tooltip="Weight rare classes up (the U-Net paper's w_c). auto: on for scribbles, off "
            "for painted slices, which already show the true proportions (balancing them makes "
            "small structures such as mitochondria come out too large).",
        )
        self.patch_size = SpinBox(
            label="patch size (px)",
            min=16,
            max=2048,
            step=16,
            value=128,
            visible=False,
            tooltip="Edge of the output window of one training sample.",
        )
        self.batch_size = SpinBox(label="batch size", min=1, max=256, value=4, visible=False)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0, visible=False)

        self.plot = TrainingPlot(colors=self._theme_colors())
        self.plot_box = Container(labels=False, label="")
        self.plot_box.native.layout().addWidget(self.plot)
        self.save_path = FileEdit(label="save model as", mode="w", filter="*.pt")
        self.save = PushButton(text="Save model", label="", enabled=False)

        self.extend(
            [
                self.image,
                self.annotation,
                self.new_annotation,
                self.mode,
                self.mode_help,
                self.summary,
                self.start_from,
                self.checkpoint,
                self.model_size,
                self.iterations,
                self.learning_rate,
                self.device,
                self.device_warning,
                self.preview_every,
                self.show_advanced,
                self.w0,
                self.sigma,
                self.class_balance,
                self.patch_size,
                self.batch_size,
                self.seed,
                self.start,
                self.progress,
                self.status,
                self.plot_box,
                self.save_path,
                self.save,
            ]
        )
        self.tidy()

        self.image.changed.connect(self._on_image_changed)
        self.annotation.changed.connect(self._on_annotation_changed)
        self.new_annotation.changed.connect(self.create_annotation_layer)
        self.mode.changed.connect(self._on_mode_changed)
        self.start_from.changed.connect(self._on_start_from_changed)
        # every setting the ready line names re-checks (and re-words) it
        for w in (self.checkpoint, self.device, self.model_size, self.iterations):
            w.changed.connect(self.revalidate)
        self.show_advanced.changed.connect(self._update_fields)
        self.save.changed.connect(self.save_model)

        from .. import devices

        warning = devices.cpu_only_torch_warning()
        if warning:
            self.device_warning.value = warning
            self.device_warning.visible = True
        self._on_image_changed()
        self._on_annotation_changed()
        self._update_fields()
        self.revalidate()

    # -- helpers --------------------------------------------------------------
    def _theme_colors(self) -> dict[str, str]:
        from napari.utils.theme import get_theme

        try:
            theme = get_theme(self.viewer.theme)
        except (KeyError, ValueError):
            return {}
        return {
            "background": theme.background.as_hex(),
            "foreground": theme.foreground.as_hex(),
            "text": theme.text.as_hex(),
        }

    def _fits_image(self, labels: Labels) -> bool:
        """Annotation candidates: same shape as the image and not a layer we made."""
        image = self.image.value if hasattr(self, "image") else None
        if image is None or is_ours(labels):
            return False
        return tuple(level0(labels).shape) == tuple(level0(image).shape)

    def _update_fields(self, *_: Any) -> None:
        """Show the fields that apply to the current choices."""
        advanced = bool(self.show_advanced.value)
        for w in (self.w0, self.sigma, self.class_balance, self.patch_size, self.batch_size, self.seed):
            w.visible = advanced
        start = self.start_from.value
        self.checkpoint.visible = start == "checkpoint"
        # the architecture comes from the checkpoint unless training from scratch
        self.model_size.enabled = start == "scratch" and not self.running
        self.mode_help.value = MODE_HELP[self.mode.value]

    def after_job(self) -> None:
        self.viewer.dims.events.current_step.disconnect(self._track_slice)
        self._tracker = None
        self._job_image = None
        self._update_fields()
        self.save.enabled = self.trained is not None

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

    # -- validation ---------------------------------------------------------------
    def _annotation_summary(self) -> AnnotationSummary | None:
        """What training will use, updated incrementally as the user paints.

        A full pass (every slice) happens only when the layer, the mode or the
        whole array changes; a stroke re-summarises just the slices it touched.
        """
        from ..annotations import AnnotationSettings, AnnotationSummary, annotated_slices, summarize

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
        return f"Ready: {what}, {self.iterations.value} iterations. Press Start."

    # -- the job ----------------------------------------------------------------------
    def build_request(self) -> TrainRequest:
        """Settings and data for the worker, gathered on the main thread."""
        from ..annotations import AnnotationSettings
        from ..config import preset
        from ..training import TrainingConfig

        image, labels = self.image.value, self.annotation.value
        config = TrainingConfig(
            iterations=int(self.iterations.value),
            batch_size=int(self.batch_size.value),
            patch_size=int(self.patch_size.value),
            learning_rate=float(self.learning_rate.value),
            annotation=AnnotationSettings(
                mode=self.mode.value, w0=float(self.w0.value), sigma=float(self.sigma.value),
                balance=self.class_balance.value,
            ),
            seed=int(self.seed.value),
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

    def start_job(self) -> None:
        request = self.build_request()
        self._job_image = self.image.value
        self.plot.reset(request.config.iterations)
        self._kept_score = None
        self.viewer.dims.events.current_step.connect(self._track_slice)
        self.run_job(train_job, request, total=request.config.iterations, desc="Training U-Net")
        self.set_status("Preparing the annotated slices...", "info")

    def _track_slice(self, *_: Any) -> None:
        image = self._job_image
        if self._tracker is not None and image is not None:
            self._tracker.z = current_slice(self.viewer, image)

    def on_yielded(self, value: Any) -> None:
        from ..training import TrainEvent

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
        self.set_progress(event.iteration)
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
        self.save.enabled = True

    def save_model(self, *_: Any) -> Path | None:
        """Write the trained model to the chosen .pt file; returns where it went.

        A bad path is reported before writing; a write that fails (full disk,
        permissions) puts the model in a rescue file instead and says where.
        Either way the model stays in memory, so Save can be pressed again.
        """
        from napari.utils.notifications import show_warning

        from .._saving import DestinationError, ModelNotSaved, check_destination, save_with_fallback

        if self.trained is None:
            self.set_status("Train a model first.", "error")
            return None
        if empty_path(self.save_path.value):
            self.set_status("Choose where to save the model ('save model as').", "error")
            return None
        path = Path(self.save_path.value)
        if path.suffix != ".pt":
            path = path.with_suffix(".pt")
        kept = "The model is kept in memory: choose another place and press Save model again."
        try:
            check_destination(path, overwrite=True)  # the file dialog asks before replacing
            saved = save_with_fallback(self.trained, path)
        except DestinationError as exc:
            self.report_error(f"Could not save the model: {exc}. {kept}")
            return None
        except ModelNotSaved as exc:
            self.report_error(f"{str(exc)[:1].upper()}{str(exc)[1:]}. {kept}")
            return None
        except Exception as exc:  # never a traceback here, never the model lost
            logger.exception("saving the model to %s failed", path)
            self.report_error(f"Could not save the model to {path}: {type(exc).__name__}: {exc}. {kept}")
            return None
        if saved.rescued:
            message = (
                f"Could not save the model to {path}: {saved.reason}. It was saved to "
                f"{saved.path} instead (and is still in memory)."
            )
            self.set_status(message, "warn")
            show_warning(f"napari-unet: {message}")
            return saved.path
        self.set_status(f"Saved the model to {saved.path}.", "ok")
        logger.info("saved model to %s", saved.path)
        return saved.path
