"""Checks at the edges of the core: clear ``ValueError``s that say what to do.

Everything a user can hand in (arrays from napari layers, TIFF files, numbers
typed into a widget) passes through here before any heavy work starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Smallest image edge the engine accepts; smaller inputs are mirror-padded
#: for the network, but below this there is nothing to learn or segment.
MIN_EDGE = 16


def as_stack(image: Any, name: str = "image") -> np.ndarray:
    """Return ``image`` as a (Z, Y, X) array (a 2D image becomes Z = 1) without copying.

    Lazy arrays (memmaps, zarr) keep their type when they are already 3D.
    """
    shape = tuple(getattr(image, "shape", ()))
    if not shape:
        image = np.asarray(image)
        shape = image.shape
    ndim = len(shape)
    if ndim >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) >= MIN_EDGE:
        raise ValueError(
            f"{name} looks like an RGB(A) image of shape {shape}; the U-Net takes one grey "
            "channel. Convert it first, e.g. skimage.color.rgb2gray(image), or pick a single "
            "channel."
        )
    if ndim not in (2, 3):
        raise ValueError(
            f"{name} must be 2D (Y, X) or 3D (Z, Y, X); got shape {shape}. For multichannel or "
            "time-lapse data, select one channel / time point first."
        )
    if min(shape[-2:]) < MIN_EDGE:
        raise ValueError(
            f"{name} of shape {shape} is too small: each slice must be at least "
            f"{MIN_EDGE} x {MIN_EDGE} pixels."
        )
    if ndim == 3 and shape[0] < 1:
        raise ValueError(f"{name} has no slices (shape {shape})")
    dtype = np.dtype(getattr(image, "dtype", np.float32))
    if dtype.kind not in "uifb":
        raise ValueError(f"{name} has dtype {dtype}; expected an integer or float array")
    if ndim == 2:
        return np.asarray(image)[None]
    return image


def check_finite(slice_: np.ndarray, name: str = "image", where: str = "") -> None:
    """Raise if a float slice holds NaN or inf (integers cannot)."""
    if slice_.dtype.kind == "f" and not np.isfinite(slice_).all():
        raise ValueError(
            f"{name} contains NaN or infinite values{where}; replace them first, e.g. "
            "np.nan_to_num(image)."
        )


def check_labels(labels: Any, image_shape: tuple[int, ...], name: str = "labels") -> np.ndarray:
    """Validate an annotation array against its image; return it as (Z, Y, X)."""
    arr = np.asarray(labels)
    if arr.dtype.kind == "f":
        raise ValueError(
            f"{name} has float dtype {arr.dtype}; annotations must be integer ids. If the "
            "values are whole numbers, convert with labels.astype(np.uint32)."
        )
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "ui":
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != tuple(image_shape):
        raise ValueError(
            f"{name} shape {np.shape(labels)} does not match the image shape "
            f"{tuple(image_shape)}; paint the annotations on a Labels layer created for this image."
        )
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{name} contains negative ids; annotation ids must be >= 0")
    return arr


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; 2.5, "abc" and True are errors, not truncated.

    A whole float (256.0 from a spin box or a JSON file) is fine.
    """
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)
