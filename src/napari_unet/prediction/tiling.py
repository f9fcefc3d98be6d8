"""Where to cut tiles, and how to weight them when they overlap.

Pure numpy, so the arithmetic can be tested (and reused) without torch.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

BlendKind = Literal["gaussian", "linear"]
BLEND_KINDS = ("gaussian", "linear")

#: Smallest blending weight, relative to the centre: every pixel of a tile keeps
#: some weight so that a pixel covered by one tile only is never divided by 0.
WEIGHT_FLOOR = 1e-3


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    The first tile starts at 0 and the last ends exactly at ``length``; the
    ``ceil((length - tile) / step) + 1`` tiles are spread evenly in between
    (as nnU-Net does), so no step exceeds ``step`` and overlaps are shared
    out instead of piling up at the last tile. A single start 0 when the tile
    covers the whole length.
    """
    length, tile, step = int(length), int(tile), int(step)
    if length < 1 or tile < 1 or step < 1:
        raise ValueError(f"length, tile and step must be positive, got {length}, {tile}, {step}")
    if tile >= length:
        return [0]
    span = length - tile
    n = math.ceil(span / step) + 1
    spread = span / (n - 1)
    # floor(x + 0.5) instead of round(): no banker's rounding, and the last
    # start is exactly `span` because (n - 1) * spread is within 1 ulp of it
    starts = [int(math.floor(i * spread + 0.5)) for i in range(n)]
    starts[-1] = span
    return starts


def _window_1d(n: int, kind: str, sigma_scale: float) -> np.ndarray:
    centre = (n - 1) / 2.0
    x = np.arange(n, dtype=np.float64) - centre
    if kind == "gaussian":
        sigma = max(sigma_scale * n, 1e-6)
        return np.exp(-0.5 * (x / sigma) ** 2)
    # linear: a tent that is 1 in the centre and falls towards the edges;
    # +1 keeps the edge pixels above 0 before the floor is applied
    half = centre + 1.0
    return 1.0 - np.abs(x) / half


def blend_window(
    size: tuple[int, int],
    kind: BlendKind = "gaussian",
    sigma_scale: float = 0.125,
    *,
    flat_sides: tuple[bool, bool, bool, bool] = (False, False, False, False),
) -> np.ndarray:
    """Importance map for blending overlapping same-padding tiles.

    Same-padding networks see zeros beyond a tile's edge, so their outputs
    are least trustworthy there; weighting each tile by a window that peaks
    in the centre hides the seams. The map is separable, has maximum 1 and
    is clipped from below at :data:`WEIGHT_FLOOR` so that it is strictly
    positive everywhere: every pixel is covered with non-zero total weight.

    Args:
        size: ``(height, width)`` of a tile.
        kind: ``"gaussian"`` (sigma = ``sigma_scale`` * side) or ``"linear"`` (tent).
        sigma_scale: gaussian width relative to the tile side.
        flat_sides: ``(top, bottom, left, right)``: sides that lie on the image
            border keep full weight from the centre out. No neighbour
            overlaps there, so fading would only let the floor-weighted edge
            of a neighbouring tile compete along the border.
    """
    if kind not in BLEND_KINDS:
        raise ValueError(f"blend kind must be one of {BLEND_KINDS}, got {kind!r}")
    if len(size) != 2 or min(int(s) for s in size) < 1:
        raise ValueError(f"size must be two positive integers, got {size!r}")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale!r}")
    if len(flat_sides) != 4:
        raise ValueError(
            f"flat_sides must be 4 booleans (top, bottom, left, right), got {flat_sides!r}"
        )
    h, w = (int(s) for s in size)
    top, bottom, left, right = (bool(f) for f in flat_sides)
    wy = _flatten(_window_1d(h, kind, sigma_scale), top, bottom)
    wx = _flatten(_window_1d(w, kind, sigma_scale), left, right)
    window = np.outer(wy, wx)
    window /= window.max()
    np.maximum(window, WEIGHT_FLOOR, out=window)
    return window.astype(np.float32)


def _flatten(profile: np.ndarray, start: bool, end: bool) -> np.ndarray:
    """Set the profile to its peak between the centre and the flagged ends."""
    peak = profile.max()
    mid = len(profile) // 2
    if start:
        profile[:mid] = peak
    if end:
        profile[mid:] = peak
    return profile
