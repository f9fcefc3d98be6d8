"""One settings object and one prediction path: validation, instance methods everywhere,
running out of memory, and a shared model that never moves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batch_helpers import save_tiny_model, tiny_model, write_stack

import napari_unet as nu
from napari_unet import cli
from napari_unet.io.tiff import read_tiff
from napari_unet.model.config import preset
from napari_unet.model.unet import UNet
from napari_unet.prediction.batch import BatchOptions
from napari_unet.prediction.overlap_tile import TileGrid, TilePredictor
from napari_unet.prediction.settings import INSTANCE_METHODS, PredictionSettings


@pytest.mark.parametrize(
    "options",
    [
        {"tile_size": 2.5},
        {"tile_size": "abc"},
        {"tile_size": 0},
        {"batch_size": True},
        {"batch_size": 1.5},
        {"min_size": -1},
        {"instance_method": "magic"},
        {"device": "gpu"},
        {"device": "cpu:junk"},
        {"device": "auto:3"},
        {"threshold": 1.5},
        {"tta": "yes"},
    ],
)
def test_bad_settings_are_clear_value_errors(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        PredictionSettings(**options)


def test_whole_floats_and_numpy_ints_are_fine():
    s = PredictionSettings(tile_size=np.int64(128), batch_size=2.0, min_size=np.uint8(3))
    assert (s.tile_size, s.batch_size, s.min_size) == (128, 2, 3)
    assert all(type(v) is int for v in (s.tile_size, s.batch_size, s.min_size))


def test_unknown_option_names_the_known_ones():
    with pytest.raises(TypeError, match="tile_size"):
        PredictionSettings.build(tile=64)


def test_predict_validates_like_the_cli():
    model = tiny_model()
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match="tile_size"):
        nu.predict(model, image, tile_size=2.5)
    with pytest.raises(ValueError, match="tile_size"):
        nu.predict(model, image, tile_size="abc")


def test_one_list_of_instance_methods():
    from napari_unet._widgets._choices import INSTANCE_METHOD_CHOICES
    from napari_unet.prediction.postprocess import INSTANCE_METHODS as post_methods

    assert INSTANCE_METHODS == post_methods == ("components", "watershed", "fill")
    assert [value for _text, value in INSTANCE_METHOD_CHOICES] == list(INSTANCE_METHODS)
    for method in INSTANCE_METHODS:  # batch takes every method the panels offer
        assert BatchOptions(instances=True, instance_method=method).instance_method == method
    assert BatchOptions().prediction() == PredictionSettings(probabilities=False)


@pytest.mark.parametrize("method", INSTANCE_METHODS)
def test_every_instance_method_through_the_cli(tmp_path, capsys, method):
    write_stack(tmp_path / "a.tif", (2, 40, 48))
    model = save_tiny_model(tmp_path / "m.pt")
    code = cli.main(
        ["segment", "-m", str(model), str(tmp_path / "a.tif"), "-o", str(tmp_path / "out"),
         "--instances", "--instance-method", method]
    )
    _out, err = capsys.readouterr()
    assert code == 0, err
    instances = read_tiff(tmp_path / "out" / "a_instances.tif", lazy=False).data
    assert instances.shape == (2, 40, 48)
    expected = nu.predict(tiny_model(), read_tiff(tmp_path / "a.tif", lazy=False).data,
                          instances=True, instance_method=method)
    np.testing.assert_array_equal(instances, expected.instances)


def test_boolean_image_is_read_as_zero_one():
    model = tiny_model()
    mask = np.zeros((40, 40), bool)
    mask[10:30, 5:25] = True
    np.testing.assert_array_equal(
        nu.predict(model, mask).probabilities, nu.predict(model, mask.astype(np.uint8)).probabilities
    )


class _RunsOutOfMemory(UNet):
    """A real tiny U-Net that 'runs out of memory' above a batch or tile size."""

    def __init__(self, max_batch: int, max_edge: int) -> None:
        torch.manual_seed(0)
        super().__init__(preset("tiny"))
        self.max_batch, self.max_edge = max_batch, max_edge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_batch or x.shape[-1] > self.max_edge:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_retries_with_smaller_batches_then_tiles():
    image = np.random.default_rng(0).random((150, 170), dtype=np.float32)
    reference = TilePredictor(tiny_model().model, tile_size=96, batch_size=1).predict(image)
    heard: list[str] = []
    net = _RunsOutOfMemory(max_batch=1, max_edge=96)
    net.load_state_dict(tiny_model().model.state_dict())
    predictor = TilePredictor(net, tile_size=128, batch_size=4, notice=heard.append)
    result = predictor.predict(image)
    # valid-padding tiling is exact: smaller tiles give the same probabilities
    np.testing.assert_allclose(result, reference, atol=1e-5)
    assert predictor.batch_size == 1 and predictor.tile_size < 128
    assert any("1 tile(s) at a time" in n for n in heard) and any("tiles of" in n for n in heard)


def test_out_of_memory_at_the_smallest_tile_is_a_clear_memory_error():
    net = _RunsOutOfMemory(max_batch=0, max_edge=0)
    with pytest.raises(MemoryError, match="out of cpu memory even with one"):
        TilePredictor(net, batch_size=2).predict(np.zeros((40, 40), np.float32))


def test_panels_round_tiles_without_a_predictor():
    model = tiny_model().model
    grid = TileGrid(model.geometry)
    for tile in (grid.min_tile, 100, 256, 513):
        assert grid.round(tile) == TilePredictor(model, tile_size=tile, device="cpu").tile_size
    with pytest.raises(ValueError, match="too small"):
        grid.round(1)


def test_prediction_never_moves_or_changes_the_shared_model():
    trained = tiny_model()
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    nu.predict(trained, np.zeros((2, 40, 40), np.float32), device="cpu")
    assert all(v.device.type == "cpu" for v in trained.model.state_dict().values())
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.cuda
def test_gpu_job_uses_its_own_copy():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from napari_unet.prediction.stack import PredictionEngine

    trained = tiny_model()
    with PredictionEngine(trained, PredictionSettings(device="cuda")) as engine:
        assert engine.predictor.model is not trained.model
        assert next(engine.predictor.model.parameters()).is_cuda
    assert next(trained.model.parameters()).device.type == "cpu"


def test_a_closed_engine_refuses_to_predict_on_every_device():
    from napari_unet.prediction.stack import PredictionEngine, StackPrediction

    engine = PredictionEngine(tiny_model(), PredictionSettings(device="cpu"))
    engine.close()
    engine.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        list(StackPrediction(engine, np.zeros((1, 40, 40), np.float32)))
    assert PredictionSettings(device=" CUDA:1 ").device == "cuda:1"
