"""How unsure the network is, per pixel and per slice: what to paint next.

Two per-pixel maps, both float32 in [0, 1]:

``"entropy"``
    Normalised entropy of the softmax, ``H(p) / log C``: 0 where one class
    has all the probability, 1 where all classes are equally likely. Cheap
    (no extra network pass) but it also lights up pixels that are
    *inherently* ambiguous (a blurred membrane), which more labels will not fix.

``"tta"``
    Disagreement of the 8 test-time-augmentation variants (flips/rotations),
    the mutual information (BALD) ``H(mean p) - mean H(p_i)`` divided by
    ``log C``. It is high only where the variants *disagree*, i.e. where the
    network's decision is unstable, which is where labels help most. Needs
    ``tta=True`` (8x slower).

:func:`slice_score` reduces a map to one number per slice for ranking.
This module is numpy only: the settings import it for its list of choices.
"""

from __future__ import annotations

import numpy as np

#: Per-pixel uncertainty measures (see the module docstring); the one list of choices.
UNCERTAINTY_METHODS = ("entropy", "tta")
#: Default quantile of :func:`slice_score`: the mean of the top 10 % of pixels.
DEFAULT_QUANTILE = 0.9


def _entropy(probs: np.ndarray, axis: int) -> np.ndarray:
    """Entropy in nats along ``axis``; 0 log 0 counts as 0."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=axis)


def normalized_entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """``H(p) / log C`` of softmax ``probs`` with classes along ``axis``, float32 in [0, 1].

    A one-class model (C = 1) is never unsure: all zeros.
    """
    probs = np.asarray(probs)
    n_classes = probs.shape[axis]
    if n_classes < 2:
        return np.zeros(np.delete(probs.shape, axis), np.float32)
    h = _entropy(probs, axis) / np.log(n_classes)
    return np.clip(h, 0.0, 1.0).astype(np.float32)


def tta_disagreement(
    mean_probs: np.ndarray, mean_variant_entropy: np.ndarray, axis: int = 0
) -> np.ndarray:
    """Mutual information (BALD) of the TTA variants, normalised to [0, 1], float32.

    ``mean_probs`` is the variants' averaged softmax (classes along ``axis``),
    ``mean_variant_entropy`` the average of each variant's entropy in nats
    (what :class:`~napari_unet.prediction.tile_runner.TileRunner` returns with
    ``disagreement`` on). By the concavity of entropy the difference is >= 0;
    float rounding is clipped away.
    """
    mean_probs = np.asarray(mean_probs)
    n_classes = mean_probs.shape[axis]
    if n_classes < 2:
        return np.zeros(np.delete(mean_probs.shape, axis), np.float32)
    mi = _entropy(mean_probs, axis) - np.asarray(mean_variant_entropy, np.float64)
    return np.clip(mi / np.log(n_classes), 0.0, 1.0).astype(np.float32)


def slice_score(
    uncertainty_map: np.ndarray,
    *,
    quantile: float = DEFAULT_QUANTILE,
    mask: np.ndarray | None = None,
) -> float:
    """One number per slice: the mean of the pixels at or above ``quantile`` of the map.

    Why not the plain mean: in an EM membrane map most pixels (cytoplasm,
    background) are confidently predicted in *every* slice, so the mean is
    dominated by that easy area and a slice with a few badly predicted
    membranes scores almost like a clean one. Why not a bare high quantile:
    one order statistic is noisy from slice to slice. The mean of the top
    ``1 - quantile`` fraction (10 % by default) looks only at the hardest
    pixels, which are the boundary/foreground pixels that matter, and still
    averages many of them. ``quantile=0`` gives the plain mean. ``mask``
    (e.g. predicted foreground dilated by a few pixels) restricts the score to
    some pixels. Returns NaN when no pixel is left.
    """
    if not 0.0 <= float(quantile) < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile!r}")
    values = np.asarray(uncertainty_map, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask has shape {mask.shape}, the map {values.shape}")
        values = values[mask]
    values = values.ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    if quantile > 0:
        values = values[values >= np.quantile(values, quantile)]
    return float(values.mean())
