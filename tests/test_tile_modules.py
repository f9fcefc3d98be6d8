"""The overlap-tile engine split into small modules: planning, device runner, stitching.

Attributes set on a TilePredictor after construction still take effect, the
planning arithmetic is reachable on its own, and no unit grows past ~150 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_unet
from napari_unet.errors import Cancelled
from napari_unet.model.config import preset
from napari_unet.model.unet import UNet
from napari_unet.prediction.overlap_tile import (
    DEFAULT_TILE,
    DEFAULT_TILE_OTHER,
    TileGrid,
    TilePredictor,
    default_tile_size,
)
from napari_unet.prediction.tile_plan import count_tiles, plan_axis


@pytest.fixture(scope="module")
def tiny() -> UNet:
    torch.manual_seed(0)
    return UNet(preset("tiny")).eval()


def test_public_names_still_come_from_overlap_tile():
    from napari_unet.prediction import tile_plan

    assert TileGrid is tile_plan.TileGrid and default_tile_size is tile_plan.default_tile_size
    assert DEFAULT_TILE is tile_plan.DEFAULT_TILE
    assert DEFAULT_TILE_OTHER == tile_plan.DEFAULT_TILE_OTHER
    assert napari_unet.TilePredictor is TilePredictor


def test_planning_matches_the_predictor(tiny):
    predictor = TilePredictor(tiny, tile_size=40, device="cpu")
    grid = TileGrid(tiny.geometry)
    for shape in ((30, 30), (100, 77), (3, 129, 64)):
        assert predictor.n_tiles(shape) == count_tiles(grid, shape, predictor.tile_size, 0.25)
    plan = plan_axis(grid, 100, predictor.tile_size, 0.25)
    assert plan.pad_before == grid.margin == predictor.margin
    assert all(s % grid.divisor == 0 for s in plan.starts)
    assert plan.starts[-1] + plan.tile >= 100


def test_attributes_set_later_take_effect(tiny):
    image = np.random.default_rng(0).normal(size=(60, 60)).astype(np.float32)
    predictor = TilePredictor(tiny, tile_size=24, batch_size=4, device="cpu")
    reference = predictor.predict(image)

    predictor.batch_size = 1
    assert predictor.runner.batch_size == 1
    seen: list[tuple[int, int]] = []
    predictor.progress = lambda done, total: seen.append((done, total))
    # another batch size may round differently in the convolutions, nothing more
    np.testing.assert_allclose(predictor.predict(image), reference, atol=1e-5)
    n = predictor.n_tiles(image.shape)
    assert seen == [(i, n) for i in range(1, n + 1)]

    predictor.progress = None
    predictor.should_stop = lambda: True
    with pytest.raises(Cancelled):
        predictor.predict(image)

    heard: list[str] = []
    predictor.notice = heard.append
    predictor.runner.tell("a change")
    assert heard == ["a change"] and predictor.notices == ["a change"]

    predictor.model = None
    assert predictor.runner.model is None


def test_no_unit_over_150_lines():
    """Units of one idea, in the whole package (not only the tiling modules)."""
    root = Path(napari_unet.__file__).parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                where = path.relative_to(root)
                assert size <= 150, f"{where}: {node.name} is {size} lines"


def test_progress_stays_within_the_plan_after_an_out_of_memory_retry(tiny):
    """Smaller tiles after running out of memory mean more tiles than planned; the
    progress still ends at the planned total and never passes it."""
    seen: list[tuple[int, int]] = []
    predictor = TilePredictor(
        tiny, tile_size=64, batch_size=1, device="cpu", progress=lambda d, t: seen.append((d, t))
    )
    forward = predictor.runner.forward

    def small_memory(x):
        if x.shape[-1] > 64:  # only the planned (first) tile size does not fit
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(x)

    predictor.runner.forward = small_memory
    stack = np.random.default_rng(0).random((2, 150, 150), dtype=np.float32)
    planned = predictor.n_tiles(stack.shape) * len(stack)
    for _z, _probs in predictor.iter_stack(stack):
        pass
    assert predictor.tile_size < 64 and len(seen) > planned  # more, smaller tiles ran
    done = [d for d, _ in seen]
    assert all(t == planned for _, t in seen)
    assert done == sorted(done) and max(done) == planned
