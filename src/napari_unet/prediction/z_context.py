"""How alike neighbouring slices are: the measure behind using the third dimension.

On a near-isotropic volume (FIB-SEM at 5 nm voxels) slice z+1 looks like
slice z shifted by one pixel; on serial sections (50 nm apart, 4 nm pixels)
it does not. :func:`z_similarity` compares the two correlations directly on
the image, so the choice works without voxel sizes (which TIFFs often lack or
get wrong).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["AUTO_SIGMA", "PlaneReader", "check_z_smoothing", "input_planes", "resolve_z_sigma",
           "smooth_stack", "walk_z", "z_similarity"]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _mean(values: list[float]) -> float:
    """Mean of the finite values; NaN (no warning) when there are none (blank slices)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def z_similarity(stack: Any, *, max_pairs: int = 16, crop: int = 512) -> dict[str, float]:
    """Mean correlation of adjacent slices and of each slice with itself moved one pixel in y/x.

    ``ratio`` (adjacent / in-plane) is near 1 for isotropic voxels and well
    below for thin-sectioned stacks. Up to ``max_pairs`` evenly spaced slice
    pairs, each a centred ``crop`` x ``crop`` window, keep it cheap, also on
    volumes with huge slices.
    """
    depth = int(stack.shape[0])
    if depth < 2:
        return {"adjacent": float("nan"), "in_plane": float("nan"), "ratio": float("nan")}
    h, w = int(stack.shape[1]), int(stack.shape[2])
    y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    ys, xs = slice(y0, y0 + crop), slice(x0, x0 + crop)
    starts = np.unique(np.linspace(0, depth - 2, min(max_pairs, depth - 1)).round().astype(int))
    adjacent, in_plane = [], []
    for z in starts:
        # the window only: a zarr volume then reads just the chunks under it
        a = np.asarray(stack[int(z), ys, xs], np.float32)
        b = np.asarray(stack[int(z) + 1, ys, xs], np.float32)
        adjacent.append(_corr(a, b))
        in_plane.append(0.5 * (_corr(a[1:], a[:-1]) + _corr(a[:, 1:], a[:, :-1])))
    adj, inp = _mean(adjacent), _mean(in_plane)
    return {"adjacent": adj, "in_plane": inp, "ratio": adj / inp if inp > 0 else float("nan")}


#: The smoothing (Gaussian sigma, in slices) that "auto" uses on near-isotropic
#: stacks; chosen on Lucchi's development slices (BENCHMARKS.md, 3D context).
AUTO_SIGMA = 2.0
#: ``z_similarity`` ratio above which a stack counts as near-isotropic (Lucchi
#: FIB-SEM: 0.99; ISBI serial sections: 0.25).
ISOTROPIC_RATIO = 0.7


