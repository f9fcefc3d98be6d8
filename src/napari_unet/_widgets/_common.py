"""What the Train and Segment widgets share: one widget style, one way to run jobs.

Both are magicgui ``Container`` subclasses whose child widgets are attributes
(``widget.iterations.value = 20`` in a test is what a user's typing does).
napari injects the viewer through the ``napari.viewer.Viewer`` annotation of
``__init__``.

A job runs in a napari ``thread_worker``: the Start button becomes Cancel,
a napari progress bar appears in the activity dock, and every value the job
yields is handled here on the main thread. Inputs are validated before Start
is enabled and the reason is shown in a status line under the button.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from magicgui.widgets import Container, Label, ProgressBar, PushButton, Widget
from qtpy.QtCore import QTimer

from ._state import unwrap_viewer

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer
    from napari.qt.threading import GeneratorWorker

    from ..checkpoint import TrainedModel

logger = logging.getLogger(__name__)

_COLORS = {"info": "", "ok": "#6aa84f", "warn": "#e3b617", "error": "#ff6b6b"}
#: Re-validation after layer edits waits this long for painting to pause.
REVALIDATE_MS = 300


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


class CheckpointCache:
    """Load a checkpoint once per file version; a string says why it cannot be used.

    Validation runs on every change of the inputs; reading the file again each
    time would be slow for big models, so the last result is kept until the
    file's path, size or modification time changes.
    """

    def __init__(self, use: str) -> None:
        self._use = use  # "trains" / "segments", for the message
        self._key: Any = None
        self._value: Any = None

    def load(self, path: Path) -> TrainedModel | str:
        from ..checkpoint import load_checkpoint

        if not path.is_file():
            return f"Checkpoint file '{path}' does not exist."
        try:
            stat = path.stat()
        except OSError as exc:  # removed or unreadable since is_file()
            return f"Cannot use this checkpoint: {exc.strerror or type(exc).__name__}"
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key == self._key:
            return self._value
        try:
            loaded: TrainedModel | str = load_checkpoint(path)
        except Exception as exc:  # CheckpointError, but also e.g. MemoryError: never a silent pop-up
            loaded = f"Cannot use this checkpoint: {str(exc).strip() or type(exc).__name__}"
        if not isinstance(loaded, str) and loaded.config.in_channels != 1:
            loaded = (
                f"Checkpoint '{path.name}' expects {loaded.config.in_channels} input channels; "
                f"napari-unet {self._use} single-channel (grey) images."
            )
        self._key, self._value = key, loaded
        return loaded


class JobWidget(Container):
    """Base class: viewer, status line, progress, Start/Cancel button running a job."""

    def __init__(self, viewer: napari.viewer.Viewer, *, start_text: str) -> None:
        # scrollable: a panel taller than the screen scrolls instead of forcing napari's
        # window taller than the screen (three panels stacked reached ~1750 px)
        super().__init__(labels=True, scrollable=True)
        from qtpy.QtWidgets import QFrame

        self.native.setFrameShape(QFrame.Shape.NoFrame)
        self.viewer = unwrap_viewer(viewer)
        self._start_text = start_text
        self._worker: GeneratorWorker | None = None
        self._cancel_event: threading.Event | None = None
        self._pbar: Any = None
        self.problem: str | None = None
        self._watched: dict[str, list[tuple[Any, Callable[..., None]]]] = {}
        self.status_level = "info"
        self._pending: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._dispatching = False
        self._stop_on_close: Callable[..., None] | None = None
        self._revalidate_timer = QTimer(self.native)
        self._revalidate_timer.setSingleShot(True)
        self._revalidate_timer.setInterval(REVALIDATE_MS)
        self._revalidate_timer.timeout.connect(self.revalidate)

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

    # -- status ---------------------------------------------------------------
    def set_status(self, text: str, level: str = "info") -> None:
        """Show ``text`` under the button; ``level`` picks the colour (error = red)."""
        logger.debug("%s status [%s]: %s", type(self).__name__, level, text)
        self.status.value = text
        color = _COLORS.get(level, "")
        self.status.native.setStyleSheet(f"color: {color};" if color else "")
        self.status_level = level

    # -- validation -----------------------------------------------------------
    def schedule_revalidate(self, *_: Any) -> None:
        """Re-check inputs once painting pauses (cheap, but not on every brush dab)."""
        self._revalidate_timer.start()

    def revalidate(self, *_: Any) -> str | None:
        """Check the inputs now; enable Start only when there is no problem."""
        if self.running:
            return self.problem
        try:
            self.problem = self.find_problem()
        except (
            ValueError,
            TypeError,
            IndexError,
            KeyError,
        ) as exc:  # never let a check crash the GUI
            logger.debug("validation failed", exc_info=True)
            self.problem = f"Cannot check the inputs: {exc}"
        self.start.enabled = self.problem is None
        if self.problem is not None:
            self.set_status(self.problem, "error")
        else:
            self.set_status(self.ready_message(), "info")
        return self.problem

    def find_problem(self) -> str | None:  # pragma: no cover - overridden
        return None

    def ready_message(self) -> str:
        return "Ready."

    def watch_layer(
        self,
        key: str,
        layer: Layer | None,
        *event_names: str,
        callback: Callable[..., None] | None = None,
    ) -> None:
        """Call ``callback`` (default: a delayed re-validation) when ``layer`` changes.

        ``key`` names the slot ("image", "annotation"): watching a new layer in a
        slot stops watching the previous one.
        """
        for emitter, previous in self._watched.pop(key, []):
            emitter.disconnect(previous)
        if layer is None:
            return
        callback = callback or self.schedule_revalidate
        emitters = [getattr(layer.events, name, None) for name in event_names]
        self._watched[key] = [(e, callback) for e in emitters if e is not None]
        for emitter, cb in self._watched[key]:
            emitter.connect(cb)

    # -- jobs -----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def input_widgets(self) -> list[Widget]:
        """Widgets disabled while a job runs (the settings it was started with)."""
        keep = {id(self.start), id(self.progress), id(self.status)}
        return [w for w in self if id(w) not in keep]

    def run_job(
        self, job: Callable[..., Any], request: Any, *, total: int, desc: str
    ) -> GeneratorWorker:
        """Start ``job(request, cancel_event)`` in a worker thread; Start becomes Cancel."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._cancel_event = threading.Event()
        worker = create_worker(job, request, self._cancel_event, _start_thread=False)

        # values reach the handlers only while this worker is the widget's current job
        def relay(handler: Callable[..., None]) -> Callable[..., None]:
            def deliver(*args: Any) -> None:
                if self._worker is worker:
                    self._dispatch(handler, *args)

            return deliver

        worker.yielded.connect(relay(self.on_yielded))
        worker.returned.connect(relay(self.on_returned))
        worker.errored.connect(relay(self._on_errored))
        worker.finished.connect(relay(self._on_finished))
        self._worker = worker
        self._pbar = progress(total=total, desc=desc)
        self.progress.max = max(1, total)
        self.progress.value = 0
        self.progress.visible = True
        for w in self.input_widgets():
            w.enabled = False
        self.start.text = "Cancel"
        self.start.enabled = True
        # closing the window mid-run stops the job (and frees its GPU memory) instead of
        # leaving it running for a widget that no longer exists
        cancel_event = self._cancel_event

        def stop_on_close(*_: Any) -> None:
            cancel_event.set()
            worker.quit()
            self._worker = None  # the Qt widgets are gone: drop the job's last signals
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None

        self._stop_on_close = stop_on_close
        self.native.destroyed.connect(stop_on_close)
        worker.start()
        return worker

    def _dispatch(self, handler: Callable[..., None], *args: Any) -> None:
        """Run job handlers one at a time, in the order the worker sent them.

        napari's progress bar and notifications call ``processEvents``, so a
        handler can be re-entered by the worker's next signal (even "finished")
        before it returns; queueing keeps each handler atomic.
        """
        self._pending.append((handler, args))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending:
                next_handler, next_args = self._pending.popleft()
                try:
                    next_handler(*next_args)
                except Exception:  # a GUI bug must not leave the widget stuck in "running"
                    logger.exception(
                        "napari-unet: error in %s", getattr(next_handler, "__name__", next_handler)
                    )
        finally:
            self._dispatching = False

    def set_progress(self, done: int) -> None:
        """Move both progress bars (the widget's and napari's activity dock) to ``done``."""
        self.progress.value = min(int(done), self.progress.max)
        if self._pbar is not None:
            delta = int(done) - int(self._pbar.n)
            if delta > 0:
                self._pbar.update(delta)

    def cancel(self) -> None:
        """Ask the running job to stop; it finishes its step and keeps what it made."""
        if self._cancel_event is not None and not self._cancel_event.is_set():
            self._cancel_event.set()
            self.start.text = "Cancelling..."
            self.start.enabled = False
            self.set_status("Cancelling after the current step...", "warn")

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

    def _on_errored(self, exc: BaseException) -> None:
        # napari's worker already shows the exception (with traceback) as a notification
        logger.error("napari-unet job failed", exc_info=(type(exc), exc, exc.__traceback__))
        self.set_status(f"Failed: {type(exc).__name__}: {exc}", "error")

    def _on_finished(self) -> None:
        logger.debug("%s job finished", type(self).__name__)
        if self._stop_on_close is not None:
            self.native.destroyed.disconnect(self._stop_on_close)
            self._stop_on_close = None
        self._worker = None
        self._cancel_event = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.progress.visible = False
        for w in self.input_widgets():
            w.enabled = True
        self.start.text = self._start_text
        keep = self.status.value, getattr(self, "status_level", "info")
        self.after_job()
        problem = self.revalidate()
        if problem is None:  # keep the job's final message rather than "Ready"
            self.set_status(*keep)

    def after_job(self) -> None:
        """Hook: restore widget state (visibility of optional fields) after a job."""
