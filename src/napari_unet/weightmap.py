"""Per-pixel loss weights from the U-Net paper (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances the class frequencies, and the exponential term up-weights the
thin background gaps (membranes) separating touching objects, where ``d1`` and
``d2`` are the distances to the nearest and second-nearest object.

Pure numpy/scipy on purpose: this runs in data loaders and in the headless
training core, which must not depend on Qt or napari.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["BORDER_EPS", "boundary_weight_map", "border_cutoff", "class_balance_weights"]

#: Absolute size below which the border term is treated as zero.
#:
#: Why 1e-6: weights are normalised so their mean over valid pixels is 1 and
#: typical values are O(1)-O(10), where the float32 spacing is ~1e-7-1e-6.  A
#: term smaller than this is therefore at the level of float32 rounding of the
#: result, so truncating it makes the cropped computation indistinguishable
#: from the exact one.  The price is small: the crop margin grows only as
#: sqrt(ln(w0 / eps)) (with w0=10, sigma=5: 28 px at 1e-6 against 22 px at 1e-3).
BORDER_EPS: float = 1e-6


def border_cutoff(w0: float, sigma: float, eps: float = BORDER_EPS) -> float:
    """Distance sum ``R`` beyond which ``w0 * exp(-(d1+d2)^2 / (2 sigma^2)) < eps``.

    Solving ``w0 * exp(-R^2 / (2 sigma^2)) = eps`` gives
    ``R = sigma * sqrt(2 ln(w0 / eps))``.  If ``d1 + d2 > R`` then the term is
    negligible, and since ``d1 <= d2`` any pixel where the term matters lies
    within ``R`` of both of its two nearest objects; that is what bounds the
    crops in :func:`boundary_weight_map`.  Returns 0 when ``w0 <= eps`` (the
    term never matters).
    """
    if w0 <= eps:
        return 0.0
    return float(sigma) * math.sqrt(2.0 * math.log(w0 / eps))


def class_balance_weights(target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Class-balancing weights ``w_c`` (float32, 0 where not valid).

    For each class ``c`` present among the valid pixels with frequency ``f_c``
    (fraction of valid pixels), ``w_c = 1 / (n_present * f_c)``.  Every present
    class then carries the same total weight and the mean weight over valid
    pixels is exactly 1, so the loss scale does not depend on how much of a
    slice was annotated.  Pixels with ``target < 0`` (the "ignore" label) are
    treated as not valid.
    """
    target = np.asarray(target)
    valid = np.asarray(valid)
    if target.ndim != 2:
        raise ValueError(f"target must be a 2D array, got shape {target.shape}")
    if not (np.issubdtype(target.dtype, np.integer) or target.dtype == bool):
        raise ValueError(f"target must be an integer class map, got dtype {target.dtype}")
    if valid.shape != target.shape:
        raise ValueError(
            f"valid has shape {valid.shape}, which does not match target shape {target.shape}"
        )
    if valid.dtype != bool:
        raise ValueError(f"valid must be a boolean mask, got dtype {valid.dtype}")

    valid = valid & (target >= 0)
    out = np.zeros(target.shape, dtype=np.float32)
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        return out

    classes, inverse, counts = np.unique(target[valid], return_inverse=True, return_counts=True)
    # w_c = 1 / (n_present * count_c / n_valid); computed in float64 then cast.
    per_class = n_valid / (len(classes) * counts.astype(np.float64))
    out[valid] = per_class[inverse.ravel()].astype(np.float32)
    return out


def _check_2d_int(name: str, arr: np.ndarray) -> None:
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D array, got {arr.ndim}D with shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")


def _compact_labels(instances: np.ndarray) -> np.ndarray:
    """Return labels usable by ``ndimage.find_objects`` without huge allocations.

    ``find_objects`` returns one entry per label up to the maximum id, so a
    slice with a few ids near 2**32 would allocate billions of entries.  Ids
    are only renumbered when the maximum exceeds the pixel count (so the cheap
    path covers the usual contiguous-ish labelings).
    """
    if instances.dtype == bool:
        return instances.astype(np.intp)
    max_id = int(instances.max()) if instances.size else 0
    if max_id <= instances.size:
        return instances.astype(np.intp, copy=False)
    ids, inverse = np.unique(instances, return_inverse=True)
    # ids[0] == 0 whenever background is present; keep 0 mapped to 0.
    offset = 0 if ids[0] == 0 else 1
    return (inverse.reshape(instances.shape) + offset).astype(np.intp)


