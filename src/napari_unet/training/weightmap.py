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


#: Side (pixels) of the tiles on which :func:`_far_apart_groups` records where
#: objects lie. Its "may come within reach" test is conservative by at most two
#: tiles, so small tiles keep groups large; 8 px gives 16k tiles per megapixel.
_TILE = 8
#: Cost of one pixel of a group's (slice-sized) distance transform relative to
#: one pixel of a small per-object crop: scipy's transform slows per pixel as the
#: array outgrows the cache (about 30 ns/px at 128 x 128, 80 ns/px at 1024 x 1024).
_GROUP_PIXEL_COST = 2.0
#: Grouping is considered only when the per-object crops add up to more than this
#: many slices (below, they cost about as much as a few whole-slice transforms).
#: Compact cells add up to 5-9 (ISBI, the sample), and none of their groups pays,
#: so their maps still come from the crops alone.
_PLAN_ABOVE = 4.0
#: Objects whose crop is smaller than this fraction of the slice always use their
#: crop: a group's transform spans its members' crops, often the whole slice,
#: which small crops rarely repay.
_GROUP_MIN_CROP = 1.0 / 64.0


def _grown_box(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` on every side, clipped to ``shape``."""
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape)
    )


def _area(box: tuple[slice, ...]) -> int:
    return math.prod(s.stop - s.start for s in box)


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b))


def _reach_offsets(reach: float, tile: int) -> np.ndarray:
    """Tile offsets ``(dy, dx)`` between tiles that hold two pixels at most ``reach`` apart.

    Pixels of tiles ``d`` apart along an axis are at least ``|d| * tile - (tile - 1)``
    apart there (0 for ``d = 0``), so every pair of pixels within ``reach`` lies in
    tiles at one of these offsets (the converse need not hold: conservative).
    """
    k = int(math.ceil(reach / tile)) + 1
    d = np.arange(-k, k + 1)
    gap = np.maximum(np.abs(d) * tile - (tile - 1), 0).astype(np.float64)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    keep = gap[:, None] ** 2 + gap[None, :] ** 2 <= reach * reach
    return np.column_stack([dy[keep], dx[keep]])


def _far_apart_groups(
    labels: np.ndarray, crops: dict[int, tuple[slice, ...]], reach: float
) -> list[list[int]]:
    """Groups of large objects, each group's members more than ``reach`` apart.

    Why: an object's crop is its bounding box grown by the margin, so long or
    curved objects (fibres, rings, neurites cut lengthwise) each cost up to a
    whole slice, and n of them cost n slices. Objects more than ``reach``
    apart are never the nearest and second-nearest object of a pixel where the
    border term matters, so one distance transform of a whole group gives the
    same maps as one per member (see :func:`_two_nearest_distances`).

    Greedy colouring in raster order of the crops (a sweep, which is what
    keeps side-by-side objects to few groups), with "within reach" tested on
    ``_TILE`` tiles (conservatively). A group is kept only if its transform is
    estimated cheaper than its members' crops; objects not returned keep
    their crops. Returns [] when grouping cannot pay.
    """
    shape = labels.shape
    n_px = labels.size
    areas = {lab: _area(box) for lab, box in crops.items()}
    if sum(areas.values()) <= _PLAN_ABOVE * n_px:
        return []
    cand = sorted(
        (lab for lab, area in areas.items() if area >= _GROUP_MIN_CROP * n_px),
        key=lambda lab: (crops[lab][0].start, crops[lab][1].start, lab),
    )
    if not cand:
        return []

    # tiles holding pixels of each candidate, from one pass over the slice
    t = _TILE
    ty, tx = -(-shape[0] // t), -(-shape[1] // t)
    rank = np.full(int(labels.max()) + 1, -1, dtype=np.intp)
    rank[cand] = np.arange(len(cand))
    r = rank[labels]
    first = r >= 0
    # one pixel per run of equal labels within a tile row is enough
    first[:, 1:] &= (r[:, 1:] != r[:, :-1]) | (np.arange(1, shape[1]) % t == 0)
    ys, xs = np.nonzero(first)
    keys = np.unique(r[ys, xs].astype(np.int64) * (ty * tx) + (ys // t) * tx + xs // t)
    owner, tiles = np.divmod(keys, ty * tx)
    bounds = np.searchsorted(owner, np.arange(len(cand) + 1))
    offsets = _reach_offsets(reach, t)

    near: list[np.ndarray] = []  # per group: tiles within reach of a member
    members: list[list[int]] = []
    for k, lab in enumerate(cand):
        own = tiles[bounds[k] : bounds[k + 1]]
        c = next((i for i, nb in enumerate(near) if not nb[own].any()), len(near))
        if c == len(near):
            near.append(np.zeros(ty * tx, dtype=bool))
            members.append([])
        members[c].append(lab)
        oy, ox = np.divmod(own, tx)
        ny = (oy[:, None] + offsets[None, :, 0]).ravel()
        nx = (ox[:, None] + offsets[None, :, 1]).ravel()
        inside = (ny >= 0) & (ny < ty) & (nx >= 0) & (nx < tx)
        near[c][ny[inside] * tx + nx[inside]] = True

    def pays(group: list[int]) -> bool:
        region = crops[group[0]]
        for lab in group[1:]:
            region = _union(region, crops[lab])
        return _GROUP_PIXEL_COST * _area(region) < sum(areas[lab] for lab in group)

    return [group for group in members if len(group) > 1 and pays(group)]


def _push(d1: np.ndarray, d2: np.ndarray, dist: np.ndarray) -> None:
    """Fold one source's distances into the nearest (d1) and second-nearest (d2), in place."""
    # Order matters: d2 uses the previous d1.
    np.minimum(d2, np.maximum(d1, dist), out=d2)
    np.minimum(d1, dist, out=d1)


def _two_nearest_distances(
    labels: np.ndarray, margin: int, reach: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest object, per pixel, as float32.

    Each object's Euclidean distance transform is computed only in its bounding
    box grown by ``margin`` pixels: the crop holds the whole object, so the
    distances inside it are exact, and pixels outside it are farther than
    ``margin`` from the object (left at +inf, which is harmless because the
    caller chose ``margin`` so that such distances give a negligible term).
    The distance is measured to the object's edge (EDT to the nearest object
    pixel centre minus 0.5), so a straight gap of g pixels gives d1 + d2 = g.

    Objects with large crops may instead share one transform per group of
    objects more than ``reach`` apart (:func:`_far_apart_groups`). A group's
    transform is the distance to its nearest member, so every value is still
    the exact distance to some object, each object feeds one value per pixel,
    and a pixel's two nearest objects, if within ``reach`` of each other, are
    in different groups. So wherever ``d1 + d2 <= reach - 1`` both come out
    exactly as from the crops, bit for bit (same distances, same rounding);
    elsewhere both ways give ``d1 + d2 > reach - 1``. With ``reach = cutoff + 1``
    the maps can differ only by terms below :data:`BORDER_EPS`.
    """
    shape = labels.shape
    d1 = np.full(shape, np.inf, dtype=np.float32)
    d2 = np.full(shape, np.inf, dtype=np.float32)
    crops = {
        i + 1: _grown_box(box, margin, shape)
        for i, box in enumerate(ndimage.find_objects(labels))
        if box is not None  # None: id not present (non-contiguous ids)
    }
    groups = _far_apart_groups(labels, crops, reach) if math.isfinite(reach) else []
    if groups:
        region = crops[groups[0][0]]
        for lab in (lab for members in groups for lab in members):
            region = _union(region, crops.pop(lab))
        _push_groups(labels[region], groups, d1[region], d2[region])
    for label, crop in crops.items():
        _push(d1[crop], d2[crop], _edge_distance(labels[crop] != label))
    return d1, d2


def _edge_distance(outside: np.ndarray) -> np.ndarray:
    """float32 distance to the nearest pixel where ``outside`` is False, minus 0.5."""
    dist = ndimage.distance_transform_edt(outside).astype(np.float32)
    dist -= np.float32(0.5)
    return dist


def _push_groups(
    labels: np.ndarray, groups: list[list[int]], d1: np.ndarray, d2: np.ndarray
) -> None:
    """Fold the groups' distances into ``d1``/``d2``, with as few transforms as possible.

    One transform per group, or, from 7 groups on, two per bit of the group
    index: for bit b, the distances ``e0``/``e1`` to the nearest object of the
    groups whose bit b is 0/1. ``min(e0, e1)`` is the nearest grouped object,
    and ``max(e0, e1)`` is the nearest one on the other side of bit b from it;
    two objects in different groups differ in some bit, so the minimum over
    bits of ``max(e0, e1)`` is the second-nearest grouped object whenever the
    two nearest are in different groups (which is all that matters, see
    :func:`_two_nearest_distances`), and never less than it. Both are exact
    distances to distinct objects, so folding them in is like folding in every
    group: 8 groups cost 6 transforms, 16 cost 8.
    """
    group_of = np.full(int(labels.max()) + 1, -1, dtype=np.intp)
    for c, members in enumerate(groups):
        group_of[members] = c
    g = group_of[labels]
    grouped = g >= 0
    n_bits = (len(groups) - 1).bit_length()
    if 2 * n_bits >= len(groups) or n_bits == 0:
        for c in range(len(groups)):
            _push(d1, d2, _edge_distance(g != c))
        return
    near1 = near2 = None
    for b in range(n_bits):
        bit = (g >> b) & 1
        e0 = _edge_distance(~(grouped & (bit == 0)))
        e1 = _edge_distance(~(grouped & (bit == 1)))
        if near1 is None:
            near1 = np.minimum(e0, e1)
            near2 = np.maximum(e0, e1)
        else:
            np.minimum(near2, np.maximum(e0, e1), out=near2)
    _push(d1, d2, near1)
    _push(d1, d2, near2)


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
    transform be computed in a small crop (fast for hundreds of objects), and
    long objects far apart share one (fast for fibres and rings too).
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
    # Two objects matter together only if d1 + d2 <= cutoff somewhere, i.e. if
    # their pixel centres are at most cutoff + 1 apart (d = EDT - 0.5).
    d1, d2 = _two_nearest_distances(labels, margin, reach=cutoff + 1.0)

    s = d1[border_px] + d2[border_px]  # inf where fewer than two objects are near
    term = np.float32(w0) * np.exp(-(s * s) / np.float32(2.0 * sigma * sigma))
    weights[border_px] += term.astype(np.float32)
    return weights
