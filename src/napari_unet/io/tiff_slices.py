"""Read a TIFF one slice at a time, whatever its size or layout.

:class:`TiffSlices` keeps peak memory at one slice for batch work on stacks
larger than memory (plain positioned reads, not a memory map, so pages read
do not pile up in resident memory) and refuses damaged files when they are
opened, not half-way through a batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from pathlib import Path
from struct import error as struct_error  # tifffile raises it for some damaged headers
from typing import Any, Iterator

import numpy as np
import tifffile

logger = logging.getLogger(__name__)

_DAMAGE_HINTS = ("invalid page offset", "corrupted", "failed to reshape", "truncated")


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
    if not ij and tif.is_shaped:
        # non-ImageJ files (uint32 labels, BigTIFF) keep z spacing and unit in
        # tifffile's shaped JSON description instead
        shaped = tif.shaped_metadata or ({},)
        ij = shaped[0] if isinstance(shaped[0], dict) else {}
    if ij.get("unit"):
        unit = str(ij["unit"])
    if (sx, sy) == (1.0, 1.0) and unit is None:
        return None, None
    if ndim == 3:
        try:
            sz = float(ij.get("spacing", 1.0)) if ij else 1.0
        except (TypeError, ValueError):
            sz = 1.0
        return (sz, sy, sx), unit
    return (sy, sx), unit


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class _ThreadMessages(logging.Handler):
    """Collect tifffile's warnings issued by one thread (others may read files at the same time)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_messages() -> Iterator[list[str]]:
    log = logging.getLogger("tifffile")
    handler = _ThreadMessages()
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


def _open_checked(path: Path) -> tuple[tifffile.TiffFile, Any, Any, str | None]:
    """Open ``path`` and refuse it now if tifffile's own warnings say it is damaged.

    Returns the open file, its first series, and its pixel spacing and unit.
    """
    name = path.name
    with _tifffile_messages() as messages:
        try:
            tif = tifffile.TiffFile(path)
        except (OSError, ValueError, TypeError, IndexError, KeyError, struct_error) as exc:
            raise ValueError(f"cannot read {name} as a TIFF file: {_one_line(exc)}") from None
        try:
            if not tif.series:
                raise ValueError(f"{name} holds no image")
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            ij_images = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
            spacing, unit = _spacing(tif, len(shape))
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, struct_error) as exc:
            tif.close()
            raise ValueError(f"cannot read {name} as a TIFF file: {_one_line(exc)}") from None
    damage = [m for m in messages if any(h in m.lower() for h in _DAMAGE_HINTS)]
    planes = math.prod(shape[:-2]) if len(shape) > 2 else 1
    if not damage and ij_images is not None and int(ij_images) != planes:
        damage = [f"ImageJ metadata announces {ij_images} images, the file holds {planes}"]
    if damage:
        tif.close()
        raise ValueError(f"{name} is corrupt or truncated ({damage[0]})")
    return tif, series, spacing, unit


