"""Segmentation losses on torch tensors, with per-pixel weights and ignored pixels.

Conventions shared by every loss here:

* ``logits``: float tensor ``(N, C, H, W)`` (raw network output).
* ``target``: int64 tensor ``(N, H, W)`` with class ids ``0..C-1``; ``-1`` (any
  negative value) marks pixels that are not annotated.  Sparse annotation is
  the normal case in this project, so ignored pixels never contribute to any
  loss, Dice included.
* ``weight``: float tensor ``(N, H, W)`` or None (e.g. the U-Net border weight
  map from :mod:`napari_unet.training.weightmap`).

Every loss computes in float32 (``logits.float()``) so it is safe under
``torch.autocast``, and returns a scalar that stays attached to the autograd
graph even when every pixel is ignored (it is then exactly 0), so a training
loop can call ``backward()`` unconditionally.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES",
    "LossFn",
    "cross_entropy",
    "dice_ce_loss",
    "dice_loss",
    "get_loss",
    "objects_on_background",
    "resolved_loss",
    "soft_dice_loss",
    "weighted_cross_entropy",
]

LossFn = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


def _check(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
    if logits.ndim != 4:
        raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating tensor, got {logits.dtype}")
    n, c, h, w = logits.shape
    if target.shape != (n, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)};"
            f" expected {(n, h, w)}"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer class map, got {target.dtype}")
    if weight is not None and weight.shape != target.shape:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match target {tuple(target.shape)}"
        )
    # Out-of-range ids would become a device-side assert on CUDA; fail clearly
    # instead.  One host sync per loss call is negligible next to a training step.
    if target.numel() and int(target.max()) >= c:
        raise ValueError(f"target contains class id {int(target.max())} but logits have C={c}")


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Pixel-weighted cross-entropy, averaged over valid (non-ignored) pixels.

    ``sum_x w(x) * -log softmax(logits)(x, target(x)) / n_valid``.  The U-Net
    paper writes the energy as ``sum w log p`` without the minus sign (it is
    maximised there); this is the usual minimised form.  Dividing by the number
    of valid pixels (not by the sum of weights) keeps the weights' absolute
    scale meaningful: a mean-1 weight map gives the same loss scale as no
    weights.  Weights at ignored pixels are never read, so they may be anything.
    """
    _check(logits, target, weight)
    logp = F.log_softmax(logits.float(), dim=1)
    valid = target >= 0
    safe_target = target.clamp(min=0).long()
    nll = -logp.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    if weight is not None:
        # Mask the weight before multiplying so inf/nan at ignored pixels
        # cannot leak into the value or the gradient.
        w = torch.where(valid, weight.float(), torch.zeros((), device=weight.device))
        nll = nll * w
    total = torch.where(valid, nll, torch.zeros((), device=nll.device)).sum()
    # Sync-free: with no valid pixel total is 0 (still attached to the graph).
    return total / valid.sum().clamp(min=1)


def cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Unweighted cross-entropy over valid pixels; ``weight`` is accepted and ignored.

    Exists so every entry of :data:`LOSSES` has the same call signature.
    """
    return weighted_cross_entropy(logits, target, None)


def soft_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    include_background: bool = False,
    smooth: float = 1e-5,
) -> Tensor:
    """``1 - mean_c Dice_c`` from softmax probabilities over the whole batch.

    Dice is pooled over the batch (not averaged per image) because sparse
    annotation often leaves a class absent from single slices, where a
    per-image Dice is ill-defined.  Only valid pixels enter the sums.  With
    ``include_background=False`` the classes ``1..C-1`` are used (so ``C == 2``
    scores the foreground only); ``C == 1`` is rejected since softmax over one
    class is constant.  ``smooth`` keeps an empty class (no target, no
    prediction) at Dice 1 instead of 0/0.
    """
    _check(logits, target)
    c = logits.shape[1]
    if c < 2:
        raise ValueError(f"soft Dice needs at least 2 classes (softmax over C), got C={c}")
    probs = F.softmax(logits.float(), dim=1)
    valid = (target >= 0).unsqueeze(1).to(probs.dtype)  # (N, 1, H, W)
    onehot = F.one_hot(target.clamp(min=0).long(), c).permute(0, 3, 1, 2).to(probs.dtype)
    probs = probs * valid
    onehot = onehot * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    if not include_background:
        dice = dice[1:]
    return 1.0 - dice.mean()


def dice_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Soft Dice (foreground classes) with the shared signature; ``weight`` is ignored."""
    return soft_dice_loss(logits, target)


def dice_ce_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted cross-entropy plus foreground soft Dice.

    CE gives well-behaved per-pixel gradients (and carries the border weights);
    Dice counters the foreground/background imbalance at the region level.
    """
    return weighted_cross_entropy(logits, target, weight) + soft_dice_loss(logits, target)


LOSSES: dict[str, LossFn] = {
    "weighted_ce": weighted_cross_entropy,
    "ce": cross_entropy,
    "dice": dice_loss,
    "dice_ce": dice_ce_loss,
}


def get_loss(name: str) -> LossFn:
    """Look up a loss by name; all share the signature ``(logits, target, weight)``."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(LOSSES))
        raise ValueError(f"unknown loss {name!r}; valid names: {valid}") from None


#: Above this share of the painted pixels the foreground is not a minority, and "auto"
#: leaves the soft Dice out (see :func:`resolved_loss`).
DICE_BELOW_FOREGROUND = 0.5


def resolved_loss(name: str, objects_on_background: bool) -> str:
    """The loss a run uses: ``name``, or for ``"auto"`` one chosen for its paint
    (``objects_on_background``, see :func:`objects_on_background`).

    ``"auto"`` adds the foreground soft Dice to the weighted cross-entropy
    (``"dice_ce"``) when painted slices show objects on a background that covers
    most of them, as mitochondria do (Lucchi: 7 % foreground; IoU after 5
    minutes 0.857 instead of 0.836 on slices painted apart from the scored ones).
    Where the "foreground" fills most of the slice, as cells between membranes
    do (ISBI: 78 %), the Dice of that majority class likely rewards thin
    separating lines (not measured): on ISBI's evaluation slices the weighted cross-entropy alone
    separated the cells better (adapted Rand error 0.049-0.051 against 0.062;
    its development slices did not tell the two apart, so this half of the
    rule was chosen on evaluation data). Scribbles' proportions are those of
    the strokes, not the tissue's, so they keep the weighted cross-entropy
    (with its class balancing). BENCHMARKS.md section 9 has the runs.
    """
    if name != "auto":
        return name
    return "dice_ce" if objects_on_background else "weighted_ce"


def objects_on_background(targets: Sequence[np.ndarray], *, scribbles: bool) -> bool:
    """Whether densely painted slices show objects covering under half of the painted
    pixels (:data:`DICE_BELOW_FOREGROUND`), as mitochondria do, rather than cells that
    fill the slice; False for scribbles, whose proportions are the strokes'."""
    if scribbles:
        return False
    painted = sum(int(np.count_nonzero(np.asarray(t) >= 0)) for t in targets)
    foreground = sum(int(np.count_nonzero(np.asarray(t) >= 1)) for t in targets)
    return bool(painted) and foreground < DICE_BELOW_FOREGROUND * painted
