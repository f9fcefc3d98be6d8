"""Tests for napari_unet.synthetic."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from napari_unet.synthetic import SyntheticStack, partial_annotation, synthetic_em_stack


@pytest.fixture(scope="module")
def stack() -> SyntheticStack:
    return synthetic_em_stack((8, 128, 128), seed=1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_shapes_and_dtypes_3d(stack):
    assert stack.image.shape == (8, 128, 128)
    assert stack.image.dtype == np.uint8
    assert stack.instances.shape == (8, 128, 128)
    assert stack.instances.dtype == np.int32
    assert stack.foreground.dtype == bool
    np.testing.assert_array_equal(stack.foreground, stack.instances > 0)
    assert stack.instances.min() == 0
    # Ids are 1..N without gaps.
    ids = np.unique(stack.instances)
    np.testing.assert_array_equal(ids, np.arange(ids.max() + 1))
    assert ids.max() > 10


def test_2d():
    s = synthetic_em_stack((64, 96), seed=3)
    assert s.image.shape == (64, 96) and s.image.dtype == np.uint8
    assert s.instances.shape == (64, 96) and s.instances.dtype == np.int32
    assert 0.5 < s.foreground.mean() < 0.95


def test_deterministic():
    a = synthetic_em_stack((4, 64, 64), seed=7)
    b = synthetic_em_stack((4, 64, 64), seed=7)
    c = synthetic_em_stack((4, 64, 64), seed=8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert not np.array_equal(a.image, c.image)


def test_ids_consistent_across_z(stack):
    s0, s1 = stack.instances[0], stack.instances[1]
    ids = [i for i in np.unique(s0) if i > 0]
    overlaps = []
    for i in ids:
        m0 = s0 == i
        overlaps.append((m0 & (s1 == i)).sum() / m0.sum())
    overlaps = np.array(overlaps)
    assert np.median(overlaps) > 0.85
    assert (overlaps > 0.5).mean() > 0.9
    # ...but neighbouring slices are not identical copies.
    assert not np.array_equal(s0, s1)
    # Most cells persist through the whole (short) stack.
    persistent = [i for i in ids if all((stack.instances[z] == i).any() for z in range(8))]
    assert len(persistent) > 0.8 * len(ids)


def test_membranes_dark_cells_bright(stack):
    fg = stack.foreground
    membrane_mean = stack.image[~fg].mean()
    cell_mean = stack.image[fg].mean()
    assert membrane_mean < 100
    assert cell_mean > 130
    assert cell_mean - membrane_mean > 60
    assert 0.05 < (~fg).mean() < 0.35


def test_threshold_is_imperfect_but_informative(stack):
    img = stack.image
    fg = stack.foreground
    iou_otsu = _iou(img > threshold_otsu(img), fg)
    assert 0.5 < iou_otsu < 0.9
    # Even the best global threshold cannot solve it (dark organelles, noise).
    best = max(_iou(img > t, fg) for t in range(30, 230, 5))
    assert best < 0.93


def test_parameters_have_effect():
    thin = synthetic_em_stack((64, 64), membrane_width=1.5, seed=0)
    thick = synthetic_em_stack((64, 64), membrane_width=4.0, seed=0)
    assert (~thick.foreground).mean() > (~thin.foreground).mean()
    small = synthetic_em_stack((96, 96), cell_diameter=16, seed=0)
    big = synthetic_em_stack((96, 96), cell_diameter=40, seed=0)
    assert small.instances.max() > 2 * big.instances.max()
    clean = synthetic_em_stack((64, 64), noise=0.0, seed=0)
    noisy = synthetic_em_stack((64, 64), noise=0.2, seed=0)
    assert noisy.image.astype(float).std() > clean.image.astype(float).std()
    still = synthetic_em_stack((3, 64, 64), drift=0.0, seed=0)
    np.testing.assert_array_equal(still.instances[0], still.instances[2])


def test_partial_annotation(stack):
    labels = partial_annotation(stack.instances, [0, 5])
    assert labels.dtype == np.uint32 and labels.shape == stack.instances.shape
    np.testing.assert_array_equal(labels[0], stack.instances[0])
    np.testing.assert_array_equal(labels[5], stack.instances[5])
    others = [z for z in range(8) if z not in (0, 5)]
    assert not labels[others].any()
    assert not partial_annotation(stack.instances, []).any()
    lab2d = partial_annotation(stack.instances[0], [0])
    np.testing.assert_array_equal(lab2d, stack.instances[0])
    with pytest.raises(ValueError):
        partial_annotation(stack.instances, [8])
    with pytest.raises(ValueError):
        partial_annotation(stack.instances, [1.5])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (8,)},
        {"shape": (2, 2, 64, 64)},
        {"shape": (4, 8, 64)},
        {"shape": (10, 64)},
        {"shape": (4, 64, 64.5)},
        {"shape": (4, 64, 64), "cell_diameter": 2.0},
        {"shape": (4, 64, 64), "membrane_width": 0.0},
        {"shape": (4, 64, 64), "membrane_width": 20.0},
        {"shape": (4, 64, 64), "noise": -0.1},
        {"shape": (4, 64, 64), "drift": -1.0},
    ],
)
def test_bad_args(kwargs):
    with pytest.raises(ValueError):
        synthetic_em_stack(**kwargs)
