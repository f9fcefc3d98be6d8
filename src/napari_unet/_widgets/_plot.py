"""Live training plot inside the dock: loss per iteration and validation Dice.

Users decide when a model is good enough by watching the curves flatten, so
the plot lives in the Train widget itself rather than in a terminal. Points
arrive on the main thread, up to many per second on a GPU. The matplotlib
figure (:mod:`._plot_figure`) is drawn on a background thread at a few frames
per second; the main thread only copies the data and pastes the finished
picture, so plotting never stalls napari's event loop (a full draw is
60-190 ms, which on the main thread showed as the panel's longest freezes).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from qtpy.QtCore import QRectF, Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPainter
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ._plot_figure import PlotData, PlotFigure

_REDRAW_MS = 250
#: A draw competes with training for the CPU, so the next one waits at least this many
#: times as long as the last one took: the plot takes at most ~1/4 of one core.
_DRAW_DUTY = 4
_HEIGHT = 210


class _Picture(QWidget):
    """Shows the last finished drawing, stretched while a drawing at a new size is on its way."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.image: QImage | None = None
        self._pixels: np.ndarray | None = None  # QImage borrows this buffer

    def show_pixels(self, pixels: np.ndarray, ratio: float) -> None:
        height, width = pixels.shape[:2]
        image = QImage(pixels.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
        image.setDevicePixelRatio(ratio)
        self._pixels, self.image = pixels, image
        self.update()

    def paintEvent(self, _event: Any) -> None:  # noqa: N802 (Qt's name)
        if self.image is not None:
            painter = QPainter(self)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(QRectF(self.rect()), self.image)
            painter.end()


class TrainingPlot(QWidget):
    """Loss (left axis) and validation Dice (right axis, 0..1) against iteration."""

    _drawn = Signal(object, float, float, int)  # pixels, ratio, seconds it took, generation

    def __init__(
        self, parent: QWidget | None = None, *, colors: dict[str, str] | None = None
    ) -> None:
        super().__init__(parent)
        c = {"background": "#262930", "foreground": "#414851", "text": "#f0f1f2"}
        c.update(colors or {})
        self._figure = PlotFigure(c)
        self._ax = self._figure.ax  # for tests: the axes of the last drawing
        self._picture = _Picture(self)
        # a fixed height: a status line that wraps must not resize (and redraw) the plot
        self._picture.setFixedHeight(_HEIGHT)
        self._picture.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._picture)

        self.iterations: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.val_iterations: list[int] = []
        self.val_metrics: list[float] = []
        self.draws = 0  # finished drawings (tests)
        self._dirty = True  # the hint is drawn once the widget is shown
        self._generation = 0  # bumped by reset: a drawing of a previous run is dropped
        self._next_draw = 0.0  # perf_counter time before which the timer does not draw
        self._pending: Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-unet-plot")
        self._drawn.connect(self._show_drawing, Qt.ConnectionType.QueuedConnection)
        self.destroyed.connect(lambda *_: self._executor.shutdown(wait=False))
        self._timer = QTimer(self)
        self._timer.setInterval(_REDRAW_MS)
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()

    # -- data ---------------------------------------------------------------
    def reset(self, total: int) -> None:
        """Forget the previous run (``total`` planned iterations; the x axis spans what ran)."""
        for series in (self.iterations, self.losses, self.smoothed,
                       self.val_iterations, self.val_metrics):
            series.clear()
        self._generation += 1
        self.redraw()

    def add_point(self, iteration: int, loss: float, val_metric: float | None = None) -> None:
        """Record one training iteration (and its validation Dice, when it was validated)."""
        if math.isfinite(loss):
            self.iterations.append(int(iteration))
            self.losses.append(float(loss))
            # exponential moving average: the trend, readable through noisy per-batch losses
            prev = self.smoothed[-1] if self.smoothed else float(loss)
            self.smoothed.append(0.9 * prev + 0.1 * float(loss) if self.smoothed else float(loss))
        if val_metric is not None and math.isfinite(val_metric):
            self.val_iterations.append(int(iteration))
            self.val_metrics.append(float(val_metric))
        self._dirty = True

    @property
    def n_points(self) -> int:
        return len(self.iterations)

    def snapshot(self) -> PlotData:
        return PlotData(tuple(self.iterations), tuple(self.losses), tuple(self.smoothed),
                        tuple(self.val_iterations), tuple(self.val_metrics))

    # -- drawing --------------------------------------------------------------
    def redraw(self) -> None:
        """Draw as soon as the drawing thread is free (start and end of a run)."""
        self._dirty = True
        self._next_draw = 0.0
        self._redraw_if_dirty()

    def _redraw_if_dirty(self) -> None:
        """Hand a snapshot to the drawing thread: only with news, when the plot is on
        screen (not in a hidden tab), one drawing at a time, and not before the last
        drawing's cost has been paid back (see ``_DRAW_DUTY``)."""
        if not self._dirty or not self.isVisible() or self._pending is not None:
            return
        if time.perf_counter() < self._next_draw:
            return
        self._dirty = False
        size = self._picture.size()
        ratio = float(self.devicePixelRatioF())
        job = (self.snapshot(), size.width(), size.height(), ratio, self._generation)
        self._pending = self._executor.submit(self._draw_in_thread, *job)

    def _draw_in_thread(self, data: PlotData, width: int, height: int, ratio: float,
                        generation: int) -> np.ndarray:
        started = time.perf_counter()
        pixels = self._figure.render(data, width, height, ratio)
        try:
            self._drawn.emit(pixels, ratio, time.perf_counter() - started, generation)
        except RuntimeError:  # the widget was deleted while this drawing ran
            pass
        return pixels

    def _show_drawing(self, pixels: np.ndarray, ratio: float, took: float, generation: int) -> None:
        self._pending = None
        self._next_draw = time.perf_counter() + max(_REDRAW_MS / 1000, _DRAW_DUTY * took)
        if generation != self._generation:  # drawn before a reset: the new run draws next
            self._next_draw = 0.0
            self._redraw_if_dirty()
            return
        self.draws += 1
        self._picture.show_pixels(pixels, ratio)

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        """Catch up when the tab with the plot is shown again."""
        super().showEvent(event)
        self._next_draw = 0.0
        self._redraw_if_dirty()

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._dirty = True  # drawn again at the new size (stretched until then)

    def image_rgba(self) -> np.ndarray:
        """Draw the current data now and return it as an RGBA array (tests, screenshots)."""
        if self._pending is not None:
            self._pending.result()
        size = self._picture.size()
        job = self._executor.submit(
            self._figure.render, self.snapshot(), size.width(), size.height(), 1.0
        )
        return job.result()
