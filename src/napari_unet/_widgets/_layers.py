"""Between napari layers and the engine's arrays (main thread only).

The engine takes a (Z, Y, X) or (Y, X) array; napari layers add what the
engine does not care about but the user does: multiscale pyramids (we use
level 0, full resolution), lazy data (passed through unread), a physical
scale and translate (copied onto every layer we create so results sit exactly
on the image), and which slice the user is looking at.

Checks here are cheap on purpose: they look at shapes, dtypes and napari's
flags, never at the pixels, so they can run on every layer change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer

#: Key in ``layer.metadata`` marking layers that napari-unet created, so that
#: it overwrites only its own layers and never a layer the user painted.
METADATA_KEY = "napari-unet"
#: Annotation arrays up to this size are copied when training starts, so
#: painting during training cannot change what the trainer reads.
SNAPSHOT_LIMIT_BYTES = 1 << 30
_MIN_EDGE = 16


@dataclass(frozen=True)
class LayerArray:
    """Full-resolution data of a layer with where it sits in the world."""

    data: Any  # level 0: numpy, memmap, zarr or dask; never read here
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)


def level0(layer: Layer) -> Any:
    """The full-resolution array of a (possibly multiscale) layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_array(layer: Layer) -> LayerArray:
    return LayerArray(
        data=level0(layer),
        scale=tuple(float(s) for s in layer.scale),
        translate=tuple(float(t) for t in layer.translate),
        name=str(layer.name),
    )


def image_problem(layer: Image | None) -> str | None:
    """Why this image layer cannot go through the U-Net, or None when it can."""
    if layer is None:
        return "Choose an image layer (open an EM stack, or File > Open Sample > napari-unet)."
    shape = tuple(int(n) for n in level0(layer).shape)
    if getattr(layer, "rgb", False):
        return (
            f"'{layer.name}' is an RGB image; the U-Net takes one grey channel. Right-click the "
            "layer > Split RGB, or convert it to greyscale first."
        )
    if len(shape) not in (2, 3):
        return (
            f"'{layer.name}' has {len(shape)} dimensions {shape}; the U-Net takes a 2D image or a "
            "3D (Z, Y, X) stack. Split channels / time points into separate layers first."
        )
    if min(shape[-2:]) < _MIN_EDGE:
        return f"'{layer.name}' is too small ({shape}); slices must be at least 16 x 16 pixels."
    kind = np.dtype(level0(layer).dtype).kind
    if kind not in "uifb":
        return f"'{layer.name}' has dtype {level0(layer).dtype}; expected integer or float pixels."
    return None


def labels_problem(labels: Labels | None, image: Image) -> str | None:
    """Why this annotation layer does not fit the image, or None when it does."""
    if labels is None:
        return "Choose an annotation (Labels) layer, or press 'New annotation layer' and paint."
    img_shape = tuple(int(n) for n in level0(image).shape)
    lab_shape = tuple(int(n) for n in level0(labels).shape)
    if lab_shape != img_shape:
        return (
            f"Annotation '{labels.name}' has shape {lab_shape} but image '{image.name}' has shape "
            f"{img_shape}; use 'New annotation layer' to create one that matches the image."
        )
    return None


def is_ours(layer: Layer, role: str | None = None) -> bool:
    """True for layers napari-unet created (optionally with this role)."""
    meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
    if not isinstance(meta, dict):
        return False
    return role is None or meta.get("role") == role


def current_slice(viewer: napari.viewer.Viewer, layer: Layer) -> int | None:
    """Data z-index of ``layer`` that the viewer shows, or None for a 2D layer."""
    shape = level0(layer).shape
    if len(shape) < 3:
        return None
    # world_to_data uses the last layer.ndim world axes and undoes scale/translate
    coords = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    z = int(np.round(coords[-3]))
    return int(np.clip(z, 0, shape[-3] - 1))


def unique_name(viewer: napari.viewer.Viewer, base: str) -> str:
    """``base``, or ``base [k]`` (napari's own convention) if that name is taken."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    k = 1
    while f"{base} [{k}]" in names:
        k += 1
    return f"{base} [{k}]"


def snapshot(data: Any) -> np.ndarray:
    """The annotation as a numpy array the user's painting cannot change afterwards.

    Copies up to :data:`SNAPSHOT_LIMIT_BYTES`; above that the array is read
    as it is (copying a huge, mostly empty volume would cost more memory than
    it protects). Lazy arrays are read into memory.
    """
    arr = np.asarray(data)
    if arr is data and arr.nbytes <= SNAPSHOT_LIMIT_BYTES:
        arr = arr.copy()
    return arr


def put_result_layer(
    viewer: napari.viewer.Viewer,
    base_name: str,
    data: np.ndarray,
    *,
    kind: str,
    where: LayerArray,
    role: str,
    overwrite: bool,
    **kwargs: Any,
) -> Layer:
    """Add a result layer named ``base_name``, or replace ours of that name if allowed.

    An existing layer is replaced only when ``overwrite`` is set *and* napari-unet
    created it (metadata marker), so a layer the user painted is never
    modified; otherwise the new layer gets a free ``base_name [k]``.
    """
    from napari.layers import Image, Labels

    layer_type = Labels if kind == "labels" else Image
    existing = viewer.layers[base_name] if base_name in viewer.layers else None
    if overwrite and isinstance(existing, layer_type) and is_ours(existing, role):
        existing.data = data
        existing.scale = where.scale
        existing.translate = where.translate
        existing.refresh()
        return existing
    name = unique_name(viewer, base_name)
    meta = {METADATA_KEY: {"role": role, "source": where.name}}
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(
        data, name=name, scale=where.scale, translate=where.translate, metadata=meta, **kwargs
    )


def touched_slices(paint_value: Any, shape: tuple[int, ...]) -> set[int] | None:
    """Z-slices changed by one napari paint event, or None when that cannot be told.

    napari's ``Labels.events.paint`` carries the undo atoms of a stroke: tuples
    whose first item indexes the data, either with index arrays or (for masked
    edits) with a tuple of slices. Knowing the slices lets the Train widget
    re-summarise only what was painted instead of rescanning a big stack.
    """
    if len(shape) == 2:
        return {0}
    if len(shape) != 3 or not isinstance(paint_value, (list, tuple)):
        return None
    nz = int(shape[0])
    touched: set[int] = set()
    for atom in paint_value:
        try:
            key = atom[0]
            zkey = key[0]
        except (TypeError, IndexError, KeyError):
            return None
        if isinstance(zkey, slice):
            touched.update(range(*zkey.indices(nz)))
        elif isinstance(zkey, (int, np.integer)):
            touched.add(int(zkey))
        elif isinstance(zkey, (np.ndarray, list)):
            touched.update(int(z) for z in np.unique(np.asarray(zkey)))
        else:
            return None
    return touched


def go_to_slice(viewer: napari.viewer.Viewer, layer: Layer, z: int) -> None:
    """Show data slice ``z`` of ``layer`` (the inverse of :func:`current_slice`).

    The viewer's dims are in world coordinates: the slice is mapped through the
    layer's scale and translate (and affine) rather than used as a dims step.
    """
    coords = list(np.asarray(layer.world_to_data(viewer.dims.point), dtype=float))
    coords[-3] = float(z)
    world = np.asarray(layer.data_to_world(coords), dtype=float)
    axis = viewer.dims.ndim - layer.ndim + (len(coords) - 3)
    viewer.dims.set_point(axis, float(world[-3]))
