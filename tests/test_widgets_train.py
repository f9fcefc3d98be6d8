"""Train widget, opened through the manifest and driven as a user would (pytest-qt, Xvfb).

Every training here uses the tiny model, 64-pixel patches and ~20 iterations,
so each run takes seconds on two CPU cores.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from napari_unet.synthetic import partial_annotation, synthetic_em_stack

PLUGIN = "napari-unet"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def open_train(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    return widget


def fast_settings(widget, iterations: int = 20, preview_every: int = 10) -> None:
    """A user's choices for a quick run: tiny model, small patches, few iterations."""
    widget.start_from.value = "scratch"
    widget.model_size.value = "tiny"
    widget.iterations.value = iterations
    widget.show_advanced.value = True
    widget.patch_size.value = 64
    widget.batch_size.value = 2
    widget.preview_every.value = preview_every
    widget.device.value = "cpu"


def click(button) -> None:
    button.native.click()  # a real click: ignored while the button is disabled


def wait_done(qtbot, widget, timeout: int = 120_000) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def add_small_stack(
    viewer, shape=(4, 96, 96), slices=(1, 2), scale=(2.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0)
):
    stack = synthetic_em_stack(shape, seed=5)
    image = viewer.add_image(
        stack.image, name="em", scale=scale[-len(shape) :], translate=translate[-len(shape) :]
    )
    painted = (
        partial_annotation(stack.instances, list(slices))
        if len(shape) == 3
        else stack.instances.astype(np.uint32)
    )
    labels = viewer.add_labels(
        painted,
        name="em annotation",
        scale=scale[-len(shape) :],
        translate=translate[-len(shape) :],
    )
    return image, labels


