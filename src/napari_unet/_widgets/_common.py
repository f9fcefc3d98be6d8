"""What the Train and Segment widgets share: one widget style, one way to run jobs.

Both are magicgui ``Container`` subclasses whose child widgets are attributes
(``widget.iterations.value = 20`` in a test is what a user's typing does).
napari injects the viewer through the ``napari.viewer.Viewer`` annotation of
``__init__``.

A job runs in a napari ``thread_worker``: the Start button becomes Cancel,
a napari progress bar appears in the activity dock, and every value the job
yields is handled on the main thread (:mod:`._job_runner`). Inputs are
validated before Start is enabled and the reason is shown in a status line
under the button (:mod:`._job_status`).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from qtpy.QtCore import QTimer

from ._job_runner import JobRunnerMixin
from ._job_status import REVALIDATE_MS, JobStatusMixin
from ._state import unwrap_viewer

if TYPE_CHECKING:
    import napari

    from ..model.checkpoint import TrainedModel

logger = logging.getLogger(__name__)

__all__ = ["REVALIDATE_MS", "JobWidget"]


def device_choices() -> list[tuple[str, str]]:
    """(label, value) pairs: every device name, marked with what was detected."""
    from .. import devices

    found = devices.available_devices()
    labels = {"cuda": "cuda (NVIDIA GPU)", "mps": "mps (Apple GPU)", "cpu": "cpu"}
    if "cuda" in found:
        import torch

        labels["cuda"] = f"cuda ({torch.cuda.get_device_name(0)})"
    out = [(f"auto: {found[0]}", "auto")]
    for name in ("cuda", "mps", "cpu"):
        out.append((labels[name] if name in found else f"{name} (not available)", name))
    return out


def device_problem(name: str) -> str | None:
    from .. import devices

    try:
        devices.resolve_device(name)
    except ValueError as exc:
        return str(exc)
    return None


def layer_choices(
    viewer: Any, layer_type: type, *, prefer: Callable[[Any], bool] | None = None
) -> Callable[[Any], list[tuple[str, Any]]]:
    """A ComboBox ``choices`` callable listing the viewer's layers of one type.

    Layers for which ``prefer`` is true come first, so the default choice is a
    sensible one (e.g. a painted annotation rather than a preview we created).
    """

    def choices(_widget: Any) -> list[tuple[str, Any]]:
        layers = [layer for layer in viewer.layers if isinstance(layer, layer_type)]
        if prefer is not None:
            layers.sort(key=lambda layer: not prefer(layer))
        return [(layer.name, layer) for layer in layers]

    return choices


def score_text(dice: float | None, iteration: int | None) -> str:
    """The one way every panel words a model's score: 'validation Dice 0.803 (iteration 60)'."""
    if not isinstance(dice, (int, float)) or not math.isfinite(dice):
        return "no validation score"
    where = f" (iteration {int(iteration)})" if iteration is not None else ""
    return f"validation Dice {dice:.3f}{where}"


def kept_score(model: TrainedModel) -> str:
    """The score of the weights a model kept (not the best seen during its run).

    By default training keeps the last validated weights, so the best Dice of
    the run can differ from the model's; every panel shows this one.
    """
    training = model.training or {}
    return score_text(training.get("best_val_dice"), training.get("iteration"))


def model_source_choices(latest: Any, shipped: Path | None) -> list[tuple[str, str]]:
    """Model sources offered by the Segment and Batch panels: the one just trained first."""
    choices = []
    if latest is not None:
        choices.append((f"just trained: {latest.description}", "trained"))
    if shipped is not None:
        choices.append(("built-in default (pretrained EM model)", "builtin"))
    choices.append(("checkpoint file", "checkpoint"))
    return choices


def show_auto_at_minimum(spin: Any, text: str = "auto") -> None:
    """Show ``text`` instead of the minimum of a magicgui SpinBox (0 = "choose for me").

    magicgui's spin box (superqt's ``QLargeIntSpinBox``) ignores Qt's
    ``setSpecialValueText``, so a user saw "0" for an automatic tile size.
    Typing the word (or clearing the field) also selects the minimum.
    """
    from qtpy.QtGui import QValidator

    box = spin.native
    edit = box.lineEdit()

    def update_edit() -> None:
        new = text if box.value() == box.minimum() else str(box.value())
        if edit.text() != new:
            edit.setText(new)

    def interpret(policy: Any) -> None:
        typed = edit.displayText().strip()
        value = box.minimum() if not typed or text.startswith(typed) else int(typed)
        box._setValue(value, policy)

    class Validator(QValidator):
        def validate(self, typed: str, pos: int) -> Any:
            if not typed or text.startswith(typed) or typed.isdigit():
                return QValidator.State.Acceptable, typed, pos
            return QValidator.State.Invalid, typed, pos

    box._updateEdit = update_edit
    box._interpret = interpret
    edit.setValidator(Validator(box))
    update_edit()


def empty_path(value: Any) -> bool:
    """A FileEdit left empty (magicgui reports it as ``Path('.')``)."""
    return value is None or str(value) in ("", ".")


#: Checkpoints loaded in this session, shared by all panels: (path, mtime, size) -> the
#: model or why it cannot be used. Opening Train, Segment and Batch loaded and checked
#: the shipped model three times on the main thread (45 ms each once torch is
#: imported); now once. Safe to share: panels and jobs only read a model (training
#: copies its weights into a new network; GPU jobs predict with their own copy).
_LOADED: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
_LOADED_MAX = 4


