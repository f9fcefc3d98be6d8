"""Correct a prediction instead of painting from scratch, and the slice to paint next
(Train panel's "Copy prediction" / "Suggest next slice", Segment's uncertainty layer).

Opened through the manifest and driven as a user would (pytest-qt, Xvfb), with a
tiny model on a (6, 64, 64) stack.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.synthetic import partial_annotation, synthetic_em_stack

PLUGIN = "napari-unet"
SHAPE = (6, 64, 64)
SCALE, TRANSLATE = (2.0, 1.0, 1.0), (5.0, 3.0, 1.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stack():
    return synthetic_em_stack(SHAPE, seed=5)


@pytest.fixture(scope="module")
def tiny_model(stack):
    """A tiny model, a few iterations (a second): it predicts something, that is all we need."""
    import torch

    from napari_unet.model.config import preset
    from napari_unet.training.trainer import train

    torch.set_num_threads(1)
    labels = partial_annotation(stack.instances, [1, 4])
    return train(
        stack.image, labels, iterations=5, patch_size=48, batch_size=2, device="cpu",
        model=preset("tiny"),
    )


def setup(viewer, stack, painted=()):
    """Image (scaled, translated) + annotation with ``painted`` slices + the Train panel."""
    image = viewer.add_image(stack.image, name="em", scale=SCALE, translate=TRANSLATE)
    labels = viewer.add_labels(
        partial_annotation(stack.instances, list(painted)).astype(np.uint32),
        name="em annotation", scale=SCALE, translate=TRANSLATE,
    )
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    widget.image.value, widget.annotation.value = image, labels
    widget.start_from.value = "scratch"  # no model: only a trained one is used
    widget.device.value = "cpu"
    return image, labels, widget


def publish(viewer, model) -> None:
    from napari_unet._widgets._state import models_for

    models_for(viewer).publish(model, "tiny test model")


def go_to(viewer, image, z: int) -> None:
    from napari_unet._widgets._layers import current_slice, go_to_slice

    go_to_slice(viewer, image, z)
    assert current_slice(viewer, image) == z


def click_and_wait(qtbot, widget, button) -> None:
    button.native.click()
    assert widget.running
    assert not widget.correct_row.enabled  # no second job while one runs
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)


def test_copy_into_an_empty_annotation(make_napari_viewer, qtbot, stack, tiny_model):
    viewer = make_napari_viewer()
    image, labels, widget = setup(viewer, stack)
    publish(viewer, tiny_model)
    # nothing painted yet: the suggestion stays in view (not "paint a slice first")
    click_and_wait(qtbot, widget, widget.suggest)
    assert "Suggested slice z = " in widget.status.value, widget.status.value
    go_to(viewer, image, 3)
    click_and_wait(qtbot, widget, widget.copy_prediction)
    assert "Copied the prediction of the model just trained to slice z = 3" in widget.status.value
    assert labels.data[3].any() and not np.delete(labels.data, 3, axis=0).any()
    assert labels.data.dtype == np.uint32
    # a copied slice is a painted slice to training: the panel is ready to train
    assert widget.start.enabled
    labels.undo()  # one step of napari's history takes the whole copy back
    assert not labels.data.any()


def test_copy_keeps_painted_slices_and_ids(make_napari_viewer, qtbot, stack, tiny_model):
    viewer = make_napari_viewer()
    image, labels, widget = setup(viewer, stack, painted=[1])
    publish(viewer, tiny_model)
    before = labels.data.copy()
    go_to(viewer, image, 1)
    widget.copy_prediction.native.click()
    assert not widget.running and "z = 1 is already painted; erase it first" in widget.status.value
    go_to(viewer, image, 2)
    click_and_wait(qtbot, widget, widget.copy_prediction)
    assert "slice z = 2" in widget.status.value, widget.status.value
    np.testing.assert_array_equal(np.delete(labels.data, 2, axis=0), np.delete(before, 2, axis=0))
    new = np.unique(labels.data[2])
    assert new.size > 1 and new[new > 0].min() > before.max()
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_copy_never_widens_the_layer_dtype(make_napari_viewer, qtbot, stack, tiny_model):
    viewer = make_napari_viewer()
    image, labels, widget = setup(viewer, stack)
    labels.data = np.zeros(SHAPE, np.uint8)
    labels.data[0, :2, :2] = 255  # the next free id does not fit a uint8
    publish(viewer, tiny_model)
    go_to(viewer, image, 3)
    click_and_wait(qtbot, widget, widget.copy_prediction)
    assert "Convert 'em annotation' to uint16" in widget.status.value, widget.status.value
    assert labels.data.dtype == np.uint8 and not labels.data[3].any()


def test_suggest_moves_to_an_unpainted_slice(make_napari_viewer, qtbot, stack, tiny_model):
    from napari_unet._widgets._layers import current_slice

    viewer = make_napari_viewer()
    image, labels, widget = setup(viewer, stack, painted=[1, 4])
    publish(viewer, tiny_model)
    go_to(viewer, image, 1)
    click_and_wait(qtbot, widget, widget.suggest)
    z = current_slice(viewer, image)
    assert z not in (1, 4)
    assert f"Suggested slice z = {z} (uncertainty " in widget.status.value
    assert "; next: " in widget.status.value


def test_no_model_and_no_annotation_say_what_to_do(make_napari_viewer, stack):
    viewer = make_napari_viewer()
    _image, labels, widget = setup(viewer, stack)
    widget.copy_prediction.native.click()
    assert not widget.running
    assert "Train first (or choose a model to start from) to copy" in widget.status.value
    widget.suggest.native.click()
    assert "Train first" in widget.status.value and not widget.running
    viewer.layers.remove(labels)
    widget.copy_prediction.native.click()
    assert not widget.running and "Choose an annotation" in widget.status.value


def test_segment_adds_an_uncertainty_layer(make_napari_viewer, qtbot, stack, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(stack.image, name="em", scale=SCALE, translate=TRANSLATE)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    publish(viewer, tiny_model)
    assert widget.uncertainty.value is False  # off by default
    widget.uncertainty.value = True
    widget.device.value = "cpu"
    widget.tile_size.value = 64
    assert widget.revalidate() is None, widget.status.value
    widget.start.native.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    layer = viewer.layers["em uncertainty"]
    assert tuple(layer.scale) == SCALE and tuple(layer.translate) == TRANSLATE
    assert layer.data.shape == SHAPE and 0.0 <= layer.data.min() <= layer.data.max() <= 1.0
    assert tuple(layer.contrast_limits) == (0.0, 1.0)
    assert "Most uncertain: z = " in widget.status.value


def test_copied_ids_move_above_ids_painted_during_the_copy():
    from napari_unet._widgets._correct_apply import _above_current_ids

    layer = np.zeros((3, 4, 4), np.uint16)
    layer[0, 0, 0] = 5
    new = np.array([[0, 6], [7, 7]], np.uint16)  # chosen when the max id was 5
    assert _above_current_ids(new, layer) is new
    layer[1, 1, 1] = 6  # painted while the copy was predicted
    moved = _above_current_ids(new, layer)
    np.testing.assert_array_equal(moved, [[0, 7], [8, 8]])
    np.testing.assert_array_equal(new, [[0, 6], [7, 7]])  # the input is not changed
