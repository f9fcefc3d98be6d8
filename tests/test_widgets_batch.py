"""Batch widget, opened through the manifest and driven as a user would (pytest-qt, Xvfb)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from batch_helpers import save_tiny_model, tiny_model, write_stack

PLUGIN = "napari-unet"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny U-Net saved as a checkpoint: random predictions are enough for I/O."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny.pt")


def open_batch(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch")
    return widget


def click(button) -> None:
    button.native.click()


def run(qtbot, widget, timeout: int = 120_000) -> None:
    assert widget.revalidate() is None, widget.status.value
    click(widget.start)
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def setup(widget, src: Path, out: Path, checkpoint: Path) -> None:
    widget.source.value = "folder"
    widget.input_folder.value = src
    widget.output_folder.value = out
    widget.model.value = "checkpoint"
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"


def statuses(widget) -> list[str]:
    return [widget.row_status(r) for r in range(widget.table.rowCount())]


def test_batch_done_failed_then_skipped_and_open(make_napari_viewer, qtbot, tmp_path, checkpoint):
    from napari.layers import Labels

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_stack(src / "a.tif", shape=(3, 48, 48), seed=1)
    write_stack(src / "b.tif", shape=(2, 40, 48), seed=2)
    (src / "c_bad.tif").write_bytes(b"not a tiff at all" * 20)

    viewer = make_napari_viewer()
    widget = open_batch(viewer)
    setup(widget, src, out, checkpoint)
    widget.instances.value = True
    assert "3 files" in widget.status.value and widget.start.enabled
    assert widget.build_request().options.z_smoothing == "auto"  # the panel's default
    widget.z_smoothing.value = 1.0
    assert widget.build_request().options.z_smoothing == 1.0
    run(qtbot, widget)

    assert statuses(widget) == ["done", "done", "failed"], statuses(widget)
    assert widget.row_details(2)  # the reason
    assert widget.status_level == "warn" and "2 done" in widget.status.value
    for stem in ("a", "b"):
        for suffix in ("_labels.tif", "_instances.tif", "_provenance.json"):
            assert (out / f"{stem}{suffix}").is_file()
    assert not list(out.glob("c_bad*"))
    assert widget.start.text == "Start batch" and widget.start.enabled

    # a second run resumes: everything that exists is skipped
    run(qtbot, widget)
    assert statuses(widget) == ["skipped", "skipped", "failed"], statuses(widget)
    assert "outputs exist" in widget.row_details(0)

    # open a finished output with one click
    assert not widget.open_selected.enabled
    widget.table.selectRow(2)  # failed: nothing to open
    assert not widget.open_selected.enabled
    widget.table.selectRow(0)
    assert widget.open_selected.enabled
    n_layers = len(viewer.layers)
    click(widget.open_selected)
    added = list(viewer.layers)[n_layers:]
    assert {layer.name for layer in added} == {"a_labels", "a_instances"}
    assert all(isinstance(layer, Labels) for layer in added)
    assert added[0].data.shape == (3, 48, 48)
    assert tuple(added[0].scale) == pytest.approx((40.0, 4.0, 4.0))


def test_batch_with_the_model_trained_in_the_viewer(make_napari_viewer, qtbot, tmp_path):
    from napari_unet._widgets._state import models_for

    src = tmp_path / "one.tif"
    write_stack(src, shape=(40, 40), seed=3)  # a 2D file, given as a file
    viewer = make_napari_viewer()
    widget = open_batch(viewer)
    models_for(viewer).publish(tiny_model(1), "test model")
    assert widget.model.value == "trained"
    widget.source.value = "files"
    widget.input_files.value = [src]
    widget.output_folder.value = tmp_path / "out"
    widget.probabilities.value = True
    widget.device.value = "cpu"
    run(qtbot, widget)
    assert statuses(widget) == ["done"], widget.status.value
    probs = tmp_path / "out" / "one_probabilities.tif"
    assert probs.is_file()
    layers = widget.open_outputs(0)
    assert [layer.name for layer in layers] == ["one_labels", "one_probabilities"]
    assert layers[1].data.shape == (40, 40)


def test_cancel_keeps_finished_files_and_leaves_no_partial_output(
    make_napari_viewer, qtbot, tmp_path, checkpoint
):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        write_stack(src / f"s{i}.tif", shape=(12, 96, 96), seed=i)
    viewer = make_napari_viewer()
    widget = open_batch(viewer)
    setup(widget, src, out, checkpoint)
    widget.batch_size.value = 1

    first = widget.on_yielded

    def cancel_on_first_progress(value):
        first(value)
        if widget.start.text == "Cancel":
            click(widget.start)

    widget.on_yielded = cancel_on_first_progress
    click(widget.start)
    assert widget.start.text in ("Cancel", "Cancelling...")
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)

    assert widget.status.value.startswith("Cancelled"), widget.status.value
    rows = statuses(widget)
    assert "cancelled" in rows and "failed" not in rows, rows
    for i, status in enumerate(rows):
        labels, prov = out / f"s{i}_labels.tif", out / f"s{i}_provenance.json"
        if status == "done":
            assert labels.is_file() and prov.is_file()
        else:
            assert not labels.exists() and not prov.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert widget.start.text == "Start batch" and widget.start.enabled


def test_invalid_inputs_block_start_with_a_reason(make_napari_viewer, tmp_path, checkpoint):
    from napari_unet.devices import available_devices

    viewer = make_napari_viewer()
    widget = open_batch(viewer)
    assert "Choose an input folder" in widget.status.value and not widget.start.enabled
    assert widget.status_level == "error"

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    widget.input_folder.value = empty
    assert "no .tif/.tiff files" in widget.revalidate() and not widget.start.enabled

    widget.source.value = "files"
    widget.input_files.value = [tmp_path / "missing.tif"]
    assert "not found" in widget.revalidate()

    src = tmp_path / "in"
    src.mkdir()
    write_stack(src / "a.tif", shape=(2, 32, 32))
    widget.source.value = "folder"
    widget.input_folder.value = src
    assert "output folder" in widget.revalidate()
    (tmp_path / "afile").write_text("x")
    widget.output_folder.value = tmp_path / "afile"
    assert "is a file" in widget.revalidate()
    widget.output_folder.value = tmp_path / "out"

    widget.model.value = "checkpoint"
    assert "Choose a model" in widget.revalidate()
    widget.checkpoint.value = tmp_path / "nope.pt"
    assert "does not exist" in widget.revalidate()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    widget.checkpoint.value = bad
    assert "Cannot use this checkpoint" in widget.revalidate()
    widget.checkpoint.value = checkpoint

    missing = next((d for d in ("cuda", "mps") if d not in available_devices()), None)
    if missing is not None:
        widget.device.value = missing
        assert widget.revalidate() is not None and not widget.start.enabled
    widget.device.value = "cpu"
    assert widget.revalidate() is None and widget.start.enabled
    assert "Ready to segment 1 file" in widget.status.value
    assert not (tmp_path / "out").exists()  # validation creates nothing
    np.testing.assert_equal(widget.table.rowCount(), 0)
