"""Synthetic EM-like stacks with exact ground truth.

Used by the tests, the napari sample data and the demo: we need data that
looks like serial-section EM (packed cells separated by thin dark membranes,
dark organelles inside cells, noise) and has unambiguous labels, so that
training can be checked end-to-end without shipping real data.

The geometry is a Voronoi tessellation of jittered seed points; seeds drift
slightly from slice to slice so that neighbouring slices are similar but not
identical, as in a real stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.segmentation import relabel_sequential

__all__ = ["SyntheticStack", "synthetic_em_stack", "partial_annotation"]

# Grey levels on a 0..1 scale (x255 for uint8) before blur/noise: membranes ~40,
# cytoplasm ~175; after the PSF blur membranes average ~70, cells ~160.
_MEMBRANE_LEVEL = 0.15
_CYTOPLASM_LEVEL = 0.69
_ORGANELLE_LEVELS = (0.12, 0.36)


@dataclass
class SyntheticStack:
    """A synthetic image with its instance ground truth (0 = membrane)."""

    image: np.ndarray
    instances: np.ndarray

    @property
    def foreground(self) -> np.ndarray:
        """Cell interiors (the semantic "cell" class); membranes are background."""
        return self.instances > 0


def _validate(shape: tuple[int, ...], cell_diameter: float, membrane_width: float,
              noise: float, drift: float) -> tuple[int, ...]:
    """Reject arguments that would silently give degenerate data."""
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise ValueError(f"shape must be a tuple of 2 or 3 ints, got {shape!r}") from exc
    if len(dims) not in (2, 3) or any(d != s for d, s in zip(dims, shape)):
        raise ValueError(f"shape must be a tuple of 2 or 3 ints, got {shape!r}")
    if dims[-2] < 16 or dims[-1] < 16 or (len(dims) == 3 and dims[0] < 1):
        raise ValueError(f"Y and X must be >= 16 (and Z >= 1), got shape {shape!r}")
    if not np.isfinite(cell_diameter) or cell_diameter < 8:
        raise ValueError(f"cell_diameter must be >= 8 pixels, got {cell_diameter!r}")
    if not np.isfinite(membrane_width) or not (0 < membrane_width < cell_diameter / 3):
        raise ValueError(
            f"membrane_width must be in (0, cell_diameter / 3), got {membrane_width!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if not np.isfinite(drift) or drift < 0:
        raise ValueError(f"drift must be >= 0, got {drift!r}")
    return dims


def _jittered_seeds(ny: int, nx: int, d: float, rng: np.random.Generator) -> np.ndarray:
    """Seeds on a jittered hexagonal lattice of spacing ``d``.

    Uniform random seeds give many sliver cells; a jittered lattice gives the
    fairly regular, packed cell sizes seen in neuropil/tissue EM.  The lattice
    extends one cell beyond the image so border cells are not truncated
    Voronoi artefacts.
    """
    row_step = d * np.sqrt(3) / 2
    rows = np.arange(-d, ny + d, row_step)
    pts = []
    for i, y in enumerate(rows):
        xs = np.arange(-d, nx + d, d) + (d / 2 if i % 2 else 0.0)
        pts.append(np.column_stack([np.full(xs.shape, y), xs]))
    seeds = np.concatenate(pts)
    seeds += rng.uniform(-0.3 * d, 0.3 * d, size=seeds.shape)
    return seeds


def _interp_matrix(n: int, m: int) -> np.ndarray:
    """(n, m) cubic-spline weights mapping m corner-aligned samples to n."""
    pos = np.linspace(0.0, m - 1.0, n)[None]
    eye = np.eye(m)
    order = min(3, m - 1)
    return np.stack([ndimage.map_coordinates(eye[i], pos, order=order, mode="nearest")
                     for i in range(m)], axis=1)


def _smooth_noise(shape: tuple[int, int, int], scale: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Roughly unit-amplitude noise with features of size ~``scale`` pixels.

    A coarse random grid is upsampled separably with small matrix products;
    a full 3D spline resize of the volume is an order of magnitude slower.
    """
    coarse_shape = tuple(max(2, int(np.ceil(s / scale)) + 1) for s in shape)
    out = rng.standard_normal(coarse_shape)
    for axis, n in enumerate(shape):
        w = _interp_matrix(n, coarse_shape[axis])
        out = np.moveaxis(np.tensordot(w, out, axes=([1], [axis])), 0, axis)
    return out.astype(np.float32)


