"""TIFF stacks in and out: lazy reading, atomic writing, resolution kept.

Reading memory-maps uncompressed files and otherwise goes through tifffile's
zarr store, so a stack larger than memory is read one slice at a time.
Writing goes to a temporary file in the target folder and is renamed into
place, so a crash never leaves a half-written output under the final name.

For batch work on stacks larger than memory, :class:`TiffSlices` reads one
slice per access (plain file reads, not a memory map, so the pages read do
not pile up in the process's resident memory) and :class:`TiffPageWriter`
writes a stack page by page from a background thread, compressing as it
goes, then renames it into place.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error  # tifffile raises it for some damaged headers
from typing import Any, Iterable, Iterator

import numpy as np
import tifffile

from ._atomic import atomic_path, temp_beside

logger = logging.getLogger(__name__)

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
    with atomic_path(path) as tmp:
        # grey always: tifffile would take a (3, Y, X) stack for a planar RGB image
        tifffile.imwrite(tmp, data, compression=compression, photometric="minisblack", **kwargs)
    return path


# ---------------------------------------------------------------------------
# Streaming: slice-by-slice reading and page-by-page writing

#: tifffile reports damaged files through its logger and carries on with
#: whatever it could parse (e.g. a truncated stack becomes its first page);
#: these messages mean the file is not what it claims to be.
_DAMAGE_HINTS = ("invalid page offset", "corrupted", "failed to reshape", "truncated")

#: Above this many uncompressed bytes an output is written as BigTIFF: the
#: compressed size is unknown in advance and classic TIFF stops at 4 GiB.
_BIGTIFF_BYTES = 2**32 - 2**25

#: dtypes ImageJ/Fiji open as a plain stack with units.
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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
        name = self.path.name
        self._lock = threading.Lock()
        self._cache2d: np.ndarray | None = None
        self._zarr: Any = None
        with _tifffile_messages() as messages:
            try:
                tif = tifffile.TiffFile(self.path)
            except (OSError, ValueError, TypeError, IndexError, KeyError, struct_error) as exc:
                raise ValueError(f"cannot read {name} as a TIFF file: {_one_line(exc)}") from None
            try:
                if not tif.series:
                    raise ValueError(f"{name} holds no image")
                series = tif.series[0]
                shape = tuple(int(s) for s in series.shape)
                dtype = np.dtype(series.dtype)
                ij_images = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
                self.spacing, self.unit = _spacing(tif, len(shape))
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
        self._tif = tif
        self._series = series
        self.shape: tuple[int, ...] = shape
        self.dtype = dtype
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


def tiff_write_options(
    shape: tuple[int, ...],
    dtype: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str | None = None,
    compression: str | None = "zlib",
) -> dict[str, Any]:
    """tifffile keywords for a stack: ImageJ layout when Fiji can read it, BigTIFF when needed.

    Resolution, z spacing and unit are stored in the ImageJ description (uint8,
    uint16, float32) or in tifffile's shaped JSON description (other dtypes
    and BigTIFF), and :func:`read_tiff`/:class:`TiffSlices` read both back.
    """
    dtype = np.dtype(dtype)
    bigtiff = math.prod(shape) * dtype.itemsize > _BIGTIFF_BYTES
    meta: dict[str, Any] = {"axes": "ZYX" if len(shape) == 3 else "YX"}
    if unit:
        meta["unit"] = str(unit)
    if spacing is not None and len(shape) == 3 and len(spacing) == 3:
        meta["spacing"] = float(spacing[0])
    kwargs: dict[str, Any] = {
        "photometric": "minisblack",  # a (3, Y, X) stack is not a planar RGB image
        "bigtiff": bigtiff,
        "imagej": dtype in _IMAGEJ_DTYPES and not bigtiff,
        "metadata": meta,
        "compression": compression,
    }
    if spacing is not None:
        sy, sx = (float(v) for v in spacing[-2:])
        if sy > 0 and sx > 0:
            kwargs["resolution"] = (1.0 / sx, 1.0 / sy)
    return kwargs


def _check_page_shape(shape: Any) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"can write 2D (Y, X) or 3D (Z, Y, X) stacks, got shape {shape}")
    return shape


def write_tiff_pages(
    path: str | os.PathLike,
    pages: Iterable[np.ndarray],
    shape: tuple[int, ...],
    dtype: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    unit: str | None = None,
    compression: str | None = "zlib",
    overwrite: bool = False,
) -> Path:
    """Write a stack from an iterable of ``shape[-2:]`` pages, atomically, one page in memory."""
    path = Path(path)
    shape = _check_page_shape(shape)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    kwargs = tiff_write_options(shape, dtype, spacing=spacing, unit=unit, compression=compression)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, iter(pages), shape=shape, dtype=np.dtype(dtype), **kwargs)
    return path


class _Abort(Exception):
    """Raised inside the writer thread's page iterator to stop tifffile."""


