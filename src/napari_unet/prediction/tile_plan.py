"""Which tile sizes a U-Net accepts, and how one image axis is cut into tiles.

Geometry only: nothing here touches the model's weights, a device or pixels,
so the widgets and the CLI can ask about legal tile sizes without building a
predictor, and the tiling arithmetic is testable on its own.

The pooling grid
    A U-Net is translation-equivariant only for shifts that are multiples of
    ``2 ** depth``; any other shift moves the max-pooling grid and changes
    the output (by ~0.3 in probability for a random depth-3 net shifted by
    4 px). So tile origins always sit on that grid, and the last tile runs
    past the border into more mirrored pixels (then cropped) instead of
    being pulled back to end exactly at the border. For same padding the
    only remaining difference from a whole-image pass is then the zero
    padding at interior tile edges, which the blending hides.
"""

from __future__ import annotations

import math
from typing import Any

from .tiling import tile_starts

#: Default output tile edge per device type: big enough to amortise the
#: network's margin, small enough to keep CPU caches and GPU memory happy.
DEFAULT_TILE = {"cuda": 512}
DEFAULT_TILE_OTHER = 256


def default_tile_size(device_type: str) -> int:
    """The engine's tile edge for a device type, before rounding to a legal size."""
    return DEFAULT_TILE.get(device_type, DEFAULT_TILE_OTHER)


class TileGrid:
    """Which output tile edges a network accepts, from its geometry alone.

    Answers the widgets' and the CLI's questions (smallest tile, step, rounding)
    without building a predictor or touching the model's weights or device.
    """

    def __init__(self, geometry: Any) -> None:
        self.geometry = geometry
        self.valid = geometry.padding == "valid"
        self.divisor = int(geometry.divisor)

    @property
    def margin(self) -> int:
        """Pixels a valid-padding network loses per side (0 for same padding)."""
        return int(self.geometry.margin) if self.valid else 0

    @property
    def out_min(self) -> int:
        """Smallest output edge the network can produce."""
        if not self.valid:
            return self.divisor
        return int(self.geometry.output_size(self.geometry.min_input_size))

    def at_least(self, n: int) -> int:
        """Smallest legal output tile edge >= ``n`` (and >= the grid step)."""
        lo, d = self.out_min, self.divisor
        k = max(0, math.ceil((max(n, d) - lo) / d))
        return lo + k * d

    @property
    def min_tile(self) -> int:
        """Smallest usable output tile.

        Valid-net tile origins sit on the ``divisor`` grid, so a tile must be at
        least one grid step long or neighbouring tiles would leave gaps.
        """
        return self.at_least(self.divisor)

    def round(self, tile: int) -> int:
        """The legal tile edge nearest ``tile``; ValueError below the smallest."""
        lo, d, smallest = self.out_min, self.divisor, self.min_tile
        if tile < smallest:
            raise ValueError(
                f"tile_size {tile} is too small for this depth-{self.geometry.depth} "
                f"{self.geometry.padding}-padding U-Net: legal output tile sizes are "
                f"{smallest}, {smallest + d}, {smallest + 2 * d}, ... "
                f"({lo} + k * {d}, at least {smallest})"
            )
        k = int(math.floor((tile - lo) / d + 0.5))
        return max(smallest, lo + k * d)

    def smaller(self, tile: int) -> int | None:
        """A legal tile of about half the area of ``tile`` (None at the smallest)."""
        if tile <= self.min_tile:
            return None
        return max(self.min_tile, self.round(max(self.min_tile, int(tile / math.sqrt(2)))))


class AxisPlan:
    """Tiling of one image axis: tile length, tile origins and padding, in output pixels."""

    __slots__ = ("tile", "starts", "pad_before", "pad_after")

    def __init__(self, tile: int, starts: list[int], pad_before: int, pad_after: int) -> None:
        self.tile = tile
        self.starts = starts
        self.pad_before = pad_before
        self.pad_after = pad_after


def plan_axis(grid: TileGrid, length: int, tile_size: int, overlap: float) -> AxisPlan:
    """Cut an axis of ``length`` pixels into tiles of about ``tile_size`` on the pooling grid.

    Valid padding: abutting tiles (``overlap`` is ignored), mirror padding of
    one margin before and enough after for the last tile. Same padding: tiles
    overlapping by about ``overlap`` of their length, padding after only, up
    to a whole grid block.
    """
    t, d = tile_size, grid.divisor
    if grid.valid:
        m = grid.margin
        if length <= t:
            tile, starts = grid.at_least(length), [0]
        else:
            # origins on the pooling grid: spread whole grid blocks evenly
            blocks, per_tile = -(-length // d), t // d
            tile = t
            starts = [s * d for s in tile_starts(blocks, per_tile, per_tile)]
        return AxisPlan(tile, starts, m, starts[-1] + tile + m - length)
    blocks = -(-length // d)
    if length <= t:
        return AxisPlan(blocks * d, [0], 0, blocks * d - length)
    per_tile = t // d
    step = max(1, int(round(per_tile * (1.0 - overlap))))
    starts = [s * d for s in tile_starts(blocks, per_tile, step)]
    return AxisPlan(t, starts, 0, blocks * d - length)


def count_tiles(grid: TileGrid, shape: tuple[int, ...], tile_size: int, overlap: float) -> int:
    """Tiles needed for one slice of ``shape`` (the last two axes)."""
    ys = plan_axis(grid, int(shape[-2]), tile_size, overlap)
    xs = plan_axis(grid, int(shape[-1]), tile_size, overlap)
    return len(ys.starts) * len(xs.starts)
