"""Overlap-tile prediction of whole slices and stacks with a trained U-Net.

Images are far larger than what fits through a network at once, so they are
cut into tiles, pushed through the network a batch at a time and stitched
back into a preallocated CPU array: device memory holds one batch, whatever
the image size.

Valid-padding networks (the paper's overlap-tile strategy)
    The slice is mirror-padded by the network's margin and cut into input
    tiles of ``tile + 2 * margin`` pixels whose outputs abut. With the
    resulting exact stitching, the result equals one pass over the whole
    mirror-padded slice (up to float rounding): tiling is invisible.

Same-padding networks
    Outputs near a tile edge have seen zero padding, so tiles overlap by
    ``overlap`` and are blended with a window that favours tile centres
    (:func:`~napari_unet.prediction.tiling.blend_window`).

Where tiles may start (on the network's pooling grid) and which tile sizes
are legal is :mod:`napari_unet.prediction.tile_plan`'s business; running the batches on
the device (precision, test-time augmentation, running out of memory) is
:mod:`napari_unet.prediction.tile_runner`'s. This module cuts, stitches and blends.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..devices import is_out_of_memory, resolve_device
from ..errors import Cancelled
from .tile_plan import DEFAULT_TILE as DEFAULT_TILE  # re-exported: the public API
from .tile_plan import DEFAULT_TILE_OTHER as DEFAULT_TILE_OTHER
from .tile_plan import (
    AxisPlan,
    TileGrid,
    count_tiles,
    default_tile_size,
    plan_axis,
)
from .tile_runner import NoticeCallback, TileRunner, resolve_precision
from .tiling import BLEND_KINDS, blend_window
from .z_context import PlaneReader

ProgressCallback = Callable[[int, int], None]
StopCallback = Callable[[], bool]


# ------------------------------------------------------------------ stitching
class _ExactStitcher:
    """Valid padding: each tile's output is placed as is, cropped at the far borders."""

    def __init__(self, n_classes: int, shape: tuple[int, int], py: AxisPlan, px: AxisPlan) -> None:
        self.shape = shape
        self.ty, self.tx = py.tile, px.tile
        self.out = np.empty((n_classes, *shape), dtype=np.float32)

    def add(self, p: np.ndarray, y: int, x: int) -> None:
        Y, X = self.shape
        h, w = min(self.ty, Y - y), min(self.tx, X - x)
        self.out[:, y : y + h, x : x + w] = p[:, :h, :w]

    def result(self) -> np.ndarray:
        return self.out


class _BlendStitcher:
    """Same padding: overlapping tiles are weighted by a window and averaged.

    The window is flat towards the image's borders (no neighbour to blend
    with there); one window per combination of flat sides is built and reused.
    """

    def __init__(
        self, n_classes: int, shape: tuple[int, int], py: AxisPlan, px: AxisPlan, blend: str
    ) -> None:
        Y, X = self.shape = shape
        self.ty, self.tx, self.blend = py.tile, px.tile, blend
        self.y_last, self.x_last = py.starts[-1], px.starts[-1]
        self.acc = np.zeros((n_classes, Y + py.pad_after, X + px.pad_after), dtype=np.float32)
        self.weight_sum = np.zeros(self.acc.shape[1:], dtype=np.float32)
        self.windows: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}

    def add(self, p: np.ndarray, y: int, x: int) -> None:
        ty, tx = self.ty, self.tx
        sides = (y == 0, y == self.y_last, x == 0, x == self.x_last)
        window = self.windows.get(sides)
        if window is None:
            window = self.windows[sides] = blend_window(
                (ty, tx), self.blend, flat_sides=sides  # type: ignore[arg-type]
            )
        self.acc[:, y : y + ty, x : x + tx] += p * window
        self.weight_sum[y : y + ty, x : x + tx] += window

    def result(self) -> np.ndarray:
        Y, X = self.shape
        return self.acc[:, :Y, :X] / self.weight_sum[:Y, :X]


