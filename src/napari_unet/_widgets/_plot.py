"""Live training plot inside the dock: loss per iteration and validation Dice.

Users decide when a model is good enough by watching the curves flatten, so
the plot lives in the Train widget itself rather than in a terminal. It is a
plain matplotlib ``Figure`` (no pyplot, so no global figure state) in a Qt
canvas. Points arrive on the main thread, up to many per second on a GPU;
redrawing is throttled to a few frames per second so plotting never slows
training or the event loop.
"""

from __future__ import annotations

import math
import time
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

_REDRAW_MS = 250
#: A redraw holds napari's event loop for its whole duration (matplotlib draws on the
#: main thread: ~60 ms idle, ~190 ms while training shares the cores), so the next one
#: waits at least this many times as long: the plot takes at most ~1/8 of the main thread.
_DRAW_DUTY = 8


class TrainingPlot(QWidget):
    """Loss (left axis) and validation Dice (right axis, 0..1) against iteration."""

    def __init__(
        self, parent: QWidget | None = None, *, colors: dict[str, str] | None = None
    ) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        c = {"background": "#262930", "foreground": "#414851", "text": "#f0f1f2"}
        c.update(colors or {})
        self.figure = Figure(
            figsize=(3.6, 2.2), dpi=90, layout="constrained", facecolor=c["background"]
        )
        self.canvas = FigureCanvasQTAgg(self.figure)
        # a fixed height: a status line that wraps to one more line must not resize the
        # canvas, since every resize is a full matplotlib redraw on napari's event loop
        self.canvas.setFixedHeight(210)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

        ax = self.figure.add_subplot()
        ax2 = ax.twinx()
        for a in (ax, ax2):
            a.set_facecolor(c["background"])
            a.tick_params(colors=c["text"], labelsize=7)
            for spine in a.spines.values():
                spine.set_color(c["foreground"])
        ax.set_xlabel("iteration", color=c["text"], fontsize=8)
        ax.set_ylabel("training loss", color="#6fa8dc", fontsize=8)
        ax2.set_ylabel("validation Dice", color="#f6b26b", fontsize=8)
        ax2.set_ylim(0.0, 1.0)
        (self._loss_line,) = ax.plot([], [], color="#6fa8dc", lw=0.8, alpha=0.45)
        (self._smooth_line,) = ax.plot([], [], color="#6fa8dc", lw=1.6)
        (self._val_line,) = ax2.plot([], [], color="#f6b26b", lw=1.2, marker="o", ms=3)
        self._ax = ax
        # the curves are drawn over a cached picture of the axes ("blitting"): a live
        # update costs ~1 ms instead of a full redraw of text and ticks (60-190 ms)
        self._curves = (self._loss_line, self._smooth_line, self._val_line)
        for curve in self._curves:
            curve.set_animated(True)
        self._background: Any = None
        self.full_draws = 0  # how often the axes were redrawn (tests check it stays rare)
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        # a picture of the axes taken at another size must not be pasted after a resize
        self.canvas.mpl_connect("resize_event", self._forget_background)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        self._hint = ax.text(
            0.5,
            0.5,
            "training loss and validation Dice\nappear here during training",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color=c["text"],
            fontsize=8,
            alpha=0.7,
        )

        self.iterations: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.val_iterations: list[int] = []
        self.val_metrics: list[float] = []
        self._dirty = False
        self._next_draw = 0.0  # perf_counter time before which the timer does not redraw
        self._timer = QTimer(self)
        self._timer.setInterval(_REDRAW_MS)
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()

    # -- data ---------------------------------------------------------------
    def reset(self, total: int) -> None:
        """Forget the previous run of ``total`` planned iterations.

        The x axis spans the iterations that have run, not ``total``: after a
        cancel at iteration 11 of 5000 the curves fill the plot instead of a
        sliver at its left edge.
        """
        for series in (
            self.iterations,
            self.losses,
            self.smoothed,
            self.val_iterations,
            self.val_metrics,
        ):
            series.clear()
        self._dirty = True
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

    # -- drawing --------------------------------------------------------------
    def _on_full_draw(self, _event: Any) -> None:
        """After matplotlib drew the axes: keep that picture and put the curves on it."""
        self.full_draws += 1
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_curves()

    def _forget_background(self, _event: Any = None) -> None:
        self._background = None

    def _draw_curves(self) -> None:
        for curve in self._curves:
            curve.axes.draw_artist(curve)

    def _redraw_if_dirty(self) -> None:
        """The timer's update: only when there is news and the plot is on screen (not in a
        hidden tab). While the data stays inside roomy axis limits only the curves are
        redrawn; the axes (ticks, text) only when the data outgrows them, and then not
        before the last full draw's cost has been paid back (see ``_DRAW_DUTY``)."""
        if not self._dirty or not self.isVisible():
            return
        self._set_curve_data()
        if self._background is not None and self._limits_fit():
            self._dirty = False
            self.canvas.restore_region(self._background)
            self._draw_curves()
            self.canvas.blit(self.figure.bbox)
            return
        if time.perf_counter() < self._next_draw:
            return
        self._dirty = False
        started = time.perf_counter()
        lo, hi = self.x_range()
        self._ax.set_xlim(lo, max(hi, 1.0) * 2.0)  # room to grow before the next full draw
        ylo, yhi = self.loss_range()
        pad = 0.25 * (yhi - ylo)
        self._ax.set_ylim(max(0.0, ylo - pad) if ylo >= 0 else ylo - pad, yhi + pad)
        self.canvas.draw()  # now, to measure it (draw_idle would draw later, unmeasured)
        took = time.perf_counter() - started
        self._next_draw = time.perf_counter() + max(_REDRAW_MS / 1000, _DRAW_DUTY * took)

    def _limits_fit(self) -> bool:
        """Whether the current axis limits still show every point (and not as a sliver)."""
        _, x1 = self._ax.get_xlim()
        _, last = self.x_range()
        y0, y1 = self._ax.get_ylim()
        ylo, yhi = self.loss_range()
        return last <= x1 <= 3 * last and y0 <= ylo and yhi <= y1

    def _set_curve_data(self) -> None:
        if self.iterations and self._hint.get_visible():  # first points: drop the hint
            self._hint.set_visible(False)
            self._background = None  # the hint is part of the cached picture
        self._loss_line.set_data(self.iterations, self.losses)
        self._smooth_line.set_data(self.iterations, self.smoothed)
        self._val_line.set_data(self.val_iterations, self.val_metrics)

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        """Catch up when the tab with the plot is shown again."""
        super().showEvent(event)
        self._next_draw = 0.0
        self._redraw_if_dirty()

    def redraw(self) -> None:
        """Fit the axes exactly to the data and draw everything (at the start and end of
        a run; the timer updates the curves cheaply in between)."""
        self._dirty = False
        self._set_curve_data()
        self._ax.set_xlim(*self.x_range())
        self._ax.set_ylim(*self.loss_range())
        self.canvas.draw_idle()

    def x_range(self) -> tuple[float, float]:
        """0 to the last iteration drawn, plus a margin so the last point is not on the edge."""
        last = max(self.iterations[-1:] + self.val_iterations[-1:], default=0)
        return 0.0, max(1.0, last * 1.04)

    def loss_range(self) -> tuple[float, float]:
        """The loss axis: every raw and smoothed loss inside it, with a 5% margin."""
        values = self.losses + self.smoothed
        if not values:
            return 0.0, 1.0
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
        # a loss that cannot go negative starts at 0 at the lowest, never below its data
        return (max(0.0, lo - pad) if lo >= 0 else lo - pad), hi + pad

    def image_rgba(self) -> Any:
        """The rendered plot as an RGBA array (for tests and screenshots)."""
        import numpy as np

        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba()).copy()
