"""Predict an xy window of volume slices exactly as the whole-slice prediction would.

A volume whose slices are too large for one task (or one machine's memory) is
cut in xy as well as in z. To stay bit-identical to the whole-slice run, a
window is not predicted as an image of its own (that would move the tile
grid and the mirror padding): the whole slice's tile plan is made
(:func:`~.tile_plan.plan_axis`, same tile size and pooling grid), the tiles of
that plan that touch the window are run, in the same order, on the same input
pixels (mirror padding only at the true slice border, read through the same
``np.pad`` index arithmetic), and placed by the same last-tile-wins rule as
:class:`~.overlap_tile._ExactStitcher`. Every window pixel thus comes from
the very tile, with the very input, that gives it its value in the
whole-slice run. Tiles that straddle a window border are run by both windows
(the price of chunk-aligned windows when tile starts are not).

Only valid-padding networks (the overlap-tile strategy) are supported: a
same-padding network blends overlapping tiles, which would need the
neighbours' weights as well. Instances are refused with xy blocks (an object
cut by a window border would get two ids); see
:func:`~.volume.segment_volume`.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .._validation import check_finite
from ..model.normalization import Normalization
from .overlap_tile import run_tiles
from .tile_plan import AxisPlan, plan_axis

Window = tuple[int, int, int, int]  # y0, y1, x0, x1 (output pixels, end exclusive)


def xy_windows(shape: tuple[int, int], block_xy: int) -> list[Window]:
    """Windows of ``block_xy`` pixels (the last ones shorter) covering a ``(Y, X)`` slice, row by row."""
    Y, X = (int(n) for n in shape)
    return [(y0, min(y0 + block_xy, Y), x0, min(x0 + block_xy, X))
            for y0 in range(0, Y, block_xy) for x0 in range(0, X, block_xy)]


def _touching(plan: AxisPlan, lo: int, hi: int) -> list[int]:
    """Tile starts of ``plan`` whose output span meets ``[lo, hi)``."""
    return [s for s in plan.starts if s < hi and s + plan.tile > lo]


def _source_index(length: int, plan: AxisPlan, first: int, end: int) -> np.ndarray:
    """Image index of each padded pixel ``first:end``: the whole slice's ``np.pad`` reflection."""
    index = np.pad(np.arange(length), (plan.pad_before, plan.pad_after), mode="reflect")
    return index[first:end]


class WindowPredictor:
    """The whole-slice tile plan of a ``(Y, X)`` slice, restricted to one window.

    Built per block from the engine's predictor (its tile size, grid and
    runner), so a window sees exactly the plan that predictor uses for the
    whole slice.
    """

    def __init__(self, predictor: Any, shape: tuple[int, int], window: Window) -> None:
        if not predictor.valid:
            raise ValueError("xy blocks need a valid-padding network (overlap-tile); "
                             "predict a same-padding network in whole slices (block_xy=None)")
        self.predictor = predictor
        self.shape = (int(shape[0]), int(shape[1]))
        self.window = window
        grid, tile, overlap = predictor.grid, predictor.tile_size, predictor.overlap
        self.py = plan_axis(grid, self.shape[0], tile, overlap)
        self.px = plan_axis(grid, self.shape[1], tile, overlap)
        y0, y1, x0, x1 = window
        self.ys, self.xs = _touching(self.py, y0, y1), _touching(self.px, x0, x1)
        m = predictor.margin
        # padded coordinates of the input the touching tiles read
        self.iy = _source_index(self.shape[0], self.py, self.ys[0], self.ys[-1] + self.py.tile + 2 * m)
        self.ix = _source_index(self.shape[1], self.px, self.xs[0], self.xs[-1] + self.px.tile + 2 * m)

    def read(self, volume: Any, z: int) -> np.ndarray:
        """The raw pixels of slice ``z`` the window's tiles need (one rectangular read)."""
        r0, r1 = int(self.iy.min()), int(self.iy.max()) + 1
        c0, c1 = int(self.ix.min()), int(self.ix.max()) + 1
        raw = np.asarray(volume[z, r0:r1, c0:c1])
        check_finite(raw, "image", f" (slice {z})")
        return raw

    def probabilities(self, raw: np.ndarray, low: float, high: float) -> np.ndarray:
        """``(C', h, w)`` float32 window output (C' counts the runner's extra channels)."""
        p = self.predictor
        r0, c0 = int(self.iy.min()), int(self.ix.min())
        image = Normalization.apply(raw, low, high).astype(np.float32, copy=False)
        padded = image[(..., *np.ix_(self.iy - r0, self.ix - c0))]  # (Y, X) or (planes, Y, X)
        m, ty, tx = p.margin, self.py.tile, self.px.tile
        ih, iw = ty + 2 * m, tx + 2 * m
        y0, y1, x0, x1 = self.window
        out = np.empty((p.n_classes + p.runner.extra_channels, y1 - y0, x1 - x0), np.float32)
        origins = [(y, x) for y in self.ys for x in self.xs]
        offset = (self.ys[0], self.xs[0])
        for _, chunk, batch in run_tiles(p, padded, origins, (ih, iw), offset):
            for probs, (y, x) in zip(batch, chunk):
                # last tile wins, as in the whole-slice stitcher; cropped to the window
                a, b = max(y, y0), min(y + ty, y1)
                c, d = max(x, x0), min(x + tx, x1)
                out[:, a - y0: b - y0, c - x0: d - x0] = probs[:, a - y: b - y, c - x: d - x]
        return out


def predict_window(engine: Any, volume: Any, zs: range, window: Window, settings: Any,
                   statistics: tuple[float, float]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(z, {"semantic", "foreground", "uncertainty"})`` of one window, slice by slice.

    Mirrors :class:`~.stack.StackPrediction` per pixel (same normalisation,
    thresholds and uncertainty), without instances.
    """
    from .postprocess import semantic_labels
    from .uncertainty import normalized_entropy, tta_disagreement
    from .z_context import PlaneReader, resolve_z_sigma, walk_z

    if engine.closed:
        raise RuntimeError("this PredictionEngine is closed; build a new one")
    predictor = engine.predictor
    low, high = (float(v) for v in statistics)
    disagreement = settings.uncertainty and settings.uncertainty_method == "tta"
    if disagreement and not predictor.tta:
        raise ValueError("the TTA disagreement needs a TilePredictor with tta=True")
    plan = WindowPredictor(predictor, volume.shape[1:], window)
    n = predictor.n_classes
    # with its neighbours for a network that reads several slices, each read once
    planes = PlaneReader(lambda i: plan.read(volume, i), int(volume.shape[0]), predictor.planes)

    def one(z: int) -> tuple[np.ndarray, np.ndarray]:
        raw = planes(z)
        predictor.runner.disagreement = disagreement
        try:
            out = plan.probabilities(raw, low, high)
        finally:
            predictor.runner.disagreement = False
        return (np.ascontiguousarray(out[:n]) if disagreement else out), out

    sigma = resolve_z_sigma(settings.z_smoothing, volume, whole_stack=False)
    for z, probs, (own, out) in walk_z(list(zs), int(volume.shape[0]), sigma, one):
        result = {"semantic": semantic_labels(probs, settings.threshold)}
        if settings.probabilities:
            result["foreground"] = 1.0 - probs[0]
        if settings.uncertainty:  # the slice's own, as StackPrediction does
            result["uncertainty"] = (tta_disagreement(own, out[n]) if disagreement
                                     else normalized_entropy(own))
        yield z, result
