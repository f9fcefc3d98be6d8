"""Tests for napari_unet.training.augment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.training.augment import (
    AFFINE_P,
    AugmentConfig,
    augment_patch,
    elastic_displacement,
    resolved_augment,
    warp_border,
)


def _patch(shape=(64, 64), seed=0):
    """Image, int64 target (with ignore = -1) and float32 weight map."""
    rng = np.random.default_rng(seed)
    image = rng.random(shape, dtype=np.float32)
    target = rng.integers(-1, 3, size=shape).astype(np.int64)
    weights = rng.uniform(0.5, 5.0, size=shape).astype(np.float32)
    return image, target, weights


def _blocky_target(shape=(96, 96), seed=0) -> np.ndarray:
    """Piecewise-constant labels with large regions, so interpolation only blurs edges."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 3, size=(shape[0] // 16, shape[1] // 16))
    target = np.kron(coarse, np.ones((16, 16), dtype=np.int64))
    target[:8, :8] = -1
    return target.astype(np.int64)


def test_determinism_same_seed():
    image, target, weights = _patch()
    a_img, a_rest = augment_patch(image, [target, weights], np.random.default_rng(42))
    b_img, b_rest = augment_patch(image, [target, weights], np.random.default_rng(42))
    np.testing.assert_array_equal(a_img, b_img)
    for a, b in zip(a_rest, b_rest):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ():
    image, target, weights = _patch()
    a_img, _ = augment_patch(image, [target, weights], np.random.default_rng(1))
    b_img, _ = augment_patch(image, [target, weights], np.random.default_rng(2))
    assert not np.array_equal(a_img, b_img)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_shapes_dtypes_and_values_preserved(shape):
    image, target, weights = _patch(shape)
    rng = np.random.default_rng(0)
    for _ in range(5):
        out, (t, w) = augment_patch(image, [target, weights], rng)
        assert out.shape == shape and out.dtype == np.float32
        assert t.shape == shape and t.dtype == np.int64
        assert w.shape == shape and w.dtype == np.float32
        assert out.flags.c_contiguous and t.flags.c_contiguous and w.flags.c_contiguous
        assert set(np.unique(t)) <= set(np.unique(target))
        assert set(np.unique(w)) <= set(np.unique(weights))
        assert np.isfinite(out).all()


def test_inputs_not_modified():
    image, target, weights = _patch()
    copies = [image.copy(), target.copy(), weights.copy()]
    augment_patch(image, [target, weights], np.random.default_rng(0))
    for orig, arr in zip(copies, (image, target, weights)):
        np.testing.assert_array_equal(orig, arr)


@pytest.mark.parametrize("shape", [(40, 40), (32, 48)])
def test_flips_rot90_keep_alignment(shape):
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 4, size=shape).astype(np.int64)
    image = target.astype(np.float32)
    config = AugmentConfig(elastic=False, intensity=False, p_affine=0.0)
    seen = set()
    for _ in range(30):
        out, (t,) = augment_patch(image, [target], rng, config)
        np.testing.assert_array_equal(out, t.astype(np.float32))
        seen.add(out.tobytes())
    # Several distinct orientations are actually produced.
    assert len(seen) >= (6 if shape[0] == shape[1] else 3)


def test_elastic_keeps_alignment():
    target = _blocky_target()
    image = target.astype(np.float32)
    config = AugmentConfig(flips=False, rot90=False, intensity=False, p_affine=0.0)
    rng = np.random.default_rng(3)
    for _ in range(5):
        out, (t,) = augment_patch(image, [target], rng, config)
        assert not np.array_equal(t, target)  # it did deform
        # Order-3 resampling of a piecewise constant image overshoots only near
        # label edges; compare on pixels whose 5x5 neighbourhood is uniform.
        interior = (ndimage.maximum_filter(t, size=5) == ndimage.minimum_filter(t, size=5))
        agree = np.abs(out - t) < 0.5
        assert agree[interior].mean() > 0.95
        assert agree.mean() > 0.85


def test_elastic_displacement_statistics():
    rng = np.random.default_rng(0)
    sigma = 10.0
    fields = np.stack([elastic_displacement((65, 65), rng, grid=3, sigma=sigma)
                       for _ in range(400)])
    assert fields.shape == (400, 2, 65, 65)
    # On the lattice nodes (corners/centre) the std is exactly sigma; in
    # between, interpolation averages neighbours so it is somewhat lower.
    node_std = fields[:, :, ::32, ::32].std()
    assert abs(node_std - sigma) < 0.1 * sigma
    overall = fields.std()
    assert 0.6 * sigma < overall <= 1.05 * sigma
    # Smooth: neighbouring pixels move almost together.
    assert np.abs(np.diff(fields, axis=-1)).max() < 0.5 * sigma