_STOP = object()


class TiffPageWriter:
    """Write a 2D image or (Z, Y, X) stack one page at a time; nothing appears until :meth:`commit`.

    Pages go through a short queue to a thread that runs tifffile (which
    compresses them while the caller computes the next page), into a hidden
    temporary file beside ``path``. :meth:`commit` waits for the last page
    and renames the file into place; :meth:`abort` (or leaving the ``with``
    block without committing) deletes it, so an interrupted job never leaves
    a partial output under the final name.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, ...],
        dtype: Any,
        *,
        spacing: tuple[float, ...] | None = None,
        unit: str | None = None,
        compression: str | None = "zlib",
        overwrite: bool = False,
        queue_size: int = 2,
    ) -> None:
        self.path = Path(path)
        self.shape = _check_page_shape(shape)
        self.dtype = np.dtype(dtype)
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.n_pages = self.shape[0] if len(self.shape) == 3 else 1
        self._kwargs = tiff_write_options(
            self.shape, self.dtype, spacing=spacing, unit=unit, compression=compression
        )
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._error: BaseException | None = None
        self._written = 0
        self._state = "open"  # -> "committed" | "aborted"
        self.tmp = temp_beside(self.path)
        self._thread = threading.Thread(
            target=self._run, name=f"tiff-writer:{self.path.name}", daemon=True
        )
        self._thread.start()

    def _pages(self) -> Iterator[np.ndarray]:
        for _ in range(self.n_pages):
            item = self._queue.get()
            if item is _STOP:
                raise _Abort()
            yield item

    def _run(self) -> None:
        try:
            tifffile.imwrite(self.tmp, self._pages(), shape=self.shape, dtype=self.dtype, **self._kwargs)
        except BaseException as exc:  # handed to the caller's thread by write()/commit()
            self._error = exc

    @property
    def pages_written(self) -> int:
        return self._written

    def _raise_error(self) -> None:
        if self._error is not None and not isinstance(self._error, _Abort):
            raise OSError(f"writing {self.path.name} failed: {_one_line(self._error)}") from self._error

    def write(self, page: np.ndarray) -> None:
        """Queue the next page (do not modify the array afterwards)."""
        if self._state != "open":
            raise ValueError(f"the writer for {self.path.name} is {self._state}")
        if self._written >= self.n_pages:
            raise ValueError(f"all {self.n_pages} pages of {self.path.name} are already written")
        page = np.asarray(page)
        if page.shape != self.shape[-2:]:
            raise ValueError(f"page shape {page.shape} does not match {self.shape[-2:]}")
        if page.dtype != self.dtype:
            if not np.can_cast(page.dtype, self.dtype, "same_kind"):
                raise ValueError(f"cannot write {page.dtype} pages to a {self.dtype} file")
            page = page.astype(self.dtype)
        page = np.ascontiguousarray(page)
        while True:
            self._raise_error()
            if not self._thread.is_alive():
                raise OSError(f"the writer for {self.path.name} stopped unexpectedly")
            try:
                self._queue.put(page, timeout=0.2)
                break
            except queue.Full:
                continue
        self._written += 1

    def finish(self) -> Path:
        """Wait until every page is on disk; returns the (still temporary) file."""
        if self._state != "open":
            raise ValueError(f"the writer for {self.path.name} is {self._state}")
        if self._written != self.n_pages:
            raise ValueError(
                f"{self.path.name}: {self._written} of {self.n_pages} pages written; cannot finish"
            )
        self._thread.join()
        self._raise_error()
        return self.tmp

    def commit(self) -> Path:
        """Finish and rename into place; returns the final path."""
        self.finish()
        if self.path.exists() and not self.overwrite:
            self.abort()
            raise FileExistsError(f"{self.path} appeared meanwhile; not replacing it")
        os.replace(self.tmp, self.path)
        self._state = "committed"
        return self.path

    def abort(self) -> None:
        """Stop writing and delete the temporary file (no-op once committed)."""
        if self._state != "open":
            return
        self._state = "aborted"
        if self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._queue.put(_STOP)
            self._thread.join(timeout=60)
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TiffPageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
