"""Tests for the U-Net boundary weight map (closed forms, slow reference, edge cases)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_unet.training import weightmap as wm
from napari_unet.training.weightmap import (
    BORDER_EPS,
    border_cutoff,
    boundary_weight_map,
    class_balance_weights,
)


def _two_slabs(gap: int, width: int = 40, thickness: int = 30) -> np.ndarray:
    """Two full-width objects separated by a horizontal gap of `gap` background rows."""
    img = np.zeros((2 * thickness + gap, width), dtype=np.int32)
    img[:thickness] = 1
    img[thickness + gap :] = 2
    return img


def _voronoi_labels(shape: tuple[int, int], n: int, seed: int, membrane: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, size=(n, 2)) * np.array(shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    _, idx = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]))
    labels = (idx + 1).reshape(shape).astype(np.int32)
    if membrane:
        # Pixels whose right/lower neighbour has another label become background.
        edge = np.zeros(shape, dtype=bool)
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        labels[edge] = 0
    return labels


def _reference(instances, w0, sigma, target=None, valid=None, balance=True):
    """Slow, obviously-correct version: full-image EDT for every instance."""
    if target is None:
        target = (instances > 0).astype(np.int64)
    if valid is None:
        valid = target >= 0
    valid = valid & (target >= 0)
    if balance:
        wc = np.zeros(instances.shape)
        classes, counts = np.unique(target[valid], return_counts=True)
        for c, k in zip(classes, counts):
            wc[valid & (target == c)] = valid.sum() / (len(classes) * k)
    else:
        wc = valid.astype(np.float64)
    ids = [i for i in np.unique(instances) if i != 0]
    if len(ids) < 2 or w0 == 0:
        return wc
    dists = np.stack([ndimage.distance_transform_edt(instances != i) - 0.5 for i in ids])
    dists.sort(axis=0)
    border = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    return wc + np.where(valid & (instances == 0), border, 0.0)


@pytest.mark.parametrize("gap", [1, 2, 5, 8, 11])
@pytest.mark.parametrize("sigma", [1.0, 3.0, 5.0, 10.0])
@pytest.mark.parametrize("balance", [True, False])
def test_closed_form_straight_gap(gap, sigma, balance):
    w0 = 10.0
    img = _two_slabs(gap)
    w = boundary_weight_map(img, w0=w0, sigma=sigma, balance=balance)
    assert w.dtype == np.float32 and w.shape == img.shape
    n_bg = np.count_nonzero(img == 0)
    wc_bg = img.size / (2 * n_bg) if balance else 1.0
    expected = wc_bg + w0 * np.exp(-(gap**2) / (2 * sigma**2))
    gap_rows = w[30 : 30 + gap]
    # d1 + d2 == gap at every pixel of a straight gap, not only the middle.
    np.testing.assert_allclose(gap_rows, expected, rtol=0, atol=1e-4)
    mid = w[30 + gap // 2, 20]
    assert abs(mid - expected) < 1e-4
    # Object pixels get only w_c.
    wc_fg = img.size / (2 * (img.size - n_bg)) if balance else 1.0
    np.testing.assert_allclose(w[img > 0], wc_fg, rtol=1e-6)


def test_matches_slow_reference_on_voronoi():
    img = _voronoi_labels((128, 128), 50, seed=0, membrane=True)
    assert len(np.unique(img)) - 1 >= 45
    for w0, sigma in [(10.0, 5.0), (5.0, 2.0), (10.0, 12.0)]:
        fast = boundary_weight_map(img, w0=w0, sigma=sigma)
        slow = _reference(img, w0, sigma)
        assert np.max(np.abs(fast - slow)) < 1e-3
    # With an ignore region and explicit multi-class target.
    rng = np.random.default_rng(1)
    target = (img > 0).astype(np.int64)
    target[rng.random(img.shape) < 0.2] = -1
    fast = boundary_weight_map(img, target=target)
    slow = _reference(img, 10.0, 5.0, target=target)
    assert np.max(np.abs(fast - slow)) < 1e-3


def test_touching_instances_without_background():
    img = _voronoi_labels((64, 64), 20, seed=3, membrane=False)
    assert not (img == 0).any()
    w = boundary_weight_map(img)
    # Single class present -> w_c = 1 everywhere, no background for the border term.
    np.testing.assert_allclose(w, 1.0)


def test_class_balancing_properties():
    img = _voronoi_labels((96, 96), 30, seed=2, membrane=True)
    target = (img > 0).astype(np.int64)
    target[(img > 0) & (img % 3 == 0)] = 2  # a third class
    target[:10] = -1  # ignored
    valid = np.ones(img.shape, dtype=bool)
    valid[:, :5] = False
    wc = class_balance_weights(target, valid)
    eff = valid & (target >= 0)
    assert wc.dtype == np.float32
    assert np.all(wc[~eff] == 0)
    assert abs(wc[eff].mean() - 1.0) < 1e-6
    totals = [wc[eff & (target == c)].sum() for c in (0, 1, 2)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)

    w = boundary_weight_map(img, target=target, valid=valid)
    assert np.all(w[~valid] == 0)
    assert np.all(w[target == -1] == 0)
    assert np.all(w[eff] > 0)
    # Border term only on valid background; object pixels equal w_c exactly.
    np.testing.assert_array_equal(w[eff & (img > 0)], wc[eff & (img > 0)])
    assert np.all(w[eff & (img == 0)] >= wc[eff & (img == 0)])


def test_default_valid_from_target_and_no_balance():
    img = _two_slabs(4)
    target = (img > 0).astype(np.int64)
    target[:, :3] = -1
    w = boundary_weight_map(img, target=target, balance=False, w0=0.0)
    np.testing.assert_array_equal(w, (target >= 0).astype(np.float32))


def test_empty_instances():
    img = np.zeros((20, 30), dtype=np.uint16)
    w = boundary_weight_map(img)
    np.testing.assert_allclose(w, 1.0)  # one class (background) present
    assert w.dtype == np.float32


def test_one_instance_has_no_border_term():
    img = np.zeros((50, 50), dtype=np.int64)
    img[10:20, 10:20] = 7
    w = boundary_weight_map(img, w0=10.0, sigma=5.0)
    expected = class_balance_weights((img > 0).astype(int), np.ones(img.shape, bool))
    np.testing.assert_array_equal(w, expected)


def test_disconnected_pieces_are_one_object():
    # Two pieces of the same id: no border term between them.
    img = np.zeros((40, 40), dtype=np.int32)
    img[:15] = 3
    img[18:] = 3
    w = boundary_weight_map(img, balance=False)
    np.testing.assert_allclose(w, 1.0)
    # Relabel one piece: now the gap gets the closed-form term.
    img[18:] = 4
    w = boundary_weight_map(img, balance=False, w0=10.0, sigma=5.0)
    np.testing.assert_allclose(w[15:18], 1.0 + 10.0 * np.exp(-9 / 50), atol=1e-5)


def test_w0_zero_gives_class_weights():
    img = _voronoi_labels((64, 64), 15, seed=4, membrane=True)
    w = boundary_weight_map(img, w0=0.0)
    expected = class_balance_weights((img > 0).astype(int), np.ones(img.shape, bool))
    np.testing.assert_array_equal(w, expected)


def test_large_and_noncontiguous_ids():
    img = _voronoi_labels((64, 64), 15, seed=5, membrane=True)
    ref = boundary_weight_map(img)
    ids = np.unique(img)[1:]
    big = np.zeros(img.shape, dtype=np.uint32)
    new_ids = np.uint32(4_000_000_000) - np.arange(len(ids), dtype=np.uint32) * 1000
    for i, j in zip(ids, new_ids):
        big[img == i] = j
    np.testing.assert_array_equal(boundary_weight_map(big), ref)
    sparse = (img * 37).astype(np.int64)
    np.testing.assert_array_equal(boundary_weight_map(sparse), ref)
    # No background at all but huge ids.
    full = big.copy()
    full[full == 0] = 5
    assert boundary_weight_map(full).shape == img.shape


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(instances=np.zeros((4, 4, 4), int)), "2D"),
        (dict(instances=np.zeros(4, int)), "2D"),
        (dict(instances=np.zeros((4, 4), float)), "integer"),
        (dict(instances=-np.ones((4, 4), int)), ">= 0"),
        (dict(instances=np.zeros((4, 4), int), target=np.zeros((4, 5), int)), "target shape"),
        (dict(instances=np.zeros((4, 4), int), target=np.zeros((4, 4), float)), "target"),
        (dict(instances=np.zeros((4, 4), int), valid=np.ones((5, 4), bool)), "valid shape"),
        (dict(instances=np.zeros((4, 4), int), valid=np.ones((4, 4), int)), "boolean"),
        (dict(instances=np.zeros((4, 4), int), sigma=0.0), "sigma"),
        (dict(instances=np.zeros((4, 4), int), sigma=-1.0), "sigma"),
        (dict(instances=np.zeros((4, 4), int), w0=-1.0), "w0"),
    ],
)
def test_bad_inputs(kwargs, match):
    instances = kwargs.pop("instances")
    with pytest.raises(ValueError, match=match):
        boundary_weight_map(instances, **kwargs)


def test_class_balance_weights_bad_inputs():
    with pytest.raises(ValueError, match="valid"):
        class_balance_weights(np.zeros((4, 4), int), np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="2D"):
        class_balance_weights(np.zeros((4,), int), np.ones((4,), bool))
    assert not class_balance_weights(np.zeros((3, 3), int), np.zeros((3, 3), bool)).any()


# -- long objects: grouped distance transforms against one crop per object ----------


def _fibres(size: int, width: int, gap: int) -> np.ndarray:
    """Parallel diagonal objects spanning the slice: every crop is most of the slice."""
    yy, xx = np.mgrid[:size, :size]
    diag = xx + yy
    return np.where(diag % (width + gap) < width, diag // (width + gap) + 1, 0).astype(np.int32)


def _rings(size: int, width: int, gap: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 3)
    return np.where(r % (width + gap) < width, r // (width + gap) + 1, 0).astype(np.int32)


def _strokes(size: int, n: int, seed: int, angles: tuple[float, float] = (0.0, np.pi)) -> np.ndarray:
    """Thick random lines across the slice, at angles in ``angles`` (radians); where
    two cross, the later one cuts the earlier one (an id may then have two pieces)."""
    from skimage.draw import line

    rng = np.random.default_rng(seed)
    out = np.zeros((size, size), np.int32)
    for i in range(n):
        a = rng.uniform(*angles)
        off = rng.uniform(-0.7, 0.7) * size
        cy, cx = size / 2 - off * np.cos(a), size / 2 + off * np.sin(a)
        dy, dx = size * np.sin(a), size * np.cos(a)
        rr, cc = line(int(cy - dy), int(cx - dx), int(cy + dy), int(cx + dx))
        ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        stroke = np.zeros(out.shape, dtype=bool)
        stroke[rr[ok], cc[ok]] = True
        out[ndimage.binary_dilation(stroke, iterations=int(rng.integers(1, 4)))] = i + 1
    return out


def _per_object_crops(instances: np.ndarray, w0: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The crop-per-object algorithm, written independently: (weights, border term)."""
    cutoff = border_cutoff(w0, sigma)
    margin = int(np.ceil(cutoff + 0.5))
    d1 = np.full(instances.shape, np.inf, np.float32)
    d2 = np.full(instances.shape, np.inf, np.float32)
    for i, box in enumerate(ndimage.find_objects(instances)):
        if box is None:
            continue
        crop = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box)
        dist = ndimage.distance_transform_edt(instances[crop] != i + 1).astype(np.float32)
        dist -= np.float32(0.5)
        a, b = d1[crop], d2[crop]
        b[...] = np.minimum(b, np.maximum(a, dist))
        a[...] = np.minimum(a, dist)
    bg = instances == 0
    weights = class_balance_weights((instances > 0).astype(np.int64), np.ones(instances.shape, bool))
    s = d1[bg] + d2[bg]
    term = np.zeros(instances.shape, np.float32)
    term[bg] = np.float32(w0) * np.exp(-(s * s) / np.float32(2.0 * sigma * sigma))
    weights[bg] += term[bg]
    return weights, term


