"""The Train panel's settings form: its widgets, their order, which ones show.

Two mixins of :class:`.train_widget.TrainWidget`: :class:`TrainFields`
creates every field as an attribute of the widget itself
(``widget.iterations.value = 20`` in a test is what a user's typing does);
:class:`TrainForm` lays them out and shows the ones that apply. Neither
reacts to anything; the reactions live on the widget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

from ..model.config import FINETUNE_LEARNING_RATE, PRESETS
from ._choices import checkpoint_edit, device_combo
from ._common import layer_choices
from ._layers import is_ours, level0
from ._plot import TrainingPlot

if TYPE_CHECKING:
    from napari.layers import Labels

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
    from ..model.pretrained import default_checkpoint

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


def _input_slices_field() -> ComboBox:
    """How many slices the network reads per slice (advanced; 0 keeps the starting model's)."""
    return ComboBox(
        label="input slices",
        choices=[("as the model", 0), ("1 (2D)", 1), ("3 (2.5D)", 3), ("5 (2.5D)", 5)],
        value=0,
        visible=False,
        tooltip="How many slices the network reads for each one: 3 gives it the slices above "
        "and below as well (2.5D), for near-isotropic volumes such as FIB-SEM (on thin serial "
        "sections it hurts). A 2D model fine-tuned with 3 starts as it was and learns what the "
        "neighbours add; training is about 30 % slower per iteration on a CPU.",
    )


def _run_length_fields() -> tuple[SpinBox, FloatSpinBox]:
    """How long a run goes: iterations, and a time limit (whichever ends it first).

    The defaults give the model 5 minutes of a 2-core CPU reach (about 800
    iterations of the default network in bf16); a GPU reaches the 1000
    iterations sooner.
    """
    iterations = SpinBox(label="iterations", min=1, max=1_000_000, step=50, value=1000)
    minutes = FloatSpinBox(
        label="time limit (min)",
        min=0.0,
        max=10_000.0,
        step=0.5,
        value=5.0,
        tooltip="Stop after this many minutes of training, or at the iterations above, "
        "whichever comes first (0: no time limit). The learning rate decays over the time, "
        "so a short run still ends on a settled model.",
    )
    return iterations, minutes


class TrainFields:
    """Creates the Train panel's fields as attributes of the widget (a mixin).

    Expects ``self.viewer`` and ``self._shipped`` (the pretrained checkpoint or
    None) to be set, and ``self._fits_image`` to rank annotation layers.
    """

    def _build_inputs(self) -> None:
        """What to learn from: the image, the annotation layer and how it is painted."""
        from napari.layers import Image, Labels

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

    def _build_model_fields(self) -> None:
        """Which model to start from and the settings every run needs."""
        self.start_from = ComboBox(
            label="start from",
            choices=_start_from_choices(),
            value="builtin" if self._shipped is not None else "scratch",
        )
        self.checkpoint = checkpoint_edit()
        self.model_size = ComboBox(
            label="model size",
            choices=list(PRESETS),
            value="small",
            tooltip="tiny: instant demos; small: fast on a CPU; default: the recommended U-Net; "
            "large/paper: more capacity, for a GPU.",
        )
        self.iterations, self.minutes = _run_length_fields()
        self.learning_rate = FloatSpinBox(
            label="learning rate",
            min=1e-5,
            max=1.0,
            step=1e-5,
            # the initial choice of "start from" is the shipped model when there is one
            value=LR_FINETUNE if self._shipped is not None else LR_SCRATCH,
            tooltip="1e-3 trains a new model; 3e-4 fine-tunes one without losing what it knows.",
        )
        self.device = device_combo()
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

    def _build_advanced(self) -> None:
        """The advanced section: hidden until "advanced settings" is ticked."""
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
        self.input_slices = _input_slices_field()
        self.batch_size = SpinBox(label="batch size", min=1, max=256, value=4, visible=False)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0, visible=False)

    def _build_outputs(self) -> None:
        """The live plot and where to save the model."""
        self.plot = TrainingPlot(colors=self._theme_colors())
        self.plot_box = Container(labels=False, label="")
        self.plot_box.native.layout().addWidget(self.plot)
        self.save_path = FileEdit(label="save model as", mode="w", filter="*.pt")
        self.save = PushButton(text="Save model", label="", enabled=False)
        self.export = PushButton(text="Export for Fiji (bioimage.io)", enabled=False)
        self.export.tooltip = (
            "Write a bioimage.io model package (.zip, beside 'save model as') that "
            "deepImageJ in Fiji and other bioimage.io tools run"
        )
        self.save_row = Container(
            widgets=[self.save, self.export], layout="horizontal", labels=False, label=""
        )
        self.save_row.margins = (0, 0, 0, 0)

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


class TrainForm(TrainFields):
    """Lays the fields out in panel order and shows the ones that apply (a mixin).

    Mixed into a ``JobWidget``, whose Start button, progress bar and status
    line take their places among the fields.
    """

    def build_form(self) -> None:
        """Create every field, then place them (with the job widgets) in panel order."""
        self._build_inputs()
        self._build_model_fields()
        self._build_advanced()
        self._build_outputs()
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
                self.minutes,
                self.learning_rate,
                self.device,
                self.device_warning,
                self.preview_every,
                self.show_advanced,
                self.w0,
                self.sigma,
                self.class_balance,
                self.patch_size,
                self.input_slices,
                self.batch_size,
                self.seed,
                self.start,
                self.progress,
                self.status,
                self.plot_box,
                self.save_path,
                self.save_row,
            ]
        )
        self.tidy()
        self.pack_top()

    def _fits_image(self, labels: Labels) -> bool:
        """Annotation candidates: same shape as the image and not a layer we made."""
        image = self.image.value if hasattr(self, "image") else None
        if image is None or is_ours(labels):
            return False
        return tuple(level0(labels).shape) == tuple(level0(image).shape)

    def _update_fields(self, *_: Any) -> None:
        """Show the fields that apply to the current choices."""
        advanced = bool(self.show_advanced.value)
        for w in (self.w0, self.sigma, self.class_balance, self.patch_size, self.input_slices,
                  self.batch_size, self.seed):
            w.visible = advanced
        start = self.start_from.value
        self.checkpoint.visible = start == "checkpoint"
        # the architecture comes from the checkpoint unless training from scratch
        self.model_size.enabled = start == "scratch" and not self.running
        self.mode_help.value = MODE_HELP[self.mode.value]
