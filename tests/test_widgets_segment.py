"""Segment widget, opened through the manifest and driven as a user would (pytest-qt, Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.synthetic import partial_annotation, synthetic_em_stack

PLUGIN = "napari-unet"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny model trained for a few iterations on a small synthetic stack (seconds)."""
    import torch

    from napari_unet.model.config import preset
    from napari_unet.training.trainer import train

    torch.set_num_threads(1)
    stack = synthetic_em_stack((4, 96, 96), seed=2)
    labels = partial_annotation(stack.instances, [1, 2])
    return train(
        stack.image,
        labels,
        iterations=25,
        patch_size=64,
        batch_size=2,
        device="cpu",
        model=preset("tiny"),
    )


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    return tiny_model.save(tmp_path_factory.mktemp("models") / "tiny.pt")


def open_segment(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    return widget


def click(button) -> None:
    button.native.click()


def run(qtbot, widget, timeout: int = 120_000) -> None:
    assert widget.revalidate() is None, widget.status.value
    click(widget.start)
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def add_stack(viewer, shape=(4, 96, 96), scale=(2.0, 1.0, 1.0), translate=(5.0, 3.0, 1.0)):
    stack = synthetic_em_stack(shape, seed=9)
    nd = len(shape)
    return viewer.add_image(stack.image, name="em", scale=scale[-nd:], translate=translate[-nd:])


def test_segment_whole_stack_from_checkpoint(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    image = add_stack(viewer)
    painted = viewer.add_labels(np.zeros(image.data.shape, np.uint32), name="em annotation")
    painted.data[1, 10:20, 10:20] = 3
    before = painted.data.copy()
    widget = open_segment(viewer)
    # the shipped pretrained model is ready to use before anything was trained
    assert widget.model.value == "builtin" and widget.start.enabled, widget.status.value
    assert "Ready to segment" in widget.status.value
    widget.model.value = "checkpoint"
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    assert "classes: background, foreground" in widget.model_info.value
    assert widget.tile_size.value >= widget.tile_size.min > 0
    widget.image.value = image
    widget.output.value = "instances"
    widget.min_size.value = 5
    widget.probabilities.value = True
    run(qtbot, widget)
    assert widget.status_level == "ok", widget.status.value

    inst = viewer.layers["em instances"]
    assert inst.data.shape == (4, 96, 96) and inst.data.dtype == np.uint32
    assert tuple(inst.scale) == (2.0, 1.0, 1.0) and tuple(inst.translate) == (5.0, 3.0, 1.0)
    assert len(np.unique(inst.data[2])) > 5  # many cells
    prob = viewer.layers["em probability"]
    assert prob.data.shape == (4, 96, 96) and prob.data.dtype == np.float32
    assert 0.0 <= prob.data.min() and prob.data.max() <= 1.0 and prob.data.std() > 0.05
    assert tuple(prob.scale) == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(painted.data, before)  # never touched


def test_overwrite_only_when_asked_and_only_our_layers(make_napari_viewer, qtbot, tiny_model):
    from napari_unet._widgets._state import models_for

    viewer = make_napari_viewer()
    image = add_stack(viewer, shape=(3, 64, 64))
    widget = open_segment(viewer)
    models_for(viewer).publish(tiny_model, "test model")  # as the Train widget does
    assert widget.model.value == "trained"
    widget.image.value = image
    widget.device.value = "cpu"

    run(qtbot, widget)
    first = viewer.layers["em segmentation"]
    assert first.data.dtype == np.uint8 and first.data.shape == (3, 64, 64) and first.data.any()

    run(qtbot, widget)  # overwrite unchecked: a new layer
    assert "em segmentation [1]" in viewer.layers
    n_layers = len(viewer.layers)

    first.data = np.zeros_like(first.data)
    widget.overwrite.value = True
    run(qtbot, widget)  # replaces ours, in place
    assert len(viewer.layers) == n_layers
    assert viewer.layers["em segmentation"] is first and first.data.any()

    # a layer the user made under that name is never overwritten
    del viewer.layers["em segmentation"]
    mine = viewer.add_labels(np.zeros((3, 64, 64), np.uint8), name="em segmentation")
    run(qtbot, widget)
    assert not mine.data.any()
    assert viewer.layers[-1].name.startswith("em segmentation [")


def test_current_slice_and_2d_images(make_napari_viewer, qtbot, tiny_model):
    from napari_unet._widgets._state import models_for

    viewer = make_napari_viewer()
    models_for(viewer).publish(tiny_model, "test model")
    image = add_stack(viewer, shape=(5, 64, 64))
    widget = open_segment(viewer)
    widget.image.value = image
    widget.device.value = "cpu"
    widget.scope.value = "slice"
    viewer.dims.current_step = (3, 0, 0)
    run(qtbot, widget)
    seg = viewer.layers["em segmentation"].data
    assert seg.shape == (5, 64, 64)
    assert seg[3].any() and not np.delete(seg, 3, axis=0).any()

    flat = viewer.add_image(
        synthetic_em_stack((80, 72), seed=4).image, name="flat", scale=(0.5, 0.25)
    )
    widget.image.value = flat
    assert not widget.scope.enabled  # no slices to choose from
    run(qtbot, widget)
    seg2d = viewer.layers["flat segmentation"]
    assert seg2d.data.shape == (80, 72) and seg2d.data.any()
    assert tuple(seg2d.scale) == (0.5, 0.25)


def test_cancel_segmentation_adds_no_layer(make_napari_viewer, qtbot, tiny_model):
    from napari_unet._widgets._state import models_for

    viewer = make_napari_viewer()
    models_for(viewer).publish(tiny_model, "test model")
    image = add_stack(viewer, shape=(40, 96, 96))
    widget = open_segment(viewer)
    widget.image.value = image
    widget.device.value = "cpu"
    widget.batch_size.value = 1
    n_layers = len(viewer.layers)
    click(widget.start)
    assert widget.start.text == "Cancel"
    click(widget.start)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.status.value.startswith("Cancelled"), widget.status.value
    assert len(viewer.layers) == n_layers
    assert widget.start.text == "Segment" and widget.start.enabled


def test_invalid_inputs_block_segment_with_a_reason(make_napari_viewer, tmp_path, tiny_model):
    import dataclasses

    from napari_unet.devices import available_devices
    from napari_unet.model.checkpoint import TrainedModel
    from napari_unet.model.unet import UNet

    viewer = make_napari_viewer()
    widget = open_segment(viewer)
    assert "Choose an image layer" in widget.status.value
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    assert "RGB" in widget.revalidate() and not widget.start.enabled
    del viewer.layers["photo"]
    add_stack(viewer)

    widget.model.value = "checkpoint"
    assert "Choose a model" in widget.revalidate()
    widget.checkpoint.value = tmp_path / "nothing.pt"
    assert "does not exist" in widget.revalidate()
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    widget.checkpoint.value = tmp_path / "junk.pt"
    assert "Cannot use this checkpoint" in widget.revalidate()
    two_channels = TrainedModel(UNet(dataclasses.replace(tiny_model.config, in_channels=2)))
    widget.checkpoint.value = two_channels.save(tmp_path / "two.pt")
    assert "expects 2 input channels" in widget.revalidate()
    assert not widget.start.enabled

    widget.checkpoint.value = tiny_model.save(tmp_path / "good.pt")
    assert widget.revalidate() is None and widget.start.enabled
    missing = next((d for d in ("cuda", "mps") if d not in available_devices()), None)
    if missing is not None:
        widget.device.value = missing
        assert f"device '{missing}' is not available" in widget.revalidate()
        assert not widget.start.enabled


def test_multiscale_and_lazy_images_use_level_0(make_napari_viewer, qtbot, tiny_model):
    import dask.array as da

    from napari_unet._widgets._state import models_for

    viewer = make_napari_viewer()
    models_for(viewer).publish(tiny_model, "test model")
    full = synthetic_em_stack((3, 128, 128), seed=6).image
    pyramid = [da.from_array(full, chunks=(1, 128, 128)), full[:, ::2, ::2]]
    image = viewer.add_image(pyramid, multiscale=True, name="pyramid", scale=(4.0, 2.0, 2.0))
    widget = open_segment(viewer)
    widget.image.value = image
    widget.device.value = "cpu"
    run(qtbot, widget)
    seg = viewer.layers["pyramid segmentation"]
    assert seg.data.shape == (3, 128, 128)
    assert tuple(seg.scale) == (4.0, 2.0, 2.0)
    assert seg.data.any()


def test_instance_method_choice_reaches_the_job(make_napari_viewer):
    viewer = make_napari_viewer()
    add_stack(viewer)
    widget = open_segment(viewer)
    assert widget.instance_method.native.isHidden()  # only shown for instance output
    widget.output.value = "instances"
    assert not widget.instance_method.native.isHidden()
    widget.instance_method.value = "fill"
    assert widget.build_request().settings.instance_method == "fill"
    widget.output.value = "semantic"
    assert widget.build_request().settings.instance_method == "components"


def test_3d_smoothing_choice_reaches_the_job_for_whole_stacks(make_napari_viewer):
    viewer = make_napari_viewer()
    add_stack(viewer)
    widget = open_segment(viewer)
    assert widget.z_smoothing.value == "auto" and not widget.z_smoothing.native.isHidden()
    assert widget.build_request().settings.z_smoothing == "auto"
    widget.z_smoothing.value = 0.0
    assert widget.build_request().settings.z_smoothing == 0.0
    widget.z_smoothing.value = 2.0
    widget.scope.value = "slice"  # one slice has no neighbours to average
    assert widget.z_smoothing.native.isHidden()
    assert widget.build_request().settings.z_smoothing == 0.0  # hidden, so not applied
    viewer.layers.clear()
    add_stack(viewer, shape=(96, 96))
    assert widget.z_smoothing.native.isHidden()


def test_closing_the_panel_stops_its_job(make_napari_viewer, qtbot, tiny_model, monkeypatch):
    """napari's close button unparents the panel and deletes its dock; the job must end too."""
    import napari_unet._widgets._segment_job as segment_job_module
    from napari_unet._widgets._state import models_for

    seen = {}

    def endless_job(request, cancel_event):
        seen["cancel"] = cancel_event
        while not cancel_event.is_set():
            yield None
            cancel_event.wait(0.01)

    monkeypatch.setattr(segment_job_module, "segment_job", endless_job)
    viewer = make_napari_viewer()
    models_for(viewer).publish(tiny_model, "test model")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.image.value = add_stack(viewer, shape=(4, 64, 64))
    widget.device.value = "cpu"
    click(widget.start)
    qtbot.waitUntil(lambda: "cancel" in seen, timeout=10_000)
    dock.destroyOnClose()  # what the dock's close button does
    qtbot.waitUntil(lambda: seen["cancel"].is_set(), timeout=5_000)
