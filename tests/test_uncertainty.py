"""Per-pixel uncertainty and per-slice scores in the prediction path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import PredictionSettings, TilePredictor, predict, preset
from napari_unet.model.checkpoint import TrainedModel
from napari_unet.model.unet import UNet
from napari_unet.prediction.overlap_tile import predict_slice_disagreement
from napari_unet.prediction.uncertainty import (
    UNCERTAINTY_METHODS,
    normalized_entropy,
    slice_score,
    tta_disagreement,
)


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    torch.manual_seed(0)
    return TrainedModel(UNet(preset("tiny")).eval())


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((3, 48, 56)).astype(np.float32)


def test_entropy_is_zero_for_one_hot_and_one_for_uniform():
    one_hot = np.zeros((3, 4, 5), np.float32)
    one_hot[1] = 1
    uniform = np.full((3, 4, 5), 1 / 3, np.float32)
    for probs, expected in ((one_hot, 0.0), (uniform, 1.0)):
        h = normalized_entropy(probs)
        assert h.shape == (4, 5) and h.dtype == np.float32
        np.testing.assert_allclose(h, expected, atol=1e-6)
    assert normalized_entropy(np.ones((1, 2, 2))).max() == 0  # one class: never unsure


def test_tta_disagreement_is_mutual_information_in_unit_range():
    mean = np.full((2, 3, 3), 0.5, np.float32)
    # variants that agree (each uniform): no disagreement
    np.testing.assert_allclose(tta_disagreement(mean, np.full((3, 3), np.log(2))), 0, atol=1e-6)
    # confident variants that cancel out: full disagreement
    np.testing.assert_allclose(tta_disagreement(mean, np.zeros((3, 3))), 1, atol=1e-6)


def test_slice_score_mean_of_top_pixels_mask_and_empty():
    values = np.arange(100, dtype=np.float32).reshape(10, 10) / 100
    assert slice_score(values, quantile=0) == pytest.approx(values.mean())
    assert slice_score(values) == pytest.approx(values.ravel()[90:].mean())
    mask = np.zeros((10, 10), bool)
    mask[0] = True
    assert slice_score(values, quantile=0, mask=mask) == pytest.approx(values[0].mean())
    assert np.isnan(slice_score(values, mask=np.zeros((10, 10), bool)))
    with pytest.raises(ValueError, match="quantile"):
        slice_score(values, quantile=1.0)


def test_settings_validate_uncertainty():
    assert PredictionSettings().uncertainty is False
    assert set(UNCERTAINTY_METHODS) == {"entropy", "tta"}
    with pytest.raises(ValueError, match="uncertainty_method must be one of"):
        PredictionSettings(uncertainty_method="bald")
    with pytest.raises(ValueError, match="tta=True"):
        PredictionSettings(uncertainty=True, uncertainty_method="tta")
    with pytest.raises(ValueError, match="uncertainty must be True or False"):
        PredictionSettings(uncertainty="yes")  # type: ignore[arg-type]


def test_entropy_map_shape_range_and_probabilities_unchanged(model, image):
    off = predict(model, image, device="cpu", slices=[0, 2])
    on = predict(model, image, device="cpu", slices=[0, 2], uncertainty=True)
    assert off.uncertainty is None and off.slice_scores is None
    assert np.array_equal(off.probabilities, on.probabilities)
    assert np.array_equal(off.semantic, on.semantic)
    assert on.uncertainty.shape == image.shape and on.uncertainty.dtype == np.float32
    assert 0 <= on.uncertainty.min() and on.uncertainty.max() <= 1
    assert not on.uncertainty[1].any()  # slice 1 not predicted
    assert on.slice_scores.dtype == np.float32 and on.slice_scores.shape == (3,)
    assert np.isnan(on.slice_scores[1]) and np.isfinite(on.slice_scores[[0, 2]]).all()


def test_tta_map_in_unit_range_and_probabilities_unchanged(model, image):
    off = predict(model, image, device="cpu", tta=True, slices=[1])
    on = predict(model, image, device="cpu", tta=True, slices=[1], uncertainty=True,
                 uncertainty_method="tta")
    assert np.array_equal(off.probabilities, on.probabilities)
    u = on.uncertainty[1]
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() <= 1 and u.max() > 0
    assert np.isnan(on.slice_scores[[0, 2]]).all() and np.isfinite(on.slice_scores[1])


def test_2d_image_gives_2d_map(model, image):
    pred = predict(model, image[0], device="cpu", uncertainty=True)
    assert pred.uncertainty.shape == image.shape[1:] and pred.slice_scores.shape == (1,)


def test_blended_tiles_keep_probabilities_bit_identical():
    """Same padding: the extra channel goes through the blending stitcher unharmed."""
    torch.manual_seed(2)
    net = UNet(preset("tiny", padding="same")).eval()
    predictor = TilePredictor(net, tile_size=32, tta=True, device="cpu")
    image = np.random.default_rng(1).normal(size=(70, 50)).astype(np.float32)
    plain = predictor.predict_slice(image)
    probs, disagreement = predict_slice_disagreement(predictor, image)
    assert np.array_equal(plain, probs)
    assert disagreement.shape == image.shape and 0 <= disagreement.min() <= disagreement.max() <= 1
    assert predictor.predict_slice(image).shape == plain.shape  # flag reset afterwards
    with pytest.raises(ValueError, match="tta=True"):
        predict_slice_disagreement(TilePredictor(net, tile_size=32, device="cpu"), image)


def test_batch_and_cli_write_the_uncertainty_map(tmp_path, model, image):
    from batch_helpers import write_stack

    from napari_unet import cli
    from napari_unet.io.tiff import read_tiff
    from napari_unet.prediction.batch import BatchOptions, batch_segment, output_paths

    stack = write_stack(tmp_path / "in" / "s.tif", (2, 40, 44))
    model_path = model.save(tmp_path / "m.pt")
    options = BatchOptions(uncertainty=True, device="cpu")
    assert list(output_paths(tmp_path / "s.tif", tmp_path, options)) == ["labels", "uncertainty", "provenance"]
    [result] = batch_segment(model_path, [tmp_path / "in"], tmp_path / "out", options)
    assert result.status == "done", result.reason
    written = np.asarray(read_tiff(tmp_path / "out" / "s_uncertainty.tif").data)
    expected = np.rint(predict(model, stack, device="cpu", uncertainty=True).uncertainty * 255)
    assert written.dtype == np.uint8 and np.abs(written.astype(int) - expected).max() <= 1
    code = cli.main(["segment", "-m", str(model_path), str(tmp_path / "in"), "-o", str(tmp_path / "cli"),
                     "--device", "cpu", "--tta", "--uncertainty", "--uncertainty-method", "tta"])
    assert code == 0 and (tmp_path / "cli" / "s_uncertainty.tif").exists()
