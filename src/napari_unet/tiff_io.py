"""TIFF stacks in and out: lazy reading, atomic writing, resolution kept.

Reading memory-maps uncompressed files and otherwise goes through tifffile's
zarr store, so a stack larger than memory is read one slice at a time.
Writing goes to a temporary file in the target folder and is renamed into
place, so a crash never leaves a half-written output under the final name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class TiffStack:
    data: Any  # np.ndarray, np.memmap or a zarr array: (Z, Y, X) or (Y, X)
    spacing: tuple[float, ...] | None  # physical pixel size per axis (z, y, x) or (y, x), if known
    unit: str | None


def _spacing(tif: tifffile.TiffFile, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Pixel size from ImageJ metadata or the TIFF resolution tags (pixels per unit)."""
    page = tif.pages.first
    try:
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
    except KeyError:
        return None, None
    try:
        sx = xres[1] / xres[0]
        sy = yres[1] / yres[0]
    except (ZeroDivisionError, TypeError, IndexError):
        return None, None
    if not (np.isfinite(sx) and np.isfinite(sy)) or sx <= 0 or sy <= 0:
        return None, None
    unit = None
    ij = tif.imagej_metadata or {}
    if ij.get("unit"):
        unit = str(ij["unit"])
    if (sx, sy) == (1.0, 1.0) and unit is None:
        return None, None
    if ndim == 3:
        sz = float(ij.get("spacing", 1.0)) if ij else 1.0
        return (sz, sy, sx), unit
    return (sy, sx), unit


def read_tiff(path: str | os.PathLike, *, lazy: bool = True) -> TiffStack:
    """Open a 2D or 3D TIFF; ``lazy`` memory-maps or wraps it in a zarr store when possible."""
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        ndim = len(series.shape)
        spacing, unit = _spacing(tif, ndim)
    data: Any = None
    if lazy:
        try:
            data = tifffile.memmap(path, mode="r")
        except (ValueError, OSError):
            data = None
        if data is None:
            try:
                import zarr

                store = tifffile.imread(path, aszarr=True)
                data = zarr.open(store, mode="r")
                if not hasattr(data, "shape"):  # a group for pyramids: take level 0
                    data = data[0]
            except Exception:  # zarr missing or unsupported layout: read eagerly
                data = None
    if data is None:
        data = tifffile.imread(path)
    return TiffStack(data, spacing, unit)


def write_tiff(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str | None = None,
    compression: str | None = "zlib",
    overwrite: bool = False,
) -> Path:
    """Write ``data`` atomically; refuses to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    kwargs: dict[str, Any] = {}
    if spacing is not None:
        sy, sx = spacing[-2:]
        kwargs["resolution"] = (1.0 / sx, 1.0 / sy)
        meta: dict[str, Any] = {"axes": "ZYX" if data.ndim == 3 else "YX"}
        if unit:
            meta["unit"] = unit
        if data.ndim == 3 and len(spacing) == 3:
            meta["spacing"] = spacing[0]
        kwargs["metadata"] = meta
        if data.dtype in (np.uint8, np.uint16, np.float32):  # ImageJ can open these with units
            kwargs["imagej"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.tif", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, compression=compression, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
