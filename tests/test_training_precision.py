"""Training precision: bf16 autocast on CPUs with native bf16, float32 elsewhere and with amp=False."""

from __future__ import annotations

import math

import pytest
import torch

from napari_unet import Trainer, TrainingConfig, devices
from napari_unet.model.config import preset

CPU = torch.device("cpu")


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has (True) or lacks (False) native bf16."""

    def set_(value: bool) -> None:
        monkeypatch.setattr(devices, "cpu_native_bf16", lambda: value)

    return set_


def test_training_dtype_follows_the_cpu_and_amp(native) -> None:
    native(True)
    assert devices.training_dtype(CPU) == torch.bfloat16
    assert devices.training_dtype(CPU, enabled=False) is None
    native(False)
    assert devices.training_dtype(CPU) is None
    # no fp16 loss scaler on the CPU: bf16 needs none
    assert devices.grad_scaler(CPU, torch.bfloat16) is None


def _first_conv_dtypes(em_stack, em_labels, amp: bool) -> tuple[set[torch.dtype], list[float]]:
    """Dtypes the first convolution produced in a 3-iteration run, and the losses."""
    trainer = Trainer(em_stack.image, em_labels,
                      TrainingConfig(iterations=3, patch_size=24, batch_size=2, val_every=3, amp=amp,
                                     device="cpu"),
                      model=preset("tiny"))
    first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    seen: set[torch.dtype] = set()
    handle = first_conv.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    try:
        losses = [e.loss for e in trainer if not e.done]
    finally:
        handle.remove()
    return seen, losses


def test_cpu_training_runs_in_bf16_where_native_and_float32_on_request(native, em_stack, em_labels) -> None:
    native(True)
    seen, losses = _first_conv_dtypes(em_stack, em_labels, amp=True)
    assert torch.bfloat16 in seen  # the steps (validation also predicts in bf16 here)
    assert losses and all(math.isfinite(v) for v in losses)
    seen, losses = _first_conv_dtypes(em_stack, em_labels, amp=False)
    assert seen == {torch.float32}
    assert losses and all(math.isfinite(v) for v in losses)
    native(False)
    seen, _ = _first_conv_dtypes(em_stack, em_labels, amp=True)
    assert seen == {torch.float32}


def test_bf16_training_keeps_float32_weights(native, em_stack, em_labels) -> None:
    """Autocast computes in bf16 but the optimiser updates float32 master weights."""
    native(True)
    trainer = Trainer(em_stack.image, em_labels,
                      TrainingConfig(iterations=2, patch_size=24, batch_size=2, val_every=2, device="cpu"),
                      model=preset("tiny"))
    list(trainer)
    assert all(p.dtype == torch.float32 for p in trainer.result.model.parameters())
