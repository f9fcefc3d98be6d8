"""Held-out validation: which annotated pixels a run keeps back, and how a model scores on them.

A few painted slices are all the labels there are, so validation takes as little
of them as gives an honest figure: whole slices when there are enough, an edge
band of each slice otherwise (see :func:`split_slices`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..model.unet import UNet
from .annotations import IGNORE, AnnotatedSlice

__all__ = ["Split", "evaluating", "foreground_dice", "held_out_dice", "split_slices"]


@dataclass
class Split:
    """Training slices with the validation pixels removed, and the validation region."""

    train: list[AnnotatedSlice]
    val: list[tuple[int, tuple[slice, slice], np.ndarray]]  # (z, region, target in region)
    held_out: bool


def split_slices(slices: list[AnnotatedSlice], fraction: float) -> Split:
    """Hold out annotated pixels for validation.

    When ``fraction`` of the annotated slices is at least one slice, whole
    slices are held out (evenly spread). Otherwise an edge band of each slice
    is held out instead, so that even one painted slice gives an honest
    validation figure, and a few painted slices do not lose a whole one of
    them to validation (1 of 5 is 20 % of the labels, not 10 %). With
    ``fraction == 0`` (or when no band holds two classes) the model is
    validated on its training pixels (``held_out=False``).
    """
    if fraction <= 0:
        return Split(slices, [(s.z, (slice(None), slice(None)), s.target) for s in slices], False)
    n_val = int(fraction * len(slices) + 1e-9)
    if n_val >= 1 and len(slices) >= 3:
        idx = set(np.linspace(0, len(slices) - 1, n_val + 2).round().astype(int)[1:-1].tolist())
        if len(idx) < n_val:
            idx = set(range(len(slices) - n_val, len(slices)))
        train = [s for i, s in enumerate(slices) if i not in idx]
        val = [(s.z, (slice(None), slice(None)), s.target) for i, s in enumerate(slices) if i in idx]
        return Split(train, val, True)
    train, val = [], []
    for s in slices:
        h, w = s.target.shape
        bh, bw = max(1, int(math.ceil(fraction * h))), max(1, int(math.ceil(fraction * w)))
        bands = [
            (slice(h - bh, h), slice(0, w)),
            (slice(0, h), slice(w - bw, w)),
            (slice(0, bh), slice(0, w)),
            (slice(0, h), slice(0, bw)),
        ]
        for region in bands:
            t = s.target[region]
            if len({int(c) for c in np.unique(t)} - {IGNORE}) >= 2:
                tgt = s.target.copy()
                tgt[region] = IGNORE
                wgt = s.weight.copy()
                wgt[region] = 0.0
                if (tgt != IGNORE).any():
                    train.append(AnnotatedSlice(s.z, tgt, wgt, s.n_objects))
                    val.append((s.z, region, t))
                    break
        else:
            train.append(s)
    if not val:
        return Split(slices, [(s.z, (slice(None), slice(None)), s.target) for s in slices], False)
    return Split(train, val, True)


def foreground_dice(pred: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean Dice over foreground classes present in ``target`` (ignored pixels skipped)."""
    valid = target != IGNORE
    p, t = pred[valid], target[valid]
    scores = []
    for c in range(1, n_classes):
        tc, pc = t == c, p == c
        denom = tc.sum() + pc.sum()
        if tc.any():
            scores.append(2.0 * np.logical_and(tc, pc).sum() / denom)
    return float(np.mean(scores)) if scores else float("nan")


@contextmanager
def evaluating(model: UNet, *, batch_size: int, device: torch.device, amp: bool) -> Iterator[Any]:
    """A tile predictor for ``model`` in eval mode, in the precision the run trains in (bf16
    on CPUs that have it, as prediction does); the model is back in train mode afterwards."""
    from ..prediction.overlap_tile import TilePredictor

    model.eval()
    try:
        yield TilePredictor(model, batch_size=batch_size, device=device, amp=amp,
                            precision="auto" if amp else "float32")
    finally:
        model.train()


def held_out_dice(
    model: UNet,
    val: list[tuple[int, tuple[slice, slice], np.ndarray]],
    normalised: Callable[[int], np.ndarray],
    *,
    batch_size: int,
    device: torch.device,
    amp: bool,
) -> float:
    """Mean :func:`foreground_dice` of ``model`` over the validation regions ``val``.

    ``normalised(z)`` gives slice ``z`` as the network sees it (with its
    neighbours for a 2.5D network). The model is put in
    eval mode for the prediction and back in train mode afterwards.
    """
    scores = []
    margin = model.margin
    with evaluating(model, batch_size=batch_size, device=device, amp=amp) as predictor:
        for z, (ry, rx), target in val:
            img = normalised(z)  # (Y, X), or (planes, Y, X) for a 2.5D network
            h, w = img.shape[-2:]
            y0, y1, _ = ry.indices(h)
            x0, x1, _ = rx.indices(w)
            # predict the region with real context around it, then cut the region out
            cy0, cx0 = max(0, y0 - margin), max(0, x0 - margin)
            cy1, cx1 = min(h, y1 + margin), min(w, x1 + margin)
            probs = predictor.predict_slice(img[..., cy0:cy1, cx0:cx1])
            pred = probs.argmax(0)[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
            scores.append(foreground_dice(pred, target, model.config.n_classes))
    valid = [s for s in scores if not math.isnan(s)]
    return float(np.mean(valid)) if valid else float("nan")
