"""ilastik-style baseline: random-forest pixel classifier on multiscale filters.

Features are :func:`skimage.feature.multiscale_basic_features` (intensity,
edges, texture at sigma 1..16), computed per 2D slice. The forest is trained
on a random subsample of the annotated pixels only: class-balanced (as a user's
scribbles tend to be) or, with ``balanced=False``, at the painted slices' own
class proportions (what the U-Net trains on by default in dense mode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from skimage.feature import multiscale_basic_features
from sklearn.ensemble import RandomForestClassifier


@dataclass(frozen=True)
class RFSettings:
    """Knobs of the baseline (defaults = the documented full run)."""

    n_estimators: int = 100
    n_jobs: int = 2
    sigma_min: float = 1.0
    sigma_max: float = 16.0
    max_samples: int = 200_000
    balanced: bool = True
    seed: int = 0


def slice_features(img2d: np.ndarray, s: RFSettings) -> np.ndarray:
    """Per-pixel feature matrix (Y, X, F) as float32 for one slice."""
    f = multiscale_basic_features(
        img2d.astype(np.float32) / 255.0, intensity=True, edges=True, texture=True,
        sigma_min=s.sigma_min, sigma_max=s.sigma_max,
    )
    return f.astype(np.float32, copy=False)


def _balanced_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` indices, split equally between the classes present in ``y``."""
    classes = np.unique(y)
    per = max(1, n // len(classes))
    out = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        take = min(per, idx.size)
        out.append(rng.choice(idx, size=take, replace=False))
    return np.concatenate(out)


def train_rf(image: np.ndarray, masks: dict[int, np.ndarray], s: RFSettings) -> tuple[RandomForestClassifier, float]:
    """Fit the forest on the annotated slices ``masks`` (z -> binary mask); returns (model, seconds).

    The pixel budget ``max_samples`` is shared equally among the slices and
    each slice's share is split equally between foreground and background
    (``balanced``) or drawn uniformly.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(s.seed)
    per_slice = max(2, s.max_samples // max(1, len(masks)))
    xs, ys = [], []
    for z, mask in sorted(masks.items()):
        feats = slice_features(image[z], s)
        y = mask.reshape(-1).astype(np.uint8)
        idx = (_balanced_indices(y, per_slice, rng) if s.balanced
               else rng.choice(y.size, size=min(per_slice, y.size), replace=False))
        xs.append(feats.reshape(-1, feats.shape[-1])[idx])
        ys.append(y[idx])
    clf = RandomForestClassifier(n_estimators=s.n_estimators, n_jobs=s.n_jobs, random_state=s.seed)
    clf.fit(np.concatenate(xs), np.concatenate(ys))
    return clf, time.perf_counter() - t0


def predict_rf(clf: RandomForestClassifier, image: np.ndarray, s: RFSettings) -> tuple[np.ndarray, float]:
    """Binary foreground prediction for every slice of ``image``; returns (mask, seconds)."""
    t0 = time.perf_counter()
    out = np.zeros(image.shape, dtype=bool)
    fg_col = list(clf.classes_).index(1) if 1 in clf.classes_ else None
    for z in range(image.shape[0]):
        feats = slice_features(image[z], s)
        if fg_col is None:
            continue
        p = clf.predict_proba(feats.reshape(-1, feats.shape[-1]))[:, fg_col]
        out[z] = p.reshape(image.shape[1:]) > 0.5
    return out, time.perf_counter() - t0
