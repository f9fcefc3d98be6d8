"""Read and write zarr volumes (OME-Zarr / NGFF and plain zarr v2/v3 arrays) lazily.

:class:`ZarrVolume` looks to the prediction engine like
:class:`~napari_unet.io.tiff_slices.TiffSlices` (``shape``, ``dtype``,
``ndim``, ``stack[z]``, ``stack[z, ::4, ::4]``, ``stack[a:b]``, ``spacing``,
``unit``): only the chunks a slice touches are read, so volumes far larger
than memory (or than one machine's disk, on a shared file system) are fine.
:func:`create_ome_zarr` makes an empty single-level OME-Zarr image that
prediction blocks fill in place; its NGFF metadata is written by the
``ome-zarr`` library, not by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

#: NGFF axis units (UDUNITS-2 names) for the spellings found in TIFF/ImageJ metadata.
_NGFF_UNITS = {
    "nm": "nanometer", "nanometer": "nanometer", "nanometers": "nanometer",
    "um": "micrometer", "µm": "micrometer", "\u03bcm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "micrometer": "micrometer", "mm": "millimeter",
    "millimeter": "millimeter", "angstrom": "angstrom",
}
#: Output chunk edge in y and x (z chunks follow the prediction block size).
XY_CHUNK = 512
ZARR_SUFFIXES = (".ome.zarr", ".zarr")


def is_zarr(path: str | os.PathLike) -> bool:
    """A directory holding a zarr v2/v3 array or group (named ``*.zarr`` or not)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() == ".zarr" or any(
        (p / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup")
    )


def zarr_stem(path: str | os.PathLike) -> str:
    """``vol`` for ``vol.ome.zarr`` or ``vol.zarr`` (output names follow batch's ``<stem>_labels``)."""
    name = Path(path).name
    for suffix in ZARR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """NGFF 0.5 keeps metadata under ``ome``; 0.4 and earlier at the top level."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return attrs.get("multiscales")


def _scale_of(multiscale: dict[str, Any], dataset: dict[str, Any], ndim: int) -> list[float] | None:
    """Physical size per axis: the dataset's scale times the multiscale's global one."""
    scale = np.ones(ndim)
    found = False
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for t in transforms or []:
            if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
                scale = scale * np.asarray(t["scale"], dtype=float)
                found = True
    return [float(s) for s in scale] if found else None


class ZarrVolume:
    """A (Z, Y, X) or (Y, X) zarr array read slice by slice, with its physical scale.

    ``level`` picks a multiscale level of an OME-Zarr image (0 = full
    resolution). Leading axes of size 1 (``t``, ``c`` in NGFF images) are
    dropped; anything else beyond three axes is refused.
    """

    def __init__(self, path: str | os.PathLike, level: int = 0) -> None:
        import zarr

        self.path = Path(path)
        self.level = int(level)
        node = zarr.open(str(self.path), mode="r")
        self.spacing: tuple[float, ...] | None = None
        self.unit: str | None = None
        self.axes: list[str] | None = None
        if isinstance(node, zarr.Group):
            node = self._open_level(node)
        elif self.level != 0:
            raise ValueError(f"{self.path.name} is a plain zarr array: it has no level {level}")
        self.array = node
        self._lead = 0
        while len(node.shape) - self._lead > 3 and node.shape[self._lead] == 1:
            self._lead += 1
        if len(node.shape) - self._lead not in (2, 3):
            raise ValueError(
                f"{self.path.name}: expected a 2D or 3D volume, got shape {tuple(node.shape)}"
            )
        if self.spacing is not None:
            self.spacing = self.spacing[self._lead:]

    def _open_level(self, group: Any) -> Any:
        multiscales = _multiscales(dict(group.attrs))
        if not multiscales:
            raise ValueError(f"{self.path.name} is a zarr group without OME-Zarr multiscales metadata")
        ms = multiscales[0]
        datasets = ms.get("datasets", [])
        if not 0 <= self.level < len(datasets):
            raise ValueError(f"{self.path.name} has levels 0..{len(datasets) - 1}, not {self.level}")
        array = group[datasets[self.level]["path"]]
        axes = ms.get("axes") or []
        self.axes = [a["name"] if isinstance(a, dict) else str(a) for a in axes] or None
        scale = _scale_of(ms, datasets[self.level], len(array.shape))
        if scale is not None:
            self.spacing = tuple(scale)
        units = [a.get("unit") for a in axes if isinstance(a, dict) and a.get("type") == "space"]
        self.unit = next((u for u in units if u), None)
        return array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape[self._lead:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self.array[(0,) * self._lead + key])

    def slice(self, z: int) -> np.ndarray:
        return self[z] if self.ndim == 3 else self[...]

    def close(self) -> None:
        """Nothing to release (zarr opens chunk files per read); here for TiffSlices' API."""

    def __enter__(self) -> ZarrVolume:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def ngff_unit(unit: str | None) -> str | None:
    """The NGFF (UDUNITS-2) spelling of a unit, or None when unknown."""
    return _NGFF_UNITS.get(unit.strip().lower()) if unit else None


def create_ome_zarr(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    chunk_z: int,
    chunk_xy: int | None = None,
    spacing: tuple[float, ...] | None = None,
    unit: str | None = None,
    attrs: dict[str, Any] | None = None,
) -> Any:
    """An empty (fill 0) single-level OME-Zarr 0.5 image at ``path``; returns its array ``0``.

    Chunks are ``chunk_z`` deep (so blocks of that many slices never share
    a chunk) and ``chunk_xy`` (default :data:`XY_CHUNK`) at most wide, so
    xy blocks of that edge never share one either; zstd-compressed.
    """
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata
    from zarr.codecs import BloscCodec

    names = "zyx"[-len(shape):]
    chunks = ((chunk_z,) if len(shape) == 3 else ()) + tuple(min(n, chunk_xy or XY_CHUNK) for n in shape[-2:])
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array(
        "0", shape=shape, chunks=chunks, dtype=np.dtype(dtype), fill_value=0,
        compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
    )
    scale = [float(s) for s in spacing] if spacing is not None else [1.0] * len(shape)
    unit = ngff_unit(unit)
    axes = [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in names]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]
    write_multiscales_metadata(group, datasets, fmt=FormatV05(), axes=axes, name=Path(path).name)
    if attrs:
        group.attrs.update(attrs)
    return array