@pytest.mark.parametrize(
    "name, make, min_groups",
    [
        ("fibres 2 px apart (7+ groups: two transforms per bit)", lambda: _fibres(256, 6, 2), 7),
        ("fibres 10 px apart (one transform per group)", lambda: _fibres(256, 6, 10), 2),
        ("rings", lambda: _rings(256, 5, 3), 2),
        ("a bundle of crossing neurites", lambda: _strokes(256, 40, 2, (np.pi / 6, np.pi / 3)), 2),
        ("random strokes (no group pays)", lambda: _strokes(256, 40, seed=4), 0),
    ],
)
def test_grouped_transforms_give_the_per_object_maps(name, make, min_groups):
    """Long objects far apart share a distance transform; the maps do not change.

    Bit for bit wherever the border term reaches BORDER_EPS (the proof is in
    ``_two_nearest_distances``), within BORDER_EPS everywhere.
    """
    inst = make()
    w0, sigma = 10.0, 5.0
    margin = int(np.ceil(border_cutoff(w0, sigma) + 0.5))
    crops = {
        i + 1: wm._grown_box(b, margin, inst.shape)
        for i, b in enumerate(ndimage.find_objects(inst))
        if b is not None
    }
    groups = wm._far_apart_groups(inst.astype(np.intp), crops, border_cutoff(w0, sigma) + 1)
    assert len(groups) >= min_groups, name
    fast = boundary_weight_map(inst, w0=w0, sigma=sigma)
    old, term = _per_object_crops(inst, w0, sigma)
    assert np.max(np.abs(fast - old)) <= BORDER_EPS
    matters = term >= BORDER_EPS
    assert matters.sum() > 1000
    np.testing.assert_array_equal(fast[matters], old[matters])


