"""Preparing painted slices stays fast: a user pressing Start waits for it.

Wall-clock bounds here are generous (shared 2-core CI); the work bound, pixels
handed to scipy's distance transform per slice pixel, is what catches a cost
that grows with the number of objects times the slice (long objects used to
cost one slice-sized transform each).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_unet.training import weightmap as wm
from napari_unet.training.annotations import AnnotationSettings, prepare_slices


def _cells(size: int, n: int, seed: int) -> np.ndarray:
    """Voronoi cells with 2-px membranes, one id per cell (a densely painted EM slice)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    _, idx = cKDTree(rng.uniform(0, size, (n, 2))).query(np.column_stack([yy.ravel(), xx.ravel()]))
    labels = (idx + 1).reshape(size, size).astype(np.uint32)
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    labels[ndimage.binary_dilation(edge)] = 0
    return labels


def _fibres(size: int) -> np.ndarray:
    """6-px diagonal objects 2 px apart, each spanning the slice (worst case for crops)."""
    yy, xx = np.mgrid[:size, :size]
    diag = xx + yy
    return np.where(diag % 8 < 6, diag // 8 + 1, 0).astype(np.uint32)


def test_prepare_512_slice_with_200_objects_is_quick():
    labels = _cells(512, 200, seed=0)[None]
    prepare_slices(labels)  # warm-up (imports, page faults)
    t0 = time.perf_counter()
    slices = prepare_slices(labels)
    elapsed = time.perf_counter() - t0
    assert slices[0].n_objects >= 190
    assert elapsed < 5.0, f"preparing one 512 x 512 slice took {elapsed:.1f} s"


def test_prepare_512_slice_of_long_objects_is_quick():
    labels = _fibres(512)[None]
    t0 = time.perf_counter()
    slices = prepare_slices(labels, AnnotationSettings())
    elapsed = time.perf_counter() - t0
    assert slices[0].n_objects == 128
    assert elapsed < 5.0, f"preparing one 512 x 512 slice of fibres took {elapsed:.1f} s"


@pytest.mark.parametrize(
    "name, labels, bound",
    [
        # one crop per cell, about 5-7 slices in all, as before
        ("cells", _cells(512, 200, seed=1), 10.0),
        # one crop per fibre was 50 slices here (93 at 1024 x 1024);
        # grouped, it is 6 transforms of the slice whatever the size
        ("fibres", _fibres(512), 10.0),
    ],
)
def test_distance_transform_work_does_not_grow_with_objects(monkeypatch, name, labels, bound):
    real = ndimage.distance_transform_edt
    work = [0]

    def counting(a, *args, **kwargs):
        work[0] += np.asarray(a).size
        return real(a, *args, **kwargs)

    monkeypatch.setattr(wm.ndimage, "distance_transform_edt", counting)
    wm.boundary_weight_map(labels.astype(np.int32))
    assert work[0] / labels.size <= bound, f"{name}: {work[0] / labels.size:.1f} slices of transforms"
