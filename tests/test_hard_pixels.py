"""Hard-example patches (``hard_fraction``): where they go, when they start, and that runs stay reproducible."""

import numpy as np
import pytest
import torch

from napari_unet import Trainer, TrainingConfig
from napari_unet.model.config import preset
from napari_unet.model.unet import UNet
from napari_unet.training.annotations import IGNORE
from napari_unet.training.hard_pixels import hard_pixels
from napari_unet.training.sampling import PatchSampler


def _sampler(hard_fraction: float, seed: int = 0) -> PatchSampler:
    rng = np.random.default_rng(1)
    image = rng.random((64, 80), np.float32)
    target = (rng.random((64, 80)) > 0.7).astype(np.int64)
    return PatchSampler([image], [target], [np.ones((64, 80), np.float32)], input_size=20, output_size=8,
                        hard_fraction=hard_fraction, augment=None, seed=seed)


def test_hard_centres_lie_on_the_hard_pixels():
    sampler = _sampler(1.0)
    pixel = 30 * 80 + 50  # y 30, x 50
    sampler.set_hard([np.array([pixel])], from_batch=0)
    sampler.sample(1)  # applies it
    jitter = sampler.output_size // 4
    for _ in range(50):
        cy, cx = sampler._hard_centre(0)
        assert abs(cy - 30) <= jitter and abs(cx - 50) <= jitter


def test_hard_pixels_start_at_the_named_batch_and_not_before():
    plain, hard = _sampler(0.5), _sampler(0.5)
    hard.set_hard([np.array([0, 1, 2])], from_batch=2)
    for _ in range(2):  # batches 0 and 1: exactly the sampler without hard pixels
        for a, b in zip(plain.sample(3), hard.sample(3)):
            np.testing.assert_array_equal(a, b)
    assert hard.hard.current is None
    hard.sample(3)
    assert hard.hard.current is not None and hard.hard.current[0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="already drawn"):
        hard.set_hard([np.array([5])], from_batch=1)
    with pytest.raises(ValueError, match="1 slices"):
        hard.set_hard([np.array([5]), np.array([6])], from_batch=9)


def test_without_hard_fraction_the_sampler_draws_as_before():
    a, b = _sampler(0.0), _sampler(0.0)
    b.set_hard([np.arange(100)], from_batch=0)  # ignored at fraction 0: same random stream
    for x, y in zip(a.sample(4), b.sample(4)):
        np.testing.assert_array_equal(x, y)


def test_hard_pixels_are_painted_pixels_below_the_margin():
    torch.manual_seed(0)
    model = UNet(preset("tiny"))
    rng = np.random.default_rng(0)
    image = rng.random((40, 40), np.float32)
    target = np.full((40, 40), IGNORE, np.int64)
    target[5:20, 5:30] = 0
    target[25:35, 10:20] = 1
    painted = set(np.flatnonzero(target != IGNORE).tolist())

    def run(below: float) -> np.ndarray:
        return hard_pixels(model, [(0, target)], lambda z: image, batch_size=2, device=torch.device("cpu"),
                           amp=False, below=below)[0]

    assert run(1.01).size == len(painted)  # every painted pixel is below certainty
    assert run(0.0).size == 0
    some = run(0.5)  # exactly those the model gets wrong
    assert set(some.tolist()) <= painted
    assert model.training  # handed back in train mode


def test_a_run_with_hard_patches_is_reproducible_and_refreshes(em_stack, em_labels, monkeypatch):
    cfg = TrainingConfig(iterations=12, patch_size=24, batch_size=2, val_every=3, seed=5, hard_fraction=0.5)
    calls = []
    original = PatchSampler.set_hard

    def spy(self, pixels, from_batch):
        calls.append(from_batch)
        return original(self, pixels, from_batch)

    monkeypatch.setattr(PatchSampler, "set_hard", spy)
    a = [e.loss for e in Trainer(em_stack.image, em_labels, cfg, model=preset("tiny"))]
    n_first = len(calls)
    b = [e.loss for e in Trainer(em_stack.image, em_labels, cfg, model=preset("tiny"))]
    assert a == pytest.approx(b, rel=1e-5)
    # refreshed after the validations past 5, 25, 50 and 75 % of the run (3 passes the first
    # two; not after the last), each from a batch the feed has not started (3 queued + 1)
    assert calls[:n_first] == [3 + 4, 6 + 4, 9 + 4]
    assert calls[n_first:] == calls[:n_first]


def test_refreshes_take_the_slices_in_turn_within_a_pixel_budget(em_stack, em_labels, monkeypatch):
    import napari_unet.training.hard_pixels as hard_module

    monkeypatch.setattr(hard_module, "HARD_PIXELS_PER_REFRESH", 1)  # one slice per refresh
    trainer = Trainer(em_stack.image, em_labels, TrainingConfig(iterations=4, patch_size=24, batch_size=2,
                                                                 hard_fraction=0.5), model=preset("tiny"))
    sampler = trainer._sampler()
    assert len(sampler.slices) == 2

    def refresh(sampler, turn):
        return hard_module.refreshed_pools(trainer.model, sampler, turn, trainer._normalised, batch_size=2,
                                           device=trainer.device, amp=False)

    turn, pools = refresh(sampler, 0)
    assert turn == 1 and pools[1].size == 0  # slice 1 not predicted yet
    sampler.set_hard([pools[0], np.array([7])], from_batch=0)
    turn, pools = refresh(sampler, turn)
    assert turn == 0 and pools[1] is not None and pools[0].tolist() == sampler.hard_pools()[0].tolist()
    painted = np.flatnonzero(sampler.unpadded_target(1) != IGNORE)
    assert set(pools[1].tolist()) <= set(painted.tolist())


def test_hard_fraction_is_checked():
    with pytest.raises(ValueError, match="hard_fraction"):
        TrainingConfig(hard_fraction=1.5)
    with pytest.raises(ValueError, match="hard_fraction"):
        TrainingConfig(hard_fraction="0.3")
    assert TrainingConfig.from_dict({"hard_fraction": 0.25}).hard_fraction == 0.25