def test_grouped_transforms_match_the_slow_reference():
    """The same long objects against one whole-slice transform per object (float64)."""
    for inst in (_fibres(128, 4, 3), _strokes(128, 25, seed=2)):
        fast = boundary_weight_map(inst, w0=10.0, sigma=5.0)
        assert np.max(np.abs(fast - _reference(inst, 10.0, 5.0))) < 1e-3


def test_grouping_leaves_compact_cells_alone():
    """Cells like ISBI's keep one crop each (their groups would not pay)."""
    inst = _voronoi_labels((256, 256), 60, seed=5, membrane=True)
    margin = int(np.ceil(border_cutoff(10.0, 5.0) + 0.5))
    crops = {
        i + 1: wm._grown_box(b, margin, inst.shape)
        for i, b in enumerate(ndimage.find_objects(inst))
        if b is not None
    }
    assert wm._far_apart_groups(inst.astype(np.intp), crops, border_cutoff(10.0, 5.0) + 1) == []


@pytest.mark.parametrize("reach, tile", [(29.4, 8), (10.0, 4), (3.0, 8), (1.0, 2)])
def test_reach_offsets_hold_every_close_pair(reach, tile):
    """Two pixels at most ``reach`` apart always lie in tiles at a listed offset."""
    offsets = {tuple(o) for o in wm._reach_offsets(reach, tile).tolist()}
    rng = np.random.default_rng(0)
    p = rng.integers(0, 200, size=(20000, 2))
    step = rng.uniform(-reach, reach, size=(20000, 2)).round().astype(int)
    close = np.hypot(*step.T) <= reach
    q = p + step
    for a, b in zip(p[close], q[close]):
        assert (b[0] // tile - a[0] // tile, b[1] // tile - a[1] // tile) in offsets
