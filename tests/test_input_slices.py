"""2.5D networks: a slice read with its neighbours, the same way in training and every prediction path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_unet
from napari_unet.errors import CheckpointError
from napari_unet.model.checkpoint import TrainedModel, load_checkpoint, transfer_weights
from napari_unet.model.config import UNetConfig, preset
from napari_unet.model.unet import UNet
from napari_unet.prediction.z_context import input_planes
from napari_unet.synthetic import synthetic_em_stack
from napari_unet.training.config import TrainingConfig
from napari_unet.training.start import starting_point
from napari_unet.training.trainer import Trainer, train


def _model(input_slices: int = 3, seed: int = 0) -> TrainedModel:
    """A random tiny 2.5D network whose neighbours' weights are large, so they matter."""
    torch.manual_seed(seed)
    return TrainedModel(UNet(preset("tiny", input_slices=input_slices)))


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return synthetic_em_stack((5, 64, 72), seed=2).image


def test_config_validates_and_2d_checkpoints_keep_their_old_form():
    for bad in (0, 2, 4, 17, True, 1.0, "3"):
        with pytest.raises(ValueError, match="input_slices"):
            UNetConfig(input_slices=bad)
    with pytest.raises(ValueError, match="input_slices"):
        TrainingConfig(input_slices=2)
    assert "input_slices" not in UNetConfig().to_dict()  # older versions read 2D checkpoints
    cfg = UNetConfig(input_slices=5)
    assert cfg.to_dict()["input_slices"] == 5 and UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.input_planes, cfg.z_radius) == (5, 2)
    assert UNet(cfg).encoder[0][0].weight.shape[1] == 5


def test_input_planes_mirror_at_the_stack_ends():
    read = lambda z: np.full((2, 2), z)  # noqa: E731
    assert input_planes(read, 0, 4, 1).shape == (2, 2)
    assert input_planes(read, 0, 4, 3)[:, 0, 0].tolist() == [0, 0, 1]
    assert input_planes(read, 3, 4, 5)[:, 0, 0].tolist() == [1, 2, 3, 3, 2]
    assert input_planes(read, 0, 1, 3)[:, 0, 0].tolist() == [0, 0, 0]  # one slice: itself


def test_a_2d_model_widened_to_3_slices_starts_as_the_same_function():
    torch.manual_seed(0)
    flat = UNet(preset("tiny")).eval()
    start = starting_point(2, model=None, init=TrainedModel(flat), resume=False, iterations=10,
                           seed=0, input_slices=3)
    wide = start.model.eval()
    assert wide.config.input_slices == 3 and start.reinitialised == []
    x = torch.randn(2, 1, 92, 92)
    noise = torch.randn(2, 1, 92, 92)
    with torch.no_grad():
        torch.testing.assert_close(wide(torch.cat([noise, x, -noise], 1)), flat(x))
    with pytest.raises(CheckpointError, match="reads 3 slices"):
        transfer_weights(wide, UNet(preset("tiny")))
    with pytest.raises(ValueError, match="cannot resume"):
        starting_point(2, model=None, init=TrainedModel(flat), resume=True, iterations=10, seed=0,
                       input_slices=3)


def test_neighbours_change_the_prediction_and_one_slice_reads_them_too(stack):
    model = _model()
    whole = np.asarray(napari_unet.predict(model, stack, probabilities=True, z_smoothing=0).probabilities)
    changed = stack.copy()
    changed[3] = changed[3][::-1]  # same pixel values: the same normalisation
    other = np.asarray(napari_unet.predict(model, changed, probabilities=True, z_smoothing=0).probabilities)
    assert not np.allclose(whole[2], other[2])  # slice 2 reads slice 3
    np.testing.assert_array_equal(whole[0], other[0])  # slice 0 reads 0, 0, 1 only
    one = napari_unet.predict(model, stack, slices=[2], probabilities=True, z_smoothing=0)
    np.testing.assert_array_equal(np.asarray(one.probabilities)[2], whole[2])


def test_preview_of_one_slice_equals_the_whole_stack_prediction(stack):
    from napari_unet._widgets._jobs import predict_slice

    model = _model()
    # the preview normalises its window of slices alone: compare with the same window
    for z in (0, 2, 4):
        window = stack[[max(0, min(4, i)) for i in (z - 1, z, z + 1)]]
        expected = napari_unet.predict(model, window, slices=[1], z_smoothing=0).semantic[1]
        got = predict_slice(model, stack, z, device="cpu", batch_size=2)
        np.testing.assert_array_equal(got, expected)
    assert predict_slice(model, stack[0], None, device="cpu", batch_size=2).shape == stack.shape[1:]


