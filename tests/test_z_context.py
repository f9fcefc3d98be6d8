"""3D context for a 2D network: probabilities smoothed along z, when and how."""

from __future__ import annotations

import numpy as np
import pytest
from batch_helpers import tiny_model
from scipy.ndimage import gaussian_filter, gaussian_filter1d

import napari_unet as nu
from napari_unet.prediction.settings import PredictionSettings
from napari_unet.prediction.z_context import (
    AUTO_SIGMA,
    check_z_smoothing,
    resolve_z_sigma,
    smooth_stack,
    walk_z,
    z_similarity,
    z_window,
)
from napari_unet.synthetic import synthetic_em_stack


def _isotropic(depth: int = 12, size: int = 64, seed: int = 0) -> np.ndarray:
    """A 3D random texture smoothed equally in z, y and x (FIB-SEM-like)."""
    field = gaussian_filter(np.random.default_rng(seed).normal(size=(depth, size, size)), 2.0)
    return ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)


def _sections(depth: int = 12, size: int = 64, seed: int = 0) -> np.ndarray:
    """The same texture per slice but independent slices (serial sections far apart)."""
    rng = np.random.default_rng(seed)
    return np.stack([_isotropic(1, size, int(rng.integers(1 << 30)))[0] for _ in range(depth)])


def test_similarity_tells_isotropic_stacks_from_serial_sections() -> None:
    iso, sec = z_similarity(_isotropic()), z_similarity(_sections())
    assert iso["ratio"] > 0.8 and sec["ratio"] < 0.3, (iso, sec)
    assert np.isnan(z_similarity(_isotropic()[:1])["ratio"])  # one slice: nothing to compare
    assert resolve_z_sigma("auto", _isotropic()) == AUTO_SIGMA
    assert resolve_z_sigma("auto", _sections()) == 0.0
    assert resolve_z_sigma("auto", _isotropic(), whole_stack=False) == 0.0  # a preview: 2D
    assert resolve_z_sigma(1.5, _sections()) == 1.5  # a number is used as given


def test_setting_is_validated() -> None:
    assert PredictionSettings().z_smoothing == "auto"
    assert PredictionSettings(z_smoothing=" AUTO ").z_smoothing == "auto"
    assert PredictionSettings(z_smoothing=1).z_smoothing == 1.0
    for bad in (-1, float("nan"), 17, "2", True, None, [1]):
        with pytest.raises(ValueError, match="z_smoothing"):
            check_z_smoothing(bad)


def test_window_mirrors_at_the_stack_ends_like_scipy() -> None:
    assert z_window(0, 5, 2) == [1, 0, 0, 1, 2]
    assert z_window(4, 5, 2) == [2, 3, 4, 4, 3]
    assert z_window(0, 2, 3) == [1, 1, 0, 0, 1, 1, 0]  # radius past both ends
    p = np.random.default_rng(1).random((7, 2, 5, 5)).astype(np.float32)
    ref = gaussian_filter1d(p, 1.5, axis=0, mode="reflect", truncate=2.0)
    np.testing.assert_allclose(smooth_stack(p, 1.5), ref, atol=1e-6)
    assert smooth_stack(p, 0) is p


@pytest.mark.parametrize("zs", [list(range(9)), [3, 4, 5], [8, 0, 4]])
def test_walk_predicts_each_slice_once_and_keeps_a_window(zs) -> None:
    p = np.random.default_rng(2).random((9, 2, 4, 4)).astype(np.float32)
    calls: list[int] = []

    def predict(z: int) -> tuple[np.ndarray, int]:
        calls.append(z)
        return p[z], z

    out = list(walk_z(zs, 9, 1.0, predict))
    assert [z for z, _, _ in out] == zs and [own for _, _, (_, own) in out] == zs
    assert len(calls) == len(set(calls))  # predicted once each
    full = smooth_stack(p, 1.0)
    for z, probs, _ in out:
        np.testing.assert_array_equal(probs, full[z])  # same arithmetic, same bits


def test_predict_smooths_a_whole_isotropic_stack_and_not_a_slice_or_2d_image() -> None:
    model = tiny_model()
    stack = _isotropic(depth=6, size=48)
    flat = nu.predict(model, stack, z_smoothing=0)
    smooth = nu.predict(model, stack, z_smoothing=1.0)
    expected = smooth_stack(flat.probabilities, 1.0)
    np.testing.assert_array_equal(smooth.probabilities, expected)
    np.testing.assert_array_equal(smooth.semantic, expected.argmax(1).astype(np.uint8))
    auto = nu.predict(model, stack)  # "auto" on a near-isotropic stack: AUTO_SIGMA
    np.testing.assert_array_equal(auto.probabilities, smooth_stack(flat.probabilities, AUTO_SIGMA))
    one = nu.predict(model, stack, slices=[2])  # a preview of one slice stays 2D under "auto"
    np.testing.assert_array_equal(one.probabilities[2], flat.probabilities[2])
    # a 2D image has no neighbours: any smoothing leaves it as it is
    np.testing.assert_array_equal(nu.predict(model, stack[0], z_smoothing=3).probabilities,
                                  nu.predict(model, stack[0], z_smoothing=0).probabilities)


def test_serial_sections_are_left_alone_under_auto() -> None:
    model = tiny_model()
    stack = _sections(depth=5, size=48)
    np.testing.assert_array_equal(nu.predict(model, stack).probabilities,
                                  nu.predict(model, stack, z_smoothing=0).probabilities)


def test_the_sample_data_counts_as_near_isotropic() -> None:
    """The synthetic stacks used across the tests do get the 3D smoothing by default."""
    assert z_similarity(synthetic_em_stack((8, 96, 96), seed=1).image)["ratio"] > 0.7


def test_similarity_reads_only_a_window_of_each_slice() -> None:
    """A volume with huge slices is measured from a centred window, not whole slices."""
    stack = _isotropic(depth=6, size=64)
    reads: list[tuple] = []

    class Lazy:
        shape, ndim, dtype = stack.shape, 3, stack.dtype

        def __getitem__(self, key):
            reads.append(key)
            return stack[key]

    whole = z_similarity(stack, crop=32)
    assert z_similarity(Lazy(), crop=32) == whole
    assert all(isinstance(k, tuple) and k[1] == slice(16, 48) and k[2] == slice(16, 48) for k in reads)


def test_cli_flag_says_what_it_expects(capsys) -> None:
    from napari_unet import cli

    assert cli.main(["segment", "-m", "m.pt", "-o", "out", "x.tif", "--z-smoothing", "abc"]) == 2
    assert "'auto' or a number of slices" in capsys.readouterr().err


def test_blank_stack_is_measured_quietly_and_left_alone() -> None:
    import warnings

    blank = np.zeros((4, 32, 32), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning in napari's console for an empty stack
        assert np.isnan(z_similarity(blank)["ratio"])
        assert resolve_z_sigma("auto", blank) == 0.0
