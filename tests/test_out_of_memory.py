"""Training that runs out of device memory goes on with smaller passes and says so."""

from __future__ import annotations

import numpy as np
import torch

from napari_unet.model.config import preset
from napari_unet.synthetic import partial_annotation, synthetic_em_stack
from napari_unet.training.trainer import Trainer, TrainingConfig


def test_training_splits_the_batch_when_out_of_memory():
    stack = synthetic_em_stack((3, 80, 80), seed=4)
    labels = partial_annotation(stack.instances, [0, 2])
    config = TrainingConfig(iterations=4, batch_size=4, patch_size=24, device="cpu", val_every=2)
    trainer = Trainer(stack.image, labels, config, model=preset("tiny"))
    forward = trainer.model.forward
    sizes: list[int] = []

    def small_device(x: torch.Tensor) -> torch.Tensor:
        if trainer.model.training and x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        sizes.append(int(x.shape[0]))
        return forward(x)

    trainer.model.forward = small_device  # type: ignore[method-assign]
    events = list(trainer)
    assert events[-1].done and trainer.result is not None
    assert trainer.micro_batch == 1
    notices = [e.notice for e in events if e.notice]
    # 4 -> 2 -> 1 within the first step: one notice, with the size that fits
    assert len(notices) == 1 and "1 patch(es) per pass" in notices[0]
    assert events[0].notice == notices[0]
    assert trainer.notices == notices
    assert np.isfinite([e.loss for e in events if not e.done]).all()


def test_batch_goes_on_after_a_file_ran_out_of_memory(tmp_path):
    from batch_helpers import tiny_model, write_stack

    from napari_unet.prediction.batch import BatchOptions, batch_segment

    trained = tiny_model()
    forward = trained.model.forward
    state = {"fail": True}

    def flaky(x: torch.Tensor) -> torch.Tensor:
        if state["fail"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return forward(x)

    trained.model.forward = flaky  # type: ignore[method-assign]
    for name in ("a.tif", "b.tif", "c.tif"):
        write_stack(tmp_path / name, (2, 40, 48))

    def on_event(event) -> None:
        if event.result is not None:  # the device "recovers" after the first file
            state["fail"] = False

    results = batch_segment(trained, tmp_path, tmp_path / "out", BatchOptions(), callback=on_event)
    assert [r.status for r in results] == ["failed", "done", "done"]
    assert "out of cpu memory" in results[0].reason
