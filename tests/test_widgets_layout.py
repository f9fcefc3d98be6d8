"""The three panels together, as a biologist sees them on a 1920x1080 laptop screen.

All three open through the plugin manifest (pytest-qt, Xvfb); nothing here trains
for more than a few tiny iterations.
"""

from __future__ import annotations

import math

import pytest

from napari_unet.synthetic import partial_annotation, synthetic_em_stack

PLUGIN = "napari-unet"
LONG = "a status message that goes on and on, as a long error would " * 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny model, a few iterations, with a made-up kept score to look for."""
    import torch

    from napari_unet.model.config import preset
    from napari_unet.training.trainer import train

    torch.set_num_threads(1)
    stack = synthetic_em_stack((3, 96, 96), seed=3)
    labels = partial_annotation(stack.instances, [1])
    model = train(
        stack.image, labels, iterations=4, patch_size=64, batch_size=2, device="cpu",
        model=preset("tiny"),
    )
    model.training["best_val_dice"] = 0.80312
    model.training["iteration"] = 60
    return model


def open_all(viewer, qtbot) -> dict:
    widgets = {}
    for name in ("Train", "Segment", "Batch"):
        _dock, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    qtbot.wait(50)  # the panels join as tabs once napari has docked them
    return widgets


def window_height(viewer) -> int:
    return viewer.window._qt_window.minimumSizeHint().height()


def test_three_panels_fit_a_laptop_screen(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer()
    widgets = open_all(viewer, qtbot)
    assert window_height(viewer) <= 1080
    # napari-unet's docks share one tab group: each panel gets the full height
    main = viewer.window._qt_window
    docks = [w.native.parent() for w in widgets.values()]
    assert all(isinstance(d, QDockWidget) for d in docks)
    assert set(main.tabifiedDockWidgets(docks[0])) >= set(docks[1:])
    # long messages scroll inside a panel; they never make the window taller
    for widget in widgets.values():
        widget.set_status(LONG, "error")
    qtbot.wait(50)
    assert window_height(viewer) <= 1080
    # the same call again returns the panel already open (not its scroll area)
    assert viewer.window.add_plugin_dock_widget(PLUGIN, "Train")[1] is widgets["Train"]


def test_segment_and_batch_name_options_alike(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widgets = open_all(viewer, qtbot)
    segment, batch = widgets["Segment"], widgets["Batch"]
    for name in ("tile_size", "batch_size", "min_size", "instance_method", "device", "model"):
        assert getattr(segment, name).label == getattr(batch, name).label, name
    assert segment.tta.text == batch.tta.text == "test-time augmentation (8x slower)"
    assert segment.min_size.label == "min object size (px)"
    assert segment.tile_size.label == "tile size (px)"
    # Batch's automatic tile size reads "auto", not 0
    edit = batch.tile_size.native.lineEdit()
    assert batch.tile_size.value == 0 and edit.text() == "auto"
    batch.tile_size.value = 128
    assert edit.text() == "128"
    batch.tile_size.value = 0
    assert edit.text() == "auto"


def test_ready_line_follows_size_and_iterations(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    stack = synthetic_em_stack((3, 96, 96), seed=4)
    viewer.add_image(stack.image, name="em")
    viewer.add_labels(partial_annotation(stack.instances, [1]), name="em annotation")
    _dock, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    train.start_from.value = "scratch"
    train.model_size.value = "tiny"
    assert "a new 'tiny' U-Net" in train.status.value
    train.iterations.value = 37
    assert "37 iterations" in train.status.value
    train.model_size.value = "small"
    assert "a new 'small' U-Net, 37 iterations" in train.status.value


def test_one_score_per_model_everywhere(make_napari_viewer, qtbot, tiny_model):
    from napari_unet._widgets._jobs import TrainOutcome
    from napari_unet._widgets.segment_widget import describe_model

    viewer = make_napari_viewer()
    widgets = open_all(viewer, qtbot)
    train, segment, batch = widgets["Train"], widgets["Segment"], widgets["Batch"]
    score = "validation Dice 0.803 (iteration 60)"
    # the run's best Dice (0.846) is not the kept weights' score: never shown
    train.on_returned(
        TrainOutcome(tiny_model, events=60, cancelled=False, best_metric=0.846,
                     iterations_run=60, elapsed_s=1.0)
    )
    assert score in train.status.value and "0.846" not in train.status.value
    assert segment.model.value == "trained" and batch.model.value == "trained"
    for widget in (segment, batch):
        text = widget.model.native.currentText()
        assert score in text and "0.85" not in text
    assert score in segment.model_info.value
    assert score in describe_model(tiny_model)


def test_plot_spans_what_ran_and_all_of_the_loss(qtbot):
    from napari_unet._widgets._plot import TrainingPlot

    plot = TrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 250)
    plot.reset(5000)
    # noisy raw losses dipping well below the smoothed trend
    losses = [0.9, 0.2, 0.85, 0.1, 0.8, 0.05, 0.7, 0.6, 0.02, 0.5, 0.4]
    for i, loss in enumerate(losses, start=1):
        plot.add_point(i, loss, 0.6 if i % 5 == 0 else None)
    plot.redraw()
    plot.image_rgba()  # draws: tick labels exist
    lo, hi = plot._ax.get_xlim()
    assert lo == 0 and 11 <= hi <= 15  # cancelled at 11 of 5000: spans 0..11, not 0..5000
    ylo, yhi = plot._ax.get_ylim()
    assert ylo <= min(losses) and yhi >= max(losses)
    assert all(ylo <= v <= yhi for v in plot.smoothed if math.isfinite(v))
    labels = [t.get_text() for t in plot._ax.get_xticklabels() if t.get_visible()]
    assert any(text.strip() for text in labels)
    # more points later in the run: the axis grows with them, labels stay
    for i in range(12, 41):
        plot.add_point(i, 0.3)
    plot.redraw()
    plot.image_rgba()
    assert 40 <= plot._ax.get_xlim()[1] <= 45
    assert any(t.get_text().strip() for t in plot._ax.get_xticklabels())


def test_live_plot_draws_off_the_event_loop(qtbot):
    """A full matplotlib draw takes 60-190 ms: the main thread only hands over a snapshot
    and pastes the finished picture, so an update costs it a few milliseconds."""
    import threading
    import time

    from napari_unet._widgets._plot import TrainingPlot

    plot = TrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 250)
    plot.show()
    qtbot.waitExposed(plot)
    plot.reset(500)
    plot._timer.stop()  # the test drives the updates
    threads: set[str] = set()
    render = plot._figure.render
    plot._figure.render = lambda *a: (threads.add(threading.current_thread().name), render(*a))[1]
    slowest = 0.0
    for i in range(1, 301):
        plot.add_point(i, 1.0 / i**0.5, 0.5 if i % 25 == 0 else None)
        plot._next_draw = 0.0  # no waiting between draws in the test
        started = time.perf_counter()
        plot._redraw_if_dirty()
        slowest = max(slowest, time.perf_counter() - started)
        qtbot.wait(1)
    qtbot.waitUntil(lambda: plot._pending is None, timeout=10_000)
    assert threads and threading.main_thread().name not in threads
    assert slowest < 0.03  # handing over, never drawing (a draw is 60-190 ms)
    assert plot.draws >= 1 and plot._picture.image is not None
    assert plot._picture.image.width() >= 300
    plot.redraw()  # the end of a run: exact fit
    qtbot.waitUntil(lambda: plot._pending is None, timeout=10_000)
    assert list(plot._figure.loss_line.get_xdata())[-1] == 300
    assert 300 <= plot._ax.get_xlim()[1] <= 315


def test_panels_load_a_checkpoint_once_between_them(make_napari_viewer, qtbot, monkeypatch):
    """Opening Train, Segment and Batch used to load and check the shipped model three
    times on the main thread; the panels now share what was loaded."""
    from napari_unet._widgets import _common
    from napari_unet.model import checkpoint
    from napari_unet.model.pretrained import default_checkpoint

    if default_checkpoint() is None:
        pytest.skip("no shipped model")
    calls = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(_common, "_LOADED", type(_common._LOADED)())  # a fresh session
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_em_stack((2, 64, 64), seed=0).image, name="em")
    widgets = open_all(viewer, qtbot)
    for name in ("Train", "Segment", "Batch"):
        widgets[name].revalidate()
    assert len(calls) == 1, calls
    seg = widgets["Segment"].selected_model()
    assert not isinstance(seg, str) and seg is widgets["Train"]._checkpoints.load(default_checkpoint())
