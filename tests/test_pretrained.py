"""The pretrained EM membrane model that ships inside the package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_unet import load_checkpoint, preset
from napari_unet.model.pretrained import default_checkpoint


@pytest.fixture(scope="module")
def shipped():
    path = default_checkpoint()
    assert path is not None, "the pretrained default model must ship with the package"
    return path


def test_it_is_small_self_describing_and_safe_to_load(shipped):
    assert shipped.stat().st_size < 8 * 2**20  # a few MB, fit to ship in a wheel
    raw = torch.load(shipped, map_location="cpu", weights_only=True)  # no pickled code
    floats = [v for v in raw["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    model = load_checkpoint(shipped)
    assert model.config == preset("default").with_classes(2)
    assert model.class_names[1] and len(model.class_names) == 2
    assert all(p.dtype == torch.float32 for p in model.model.parameters())  # loaded back as float32
    assert model.training["annotated_slices"] == list(range(20))  # ISBI slices 0-19 only


def test_model_card_states_data_metrics_and_citation(shipped):
    card = shipped.with_suffix(".md").read_text()
    for needle in ("ISBI 2012", "slices 0-19", "20-29", "Cardona", "Arganda-Carreras", "adapted Rand"):
        assert needle in card
    numbers = json.loads(shipped.with_suffix(".json").read_text())
    assert numbers["train_slices"] == "0-19" and numbers["eval_slices"] == "20-29"
    assert 0.0 <= numbers["eval"]["plain_fill"]["are"] <= numbers["eval"]["plain_components"]["are"] <= 1.0


def test_it_segments_membrane_like_images(shipped):
    """On a synthetic EM slice (cells between dark membranes) it finds the cells."""
    from napari_unet import predict
    from napari_unet.synthetic import synthetic_em_stack

    stack = synthetic_em_stack((1, 192, 192), seed=3)
    pred = predict(load_checkpoint(shipped), stack.image, probabilities=True)
    fg = np.asarray(pred.semantic) == 1
    assert np.isfinite(pred.probabilities).all()
    iou = (fg & stack.foreground).sum() / (fg | stack.foreground).sum()
    assert iou > 0.5, iou
