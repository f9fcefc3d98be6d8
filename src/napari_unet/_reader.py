"""napari reader for TIFF stacks: lazy, and with the pixel size from the file.

Electron-microscopy stacks are often larger than memory. The engine's
:func:`~napari_unet.io.tiff.read_tiff` memory-maps uncompressed files and
wraps compressed ones in tifffile's zarr store, so napari reads only the
slices it shows. Other files get ``None`` so that napari's built-in reader
(and other plugins) stay available.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]

_SUFFIXES = (".tif", ".tiff")

#: Spellings of units found in ImageJ/TIFF metadata -> names napari (pint) understands.
_UNITS = {
    "micron": "micrometer",
    "micrometer": "micrometer",
    "microns": "micrometer",
    "um": "micrometer",
    "µm": "micrometer",
    "\u03bcm": "micrometer",
    "\\u00b5m": "micrometer",
    "nm": "nanometer",
    "nanometer": "nanometer",
    "nanometers": "nanometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
}


def _single_path(path: Any) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None  # stacks of files are left to napari's built-in reader
        path = path[0]
    try:
        p = Path(path)
    except TypeError:
        return None
    return p if p.suffix.lower() in _SUFFIXES else None


def napari_get_reader(path: Any) -> ReaderFunction | None:
    """Return a reader for a single .tif/.tiff file, else None."""
    p = _single_path(path)
    if p is None or not p.is_file():
        return None
    return read_tiff_layers


def napari_get_zarr_reader(path: Any) -> ReaderFunction | None:
    """Return a reader for one OME-Zarr image or plain zarr array (a directory), else None."""
    from .io.zarr_volume import is_zarr

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        ok = is_zarr(path)
    except TypeError:
        return None
    return read_zarr_layers if ok else None


def read_zarr_layers(path: Any) -> list[LayerData]:
    """Full-resolution level as one lazy layer with its NGFF scale; our outputs open as Labels."""
    from .io.zarr_volume import ZarrVolume, zarr_stem

    path = path[0] if isinstance(path, (list, tuple)) else path
    volume = ZarrVolume(path)
    stem = zarr_stem(path)
    kwargs: dict[str, Any] = {"name": stem, "metadata": {"path": str(path)}}
    if volume.spacing is not None:
        kwargs["scale"] = tuple(float(s) for s in volume.spacing)
        unit = _napari_unit(volume.unit)
        if unit is not None:
            kwargs["units"] = (unit,) * len(kwargs["scale"])
    data = volume.array if volume.array.ndim == volume.ndim else volume[...]
    kind = "labels" if stem.endswith(("_labels", "_instances")) else "image"
    if kind == "image" and volume.dtype == "uint8":
        kwargs["contrast_limits"] = (0, 255)
    return [(data, kwargs, kind)]


def _napari_unit(unit: str | None) -> str | None:
    """A unit napari can show on its scale bar, or None when unknown."""
    return _UNITS.get(unit.strip().lower()) if unit else None


def _looks_rgb(shape: tuple[int, ...]) -> bool:
    """napari's own guess: a last axis of 3 or 4 behind two real image axes."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) >= 16


def _layer_scale(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[float, ...]:
    """One scale value per layer axis (RGB layers have no scale for the colour axis)."""
    layer_ndim = len(shape) - 1 if _looks_rgb(shape) else len(shape)
    spatial = tuple(float(s) for s in spacing)
    if _looks_rgb(shape):
        spatial = spatial[-2:]
    spatial = spatial[-layer_ndim:]
    return (1.0,) * (layer_ndim - len(spatial)) + spatial


def read_tiff_layers(path: Any) -> list[LayerData]:
    """Open the file as one lazy Image layer; scale from its resolution metadata."""
    from .io.tiff import read_tiff

    p = _single_path(path)
    if p is None:
        raise ValueError(f"not a TIFF file: {path!r}")
    stack = read_tiff(p, lazy=True)
    data = stack.data
    kwargs: dict[str, Any] = {"name": p.stem, "metadata": {"path": str(p)}}
    shape = tuple(int(n) for n in data.shape)
    if stack.spacing is not None:
        # the file's spacing covers the last axes (z, y, x) or (y, x); leading axes get 1
        kwargs["scale"] = _layer_scale(shape, stack.spacing)
        unit = _napari_unit(stack.unit)
        if unit is not None:
            kwargs["units"] = (unit,) * len(kwargs["scale"])
        if stack.unit:
            kwargs["metadata"]["unit"] = stack.unit
    if getattr(data, "dtype", None) is not None and str(data.dtype) == "uint8":
        kwargs["contrast_limits"] = (0, 255)  # spares napari a pass over a lazy stack
    logger.debug("read %s: shape %s, scale %s", p, data.shape, kwargs.get("scale"))
    return [(data, kwargs, "image")]