def _two_nearest_distances(labels: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest object, per pixel, as float32.

    Each object's Euclidean distance transform is computed only in its bounding
    box grown by ``margin`` pixels: the crop holds the whole object, so the
    distances inside it are exact, and pixels outside it are farther than
    ``margin`` from the object (left at +inf, which is harmless because the
    caller chose ``margin`` so that such distances give a negligible term).
    The distance is measured to the object's edge (EDT to the nearest object
    pixel centre minus 0.5), so a straight gap of g pixels gives d1 + d2 = g.
    """
    shape = labels.shape
    d1 = np.full(shape, np.inf, dtype=np.float32)
    d2 = np.full(shape, np.inf, dtype=np.float32)
    for label_minus_1, box in enumerate(ndimage.find_objects(labels)):
        if box is None:  # id not present (non-contiguous ids)
            continue
        label = label_minus_1 + 1
        crop = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape)
        )
        outside = labels[crop] != label
        dist = ndimage.distance_transform_edt(outside).astype(np.float32)
        dist -= np.float32(0.5)
        d1c = d1[crop]
        d2c = d2[crop]
        # Order matters: d2 uses the previous d1.
        np.minimum(d2c, np.maximum(d1c, dist), out=d2c)
        np.minimum(d1c, dist, out=d1c)
    return d1, d2


def boundary_weight_map(
    instances: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    target: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    balance: bool = True,
) -> np.ndarray:
    """U-Net weight map ``w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` (float32).

    Parameters
    ----------
    instances
        2D integer array; 0 is background and every id > 0 is one object (an
        id may cover several disconnected pieces; it is still one object).
    w0, sigma
        Amplitude and width (pixels) of the border term.
    target
        2D integer class map used for class balancing; defaults to
        ``instances > 0``.  ``-1`` (any negative value) marks ignored pixels.
    valid
        2D boolean mask of pixels that count.  Defaults to ``target >= 0``
        (every pixel if ``target`` is None).  Pixels with ``target < 0`` are
        never valid, even if ``valid`` says so.
    balance
        If True, ``w_c`` balances class frequencies (see
        :func:`class_balance_weights`); if False ``w_c = 1`` on valid pixels.

    Returns
    -------
    Weights of the same shape, 0 wherever not valid.  The border term is only
    added on valid background pixels (``instances == 0``) and is truncated
    below :data:`BORDER_EPS`, which is what lets each object's distance
    transform be computed in a small crop (fast for hundreds of objects).
    """
    instances = np.asarray(instances)
    _check_2d_int("instances", instances)
    is_signed = np.issubdtype(instances.dtype, np.signedinteger)
    if is_signed and instances.size and int(instances.min()) < 0:
        raise ValueError("instances must be >= 0 (0 = background, > 0 = object ids)")
    w0 = float(w0)
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    if not math.isfinite(w0) or w0 < 0:
        raise ValueError(f"w0 must be a finite number >= 0, got {w0}")

    if target is None:
        target = (instances > 0).astype(np.int64)
    else:
        target = np.asarray(target)
        _check_2d_int("target", target)
        if target.shape != instances.shape:
            raise ValueError(
                f"target shape {target.shape} does not match instances shape {instances.shape}"
            )
    if valid is None:
        valid = target >= 0
    else:
        valid = np.asarray(valid)
        if valid.shape != instances.shape:
            raise ValueError(
                f"valid shape {valid.shape} does not match instances shape {instances.shape}"
            )
        if valid.dtype != bool:
            raise ValueError(f"valid must be a boolean mask, got dtype {valid.dtype}")
        valid = valid & (target >= 0)

    if balance:
        weights = class_balance_weights(target, valid)
    else:
        weights = valid.astype(np.float32)

    cutoff = border_cutoff(w0, sigma)
    border_px = valid & (instances == 0)
    if cutoff <= 0 or not border_px.any() or not instances.any():
        return weights

    labels = _compact_labels(instances)
    # A pixel needs an object's distance only if it is within `cutoff` of its
    # edge, i.e. EDT <= cutoff + 0.5, i.e. within that many pixels per axis.
    margin = int(math.ceil(cutoff + 0.5))
    d1, d2 = _two_nearest_distances(labels, margin)

    s = d1[border_px] + d2[border_px]  # inf where fewer than two objects are near
    term = np.float32(w0) * np.exp(-(s * s) / np.float32(2.0 * sigma * sigma))
    weights[border_px] += term.astype(np.float32)
    return weights
