"""TIFF reader: lazy data, scale from the file's resolution, None for other files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet._reader import napari_get_reader, read_tiff_layers
from napari_unet.io.tiff import write_tiff


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(5, 40, 48), dtype=np.uint8)


def test_uncompressed_stack_is_memory_mapped_with_its_scale(tmp_path, stack):
    path = write_tiff(
        tmp_path / "em.tif", stack, spacing=(0.05, 0.008, 0.008), unit="micron", compression=None
    )
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(str(path))
    assert layer_type == "image"
    assert isinstance(data, np.memmap)  # lazy: nothing read yet
    np.testing.assert_array_equal(np.asarray(data), stack)
    assert kwargs["name"] == "em"
    assert kwargs["scale"] == pytest.approx((0.05, 0.008, 0.008))
    assert kwargs["units"] == ("micrometer",) * 3


def test_compressed_stack_is_read_lazily(tmp_path, stack):
    path = write_tiff(tmp_path / "em.tiff", stack, spacing=(0.04, 0.01, 0.01), compression="zlib")
    [(data, kwargs, _)] = read_tiff_layers([str(path)])
    assert not isinstance(data, np.ndarray)  # a zarr array over the file
    np.testing.assert_array_equal(np.asarray(data[2]), stack[2])
    assert kwargs["scale"] == pytest.approx((0.04, 0.01, 0.01))


def test_no_resolution_means_no_scale(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint16))
    [(data, kwargs, _)] = read_tiff_layers(str(path))
    assert data.shape == (32, 32)
    assert "scale" not in kwargs


def test_other_files_are_left_to_other_readers(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "missing.tif")) is None
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None


def test_napari_opens_a_stack_with_the_plugin(make_napari_viewer, tmp_path, stack):
    path = write_tiff(tmp_path / "em.tif", stack, spacing=(0.05, 0.008, 0.008), compression=None)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-unet")
    assert layer.data.shape == stack.shape
    assert tuple(layer.scale) == pytest.approx((0.05, 0.008, 0.008))
