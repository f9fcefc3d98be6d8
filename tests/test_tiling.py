"""Tests for tile placement and blending windows (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.prediction.tiling import WEIGHT_FLOOR, blend_window, tile_starts


@pytest.mark.parametrize(
    ("length", "tile", "step", "expected"),
    [
        (10, 10, 3, [0]),  # length == tile
        (5, 8, 2, [0]),  # tile > length
        (1, 1, 1, [0]),
        (10, 4, 2, [0, 2, 4, 6]),  # step divides length - tile
        (10, 4, 3, [0, 3, 6]),  # ceil(6/3)+1 = 3, spread 3
        (10, 4, 4, [0, 3, 6]),  # step does not divide: ceil(6/4)+1 = 3, spread evenly
        (100, 30, 30, [0, 23, 47, 70]),  # spread 23.33
        (11, 10, 10, [0, 1]),  # last tile pulled back to the border
        (12, 4, 4, [0, 4, 8]),  # abutting tiles
        (13, 4, 4, [0, 3, 6, 9]),
        (7, 2, 1, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_tile_starts_table(length: int, tile: int, step: int, expected: list[int]) -> None:
    assert tile_starts(length, tile, step) == expected


@pytest.mark.parametrize("length", [1, 7, 64, 211, 1000, 4099])
@pytest.mark.parametrize("tile", [1, 5, 64, 100])
@pytest.mark.parametrize("frac", [0.3, 0.5, 0.75, 1.0])
def test_tile_starts_cover_evenly(length: int, tile: int, frac: float) -> None:
    step = max(1, int(tile * frac))
    starts = tile_starts(length, tile, step)
    assert starts[0] == 0
    assert starts[-1] == max(0, length - tile)
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= step).all()  # no holes, no duplicates
    if len(starts) > 1:
        assert gaps.max() - gaps.min() <= 1  # evenly spread
        assert len(starts) == int(np.ceil((length - tile) / step)) + 1
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


@pytest.mark.parametrize("args", [(0, 4, 2), (10, 0, 2), (10, 4, 0), (10, -4, 2)])
def test_tile_starts_rejects_non_positive(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        tile_starts(*args)


@pytest.mark.parametrize("kind", ["gaussian", "linear"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (32, 32), (48, 20)])
def test_blend_window_properties(kind: str, size: tuple[int, int]) -> None:
    w = blend_window(size, kind)  # type: ignore[arg-type]
    assert w.shape == size and w.dtype == np.float32
    assert w.min() >= WEIGHT_FLOOR * 0.999 and w.max() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1, :], atol=1e-6)  # symmetric
    np.testing.assert_allclose(w, w[:, ::-1], atol=1e-6)
    if min(size) >= 8:
        cy, cx = size[0] // 2, size[1] // 2
        assert w[cy, cx] > w[0, cx] and w[cy, cx] > w[cy, 0]  # peaks in the centre
        assert w[0, 0] < 0.05  # corners fade


def test_blend_window_gaussian_width() -> None:
    narrow = blend_window((64, 64), "gaussian", sigma_scale=0.05)
    wide = blend_window((64, 64), "gaussian", sigma_scale=0.5)
    assert narrow[32, 8] < wide[32, 8]
    assert narrow.min() == pytest.approx(WEIGHT_FLOOR)


def test_blend_window_flat_sides() -> None:
    w = blend_window((16, 20), "gaussian", flat_sides=(True, False, False, True))
    assert np.allclose(w[:8, 10:], 1.0)  # top-right quarter at full weight
    assert w[15, 10] < 0.05 and w[8, 0] < 0.05  # bottom and left still fade
    assert w.min() >= WEIGHT_FLOOR * 0.999


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": (8, 8), "kind": "cosine"},
        {"size": (0, 8)},
        {"size": (8,)},
        {"size": (8, 8), "sigma_scale": 0.0},
        {"size": (8, 8), "flat_sides": (True,)},
    ],
)
def test_blend_window_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        blend_window(**kwargs)