def test_training_a_25d_model_round_trips_through_a_checkpoint(tmp_path, stack):
    fg = synthetic_em_stack((5, 64, 72), seed=2).foreground
    labels = np.zeros(stack.shape, np.uint8)
    labels[1] = fg[1].astype(np.uint8) + 1
    labels[3] = fg[3].astype(np.uint8) + 1
    cfg = TrainingConfig(iterations=6, batch_size=2, patch_size=32, input_slices=3, val_every=3)
    trainer = Trainer(stack, labels, cfg, model=preset("tiny"))
    assert trainer._normalised(0).shape == (3, *stack.shape[1:])
    batch = trainer._sampler().sample(2)[0]
    assert batch.shape[1] == 3
    trained = train(stack, labels, cfg, model=preset("tiny"))
    assert trained.config.input_slices == 3
    path = trained.save(tmp_path / "m.pt")
    loaded = load_checkpoint(path)
    assert loaded.config.input_slices == 3
    a = napari_unet.predict(trained, stack, probabilities=True).probabilities
    b = napari_unet.predict(loaded, stack, probabilities=True).probabilities
    np.testing.assert_array_equal(a, b)
    # fine-tuning it keeps its 3 slices; asking for another number is refused
    again = train(stack, labels, TrainingConfig(iterations=2, batch_size=2, patch_size=32), init=path)
    assert again.config.input_slices == 3
    with pytest.raises(CheckpointError, match="reads 3 slices"):
        train(stack, labels, TrainingConfig(iterations=2, batch_size=2, patch_size=32, input_slices=5),
              init=path)


def test_bioimageio_export_refuses_a_25d_model(tmp_path):
    pytest.importorskip("bioimageio.spec")
    from napari_unet.model.bioimageio import export_bioimageio

    with pytest.raises(ValueError, match="2D models only"):
        export_bioimageio(_model(), tmp_path / "m.zip")


def test_volume_blocks_and_xy_windows_read_neighbours_across_their_borders(tmp_path, stack):
    pytest.importorskip("ome_zarr")
    import zarr

    from napari_unet.io.zarr_volume import create_ome_zarr
    from napari_unet.prediction.batch import BatchOptions
    from napari_unet.prediction.volume import segment_volume

    source = tmp_path / "vol.ome.zarr"
    create_ome_zarr(source, stack.shape, np.uint8, chunk_z=2)[:] = stack
    path = _model().save(tmp_path / "m.pt")
    options = BatchOptions(probabilities=True, probability_dtype="float16", z_smoothing=0)
    outputs = {}
    for name, kw in {"z": {"block_z": 2}, "xy": {"block_z": 2, "block_xy": 40}}.items():
        segment_volume(path, source, tmp_path / name, settings=options, **kw)
        outputs[name] = zarr.open_array(str(tmp_path / name / "vol_probabilities.zarr" / "0"), mode="r")[:]
    np.testing.assert_array_equal(outputs["z"], outputs["xy"])
    whole = napari_unet.predict(path, stack, probabilities=True, z_smoothing=0).probabilities
    np.testing.assert_array_equal(outputs["z"], (1.0 - np.asarray(whole)[:, 0]).astype(np.float16))


def test_a_walk_reads_every_slice_once_and_the_tile_predictor_cuts_the_same_planes(stack):
    from napari_unet.prediction.overlap_tile import TilePredictor
    from napari_unet.prediction.z_context import PlaneReader

    reads: list[int] = []
    reader = PlaneReader(lambda i: reads.append(i) or np.full((2, 2), i), 5, 3)
    assert [reader(z)[:, 0, 0].tolist() for z in range(5)] == [
        [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    assert reads == [0, 1, 2, 3, 4]
    norm = (stack.astype(np.float32) - 128) / 64
    predictor = TilePredictor(_model().model, device="cpu", batch_size=2)
    whole = predictor.predict(norm)
    np.testing.assert_array_equal(whole[2], predictor.predict_slice(norm[1:4]))
    np.testing.assert_array_equal(whole[0], predictor.predict_slice(norm[[0, 0, 1]]))
    with pytest.raises(ValueError, match=r"expected \(3, Y, X\)"):
        predictor.predict_slice(norm[0])
