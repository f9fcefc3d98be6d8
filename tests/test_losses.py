"""Tests for the segmentation losses (weights, ignored pixels, Dice, registry)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_unet.training.losses import (
    LOSSES,
    dice_ce_loss,
    get_loss,
    soft_dice_loss,
    weighted_cross_entropy,
)


def _batch(n=2, c=3, h=8, w=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, c, (n, h, w), generator=g)
    return logits, target


def test_weighted_ce_matches_torch_cross_entropy():
    logits, target = _batch()
    ref = F.cross_entropy(logits, target)
    torch.testing.assert_close(weighted_cross_entropy(logits, target), ref)
    ones = torch.ones(target.shape)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, ones), ref)
    torch.testing.assert_close(get_loss("ce")(logits, target, ones * 7), ref)


def test_ignored_pixels_equal_dropping_them():
    logits, target = _batch(n=1, h=10, w=10)
    weight = torch.rand(target.shape) + 0.5
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[0, :4] = True
    t_ign = target.clone()
    t_ign[ignored] = -1
    # Garbage weights at ignored pixels must not matter.
    w_garbage = weight.clone()
    w_garbage[ignored] = float("inf")
    loss = weighted_cross_entropy(logits, t_ign, w_garbage)

    keep = ~ignored[0]
    lg = logits[0].permute(1, 2, 0)[keep]  # (P, C)
    per_px = F.cross_entropy(lg, target[0][keep], reduction="none")
    ref = (per_px * weight[0][keep]).mean()
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[0, :, :4] == 0)

    # Dice: ignoring pixels equals cropping them away.
    d_ign = soft_dice_loss(logits, t_ign)
    d_crop = soft_dice_loss(logits[:, :, 4:], target[:, 4:])
    torch.testing.assert_close(d_ign, d_crop)


def test_weight_scaling():
    logits, target = _batch()
    base = weighted_cross_entropy(logits, target)
    tripled = weighted_cross_entropy(logits, target, torch.full(target.shape, 3.0))
    torch.testing.assert_close(tripled, 3 * base)
    # Zero weight on one half = half the terms gone (still divided by all valid pixels).
    w = torch.ones(target.shape)
    w[:, :, :4] = 0
    full = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(weighted_cross_entropy(logits, target, w), (full * w).mean())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_ignored_returns_zero_with_graph(name):
    logits, target = _batch()
    target = torch.full_like(target, -1)
    loss = get_loss(name)(logits, target, torch.ones(target.shape))
    assert loss.ndim == 0
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_finite_and_autocast(name):
    logits, target = _batch(c=2)
    target[0, 0] = -1
    weight = torch.rand(target.shape) * 10
    fn = get_loss(name)
    loss = fn(logits, target, weight)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(logits.to(torch.bfloat16), target, weight)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, loss.detach(), atol=0.05, rtol=0.05)


def _perfect_logits(target, c, scale=30.0):
    return (F.one_hot(target.clamp(min=0), c).permute(0, 3, 1, 2).float() * 2 - 1) * scale


def test_dice_perfect_and_wrong():
    _, target = _batch(c=3)
    good = _perfect_logits(target, 3)
    assert soft_dice_loss(good, target).item() < 1e-4
    assert soft_dice_loss(good, target, include_background=True).item() < 1e-4
    wrong = _perfect_logits((target + 1) % 3, 3)
    assert soft_dice_loss(wrong, target).item() > 0.999
    assert soft_dice_loss(wrong, target, include_background=True).item() > 0.999


def test_dice_binary_uses_foreground_only():
    logits, target = _batch(c=2, seed=3)
    p1 = torch.softmax(logits, 1)[:, 1]
    g1 = (target == 1).float()
    expected = 1 - (2 * (p1 * g1).sum() + 1e-5) / (p1.sum() + g1.sum() + 1e-5)
    torch.testing.assert_close(soft_dice_loss(logits, target), expected)
    with pytest.raises(ValueError, match="2 classes"):
        soft_dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_dice_ce_is_sum():
    logits, target = _batch()
    weight = torch.rand(target.shape)
    torch.testing.assert_close(
        dice_ce_loss(logits, target, weight),
        weighted_cross_entropy(logits, target, weight) + soft_dice_loss(logits, target),
    )


def test_get_loss_registry_and_unknown_name():
    assert set(LOSSES) == {"weighted_ce", "ce", "dice", "dice_ce"}
    for name, fn in LOSSES.items():
        assert get_loss(name) is fn
    with pytest.raises(ValueError, match="valid names: ce, dice, dice_ce, weighted_ce"):
        get_loss("focal")


def test_shape_and_range_errors():
    logits, target = _batch()
    with pytest.raises(ValueError, match="target shape"):
        weighted_cross_entropy(logits, target[:, :-1])
    with pytest.raises(ValueError, match="weight shape"):
        weighted_cross_entropy(logits, target, torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="class id"):
        weighted_cross_entropy(logits, torch.full_like(target, 3))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        soft_dice_loss(logits[0], target[0])


def test_auto_loss_adds_dice_where_painted_objects_are_a_minority():
    import numpy as np

    from napari_unet.training.losses import objects_on_background
    from napari_unet.training.losses import resolved_loss as resolved

    def resolved_loss(name, targets, *, scribbles):
        return resolved(name, objects_on_background(targets, scribbles=scribbles))

    sparse = np.zeros((10, 10), np.int64)
    sparse[:2] = 1  # 20 % objects: mitochondria on cytoplasm
    dense = 1 - sparse  # 80 % "foreground": cells between membranes
    ignored = np.full((10, 10), -1, np.int64)
    assert resolved_loss("auto", [sparse], scribbles=False) == "dice_ce"
    assert resolved_loss("auto", [dense], scribbles=False) == "weighted_ce"
    # ignored pixels do not count: 20 objects against 10 painted background pixels
    half = np.where(np.arange(100).reshape(10, 10) < 30, sparse, -1)
    assert resolved_loss("auto", [half, ignored], scribbles=False) == "weighted_ce"
    assert resolved_loss("auto", [ignored], scribbles=False) == "weighted_ce"
    # strokes' proportions are not the tissue's: scribbles keep the weighted CE
    assert resolved_loss("auto", [sparse], scribbles=True) == "weighted_ce"
    # a named loss is used as it is
    assert resolved_loss("ce", [sparse], scribbles=False) == "ce"


def test_training_config_accepts_auto_and_rejects_unknown_losses():
    from napari_unet.training.trainer import TrainingConfig

    assert TrainingConfig().loss == "auto"
    assert TrainingConfig.from_dict(TrainingConfig(loss="dice").to_dict()).loss == "dice"
    with pytest.raises(ValueError, match="unknown loss"):
        TrainingConfig(loss="focal")
