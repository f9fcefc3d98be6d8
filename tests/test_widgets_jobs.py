"""The widgets' worker jobs, run without Qt: what they yield, return and keep."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from napari_unet._widgets._jobs import (
    JobFailed,
    PreviewUpdate,
    SegmentOutcome,
    SegmentRequest,
    TrainOutcome,
    TrainRequest,
    TrainStarted,
    segment_job,
    train_job,
)
from napari_unet.prediction.settings import PredictionSettings
from napari_unet.synthetic import partial_annotation, synthetic_em_stack

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    stack = synthetic_em_stack((4, 96, 96), seed=11)
    return stack.image, partial_annotation(stack.instances, [1, 2])


def request_for(image, labels, device: str = "cpu", **overrides) -> TrainRequest:
    from napari_unet.model.config import preset
    from napari_unet.training.trainer import TrainingConfig

    config = TrainingConfig(iterations=20, patch_size=64, batch_size=2, device=device, **overrides)
    return TrainRequest(
        image, labels, config, model=preset("tiny"), preview_every=10, preview_z=lambda: 3
    )


def drain(gen):
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value


def test_train_job_yields_events_and_previews(data):
    from napari_unet.training.trainer import TrainEvent

    items, outcome = drain(train_job(request_for(*data), threading.Event()))
    assert isinstance(items[0], TrainStarted)
    events = [i for i in items if isinstance(i, TrainEvent)]
    assert [e.iteration for e in events if not e.done] == list(range(1, 21))
    previews = [i for i in items if isinstance(i, PreviewUpdate)]
    # from scratch: once early (a fifth of the way to the first), then every 10 and at the end
    assert [p.iteration for p in previews] == [2, 10, 20, 20] and previews[-1].final
    assert all(p.z == 3 and p.labels.shape == (96, 96) for p in previews)
    assert isinstance(outcome, TrainOutcome) and not outcome.cancelled
    assert next(outcome.model.model.parameters()).device.type == "cpu"


def test_train_job_reports_bad_input_without_raising(data):
    image, labels = data
    _items, outcome = drain(train_job(request_for(image, labels[:, :50]), threading.Event()))
    assert isinstance(outcome, JobFailed)
    assert "does not match the image shape" in outcome.message


def test_an_error_mid_training_keeps_the_best_model(data, monkeypatch):
    from napari_unet.training.trainer import Trainer

    original = Trainer.__iter__

    def dies_at_15(self):
        for event in original(self):
            yield event
            if event.iteration == 15:
                raise FloatingPointError("training diverged at iteration 15 (loss nan)")

    monkeypatch.setattr(Trainer, "__iter__", dies_at_15)
    _items, outcome = drain(train_job(request_for(*data), threading.Event()))
    assert isinstance(outcome, JobFailed)
    assert "diverged" in outcome.message and outcome.iteration == 15
    assert outcome.model is not None  # validated at iteration 10, kept
    assert outcome.model.training["iteration"] == 10
    assert outcome.model.predict(data[0][1]).semantic.shape == (96, 96)


def test_segment_job_cancels_cleanly(data):
    from napari_unet.model.checkpoint import TrainedModel
    from napari_unet.model.config import preset
    from napari_unet.model.unet import UNet

    model = TrainedModel(UNet(preset("tiny")).eval())
    request = SegmentRequest(
        model, data[0], None,
        PredictionSettings(tile_size=None, batch_size=2, tta=False, device="cpu", instances=True,
                           min_size=3, probabilities=True),
    )
    cancel = threading.Event()
    gen = segment_job(request, cancel)
    first = next(gen)
    assert (first.done, first.total) == (1, 4)
    cancel.set()
    _rest, outcome = drain(gen)
    assert isinstance(outcome, SegmentOutcome) and outcome.cancelled and outcome.prediction is None


@pytest.mark.cuda
def test_jobs_give_gpu_memory_back(data):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    before = torch.cuda.memory_allocated()
    _items, outcome = drain(train_job(request_for(*data, device="cuda"), threading.Event()))
    assert isinstance(outcome, TrainOutcome)
    request = SegmentRequest(
        outcome.model, data[0], None,
        PredictionSettings(tile_size=None, batch_size=4, tta=False, device="cuda", instances=False,
                           min_size=0, probabilities=True),
    )
    _items, seg = drain(segment_job(request, threading.Event()))
    assert isinstance(seg, SegmentOutcome) and seg.prediction.semantic.shape == data[0].shape
    import gc

    gc.collect()
    # loosely: torch keeps cuBLAS workspaces allocated on purpose (cleared here when it can)
    getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)()
    assert torch.cuda.memory_allocated() <= before + 4 * 2**20
    assert next(outcome.model.model.parameters()).device.type == "cpu"


def test_out_of_memory_messages_say_what_to_change():
    from napari_unet._widgets._jobs import describe_error

    text = describe_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert text.startswith("Out of memory") and "batch size" in text
    assert describe_error(ValueError("labels shape (3, 5) ...")) == "labels shape (3, 5) ..."


def test_fine_tuning_shows_the_starting_model_at_once(data):
    from napari_unet.model.checkpoint import TrainedModel
    from napari_unet.model.config import preset
    from napari_unet.model.unet import UNet
    from napari_unet.training.trainer import TrainingConfig

    image, labels = data
    start = TrainedModel(UNet(preset("tiny")).eval())
    config = TrainingConfig(iterations=4, batch_size=2, patch_size=24, device="cpu", val_every=2)
    request = TrainRequest(image, labels, config, init=start, preview_every=10, preview_z=lambda: 3)
    items, outcome = drain(train_job(request, threading.Event()))
    assert isinstance(items[0], TrainStarted)
    first = items[1]  # before any training event: the starting model's view of slice 3
    assert isinstance(first, PreviewUpdate) and first.iteration == 0 and first.z == 3
    assert isinstance(outcome, TrainOutcome)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_jobs_run_behind_the_viewer():
    """A job thread is nicer than napari's, and its generator's values and result pass through."""
    import threading

    from napari_unet._widgets._job_runner import _JOB_NICE, _behind_the_viewer

    def job(n):
        yield os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return n * 2

    seen = {}

    def run():
        gen = _behind_the_viewer(job, 21)
        seen["nice"] = next(gen)
        try:
            next(gen)
        except StopIteration as stop:
            seen["result"] = stop.value

    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"nice": max(_JOB_NICE, here), "result": 42}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here  # napari's thread


def test_priority_is_left_alone_off_linux(monkeypatch):
    """On macOS a thread id given to setpriority names a process: never call it there."""
    from napari_unet._widgets._job_runner import _behind_the_viewer

    def refuse(*args):
        raise AssertionError("setpriority called off Linux")

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(os, "setpriority", refuse, raising=False)

    def job():
        yield 1
        return 2

    gen = _behind_the_viewer(job)
    assert next(gen) == 1
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == 2
