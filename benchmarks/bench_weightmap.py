"""Benchmark: cropped boundary_weight_map vs the naive per-instance whole-slice EDT.

The naive peer is the version most U-Net tutorials show: one Euclidean
distance transform of the *whole slice* per instance, then the two smallest
distances per pixel.  Its cost grows as n_instances * n_pixels; the library
computes each instance's EDT only in its bounding box grown by the cut-off
radius, so the cost grows with the objects' size instead.

Both run on one thread (BLAS/OpenMP pinned to 1 before numpy is imported; the
scipy EDT is single-threaded anyway).  Example:

    PYTHONPATH=src python benchmarks/bench_weightmap.py --size 512 --instances 300
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from napari_unet.training.weightmap import boundary_weight_map, class_balance_weights  # noqa: E402


def voronoi_labels(size: int, n_instances: int, membrane: int, seed: int) -> np.ndarray:
    """Voronoi cells from random seeds (nearest seed via cKDTree), EM-like membranes.

    ``membrane`` > 0 turns pixels at cell boundaries into background, dilated
    to about that width; 0 leaves the cells touching.
    """
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, size, size=(n_instances, 2))
    yy, xx = np.mgrid[:size, :size]
    _, idx = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]))
    labels = (idx + 1).reshape(size, size).astype(np.int32)
    if membrane > 0:
        edge = np.zeros(labels.shape, dtype=bool)
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        if membrane > 1:
            edge = ndimage.binary_dilation(edge, iterations=membrane - 1)
        labels[edge] = 0
    return labels


def naive_weight_map(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Tutorial version: a full-slice EDT per instance (same conventions as the library)."""
    valid = np.ones(instances.shape, dtype=bool)
    weights = class_balance_weights((instances > 0).astype(np.int64), valid).astype(np.float64)
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    for i in np.unique(instances):
        if i == 0:
            continue
        d = ndimage.distance_transform_edt(instances != i) - 0.5
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    bg = instances == 0
    weights[bg] += w0 * np.exp(-((d1[bg] + d2[bg]) ** 2) / (2 * sigma**2))
    return weights.astype(np.float32)


def time_it(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Median wall time over `repeats` runs (plus the last result)."""
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="slice is size x size")
    parser.add_argument("--instances", type=int, default=300, help="number of Voronoi cells")
    parser.add_argument("--membrane", type=int, default=2, help="membrane width, 0 = touching")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--w0", type=float, default=10.0)
    parser.add_argument("--sigma", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="small smoke run (256 px, 80 cells, 2 repeats)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.instances, args.repeats = 256, 80, 2

    labels = voronoi_labels(args.size, args.instances, args.membrane, args.seed)
    n_obj = len(np.unique(labels)) - 1
    bg_frac = float(np.mean(labels == 0))
    print(
        f"slice {args.size}x{args.size}, {n_obj} instances, membrane={args.membrane}px"
        f" (background {bg_frac:.1%}), w0={args.w0}, sigma={args.sigma},"
        f" median of {args.repeats}, 1 thread"
    )

    def fast() -> np.ndarray:
        return boundary_weight_map(labels, w0=args.w0, sigma=args.sigma)

    def naive() -> np.ndarray:
        return naive_weight_map(labels, args.w0, args.sigma)

    fast()  # warm-up (imports, page faults)
    t_fast, w_fast = time_it(fast, args.repeats)
    t_naive, w_naive = time_it(naive, args.repeats)
    diff = float(np.max(np.abs(w_fast - w_naive)))

    print(f"{'implementation':<40} {'median [ms]':>12} {'speed-up':>9}")
    print(f"{'naive: full-slice EDT per instance':<40} {t_naive * 1e3:>12.1f} {1.0:>8.1f}x")
    print(
        f"{'boundary_weight_map (cropped EDT)':<40} {t_fast * 1e3:>12.1f}"
        f" {t_naive / t_fast:>8.1f}x"
    )
    print(f"max |fast - naive| = {diff:.3g}  (weights range {w_fast.min():.3f}..{w_fast.max():.3f})")


if __name__ == "__main__":
    main()