def synthetic_em_stack(
    shape: tuple[int, ...] = (16, 256, 256),
    *,
    cell_diameter: float = 32.0,
    membrane_width: float = 2.5,
    noise: float = 0.08,
    drift: float = 1.0,
    seed: int = 0,
) -> SyntheticStack:
    """Generate an EM-like stack of packed cells with dark membranes.

    ``instances`` holds 1-based cell ids that are consistent through z (a cell
    keeps its id in every slice), with membrane pixels set to 0.  Dark
    organelles are drawn inside cells but belong to the cell label, so a
    plain intensity threshold cannot solve the task while a network that uses
    shape context can.
    """
    dims = _validate(shape, cell_diameter, membrane_width, noise, drift)
    is_2d = len(dims) == 2
    nz, ny, nx = (1, *dims) if is_2d else dims
    rng = np.random.default_rng(seed)
    d = float(cell_diameter)

    # --- geometry: drifting Voronoi cells -------------------------------
    seeds = _jittered_seeds(ny, nx, d, rng)
    steps = rng.normal(0.0, drift, size=(nz, *seeds.shape))
    steps[0] = 0.0
    seeds_z = seeds[None] + np.cumsum(steps, axis=0)

    pixels = np.indices((ny, nx), dtype=np.float64).reshape(2, -1).T
    labels = np.empty((nz, ny, nx), dtype=np.int32)
    # Distance from the Voronoi boundary, ~ (d2 - d1) / 2 near the membrane.
    gap = np.empty((nz, ny, nx), dtype=np.float32)
    for z in range(nz):
        dist, idx = cKDTree(seeds_z[z]).query(pixels, k=2, workers=-1)
        labels[z] = (idx[:, 0] + 1).reshape(ny, nx)
        gap[z] = ((dist[:, 1] - dist[:, 0]) * 0.5).reshape(ny, nx)
    membrane = gap < membrane_width / 2
    labels[membrane] = 0
    instances = relabel_sequential(labels)[0].astype(np.int32, copy=False)

    # --- appearance --------------------------------------------------------
    # Per-cell brightness offset (cells differ slightly in staining).
    cell_offset = rng.normal(0.0, 0.035, size=int(instances.max()) + 1).astype(np.float32)
    img = _CYTOPLASM_LEVEL + cell_offset[instances]
    # Smooth low-frequency staining variation across the section.
    img += 0.05 * _smooth_noise((nz, ny, nx), d, rng)
    # Fine cytoplasmic granularity.
    grain = rng.standard_normal((nz, ny, nx), dtype=np.float32)
    grain = ndimage.gaussian_filter(grain, sigma=(0.7, 1.2, 1.2) if nz > 1 else (0, 1.2, 1.2))
    img += 0.12 * grain

    # Organelles/vesicles: dark blobs where a smooth 3D random field is high
    # (irregular shapes spanning a few slices, ~15% of the cytoplasm), kept
    # clear of membranes so the ground truth stays unambiguous.
    blob_sigma = (1.0 if nz > 1 else 0.0, 0.1 * d, 0.1 * d)
    field = ndimage.gaussian_filter(rng.standard_normal((nz, ny, nx), dtype=np.float32),
                                    sigma=blob_sigma)
    field /= max(float(field.std()), 1e-6)
    threshold = 1.05
    inside = (field > threshold) & (gap > membrane_width / 2 + 2.0)
    org_level = np.clip(_ORGANELLE_LEVELS[1] - 0.2 * (field - threshold),
                        _ORGANELLE_LEVELS[0], _ORGANELLE_LEVELS[1])
    img = np.where(inside, org_level + 0.3 * (img - _CYTOPLASM_LEVEL), img)

    # Membranes: dark, with slowly varying darkness along their length.
    mem_var = 0.04 * _smooth_noise((nz, ny, nx), d / 2, rng)
    img = np.where(membrane, _MEMBRANE_LEVEL + mem_var + 0.3 * (img - _CYTOPLASM_LEVEL), img)

    # Imaging: slight in-plane blur (point-spread function) and detector noise.
    img = ndimage.gaussian_filter(img, sigma=(0, 0.9, 0.9))
    if noise > 0:
        img += np.float32(noise) * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)

    if is_2d:
        return SyntheticStack(image=image[0], instances=instances[0])
    return SyntheticStack(image=image, instances=instances)


def partial_annotation(instances: np.ndarray, slices: Sequence[int]) -> np.ndarray:
    """Labels array (uint32, same shape) with only the given z-slices painted.

    Mimics a user who painted the instance ids on a few slices in napari and
    left everything else unlabelled (0).  A 2D input is treated as a single
    slice 0.
    """
    instances = np.asarray(instances)
    if instances.ndim not in (2, 3):
        raise ValueError(f"instances must be 2D or 3D, got shape {instances.shape}")
    stack = instances[None] if instances.ndim == 2 else instances
    out = np.zeros(stack.shape, dtype=np.uint32)
    nz = stack.shape[0]
    for s in slices:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise ValueError(f"slice indices must be ints, got {s!r}")
        if not -nz <= s < nz:
            raise ValueError(f"slice {s} out of range for {nz} slice(s)")
        out[s] = stack[s]
    return out[0] if instances.ndim == 2 else out