def test_train_on_sample_then_segment(make_napari_viewer, qtbot, tmp_path):
    """The whole loop on the sample data: train with live plot and preview, segment, save."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_em")
    image, annotation = viewer.layers["synthetic EM"], viewer.layers["synthetic EM annotation"]
    painted_before = annotation.data.copy()
    widget = open_train(viewer)
    assert widget.image.value is image and widget.annotation.value is annotation
    assert widget.summary.value.startswith("2 annotated slices: z = 4, 11")
    fast_settings(widget)
    viewer.dims.current_step = (5, 0, 0)  # the user looks at slice 5
    assert widget.revalidate() is None and widget.start.enabled

    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()) if widget.running else None)
    timer.start(20)
    click(widget.start)
    assert widget.running and widget.start.text == "Cancel"
    wait_done(qtbot, widget)
    timer.stop()

    # the Qt event loop kept running while the worker trained
    assert len(ticks) >= 5
    assert np.diff(ticks).max() < 3.0
    assert widget.status_level == "ok", widget.status.value
    assert widget.status.value.startswith("Done")
    # live plot: one point per iteration, validation Dice at the validations
    assert widget.plot.n_points == 20
    assert len(widget.plot.val_metrics) >= 1
    assert widget.plot.image_rgba().std() > 0
    # live preview of the slice in view: a one-slice Labels layer placed at z = 5
    preview = viewer.layers["synthetic EM preview"]
    assert preview.data.shape == (1, 256, 256) and preview.data.dtype == np.uint8
    assert tuple(preview.scale) == (40.0, 8.0, 8.0)
    assert preview.translate[0] == pytest.approx(5 * 40.0)
    assert set(np.unique(preview.data)) == {0, 1}
    # the user's painting is untouched
    np.testing.assert_array_equal(annotation.data, painted_before)
    assert widget.trained is not None and widget.save.enabled

    # the model goes to the Segment widget by itself
    _dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert segment.model.value == "trained"
    segment.image.value = image
    segment.scope.value = "slice"
    segment.device.value = "cpu"
    assert segment.revalidate() is None
    click(segment.start)
    wait_done(qtbot, segment)
    result = viewer.layers["synthetic EM segmentation"]
    assert result.data.shape == (16, 256, 256) and result.data.dtype == np.uint8
    assert tuple(result.scale) == (40.0, 8.0, 8.0)
    fg = result.data[5].mean()
    assert 0.2 < fg < 0.95  # cells found, membranes left out
    assert not result.data[0].any()  # only the current slice was segmented
    np.testing.assert_array_equal(annotation.data, painted_before)

    # save the model and load it back
    widget.save_path.value = tmp_path / "model.pt"
    click(widget.save)
    from napari_unet.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.config == widget.trained.config


def test_preview_follows_the_slice_in_view(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    add_small_stack(viewer, shape=(4, 96, 96), slices=(1, 2))
    widget = open_train(viewer)
    fast_settings(widget, iterations=2000, preview_every=2)
    viewer.dims.current_step = (0, 0, 0)
    click(widget.start)
    qtbot.waitUntil(lambda: "em preview" in viewer.layers, timeout=60_000)
    preview = viewer.layers["em preview"]
    assert preview.translate[0] == 0.0 and preview.data.shape == (1, 96, 96)
    # the user scrolls to slice 3: the next previews are predicted there (z scale 2.0)
    viewer.dims.current_step = (3, 0, 0)
    qtbot.waitUntil(lambda: preview.translate[0] == pytest.approx(3 * 2.0), timeout=60_000)
    assert preview.metadata["napari-unet"]["iteration"] > 2
    # the preview layer did not steal the selection from the user's layer
    assert viewer.layers.selection.active is not preview
    click(widget.start)  # cancel
    wait_done(qtbot, widget)
    assert preview.translate[0] == pytest.approx(3 * 2.0)


def test_cancel_keeps_the_best_model(make_napari_viewer, qtbot):
    from napari_unet._widgets._state import models_for

    viewer = make_napari_viewer()
    add_small_stack(viewer)
    widget = open_train(viewer)
    fast_settings(widget, iterations=5000, preview_every=0)
    click(widget.start)
    qtbot.waitUntil(lambda: widget.plot.n_points >= 3, timeout=60_000)
    click(widget.start)  # the button reads "Cancel" now
    assert widget.start.text == "Cancelling..."
    wait_done(qtbot, widget, timeout=60_000)
    assert widget.status.value.startswith("Cancelled at iteration"), widget.status.value
    assert widget.plot.n_points < 5000
    assert widget.trained is not None
    assert models_for(viewer).latest.model is widget.trained
    assert widget.start.text == "Start training" and widget.start.enabled


def test_invalid_layers_block_start_with_a_reason(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = open_train(viewer)
    assert not widget.start.enabled
    assert "Choose an image layer" in widget.status.value
    assert widget.status_level == "error"

    # RGB image
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    widget.image.value = viewer.layers["photo"]
    assert "RGB" in widget.revalidate()
    assert not widget.start.enabled
    del viewer.layers["photo"]

    # annotation of another shape
    stack = synthetic_em_stack((4, 64, 64), seed=1)
    image = viewer.add_image(stack.image, name="em")
    viewer.add_labels(np.zeros((4, 32, 32), np.uint32), name="other")
    widget.image.value = image
    widget.annotation.value = viewer.layers["other"]
    problem = widget.revalidate()
    assert "shape (4, 32, 32)" in problem and "(4, 64, 64)" in problem
    assert not widget.start.enabled

    # an empty annotation (a fresh layer from the button)
    labels = widget.create_annotation_layer()
    assert widget.annotation.value is labels
    assert "No annotated slice" in widget.revalidate()
    assert "no annotated slice" in widget.summary.value
    assert not widget.start.enabled

    # painting fixes it: the widget re-validates by itself once the stroke is done
    labels.paint((1, 20, 20), 5, refresh=False)
    qtbot.waitUntil(lambda: widget.start.enabled, timeout=5_000)
    assert widget.summary.value == "1 annotated slice: z = 1; 1 object"
    # ... and when the whole array is replaced
    data = labels.data.copy()
    data[2] = partial_annotation(stack.instances, [2])[2]
    labels.data = data
    qtbot.waitUntil(
        lambda: widget.summary.value.startswith("2 annotated slices: z = 1, 2"), timeout=5_000
    )
    assert widget.problem is None


def test_invalid_settings_block_start_with_a_reason(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    add_small_stack(viewer)
    widget = open_train(viewer)
    fast_settings(widget)
    assert widget.revalidate() is None

    widget.start_from.value = "checkpoint"
    assert "Choose a checkpoint file" in widget.revalidate()
    widget.checkpoint.value = tmp_path / "missing.pt"
    assert "does not exist" in widget.revalidate()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    widget.checkpoint.value = bad
    problem = widget.revalidate()
    assert "Cannot use this checkpoint" in problem and "bad.pt" in problem
    assert not widget.start.enabled
    assert widget.learning_rate.value == pytest.approx(3e-4)  # fine-tuning rate
    widget.start_from.value = "scratch"
    assert widget.revalidate() is None

    missing = next((d for d in ("cuda", "mps") if d not in _available()), None)
    if missing is None:
        pytest.skip("every device is available here")
    widget.device.value = missing
    assert f"device '{missing}' is not available" in widget.revalidate()
    assert not widget.start.enabled


def _available() -> list[str]:
    from napari_unet.devices import available_devices

    return available_devices()


def test_error_during_training_is_shown(make_napari_viewer, qtbot):
    """A slice painted entirely with one object has no background: the trainer refuses."""
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    image, labels = add_small_stack(viewer)
    full = np.zeros(labels.data.shape, np.uint32)
    full[1] = 7
    labels.data = full
    widget = open_train(viewer)
    fast_settings(widget)
    assert widget.revalidate() is None
    n_before = len(notification_manager.records)
    click(widget.start)
    wait_done(qtbot, widget)
    assert widget.status_level == "error"
    assert "two classes" in widget.status.value
    messages = [str(n.message) for n in notification_manager.records[n_before:]]
    assert any("two classes" in m for m in messages)
    assert widget.start.enabled and widget.start.text == "Start training"
    assert widget.trained is None


def test_new_annotation_layer_matches_the_image(make_napari_viewer):
    viewer = make_napari_viewer()
    image, _ = add_small_stack(viewer, scale=(3.0, 0.5, 0.5), translate=(7.0, 2.0, 1.0))
    widget = open_train(viewer)
    widget.image.value = image
    click(widget.new_annotation)
    layer = viewer.layers["em annotation [1]"]
    assert layer.data.shape == image.data.shape
    assert tuple(layer.scale) == (3.0, 0.5, 0.5)
    assert tuple(layer.translate) == (7.0, 2.0, 1.0)
    assert widget.annotation.value is layer
    assert layer.mode == "paint"


def test_cpu_only_torch_warning_is_visible(make_napari_viewer, monkeypatch):
    from napari_unet import devices

    monkeypatch.setattr(
        devices, "cpu_only_torch_warning", lambda: "An NVIDIA GPU is present but ..."
    )
    viewer = make_napari_viewer()
    widget = open_train(viewer)
    assert not widget.device_warning.native.isHidden()  # shown (the viewer window itself is not)
    assert "NVIDIA GPU is present" in widget.device_warning.value
    # the device list says what was detected
    combo = widget.device.native
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert texts[0] == f"auto: {_available()[0]}"
    assert any("not available" in t for t in texts) or len(_available()) == 3


def test_train_on_a_2d_image(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, labels = add_small_stack(viewer, shape=(96, 96), scale=(1.0, 0.5, 0.5))
    widget = open_train(viewer)
    assert widget.summary.value.endswith("objects")
    fast_settings(widget, iterations=10, preview_every=5)
    click(widget.start)
    wait_done(qtbot, widget)
    assert widget.status_level == "ok", widget.status.value
    preview = viewer.layers["em preview"]
    assert preview.data.shape == (96, 96)
    assert tuple(preview.scale) == (0.5, 0.5)


def test_touched_slices_from_paint_events():
    from napari_unet._widgets._layers import touched_slices

    shape = (10, 32, 32)
    atoms = [((np.array([2, 2, 3]), np.array([1, 2, 3]), np.array([4, 5, 6])), None, 1)]
    assert touched_slices(atoms, shape) == {2, 3}
    assert touched_slices([((slice(4, 6), slice(0, 8), slice(0, 8)), None, None)], shape) == {4, 5}
    assert touched_slices([((7, slice(None), slice(None)), None, None)], shape) == {7}
    assert touched_slices("something else", shape) is None
    assert touched_slices(atoms, (32, 32)) == {0}


def test_closing_the_window_stops_training(make_napari_viewer, qtbot):
    """A run must not outlive its window (nor keep its GPU memory)."""
    viewer = make_napari_viewer()
    add_small_stack(viewer)
    widget = open_train(viewer)
    fast_settings(widget, iterations=5000, preview_every=0)
    click(widget.start)
    worker = widget._worker  # noqa: SLF001 - the job under test
    stopped: list[bool] = []
    worker.finished.connect(lambda: stopped.append(True))
    qtbot.waitUntil(lambda: widget.plot.n_points >= 2, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: bool(stopped), timeout=60_000)
    assert worker.abort_requested


def test_the_shipped_model_is_the_default_starting_point(make_napari_viewer):
    viewer = make_napari_viewer()
    add_small_stack(viewer)
    widget = open_train(viewer)
    assert widget.start_from.value == "builtin"
    assert widget.learning_rate.value == pytest.approx(3e-4)  # fine-tuning rate from the start
    from napari_unet._widgets.train_widget import _start_from_choices

    assert _start_from_choices()[0] == ("built-in default (pretrained EM model)", "builtin")
    widget.start_from.value = "scratch"
    assert widget.learning_rate.value == pytest.approx(1e-3)


def test_class_balancing_is_an_advanced_choice_that_reaches_training(make_napari_viewer):
    viewer = make_napari_viewer()
    add_small_stack(viewer)
    widget = open_train(viewer)
    assert widget.class_balance.native.isHidden()  # a detail most users never need
    assert widget.build_request().config.annotation.balance == "auto"
    widget.show_advanced.value = True
    assert not widget.class_balance.native.isHidden()
    widget.class_balance.value = True
    assert widget.build_request().config.annotation.balance is True


def test_input_slices_is_an_advanced_choice_that_reaches_training(make_napari_viewer):
    viewer = make_napari_viewer()
    add_small_stack(viewer)
    widget = open_train(viewer)
    assert widget.input_slices.native.isHidden()
    assert widget.build_request().config.input_slices is None  # as the starting model
    widget.show_advanced.value = True
    assert not widget.input_slices.native.isHidden()
    widget.input_slices.value = 3
    assert widget.build_request().config.input_slices == 3


def test_time_limit_is_a_default_that_reaches_training_and_the_ready_line(make_napari_viewer):
    viewer = make_napari_viewer()
    add_small_stack(viewer)
    widget = open_train(viewer)
    # the default: what 5 minutes of a 2-core CPU give, at most 1000 iterations
    assert widget.minutes.value == 5.0 and widget.iterations.value == 1000
    assert widget.build_request().config.time_limit_s == pytest.approx(300.0)
    assert "1000 iterations or 5 min, whichever comes first" in widget.status.value
    widget.minutes.value = 0.5
    assert widget.build_request().config.time_limit_s == pytest.approx(30.0)
    assert "or 0.5 min" in widget.status.value
    widget.minutes.value = 0  # no time limit: iterations alone
    assert widget.build_request().config.time_limit_s is None
    assert "1000 iterations. Press Start" in widget.status.value


def test_save_model_never_loses_the_model(make_napari_viewer, tmp_path, monkeypatch):
    """A bad path or a full disk: a clear message, the model kept (in memory or a rescue file)."""
    from pathlib import Path

    import torch
    from batch_helpers import tiny_model

    from napari_unet.model.checkpoint import load_checkpoint

    viewer = make_napari_viewer()
    widget = open_train(viewer)
    model = tiny_model()
    widget._keep_model(model, "a test model")
    assert widget.save.enabled

    # a file where a folder should be: said before writing anything
    (tmp_path / "notadir").write_text("x")
    widget.save_path.value = tmp_path / "notadir" / "model.pt"
    click(widget.save)
    assert widget.status_level == "error" and "is a file, not a folder" in widget.status.value
    assert "kept in memory" in widget.status.value
    assert widget.trained is model and widget.save.enabled

    # the disk fills up during the write: the model goes to a rescue file, no temporary is left
    full, here = tmp_path / "full", tmp_path / "here"
    full.mkdir()
    here.mkdir()
    monkeypatch.chdir(here)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if Path(f).parent == full:
            Path(f).write_bytes(b"PK\x03\x04" + bytes(2048))
            raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 25856 vs 25752")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    widget.save_path.value = full / "model.pt"
    written = widget.save_model()
    assert written is not None and written.parent == here and written.name.startswith("napari-unet-rescued-")
    assert widget.status_level == "warn" and str(written) in widget.status.value
    assert "disk may be full" in widget.status.value
    assert load_checkpoint(written).config == model.config
    assert list(full.iterdir()) == []
    assert widget.trained is model

    # a good path still works afterwards
    widget.save_path.value = tmp_path / "ok.pt"
    assert widget.save_model() == tmp_path / "ok.pt"
    assert widget.status_level == "ok"


def test_export_writes_a_bioimageio_package_in_the_background(make_napari_viewer, qtbot, tmp_path):
    """Export for Fiji: a .zip beside 'save model as', made in a worker, read back by napari-unet."""
    pytest.importorskip("bioimageio.spec")
    from batch_helpers import tiny_model

    from napari_unet.model.checkpoint import load_checkpoint

    viewer = make_napari_viewer()
    widget = open_train(viewer)
    assert not widget.export.enabled  # nothing trained yet
    model = tiny_model()
    widget._keep_model(model, "a test model")
    assert widget.export.enabled
    click(widget.export)
    assert widget.status_level == "error" and "save model as" in widget.status.value
    widget.save_path.value = tmp_path / "mito.pt"
    click(widget.export)
    assert not widget.export.enabled and "Exporting" in widget.status.value
    qtbot.waitUntil(lambda: widget.export.enabled, timeout=120_000)
    assert widget.status_level == "ok", widget.status.value
    package = tmp_path / "mito.zip"
    assert package.is_file() and str(package) in widget.status.value
    assert load_checkpoint(package).config == model.config
    click(widget.export)  # the derived name exists now: never replaced
    assert widget.status_level == "error" and "exists" in widget.status.value
