"""From class probabilities to label images.

Semantic labels are an argmax (or a threshold on the foreground class);
instance labels split the foreground into objects: as connected components,
with a seeded watershed that also separates touching objects, or as
components grown over the boundary pixels until neighbours touch ("fill"),
for membrane-stained tissue where cells tile the image.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as connected_components
from skimage.morphology import h_maxima
from skimage.segmentation import expand_labels, relabel_sequential, watershed

from .settings import INSTANCE_METHODS

InstanceMethod = Literal["components", "watershed", "fill"]


def semantic_labels(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class index per pixel, as uint8.

    Args:
        probabilities: ``(C, ...)`` class probabilities (C >= 2).
        threshold: two-class outputs only: call a pixel foreground (1) where
            ``p1 >= threshold`` instead of where ``p1 > p0``. Lets users trade
            false positives against false negatives without retraining.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim < 2 or probabilities.shape[0] < 2:
        raise ValueError(
            "expected (C, ...) probabilities with at least 2 classes, "
            f"got shape {probabilities.shape}"
        )
    if probabilities.shape[0] > 256:
        raise ValueError(f"at most 256 classes fit in uint8 labels, got {probabilities.shape[0]}")
    if threshold is None:
        return np.argmax(probabilities, axis=0).astype(np.uint8)
    if probabilities.shape[0] != 2:
        raise ValueError(
            f"a threshold only applies to 2-class outputs, got {probabilities.shape[0]} classes; "
            "use threshold=None (argmax)"
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return (probabilities[1] >= threshold).astype(np.uint8)


def _seeded_watershed(mask: np.ndarray, probability: np.ndarray | None, h: float) -> np.ndarray:
    """Split touching objects in ``mask`` at the necks between distance-transform peaks."""
    distance = ndi.distance_transform_edt(mask)
    # h-maxima rather than plain local maxima: the discrete distance transform
    # has ridges and plateaus, and a peak only counts as a separate object if
    # it rises at least `h` pixels above the neck joining it to a neighbour
    markers = connected_components(h_maxima(distance, h) > 0)
    # objects thinner than ~2h have no such peak: seed them whole
    components = connected_components(mask)
    seeded = np.zeros(int(components.max()) + 1, dtype=bool)
    seeded[components[markers > 0]] = True
    unseeded = ~seeded[components] & mask
    if unseeded.any():
        extra = components[unseeded]
        _, extra = np.unique(extra, return_inverse=True)
        markers[unseeded] = markers.max() + 1 + extra.ravel()
    surface = -distance if probability is None else 1.0 - probability
    return watershed(surface, markers=markers, mask=mask)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size > 1 and labels.any():
        sizes = np.bincount(labels.ravel())
        small = sizes < int(min_size)
        small[0] = False
        labels[small[labels]] = 0
    return labels


def _fill(mask: np.ndarray, probability: np.ndarray | None, min_size: int) -> np.ndarray:
    """Connected components grown over the background until they meet.

    With a probability the boundary between two cells is drawn where the
    network was least sure they are cell (a watershed of ``1 - p`` seeded by
    the components); without one, each background pixel goes to the nearest
    cell. Small specks are dropped *before* growing, or they would grow too.
    """
    seeds = _remove_small(connected_components(mask).astype(np.int64), min_size)
    if not seeds.any():
        return seeds
    if probability is None:
        return expand_labels(seeds, distance=int(sum(mask.shape)))
    return watershed(1.0 - probability, markers=seeds)


def _label(
    mask: np.ndarray, method: str, probability: np.ndarray | None, h: float, min_size: int
) -> np.ndarray:
    if method == "components":
        return connected_components(mask)
    if method == "fill":
        return _fill(mask, probability, min_size)
    return _seeded_watershed(mask, probability, h)


def instance_labels(
    foreground: np.ndarray,
    *,
    method: InstanceMethod = "components",
    min_size: int = 0,
    probabilities: np.ndarray | None = None,
    per_slice: bool = True,
    h: float = 2.0,
) -> np.ndarray:
    """Label individual objects of a foreground mask; ids ``1..N`` as uint32.

    Args:
        foreground: 2D or 3D boolean mask.
        method: ``"components"`` (connected components, fast),
            ``"watershed"`` (seeded at distance-transform maxima, splits
            touching objects at their necks) or ``"fill"`` (components that
            then grow over the background until they touch: the labels tile
            the image, as cells do in membrane-stained EM; the thin boundary
            pixels belong to a cell instead of to a "background" object).
        min_size: objects with fewer pixels are removed (per slice object
            when labelling per slice).
        probabilities: optional foreground probability of the same shape as
            ``foreground``; the watershed and fill then flood ``1 - p``, so
            objects meet where the network was least sure, instead of at the
            geometric neck (``-distance``) or halfway (fill).
        per_slice: for 3D input, label each z-slice on its own (ids stay
            unique across the stack); objects are then 2D, which suits
            anisotropic EM stacks. False: 3D connectivity.
        h: watershed only: how far (pixels) a distance peak must rise above
            the neck to its neighbour to seed an object of its own.
    """
    mask = np.asarray(foreground)
    if mask.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D foreground mask, got shape {mask.shape}")
    if mask.dtype != bool:
        # integer masks (0/1, or a semantic label image's "!= 0") are fine;
        # floats are probably probabilities passed by mistake
        if not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(
                f"foreground must be a boolean mask, got dtype {mask.dtype}; threshold "
                "probabilities first (see semantic_labels)"
            )
        mask = mask != 0
    if method not in INSTANCE_METHODS:
        raise ValueError(f"method must be one of {INSTANCE_METHODS}, got {method!r}")
    if int(min_size) < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size!r}")
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if probabilities.shape != mask.shape:
            raise ValueError(
                f"probabilities must have the mask's shape {mask.shape} (the foreground "
                f"probability), got {probabilities.shape}"
            )

    if mask.ndim == 3 and per_slice:
        labels = np.zeros(mask.shape, dtype=np.uint32)
        offset = 0
        for z in range(mask.shape[0]):
            p = None if probabilities is None else probabilities[z]
            lab = _label(mask[z], method, p, h, int(min_size)).astype(np.uint32)
            nonzero = lab > 0
            lab[nonzero] += np.uint32(offset)
            labels[z] = lab
            offset = int(labels[z].max()) if nonzero.any() else offset
    else:
        labels = _label(mask, method, probabilities, h, int(min_size)).astype(np.uint32)

    labels = _remove_small(labels, int(min_size))
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.uint32, copy=False)
