"""TIFF stacks in and out: lazy reading, atomic writing, resolution kept.

Reading memory-maps uncompressed files and otherwise goes through tifffile's
zarr store, so a stack larger than memory is read one slice at a time.
Writing goes to a temporary file in the target folder and is renamed into
place, so a crash never leaves a half-written output under the final name.

For batch work on stacks larger than memory,
:class:`~napari_unet.io.tiff_slices.TiffSlices` reads one slice per access
and :class:`TiffPageWriter` writes a stack page by page from a background
thread, compressing as it goes, then renames it into place.
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
from typing import Any, Iterable, Iterator

import numpy as np
import tifffile

from ._atomic import atomic_path, temp_beside
from .tiff_slices import _one_line, _spacing

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class TiffStack:
    data: Any  # np.ndarray, np.memmap or a zarr array: (Z, Y, X) or (Y, X)
    spacing: tuple[float, ...] | None  # physical pixel size per axis (z, y, x) or (y, x), if known
    unit: str | None



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

#: Above this many uncompressed bytes an output is written as BigTIFF: the
#: compressed size is unknown in advance and classic TIFF stops at 4 GiB.
_BIGTIFF_BYTES = 2**32 - 2**25

#: dtypes ImageJ/Fiji open as a plain stack with units.
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))



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