def test_elastic_sigma_zero_is_identity_geometry():
    image, target, weights = _patch()
    config = AugmentConfig(elastic_sigma=0.0, flips=False, rot90=False, intensity=False, p_affine=0.0)
    out, (t, w) = augment_patch(image, [target, weights], np.random.default_rng(0), config)
    np.testing.assert_allclose(out, image, atol=1e-6)
    np.testing.assert_array_equal(t, target)
    np.testing.assert_array_equal(w, weights)


def test_intensity_only_changes_image():
    image, target, weights = _patch()
    config = AugmentConfig(elastic=False, flips=False, rot90=False, p_intensity=1.0, p_affine=0.0)
    out, (t, w) = augment_patch(image, [target, weights], np.random.default_rng(0), config)
    assert not np.allclose(out, image)
    np.testing.assert_array_equal(t, target)
    np.testing.assert_array_equal(w, weights)
    # p_intensity = 0 => untouched.
    config0 = AugmentConfig(elastic=False, flips=False, rot90=False, p_intensity=0.0, p_affine=0.0)
    out0, _ = augment_patch(image, [target, weights], np.random.default_rng(0), config0)
    np.testing.assert_array_equal(out0, image)


def test_shape_mismatch_raises():
    image, target, _ = _patch()
    with pytest.raises(ValueError):
        augment_patch(image, [target[:-1]], np.random.default_rng(0))
    with pytest.raises(ValueError):
        augment_patch(image[None, None], [], np.random.default_rng(0))


def test_planes_move_together():
    """A slice and its neighbours (2.5D input) get one geometry and one intensity jitter:
    three copies of a patch come out as three copies of the 2D result (noise aside: each
    plane has its own, as each slice of a stack does)."""
    image, target, weight = _patch()
    cfg = AugmentConfig(p_intensity=1.0, noise_std=(0.0, 0.0))
    flat, (t2, w2) = augment_patch(image, [target, weight], np.random.default_rng(3), cfg)
    planes, (t3, w3) = augment_patch(np.stack([image] * 3), [target, weight], np.random.default_rng(3), cfg)
    assert planes.shape == (3, *flat.shape)
    for plane in planes:
        np.testing.assert_allclose(plane, flat, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(t3, t2)
    np.testing.assert_array_equal(w3, w2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"elastic_grid": 1},
        {"elastic_grid": 2.5},
        {"elastic_sigma": -1.0},
        {"contrast": (1.2, 0.8)},
        {"contrast": (0.0, 1.0)},
        {"gamma": (-0.5, 1.0)},
        {"noise_std": (-0.1, 0.1)},
        {"brightness": (0.1,)},
        {"p_intensity": 1.5},
        {"p_intensity": -0.1},
        {"flips": "yes"},
        {"rotation": -5.0},
        {"rotation": 270.0},
        {"rotation": True},
        {"scale": (0.0, 1.2)},
        {"scale": (1.3, 0.9)},
        {"p_affine": 2.0},
        {"p_affine": "often"},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_config_dict_round_trip():
    config = AugmentConfig(elastic_grid=4, elastic_sigma=6.5, rot90=False,
                           gamma=(0.8, 1.2), p_intensity=0.5)
    data = config.to_dict()
    assert isinstance(data["gamma"], list)
    assert all(isinstance(v, (bool, int, float, list, str)) for v in data.values())
    assert data["p_affine"] == "auto"
    assert AugmentConfig.from_dict(data) == config
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()) == AugmentConfig()
    with pytest.raises(ValueError):
        AugmentConfig.from_dict({**data, "bogus": 1})
    # a checkpoint's recipe from before the free rotation and zoom says it had none
    old = {k: v for k, v in AugmentConfig().to_dict().items() if k not in ("rotation", "scale", "p_affine")}
    assert AugmentConfig.from_dict(old).p_affine == 0.0


def test_config_is_hashable():
    assert hash(AugmentConfig()) == hash(AugmentConfig.from_dict(AugmentConfig().to_dict()))


def test_zoom_scales_about_the_centre():
    """A zoom of 2 (no rotation) reads each pixel twice as far from the patch centre:
    on a ramp image the output is the ramp twice as steep, through the same centre."""
    h = w = 65
    ramp = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    config = AugmentConfig(elastic=False, flips=False, rot90=False, intensity=False,
                           p_affine=1.0, rotation=0.0, scale=(2.0, 2.0))
    out, _ = augment_patch(ramp, [], np.random.default_rng(0), config, crop=16)
    assert out.shape == (33, 33)
    rows = np.arange(16, 49) - 32.0
    np.testing.assert_allclose(out[:, 16], 32.0 + 2.0 * rows, atol=1e-3)


