"""The shipped model's prediction of a small synthetic stack is pinned.

Refactors of the prediction path must not change a pixel. The fixture was
written by ``predict(default model, synthetic_em_stack((2, 96, 112), seed=11).image,
tile_size=64, instances=True, instance_method="fill")``; tolerances only allow
for float rounding between CPUs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_unet as nu
from napari_unet.model.pretrained import default_checkpoint
from napari_unet.synthetic import synthetic_em_stack

FIXTURE = Path(__file__).parent / "data" / "pinned_prediction.npz"


@pytest.mark.skipif(default_checkpoint() is None, reason="no shipped model")
def test_shipped_model_prediction_is_pinned() -> None:
    pinned = np.load(FIXTURE)
    model = nu.load_checkpoint(default_checkpoint())
    image = synthetic_em_stack((2, 96, 112), seed=11).image
    # the float32 path is what is pinned ("auto" may mean bf16 on this CPU)
    pred = nu.predict(model, image, tile_size=64, instances=True, instance_method="fill",
                      precision="float32")
    foreground = pred.foreground_probability
    np.testing.assert_allclose(foreground, pinned["foreground"], atol=1e-4)
    sure = np.abs(pinned["foreground"] - 0.5) > 1e-3  # pixels no rounding can flip
    np.testing.assert_array_equal(pred.semantic[sure], pinned["semantic"][sure])
    if sure.all():
        np.testing.assert_array_equal(pred.instances, pinned["instances"])