def run_tiles(
    predictor: Any, padded: np.ndarray, origins: list[tuple[int, int]], size: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
) -> Iterator[tuple[int, list[tuple[int, int]], np.ndarray]]:
    """Run the input tiles at ``origins`` (padded coordinates, minus ``offset`` into
    ``padded``) batch by batch; yields ``(first, chunk, probabilities)`` per batch.

    The one loop that feeds tiles to the network: whole slices
    (:func:`_stitch_slice`) and xy windows of a volume (``volume_xy``) use it, so
    both run the same tiles in the same batches and stay bit-identical.
    """
    runner = predictor.runner
    ih, iw = size
    oy, ox = offset
    planes = 1 if padded.ndim == 2 else padded.shape[0]  # a slice, or it and its neighbours
    batch = np.empty((runner.batch_size, planes, ih, iw), dtype=np.float32)
    with torch.inference_mode():
        for first in range(0, len(origins), runner.batch_size):
            if predictor.should_stop is not None and predictor.should_stop():
                raise Cancelled("prediction cancelled")
            chunk = origins[first : first + runner.batch_size]
            for i, (y, x) in enumerate(chunk):
                batch[i] = padded[..., y - oy : y - oy + ih, x - ox : x - ox + iw]
            yield first, chunk, runner.run_fitting(batch[: len(chunk)])