def test_rotation_keeps_alignment_and_turns_about_the_centre():
    """A centred disc stays a centred disc of the same size, image and target together,
    whatever the angle; an off-centre square moves (the patch did turn)."""
    n = 97
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    disc = (np.hypot(yy, xx) < 20).astype(np.int64)
    square = ((np.abs(yy - 25) < 8) & (np.abs(xx) < 8)).astype(np.int64)
    config = AugmentConfig(elastic=False, flips=False, rot90=False, intensity=False,
                           p_affine=1.0, rotation=90.0, scale=(1.0, 1.0))
    rng = np.random.default_rng(1)
    moved = 0
    for _ in range(6):
        out, (d, q) = augment_patch(disc.astype(np.float32), [disc, square], rng, config)
        assert abs(int(d.sum()) - int(disc.sum())) <= 0.02 * disc.sum()
        np.testing.assert_array_equal(d[48 - 12:48 + 13, 48 - 12:48 + 13],
                                      disc[48 - 12:48 + 13, 48 - 12:48 + 13])
        assert (np.abs(out - d)[d == 1] < 0.5).mean() > 0.95
        moved += not np.array_equal(q, square)
    assert moved >= 5


def test_crop_returns_the_centre_of_the_full_warp():
    """Warping only the inner window gives the inner window of the full warp."""
    image, target, weights = _patch((72, 72))
    config = AugmentConfig(p_intensity=1.0)
    full, (tf, wf) = augment_patch(image, [target, weights], np.random.default_rng(5), config)
    inner, (ti, wi) = augment_patch(image, [target, weights], np.random.default_rng(5), config, crop=12)
    assert inner.shape == (48, 48)
    np.testing.assert_array_equal(ti, tf[12:-12, 12:-12])
    np.testing.assert_array_equal(wi, wf[12:-12, 12:-12])
    # the intensity jitter's contrast and gamma use the patch's own statistics, so
    # compare the geometry with intensity off
    config = AugmentConfig(intensity=False)
    full, _ = augment_patch(image, [target], np.random.default_rng(5), config)
    inner, _ = augment_patch(image, [target], np.random.default_rng(5), config, crop=12)
    np.testing.assert_allclose(inner, full[12:-12, 12:-12], atol=1e-5)
    with pytest.raises(ValueError, match="crop"):
        augment_patch(image, [target], np.random.default_rng(5), config, crop=36)


def test_warp_border_covers_the_warp():
    """No augmentation needs no border; the paper's elastic warp keeps its 16 pixels; a
    45-degree turn with a 1.25 zoom reaches 1.25 * sqrt(2) half-windows from the centre."""
    assert warp_border(None, 200) == 0
    assert warp_border(AugmentConfig(p_affine=0.0), 200) == 16
    assert warp_border(AugmentConfig(elastic=False, p_affine=0.0), 200) == 0
    reach = 100 * np.sqrt(2) * 1.25
    assert warp_border(AugmentConfig(elastic=False), 200) == int(np.ceil(reach - 100))
    assert warp_border(AugmentConfig(), 200) == 16 + int(np.ceil(reach - 100))


def test_auto_turns_and_zooms_objects_on_a_background_only():
    """``p_affine="auto"`` (the default) becomes AFFINE_P for objects on a background
    and 0 for cells that fill the slice; a number or no augmentation is kept as given."""
    from napari_unet.training.losses import objects_on_background

    mito = np.zeros((40, 40), np.int64)
    mito[5:12, 5:15] = 1
    cells = np.ones((40, 40), np.int64)
    cells[::8] = 0
    assert objects_on_background([mito], scribbles=False)
    assert not objects_on_background([cells], scribbles=False)
    assert not objects_on_background([mito], scribbles=True)
    assert not objects_on_background([np.full((4, 4), -1)], scribbles=False)
    assert resolved_augment(AugmentConfig(), True).p_affine == AFFINE_P
    assert resolved_augment(AugmentConfig(), False).p_affine == 0.0
    assert resolved_augment(AugmentConfig(p_affine=0.2), False).p_affine == 0.2
    assert resolved_augment(None, True) is None
    assert AugmentConfig().affine_probability == AFFINE_P
    assert warp_border(AugmentConfig(p_affine=0.0), 200) < warp_border(AugmentConfig(), 200)