class TiffSlices:
    """A 2D or 3D TIFF opened for reading one slice at a time.

    Peak memory is one slice whatever the stack's depth: uncompressed
    contiguous data (including ImageJ files over 4 GB) is read with plain
    positioned reads at the slice's offset, one-page-per-slice files
    (compressed or not) decode one page per access. Damaged files (truncated,
    inconsistent metadata, shape not 2D/3D grey) raise ``ValueError`` when
    opened, not half-way through a batch.

    Indexing follows numpy for what :class:`~napari_unet.model.normalization.Normalization`
    and the engine use: ``stack[z]``, ``stack[z, ::4, ::4]``, ``stack[a:b]``.
    Not thread-safe beyond a lock around each read; open one per thread.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache2d: np.ndarray | None = None
        self._zarr: Any = None
        self._tif, self._series, self.spacing, self.unit = _open_checked(self.path)
        self.shape: tuple[int, ...] = tuple(int(s) for s in self._series.shape)
        self.dtype = np.dtype(self._series.dtype)
        self._mode = self._pick_mode()

    # ---------------------------------------------------------------- set-up
    def _pick_mode(self) -> str:
        series, shape = self._series, self.shape
        if len(shape) not in (2, 3):
            return "eager"  # the caller rejects the shape; nothing big is read here
        page = series.keyframe
        offset = series.dataoffset
        if (
            offset is not None
            and page.compression == 1
            and self.dtype != np.dtype(bool)
            and page.bitspersample == self.dtype.itemsize * 8
        ):
            end = int(offset) + math.prod(shape) * self.dtype.itemsize
            size = self.path.stat().st_size
            if size < end:
                self.close()
                raise ValueError(
                    f"{self.path.name} is truncated: its image data ends at byte {end}, "
                    f"the file has {size} bytes"
                )
            self._offset = int(offset)
            self._fh = self._tif.filehandle
            self._file_dtype = self.dtype.newbyteorder(self._tif.byteorder)
            return "offset"
        if len(shape) == 2 or (len(series.pages) == shape[0] and tuple(page.shape) == shape[1:]):
            return "pages"
        try:
            import zarr

            self._zarr = zarr.open(self._tif.aszarr(series=0), mode="r")
            if not hasattr(self._zarr, "shape"):  # a pyramid group: level 0
                self._zarr = self._zarr[0]
            return "zarr"
        except (ImportError, ValueError, TypeError, KeyError, OSError) as exc:
            logger.warning("%s: reading the whole stack into memory (%s)", self.path.name, exc)
            return "eager"

    # ---------------------------------------------------------------- access
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def slice(self, z: int) -> np.ndarray:
        """Slice ``z`` of a 3D stack, or the image of a 2D file (``z == 0``), as a new array."""
        if self._tif is None:
            raise ValueError(f"{self.path.name} is closed")
        depth = 1 if self.ndim == 2 else self.shape[0]
        z = int(z)
        if z < 0:
            z += depth
        if not 0 <= z < depth:
            raise IndexError(f"slice {z} is outside the stack (0..{depth - 1})")
        if self.ndim == 2:
            if self._cache2d is None:
                self._cache2d = self._read_whole()
            return self._cache2d.copy()
        with self._lock:
            if self._mode == "offset":
                out = np.empty(self.shape[1:], dtype=self._file_dtype)
                self._fh.seek(self._offset + z * out.nbytes)
                n = self._fh.readinto(memoryview(out).cast("B"))
                if n != out.nbytes:
                    raise ValueError(f"{self.path.name} is truncated at slice {z}")
                return out.astype(self.dtype, copy=False) if out.dtype != self.dtype else out
            if self._mode == "pages":
                return np.asarray(self._tif.asarray(series=0, key=z)).reshape(self.shape[1:])
            if self._mode == "zarr":
                return np.asarray(self._zarr[z])
            return np.asarray(self._read_whole()[z])

    def _read_whole(self) -> np.ndarray:
        with self._lock:
            if self._mode == "zarr":
                return np.asarray(self._zarr[...])
            return np.asarray(self._tif.asarray(series=0))

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if self.ndim == 2:
            return self.slice(0)[key]
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self.slice(int(first))[rest] if rest else self.slice(int(first))
        if isinstance(first, slice):
            zs = range(*first.indices(self.shape[0]))
            parts = [self.slice(z)[rest] if rest else self.slice(z) for z in zs]
            if parts:
                return np.stack(parts)
            return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
        if first is Ellipsis and not rest:
            return self[:]
        raise TypeError(f"unsupported index {key!r}; index the first axis with an int or a slice")

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[:] if self.ndim == 3 else self.slice(0)
        return data if dtype is None else data.astype(dtype, copy=False)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None
        self._zarr = None
        self._cache2d = None

    def __enter__(self) -> TiffSlices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TiffSlices({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, mode={self._mode!r})"


def open_slices(path: str | os.PathLike) -> TiffSlices:
    """Open a TIFF for slice-by-slice reading; see :class:`TiffSlices`."""
    return TiffSlices(path)

