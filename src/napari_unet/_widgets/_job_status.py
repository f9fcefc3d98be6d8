"""The status line and input validation of a job panel (a mixin of ``JobWidget``).

Inputs are validated before Start is enabled and the reason is shown in a
status line under the button. Validation runs again when a watched layer
changes, delayed so that painting does not re-check on every brush dab.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from magicgui.widgets import Label, PushButton
    from napari.layers import Layer
    from qtpy.QtCore import QTimer

logger = logging.getLogger(__name__)

_COLORS = {"info": "", "ok": "#6aa84f", "warn": "#e3b617", "error": "#ff6b6b"}
#: Re-validation after layer edits waits this long for painting to pause.
REVALIDATE_MS = 300


class JobStatusMixin:
    """Status line (text + colour) and validation that enables or disables Start."""

    start: PushButton
    status: Label
    problem: str | None
    status_level: str
    _watched: dict[str, list[tuple[Any, Callable[..., None]]]]
    _revalidate_timer: QTimer
    running: bool  # provided by JobRunnerMixin: no re-validation while a job runs

    def _init_status(self, native: Any) -> None:
        """The validation state and its delay timer (children of ``native``)."""
        from qtpy.QtCore import QTimer

        self.problem = None
        self._watched = {}
        self.status_level = "info"
        self._revalidate_timer = QTimer(native)
        self._revalidate_timer.setSingleShot(True)
        self._revalidate_timer.setInterval(REVALIDATE_MS)
        self._revalidate_timer.timeout.connect(self.revalidate)

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
