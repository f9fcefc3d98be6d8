"""The training plot's matplotlib figure, drawn to an RGBA array without Qt.

A full matplotlib draw (ticks, text, three curves) takes 60-190 ms on a busy
2-core machine. Drawn on napari's event loop that is a visible stall, so the
Train panel draws this figure on a background thread and only pastes the
finished picture on the main thread (about 1 ms). Nothing here touches Qt;
a figure is used by one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LOSS_COLOR = "#6fa8dc"
DICE_COLOR = "#f6b26b"
_DPI = 90.0


@dataclass(frozen=True)
class PlotData:
    """A snapshot of one run's curves (copied, so the training thread can go on adding)."""

    iterations: tuple[int, ...] = ()
    losses: tuple[float, ...] = ()
    smoothed: tuple[float, ...] = ()
    val_iterations: tuple[int, ...] = ()
    val_metrics: tuple[float, ...] = ()

    def x_range(self) -> tuple[float, float]:
        """0 to the last iteration that ran, plus a margin so the last point is off the edge.

        Not the planned total: after a cancel at iteration 11 of 5000 the curves
        fill the plot instead of a sliver at its left edge.
        """
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


class PlotFigure:
    """Loss (left axis) and validation Dice (right axis, 0..1) against iteration."""

    def __init__(self, colors: dict[str, str]) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.0, 2.3), dpi=_DPI, layout="constrained",
                             facecolor=colors["background"])
        self.canvas = FigureCanvasAgg(self.figure)
        ax = self.figure.add_subplot()
        ax2 = ax.twinx()
        for a in (ax, ax2):
            a.set_facecolor(colors["background"])
            a.tick_params(colors=colors["text"], labelsize=7)
            for spine in a.spines.values():
                spine.set_color(colors["foreground"])
        ax.set_xlabel("iteration", color=colors["text"], fontsize=8)
        ax.set_ylabel("training loss", color=LOSS_COLOR, fontsize=8)
        ax2.set_ylabel("validation Dice", color=DICE_COLOR, fontsize=8)
        ax2.set_ylim(0.0, 1.0)
        (self.loss_line,) = ax.plot([], [], color=LOSS_COLOR, lw=0.8, alpha=0.45)
        (self.smooth_line,) = ax.plot([], [], color=LOSS_COLOR, lw=1.6)
        (self.val_line,) = ax2.plot([], [], color=DICE_COLOR, lw=1.2, marker="o", ms=3)
        self.ax = ax
        self.hint = ax.text(
            0.5, 0.5, "training loss and validation Dice\nappear here during training",
            transform=ax.transAxes, ha="center", va="center",
            color=colors["text"], fontsize=8, alpha=0.7,
        )

    def render(self, data: PlotData, width: int, height: int, ratio: float = 1.0) -> np.ndarray:
        """Draw ``data`` at ``width`` x ``height`` logical pixels (x ``ratio`` on HiDPI).

        Returns a new (H, W, 4) uint8 array, safe to hand to another thread.
        """
        self.figure.set_dpi(_DPI * ratio)
        self.figure.set_size_inches(max(width, 50) / _DPI, max(height, 40) / _DPI)
        self.hint.set_visible(not data.iterations)
        self.loss_line.set_data(data.iterations, data.losses)
        self.smooth_line.set_data(data.iterations, data.smoothed)
        self.val_line.set_data(data.val_iterations, data.val_metrics)
        self.ax.set_xlim(*data.x_range())
        self.ax.set_ylim(*data.loss_range())
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba()).copy()

    def tick_labels(self) -> list[str]:
        """The x tick labels of the last drawing (for tests)."""
        return [t.get_text() for t in self.ax.get_xticklabels() if t.get_visible()]

    def limits(self) -> tuple[Any, Any]:
        """(x limits, loss limits) of the last drawing."""
        return self.ax.get_xlim(), self.ax.get_ylim()