def _stitch_slice(
    predictor: TilePredictor, image: np.ndarray, done: int, total: int, share: int
) -> np.ndarray:
    """Cut ``image`` into ``predictor``'s tiles, run them batch by batch and stitch the outputs.

    Reads the predictor's settings afresh on every slice (tile size, overlap,
    blend, callbacks), so changes made between slices take effect.
    """
    Y, X = image.shape[-2:]
    grid, tile_size, overlap = predictor.grid, predictor.tile_size, predictor.overlap
    py, px = plan_axis(grid, Y, tile_size, overlap), plan_axis(grid, X, tile_size, overlap)
    pads = ((0, 0),) * (image.ndim - 2) + ((py.pad_before, py.pad_after), (px.pad_before, px.pad_after))
    padded = np.pad(image, pads, mode="reflect")
    m = predictor.margin
    ih, iw = py.tile + 2 * m, px.tile + 2 * m
    origins = [(y, x) for y in py.starts for x in px.starts]
    C = predictor.n_classes + predictor.runner.extra_channels
    if predictor.valid:
        stitcher: _ExactStitcher | _BlendStitcher = _ExactStitcher(C, (Y, X), py, px)
    else:
        stitcher = _BlendStitcher(C, (Y, X), py, px, predictor.blend)
    for first, chunk, probs in run_tiles(predictor, padded, origins, (ih, iw)):
        for p, (y, x) in zip(probs, chunk):
            stitcher.add(p, y, x)
        if predictor.progress is not None:
            # this slice's tiles count as its planned ``share`` of the total, also
            # after an out-of-memory retry cut it into more, smaller tiles
            finished = first + len(chunk)
            predictor.progress(done + finished * share // len(origins), total)
    return stitcher.result()


def _predict_slice(
    predictor: TilePredictor, image: np.ndarray, done: int, total: int, share: int | None = None
) -> np.ndarray:
    """One validated float32 slice; ``done``/``total`` place it in the caller's progress.

    Out of memory with one tile per pass, the slice starts again with smaller
    tiles, which the predictor keeps for the next slices.
    """
    while True:
        try:
            return _stitch_slice(predictor, image, done, total, total - done if share is None else share)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            tile = predictor.runner.smaller_tile(predictor.tile_size, predictor.grid, exc)
            predictor.tile_size = tile


def predict_slice_disagreement(
    predictor: TilePredictor, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(C, Y, X)`` TTA-averaged probabilities and the ``(Y, X)`` TTA disagreement.

    The probabilities are bit-identical to :meth:`TilePredictor.predict_slice`'s;
    the variants' mean entropy travels as one more channel through the same
    stitching, and the disagreement (mutual information, normalised to [0, 1])
    is computed from both after stitching. Needs a predictor with ``tta=True``.
    """
    from .uncertainty import tta_disagreement

    if not predictor.tta:
        raise ValueError("the TTA disagreement needs a TilePredictor with tta=True")
    image = _check_slice(image, predictor.planes)
    runner = predictor.runner
    runner.disagreement = True
    try:
        out = _predict_slice(predictor, image, 0, predictor.n_tiles(image.shape))
    finally:
        runner.disagreement = False
    probs = np.ascontiguousarray(out[: predictor.n_classes])
    return probs, tta_disagreement(probs, out[predictor.n_classes])


# ----------------------------------------------------------------- validation
def _check_model(model: Any) -> tuple[Any, Any]:
    """The model's ``(config, geometry)``, or ValueError when it cannot be tiled."""
    config = getattr(model, "config", None)
    geometry = getattr(model, "geometry", None)
    if config is None or geometry is None:
        raise ValueError(
            "model must have .config and .geometry attributes, like napari_unet.UNet"
        )
    if int(config.in_channels) != 1:
        raise ValueError(
            f"the model expects {config.in_channels} input channels; multichannel "
            "prediction is not supported yet (only single-channel images)"
        )
    if geometry.padding not in ("valid", "same"):
        raise ValueError(f"unknown model padding {geometry.padding!r}")
    return config, geometry


def _check_settings(batch_size: Any, overlap: Any, blend: str) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if blend not in BLEND_KINDS:
        raise ValueError(f"blend must be one of {BLEND_KINDS}, got {blend!r}")


def _check_dtype(dtype: Any) -> None:
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(
            f"expected a normalised floating-point image, got dtype {np.dtype(dtype)}; "
            "normalise it first (e.g. to zero mean, unit variance)"
        )


def _check_slice(image: Any, planes: int = 1) -> np.ndarray:
    """A finite float32 ``(Y, X)`` slice, or ``(planes, Y, X)`` for a network that reads
    each slice with its neighbours (``UNetConfig.input_slices``)."""
    image = np.asarray(image)
    if planes > 1 and image.shape[:1] != (planes,) or planes > 1 and image.ndim != 3:
        raise ValueError(
            f"this model reads each slice with its neighbours: expected ({planes}, Y, X) "
            f"input planes, got shape {image.shape}"
        )
    if planes == 1 and image.ndim != 2:
        raise ValueError(f"expected a 2D (Y, X) slice, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"cannot predict an empty image of shape {image.shape}")
    _check_dtype(image.dtype)
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    return image.astype(np.float32, copy=False)


def _check_out(out: Any, shape: tuple[int, ...]) -> None:
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
    if np.dtype(out.dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"out must be float32 or float16, got {np.dtype(out.dtype)}")


class _OnRunner:
    """A predictor attribute kept by its :class:`TileRunner`: read and set through either."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj.runner, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj.runner, self.name, value)


# ------------------------------------------------------------------ predictor
class TilePredictor:
    """Predict class probabilities of slices and stacks tile by tile.

    Args:
        model: a :class:`~napari_unet.model.unet.UNet`, or any module (or plain
            callable) with the same ``.geometry`` and ``.config`` attributes
            that maps ``(N, 1, H, W)`` to ``(N, n_classes, H - 2*margin,
            W - 2*margin)`` logits; fakes of this kind test the stitching.
        tile_size: output tile edge; rounded to the nearest size the network
            accepts. Default: 512 on CUDA, 256 elsewhere.
        batch_size: tiles per forward pass.
        tta: average the softmax over the 8 flips/rotations of each tile
            (8x slower, usually a little more accurate).
        device: ``"auto"``, ``"cuda"``, ``"mps"``, ``"cpu"`` or a ``torch.device``.
        amp: mixed precision on CUDA (bf16 where native, else fp16); with
            ``precision`` given, False forces float32.
        precision: ``"auto"``, ``"float32"`` or ``"bfloat16"`` (see
            :func:`~napari_unet.devices.prediction_dtype`; ``"auto"`` adds bf16 on
            CPUs with native bf16). None (default): ``amp`` alone decides, as
            before, so direct users such as training's validation stay float32
            on the CPU. Softmax is always computed in float32.
        overlap: fraction of a tile shared with its neighbour (same padding only;
            valid-padding tiles need no overlap).
        blend: ``"gaussian"`` or ``"linear"`` window for same padding.
        progress: called as ``progress(tiles_done, tiles_total)`` after each
            batch; totals count the whole stack for :meth:`predict` and
            :meth:`iter_stack`.
        should_stop: polled before each batch; returning True raises
            :class:`~napari_unet.errors.Cancelled`.
        notice: called with a sentence when the predictor had to change a
            setting (a smaller batch or tile after running out of memory).

    The model is switched to eval mode and moved to the device once, here
    (pass a copy to keep a shared model where it is).

    Out of device memory, a batch is retried with half the tiles, down to one
    tile, and then the slice with smaller tiles; the smaller sizes are kept
    for the next slices. For a valid-padding network the result is unchanged.

    The runner's settings (``model``, ``device``, ``batch_size``, ...) read and
    write through to ``runner``.
    """

    model = _OnRunner()
    device = _OnRunner()
    batch_size = _OnRunner()
    tta = _OnRunner()
    amp = _OnRunner()
    compute_dtype = _OnRunner()
    precision_used = _OnRunner()
    notice = _OnRunner()
    #: What the predictor changed on its own (e.g. after running out of memory).
    notices = _OnRunner()

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        *,
        tile_size: int | None = None,
        batch_size: int = 4,
        tta: bool = False,
        device: str | torch.device = "auto",
        amp: bool = True,
        precision: str | None = None,
        overlap: float = 0.25,
        blend: str = "gaussian",
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
        notice: NoticeCallback | None = None,
    ) -> None:
        config, geometry = _check_model(model)
        _check_settings(batch_size, overlap, blend)
        self.geometry = geometry
        self.n_classes = int(config.n_classes)
        #: Input planes per slice: 1, or the slice and its neighbours (2.5D).
        self.planes = int(getattr(config, "input_slices", 1))
        grid = self.grid = TileGrid(geometry)
        self.valid, self.margin, self.divisor = grid.valid, grid.margin, grid.divisor
        resolved = resolve_device(device)
        dtype = resolve_precision(resolved, amp, precision)
        self.overlap = float(overlap)
        self.blend = blend
        self.progress = progress
        self.should_stop = should_stop
        if tile_size is None:
            tile_size = default_tile_size(resolved.type)
        self.tile_size: int = self.grid.round(int(tile_size))
        self.runner = TileRunner(
            model, device=resolved, compute_dtype=dtype, n_classes=self.n_classes,
            margin=self.margin, batch_size=int(batch_size), tta=bool(tta), notice=notice,
        )

    @property
    def min_tile_size(self) -> int:
        """Smallest usable output tile (see :class:`TileGrid`)."""
        return self.grid.min_tile

    def n_tiles(self, shape: tuple[int, ...]) -> int:
        """Tiles needed for one slice of ``shape`` (the last two axes)."""
        return count_tiles(self.grid, shape, self.tile_size, self.overlap)

    def predict_slice(self, image: np.ndarray) -> np.ndarray:
        """``(Y, X)`` float image (``(planes, Y, X)`` for a 2.5D network, its slice in
        the middle) -> ``(C, Y, X)`` float32 softmax probabilities."""
        image = _check_slice(image, self.planes)
        return _predict_slice(self, image, 0, self.n_tiles(image.shape))

    def iter_stack(self, stack: Any) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z, (C, Y, X) probabilities)`` slice by slice, in order.

        Only one slice of ``stack`` is read at a time, so memory-mapped or
        zarr-like stacks larger than memory work.
        """
        shape = tuple(getattr(stack, "shape", ()))
        if len(shape) != 3:
            raise ValueError(f"expected a 3D (Z, Y, X) stack, got shape {shape}")
        _check_dtype(stack.dtype)
        per_slice = self.n_tiles(shape)
        total = per_slice * shape[0]
        reader = PlaneReader(lambda i: np.asarray(stack[i]), shape[0], self.planes)  # each slice once
        for z in range(shape[0]):
            image = _check_slice(reader(z), self.planes)
            yield z, _predict_slice(self, image, z * per_slice, total, per_slice)

    def predict(self, image: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``(Y, X)`` -> ``(C, Y, X)``; ``(Z, Y, X)`` -> ``(Z, C, Y, X)`` probabilities.

        Args:
            image: a normalised float slice or stack (numpy, memmap, zarr-like).
            out: optional preallocated float32/float16 array of the result's
                shape (e.g. a memmap), filled slice by slice and returned.
        """
        if not hasattr(image, "shape"):
            image = np.asarray(image)
        shape = tuple(image.shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"expected a 2D (Y, X) or 3D (Z, Y, X) image, got shape {shape}")
        if len(shape) == 2 and out is None:
            return self.predict_slice(image)
        result = (*shape[:-2], self.n_classes, *shape[-2:])
        if out is None:
            out = np.empty(result, dtype=np.float32)
        else:
            _check_out(out, result)
        if len(shape) == 2:
            out[...] = self.predict_slice(image)
        else:
            for z, probs in self.iter_stack(image):
                out[z] = probs
        return out