def _load_shared(path: Path, key: tuple[str, int, int]) -> TrainedModel | str:
    from ..model.checkpoint import load_checkpoint

    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    try:
        loaded: TrainedModel | str = load_checkpoint(path)
    except Exception as exc:  # CheckpointError, but also e.g. MemoryError: never a silent pop-up
        loaded = f"Cannot use this checkpoint: {str(exc).strip() or type(exc).__name__}"
    _LOADED[key] = loaded
    while len(_LOADED) > _LOADED_MAX:
        _LOADED.popitem(last=False)
    return loaded


class CheckpointCache:
    """Load a checkpoint once per file version; a string says why it cannot be used.

    Validation runs on every change of the inputs; reading the file again each
    time would be slow for big models, so a result is kept (for all panels)
    until the file's path, size or modification time changes.
    """

    def __init__(self, use: str) -> None:
        self._use = use  # "trains" / "segments", for the message

    def load(self, path: Path) -> TrainedModel | str:
        if not path.is_file():
            return f"Checkpoint file '{path}' does not exist."
        try:
            stat = path.stat()
        except OSError as exc:  # removed or unreadable since is_file()
            return f"Cannot use this checkpoint: {exc.strerror or type(exc).__name__}"
        loaded = _load_shared(path, (str(path), stat.st_mtime_ns, stat.st_size))
        if not isinstance(loaded, str) and loaded.config.in_channels != 1:
            return (
                f"Checkpoint '{path.name}' expects {loaded.config.in_channels} input channels; "
                f"napari-unet {self._use} single-channel (grey) images."
            )
        return loaded


class JobWidget(JobRunnerMixin, JobStatusMixin, Container):
    """Base class: viewer, status line, progress, Start/Cancel button running a job.

    The worker machinery is :class:`._job_runner.JobRunnerMixin`, the status line
    and validation :class:`._job_status.JobStatusMixin`; this class builds the
    shared widgets, docks the panel, and declares what each panel provides.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, start_text: str) -> None:
        # scrollable: a panel taller than the screen scrolls instead of forcing napari's
        # window taller than the screen (three panels stacked reached ~1750 px)
        super().__init__(labels=True, scrollable=True)
        from qtpy.QtWidgets import QFrame

        self.native.setFrameShape(QFrame.Shape.NoFrame)
        self.viewer = unwrap_viewer(viewer)
        self._start_text = start_text
        self._init_runner()
        self._init_status(self.native)

        self.start = PushButton(text=start_text, label="")
        self.start.changed.connect(self._on_start_clicked)
        self.progress = ProgressBar(value=0, min=0, max=1, label="", visible=False)
        self.status = Label(value="", label="")
        self.status.native.setWordWrap(True)
        self.status.native.setMinimumWidth(260)
        # the other napari-unet panels already docked: join them as tabs once napari has
        # docked this one (after this constructor returns)
        self._tab_timer = QTimer(self.native)
        self._tab_timer.setSingleShot(True)
        self._tab_timer.setInterval(0)
        self._tab_timer.timeout.connect(self.join_panel_tabs)
        self._tab_timer.start()

    @property
    def native(self) -> Any:
        """The scroll area around the panel's widgets: what napari puts in the dock.

        magicgui's ``native`` is the widget inside the scroll area, and napari docks
        ``native``; without this the scroll area would be dropped.
        """
        return self.root_native_widget

    def join_panel_tabs(self) -> bool:
        """Tabify this panel's dock with the napari-unet panels docked in the same area.

        Stacked, Train + Segment + Batch share one screen height and each gets a
        sliver; as tabs (napari's own way to share a dock area) each gets the full
        height. Returns whether it joined a tab group.
        """
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        dock = self.native.parent()
        main = dock.parent() if isinstance(dock, QDockWidget) else None
        if not isinstance(main, QMainWindow) or dock.isFloating():
            return False
        area = main.dockWidgetArea(dock)
        others = [
            d
            for d in main.findChildren(QDockWidget)
            if d is not dock
            and not d.isFloating()
            and d.isVisibleTo(main)
            and main.dockWidgetArea(d) == area
            and isinstance(getattr(d.widget(), "_magic_widget", None), JobWidget)
        ]
        if not others:
            return False
        main.tabifyDockWidget(others[-1], dock)
        dock.show()
        dock.raise_()
        return True

    def tidy(self) -> None:
        """Keep the dock narrow: combos do not grow with long choices, texts wrap left-aligned."""
        from magicgui.widgets import ComboBox
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QComboBox, QSizePolicy

        for w in self:
            if isinstance(w, ComboBox):
                w.native.setSizeAdjustPolicy(
                    QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
                )
                w.native.setMinimumContentsLength(14)
            elif isinstance(w, Label):
                w.native.setWordWrap(True)
                w.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
                w.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def pack_top(self) -> None:
        """Rows at the top, the spare height below them (for panels with nothing that
        should grow: otherwise a tall dock spreads the rows apart)."""
        self.root_native_widget.widget().layout().addStretch(1)

    # -- what each panel provides -------------------------------------------------
    def _on_start_clicked(self, *_: Any) -> None:
        if self.running:
            self.cancel()
        elif self.revalidate() is None:
            self.start_job()

    def start_job(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def on_yielded(self, value: Any) -> None:  # pragma: no cover - overridden
        pass

    def on_returned(self, value: Any) -> None:  # pragma: no cover - overridden
        pass

    def report_error(self, message: str) -> None:
        """An error during a job: napari notification and the status line."""
        from napari.utils.notifications import show_error

        self.set_status(message, "error")
        show_error(f"napari-unet: {message}")

    def after_job(self) -> None:
        """Hook: restore widget state (visibility of optional fields) after a job."""
