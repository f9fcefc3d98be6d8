"""Sample data: a synthetic EM stack with two painted slices, through the manifest."""

from __future__ import annotations

import numpy as np

from napari_unet._sample_data import SAMPLE_ANNOTATED, SAMPLE_SHAPE, synthetic_em_sample
from napari_unet.training.annotations import annotated_slices


def test_sample_layers():
    (image, image_kw, image_type), (labels, labels_kw, labels_type) = synthetic_em_sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert image.shape == labels.shape == SAMPLE_SHAPE
    assert image.dtype == np.uint8 and labels.dtype == np.uint32
    assert annotated_slices(labels) == list(SAMPLE_ANNOTATED) == [4, 11]
    assert image_kw["scale"] == labels_kw["scale"]
    # EM-like: bright cells, dark membranes, some noise
    assert 100 < image.mean() < 200 and image.std() > 20
    # painted slices carry many objects, with membranes (0) between them
    assert len(np.unique(labels[4])) > 20 and (labels[4] == 0).mean() > 0.05


def test_open_sample_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "synthetic_em")
    names = [layer.name for layer in viewer.layers]
    assert names == ["synthetic EM", "synthetic EM annotation"]
    labels = viewer.layers["synthetic EM annotation"]
    assert type(labels).__name__ == "Labels"
    assert tuple(labels.scale) == tuple(viewer.layers["synthetic EM"].scale) == (40.0, 8.0, 8.0)
