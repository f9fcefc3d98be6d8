"""Training-time augmentation for 2D patches, following the original U-Net paper.

With only a few annotated slices, the network sees very little data, so the
paper's recipe (smooth elastic deformations on a coarse 3x3 grid, plus the
usual flips/rotations and mild intensity changes) is what makes training on
sparse annotations work at all.  A free rotation and a zoom (as nnU-Net and
MONAI add) are folded into the same warp, so they cost one more term in the
sampling coordinates, not another interpolation.  Everything here is pure
numpy/scipy so it can run inside data-loader workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["AFFINE_P", "AugmentConfig", "augment_patch", "elastic_displacement", "resolved_augment", "warp_border"]

#: Share of patches turned and zoomed where ``p_affine="auto"`` turns them on.
AFFINE_P = 0.5


def _check_range(name: str, value: tuple[float, float], *, low: float | None = None,
                 strict_low: bool = False) -> None:
    """Validate a (min, max) sampling range; fail loudly so bad configs never train."""
    if len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo > hi:
        raise ValueError(f"{name} must satisfy min <= max, got {value!r}")
    if low is not None:
        if strict_low and lo <= low:
            raise ValueError(f"{name} must be > {low}, got {value!r}")
        if not strict_low and lo < low:
            raise ValueError(f"{name} must be >= {low}, got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; defaults follow the U-Net paper (3x3 grid, 10 px std)."""

    elastic: bool = True
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    flips: bool = True
    rot90: bool = True
    intensity: bool = True
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: tuple[float, float] = (-0.15, 0.15)
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: tuple[float, float] = (0.0, 0.05)
    p_intensity: float = 0.8
    # a share p_affine of the patches is also turned by an angle up to ``rotation``
    # degrees either way (with rot90, any angle) and zoomed by a factor drawn
    # log-uniformly from ``scale`` (> 1 shows more tissue, so objects look smaller):
    # objects the paint shows at few orientations and sizes. "auto": AFFINE_P where
    # painted objects lie on a background, none for cells filling the slice
    # (resolved_augment says why)
    rotation: float = 45.0
    scale: tuple[float, float] = (0.8, 1.25)
    p_affine: float | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        # Ranges may arrive as lists (e.g. from JSON); store tuples so the
        # frozen config stays hashable and comparable.
        for name in ("contrast", "brightness", "gamma", "noise_std", "scale"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list, np.ndarray)):
                raise ValueError(f"{name} must be a (min, max) pair, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        for name in ("elastic", "flips", "rot90", "intensity"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.elastic_grid, bool) or not isinstance(self.elastic_grid, (int, np.integer)):
            raise ValueError(f"elastic_grid must be an int, got {self.elastic_grid!r}")
        if self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {self.elastic_grid}")
        if not np.isfinite(self.elastic_sigma) or self.elastic_sigma < 0:
            raise ValueError(f"elastic_sigma must be a finite number >= 0, got {self.elastic_sigma!r}")
        _check_range("contrast", self.contrast, low=0.0, strict_low=True)
        _check_range("brightness", self.brightness)
        _check_range("gamma", self.gamma, low=0.0, strict_low=True)
        _check_range("noise_std", self.noise_std, low=0.0)
        for name in ("p_intensity", "p_affine"):
            p = getattr(self, name)
            if name == "p_affine" and p == "auto":
                continue
            if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) \
                    or not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {p!r}")
        if isinstance(self.rotation, (bool, np.bool_)) or not isinstance(
                self.rotation, (int, float, np.integer, np.floating)) or not 0.0 <= float(self.rotation) <= 180.0:
            raise ValueError(f"rotation must be a number of degrees in [0, 180], got {self.rotation!r}")
        _check_range("scale", self.scale, low=0.0, strict_low=True)

    @property
    def affine_probability(self) -> float:
        """``p_affine`` as a number ("auto" not yet resolved for the data: :data:`AFFINE_P`)."""
        return AFFINE_P if self.p_affine == "auto" else float(self.p_affine)

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed dict (lists, not tuples) so it can be stored as JSON/YAML."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, tuple):
                out[key] = [float(v) for v in value]
            elif isinstance(value, str):
                out[key] = value
            elif isinstance(value, (bool, np.bool_)):
                out[key] = bool(value)
            elif isinstance(value, (int, np.integer)):
                out[key] = int(value)
            else:
                out[key] = float(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AugmentConfig":
        """Inverse of to_dict; unknown keys are an error so typos don't go unnoticed."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AugmentConfig keys: {sorted(unknown)}")
        data = dict(data)
        # a recipe written before the free rotation and zoom existed was trained without them
        data.setdefault("p_affine", 0.0)
        return cls(**data)


def resolved_augment(config: AugmentConfig | None, objects_on_background: bool) -> AugmentConfig | None:
    """The augmentation a run uses: ``p_affine="auto"`` made a number for its paint.

    The free rotation and zoom helped mitochondria on a background (Lucchi, 5
    painted slices, 5 minutes: IoU 0.864 and 0.868 against 0.858 and 0.856 on
    development slices, 0.785 and 0.817 against 0.726 and 0.779 after one
    minute) but not cells filling the slice between membranes (ISBI, 2 painted
    slices: adapted Rand error 0.055 and 0.049 against 0.042 and 0.049; a zoom
    also thins or thickens the membranes that separate them), so
    ``objects_on_background`` (:func:`~napari_unet.training.losses.objects_on_background`)
    turns it on. BENCHMARKS.md section 9 has the runs.
    """
    if config is None or config.p_affine != "auto":
        return config
    return replace(config, p_affine=AFFINE_P if objects_on_background else 0.0)


def warp_border(config: AugmentConfig | None, size: int) -> int:
    """Pixels of real image needed around a ``size`` window so its warp never reads
    mirrored window edges: the elastic displacements (up to about 1.6 sigma at a
    corner) plus, with a free rotation or zoom, how far the window's turned and
    zoomed corners reach."""
    if config is None:
        return 0
    border = int(np.ceil(1.6 * config.elastic_sigma)) if config.elastic else 0
    if config.affine_probability > 0 and (config.rotation > 0 or config.scale != (1.0, 1.0)):
        angle = np.deg2rad(min(float(config.rotation), 45.0))  # |cos| + |sin| peaks at 45 degrees
        reach = size / 2 * (np.cos(angle) + np.sin(angle)) * max(1.0, config.scale[1])
        border += max(0, int(np.ceil(reach - size / 2)))
    return border


def elastic_displacement(shape: tuple[int, int], rng: np.random.Generator,
                         grid: int = 3, sigma: float = 10.0, crop: int = 0) -> np.ndarray:
    """Dense (2, H, W) displacement field in pixels (without ``crop`` pixels each side).

    Random vectors ~ N(0, sigma) on a ``grid x grid`` lattice whose corners sit
    on the patch corners, upsampled with cubic-spline (bicubic) interpolation;
    this yields smooth, plausible tissue deformations as in the U-Net paper.
    """
    h, w = int(shape[0]), int(shape[1])
    if grid < 2 or sigma < 0:
        raise ValueError(f"need grid >= 2 and sigma >= 0, got grid={grid}, sigma={sigma}")
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    # Separable cubic interpolation: build (H, grid) and (W, grid) weight
    # matrices once by interpolating unit vectors, then two small matmuls
    # replace a full 2D spline evaluation per component.
    wy = _cubic_weights(h, grid)[crop:h - crop]
    wx = _cubic_weights(w, grid)[crop:w - crop]
    # one plain 2D product per component: numpy's broadcast (2, H, g) @ (g, W) product
    # took 30 ms for a 474-pixel window beside a training run, these took under 1 ms
    return np.stack([wy @ coarse[k] @ wx.T for k in range(2)])


_WEIGHT_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _cubic_weights(n: int, grid: int) -> np.ndarray:
    """(n, grid) matrix mapping grid values to n corner-aligned samples."""
    key = (n, grid)
    cached = _WEIGHT_CACHE.get(key)
    if cached is None:
        pos = np.linspace(0.0, grid - 1.0, n) if n > 1 else np.zeros(1)
        eye = np.eye(grid)
        cached = np.stack(
            [ndimage.map_coordinates(eye[i], pos[None], order=min(3, grid - 1), mode="nearest")
             for i in range(grid)],
            axis=1,
        )
        _WEIGHT_CACHE[key] = cached
    return cached


def _base_grid(h: int, w: int) -> np.ndarray:
    """Identity sampling grid (2, H, W); cached because patch sizes repeat every step."""
    key = (h, w)
    grid = _GRID_CACHE.get(key)
    if grid is None:
        grid = np.indices((h, w), dtype=np.float64)
        grid.setflags(write=False)
        _GRID_CACHE[key] = grid
    return grid


_GRID_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Fold integer indices into [0, n) with half-sample symmetry (scipy's "reflect")."""
    period = 2 * n
    idx = np.mod(idx, period, out=idx)
    flip = idx >= n
    idx[flip] = period - 1 - idx[flip]
    return idx


def _apply_intensity(image: np.ndarray, rng: np.random.Generator,
                     config: AugmentConfig) -> np.ndarray:
    """Contrast, brightness, gamma and noise: mimics acquisition variability between stacks."""
    img = image.astype(np.float32, copy=True)
    contrast = rng.uniform(*config.contrast)
    brightness = rng.uniform(*config.brightness)
    gamma = rng.uniform(*config.gamma)
    noise_std = rng.uniform(*config.noise_std)

    # Contrast around the mean so it does not double as a brightness change.
    mean = float(img.mean())
    img = (img - mean) * contrast + mean + brightness

    # Gamma needs non-negative input: map the patch's own range to [0, 1] and back.
    lo, hi = float(img.min()), float(img.max())
    if hi - lo > 1e-6:
        scaled = (img - lo) / (hi - lo)
        np.power(scaled, gamma, out=scaled)
        img = scaled * (hi - lo) + lo

    if noise_std > 0:
        noise = rng.standard_normal(size=img.shape, dtype=np.float32)
        noise *= noise_std
        img += noise
    return img.astype(np.float32, copy=False)


def _add_rotation_and_zoom(coords: np.ndarray, grid: np.ndarray, shape: tuple[int, int],
                           rng: np.random.Generator, config: AugmentConfig) -> None:
    """Turn and zoom the sampling coordinates about the patch centre, in place."""
    theta = np.deg2rad(rng.uniform(-config.rotation, config.rotation))
    lo, hi = config.scale
    zoom = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    dy = grid[0] - (shape[0] - 1) / 2.0
    dx = grid[1] - (shape[1] - 1) / 2.0
    c, s = np.cos(theta) * zoom, np.sin(theta) * zoom
    coords[0] += (c - 1.0) * dy - s * dx
    coords[1] += s * dy + (c - 1.0) * dx


def augment_patch(
    image: np.ndarray,
    nearest: Sequence[np.ndarray],
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
    crop: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Randomly augment one training patch and its label-like companions.

    ``crop`` pixels each side are context for the warp only: the arrays returned
    leave them out, and only the pixels returned are interpolated (see
    :func:`warp_border`).

    ``image`` is ``(H, W)`` or ``(C, H, W)`` (a slice and its neighbours, see
    ``UNetConfig.input_slices``; every plane moves the same way) and is warped
    with cubic interpolation; every array in ``nearest`` (class targets with
    -1 = ignore, weight maps) is warped with nearest-neighbour so class ids and
    weights keep their exact original values.  Geometry is identical for all
    arrays; intensity jitter touches the image only.  Deterministic given the
    state of ``rng``.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2D (H, W) or (C, H, W), got shape {image.shape}")
    h, w = image.shape[-2:]
    others = [np.asarray(a) for a in nearest]
    for i, arr in enumerate(others):
        if arr.shape != (h, w):
            raise ValueError(
                f"nearest[{i}] has shape {arr.shape}, expected image shape {(h, w)}")
    crop = int(crop)
    if not 0 <= 2 * crop < min(h, w):
        raise ValueError(f"crop {crop} leaves nothing of a {h}x{w} patch")
    img = image.astype(np.float32, copy=False)

    elastic = config.elastic and config.elastic_sigma > 0
    p_affine = config.affine_probability
    affine = p_affine > 0 and rng.random() < p_affine
    if elastic or affine:
        inner = (slice(None), slice(crop, h - crop), slice(crop, w - crop))
        coords = _base_grid(h, w)[inner].copy()
        if elastic:
            coords += elastic_displacement((h, w), rng, config.elastic_grid, config.elastic_sigma, crop)
        if affine:
            _add_rotation_and_zoom(coords, _base_grid(h, w)[inner], (h, w), rng, config)
        # One map_coordinates call per plane => the spline prefilter runs once each.
        img = np.stack([ndimage.map_coordinates(plane, coords, order=3, mode="reflect", output=np.float32)
                        for plane in img.reshape(-1, h, w)]).reshape(*img.shape[:-2], *coords.shape[1:])
        # Nearest-neighbour lookup is the same for every companion array, so
        # compute the source indices once (equivalent to order=0,
        # mode="reflect") and gather; original values/dtypes are kept exactly.
        iy = _reflect_index(np.floor(coords[0] + 0.5).astype(np.intp), h)
        ix = _reflect_index(np.floor(coords[1] + 0.5).astype(np.intp), w)
        flat = iy * w + ix
        others = [np.take(a, flat) for a in others]
    elif crop:
        img = img[..., crop:h - crop, crop:w - crop]
        others = [a[crop:h - crop, crop:w - crop] for a in others]
    h, w = img.shape[-2:]

    if config.flips:
        flip_y, flip_x = rng.random(2) < 0.5
        if flip_y:
            img = img[..., ::-1, :]
            others = [a[::-1] for a in others]
        if flip_x:
            img = img[..., ::-1]
            others = [a[:, ::-1] for a in others]

    if config.rot90:
        # Non-square patches can only be rotated by 0/180 without changing shape.
        k = int(rng.integers(4)) if h == w else 2 * int(rng.integers(2))
        if k:
            img = np.rot90(img, k, axes=(-2, -1))
            others = [np.rot90(a, k) for a in others]

    if config.intensity and rng.random() < config.p_intensity:
        img = _apply_intensity(img, rng, config)

    return (np.ascontiguousarray(img, dtype=np.float32),
            [np.ascontiguousarray(a) for a in others])