def check_z_smoothing(value: Any) -> float | str:
    """``"auto"`` or a finite sigma >= 0 in slices (0: every slice alone)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"z_smoothing must be 'auto' or a number of slices >= 0, got {value!r}")
    sigma = float(value)
    if not (np.isfinite(sigma) and 0.0 <= sigma <= 16.0):
        raise ValueError(f"z_smoothing must be 'auto' or a number of slices in [0, 16], got {value!r}")
    return sigma


def resolve_z_sigma(setting: float | str, stack: Any, whole_stack: bool = True) -> float:
    """The sigma a walk over ``stack`` uses: a number as given; ``"auto"``:
    :data:`AUTO_SIGMA` when the whole of a near-isotropic stack is predicted,
    else 0 (serial sections, or a few slices asked for, e.g. a preview, where
    the neighbours would have to be predicted too)."""
    if setting != "auto":
        return float(setting)
    if not whole_stack or int(stack.shape[0]) < 3:
        return 0.0
    ratio = z_similarity(stack)["ratio"]
    return AUTO_SIGMA if np.isfinite(ratio) and ratio >= ISOTROPIC_RATIO else 0.0


def z_weights(sigma: float) -> np.ndarray:
    """Normalised Gaussian weights for offsets ``-r..r`` (``r = ceil(2 sigma)``)."""
    r = int(np.ceil(2.0 * sigma))
    k = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def z_window(z: int, depth: int, radius: int) -> list[int]:
    """Slices ``z-radius .. z+radius``, mirrored at the stack ends (``d c b a | a b c d``)."""
    period = 2 * depth
    out = []
    for i in range(z - radius, z + radius + 1):
        i %= period
        out.append(i if i < depth else period - 1 - i)
    return out


def input_planes(read: Callable[[int], np.ndarray], z: int, depth: int, n_slices: int) -> np.ndarray:
    """What a network with ``n_slices`` input slices reads for slice ``z``: ``read(z)`` as
    it is for 1, else ``(n_slices, Y, X)``, the neighbours mirrored at the stack ends
    (:func:`z_window`), as training and every prediction path cut them."""
    if n_slices == 1:
        return read(z)
    return np.stack([read(i) for i in z_window(z, depth, n_slices // 2)])


class PlaneReader:
    """:func:`input_planes` for a walk up a stack, reading every slice once.

    A network that reads ``n_slices`` per slice needs each slice again for its
    neighbours, so a slice is kept until the walk has passed it; a 2D network
    (one slice) keeps nothing.
    """

    def __init__(self, read: Callable[[int], np.ndarray], depth: int, n_slices: int) -> None:
        self.read, self.depth, self.n_slices = read, int(depth), int(n_slices)
        self._kept: dict[int, np.ndarray] = {}

    def __call__(self, z: int) -> np.ndarray:
        if self.n_slices == 1:
            return self.read(z)
        planes = input_planes(self._kept_read, z, self.depth, self.n_slices)
        for i in [k for k in self._kept if k < z - self.n_slices // 2]:
            del self._kept[i]
        return planes

    def _kept_read(self, i: int) -> np.ndarray:
        if i not in self._kept:
            self._kept[i] = self.read(i)
        return self._kept[i]


def smooth_z(slices: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Weighted sum of a window's probability maps, in a fixed order (same bits wherever it runs)."""
    acc = slices[0] * weights[0]
    for s, w in zip(slices[1:], weights[1:]):
        acc = acc + s * w
    return acc.astype(np.float32, copy=False)


def smooth_stack(probabilities: np.ndarray, sigma: float) -> np.ndarray:
    """Every slice of an in-memory ``(Z, ...)`` array smoothed as a walk would do it."""
    if sigma <= 0 or probabilities.shape[0] < 2:
        return probabilities
    weights = z_weights(sigma)
    r = len(weights) // 2
    depth = probabilities.shape[0]
    return np.stack([smooth_z([probabilities[i] for i in z_window(z, depth, r)], weights)
                     for z in range(depth)])


def walk_z(zs: Sequence[int], depth: int, sigma: float,
           predict: Callable[[int], tuple[np.ndarray, Any]]) -> Iterator[tuple[int, np.ndarray, Any]]:
    """``(z, probabilities, predict(z))`` for each of ``zs``, in order.

    ``predict(z)`` gives slice ``z``'s probabilities (first item) and anything
    else the caller keeps per slice. With ``sigma`` > 0 the probabilities are
    the weighted mean of the neighbours' (:func:`z_window`, :func:`smooth_z`):
    each slice is predicted once and kept only while a slice still to come
    needs it, so memory holds about ``4 sigma + 1`` slices.
    """
    if sigma <= 0 or depth < 2:
        for z in zs:
            item = predict(z)
            yield z, item[0], item
        return
    weights = z_weights(sigma)
    r = len(weights) // 2
    windows = [z_window(z, depth, r) for z in zs]
    uses: dict[int, int] = {}
    for window in windows:
        for i in set(window):
            uses[i] = uses.get(i, 0) + 1
    kept: dict[int, tuple[np.ndarray, Any]] = {}
    for z, window in zip(zs, windows):
        for i in sorted(set(window)):
            if i not in kept:
                kept[i] = predict(i)
        yield z, smooth_z([kept[i][0] for i in window], weights), kept[z]
        for i in set(window):
            uses[i] -= 1
            if not uses[i]:
                del kept[i]
