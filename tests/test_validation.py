import numpy as np
import pytest

from napari_unet import TrainingConfig, predict, train
from napari_unet.model.checkpoint import TrainedModel
from napari_unet.model.config import preset
from napari_unet.model.unet import UNet

FAST = TrainingConfig(iterations=2, patch_size=16, batch_size=1, augment=None, val_every=1)


@pytest.fixture(scope="module")
def tiny_model() -> TrainedModel:
    return TrainedModel(model=UNet(preset("tiny")).eval())


def _labels(shape):
    lab = np.zeros(shape, np.uint8)
    lab[0, 4:12, 4:12] = 1
    return lab


@pytest.mark.parametrize(
    "image, labels, match",
    [
        (np.zeros((2, 32, 32)), np.zeros((2, 32, 30), np.uint8), "does not match"),
        (np.zeros((2, 32, 32)), np.zeros((2, 32, 32), np.uint8), "no annotated slice"),
        (np.zeros((2, 32, 32)), np.zeros((2, 32, 32), np.float32), "float dtype"),
        (np.zeros((32, 32, 3)), np.zeros((32, 32, 3), np.uint8), "RGB"),
        (np.zeros((2, 3, 32, 32)), np.zeros((2, 3, 32, 32), np.uint8), "2D .* or 3D"),
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 8), np.uint8), "too small"),
    ],
)
def test_training_input_errors(image, labels, match):
    with pytest.raises(ValueError, match=match):
        train(image, labels, FAST, model=preset("tiny"))


def test_nan_image_rejected():
    img = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    img[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(img, _labels(img.shape), FAST, model=preset("tiny"))


def test_only_one_class():
    img = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="two classes"):
        train(img, np.ones((1, 32, 32), np.uint8), FAST, model=preset("tiny"))


def test_bad_training_config():
    for bad in ({"iterations": 0}, {"learning_rate": -1.0}, {"loss": "focal"}, {"device": "tpu"}, {"val_fraction": 1.0}):
        with pytest.raises(ValueError):
            TrainingConfig(**bad)


def test_unavailable_device_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    img = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="not available"):
        train(img, _labels(img.shape), FAST, model=preset("tiny"), device="cuda")


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.zeros((32, 32, 4)), {}, "RGB"),
        (np.full((32, 32), np.inf, np.float32), {}, "NaN or infinite"),
        (np.zeros((2, 32, 32)), {"slices": [5]}, "outside the stack"),
        (np.zeros((32, 32)), {"tile_size": 2}, "tile"),
        (np.zeros((32, 32)), {"batch_size": 0}, "batch_size"),
    ],
)
def test_prediction_input_errors(tiny_model, image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict(tiny_model, image, **kwargs)
