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
    (:func:`~napari_unet.tiling.blend_window`).

The pooling grid
    A U-Net is translation-equivariant only for shifts that are multiples of
    ``2 ** depth``; any other shift moves the max-pooling grid and changes
    the output (by ~0.3 in probability for a random depth-3 net shifted by
    4 px). So tile origins always sit on that grid, and the last tile runs
    past the border into more mirrored pixels (then cropped) instead of
    being pulled back to end exactly at the border. For same padding the
    only remaining difference from a whole-image pass is then the zero
    padding at interior tile edges, which the blending hides.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .devices import (
    autocast_dtype,
    autocast_to,
    dtype_name,
    is_out_of_memory,
    prediction_dtype,
    release_memory,
    resolve_device,
)
from .errors import Cancelled
from .tiling import BLEND_KINDS, blend_window, tile_starts

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
StopCallback = Callable[[], bool]
NoticeCallback = Callable[[str], None]

#: Default output tile edge per device type: big enough to amortise the
#: network's margin, small enough to keep CPU caches and GPU memory happy.
DEFAULT_TILE = {"cuda": 512}
DEFAULT_TILE_OTHER = 256


def default_tile_size(device_type: str) -> int:
    """The engine's tile edge for a device type, before rounding to a legal size."""
    return DEFAULT_TILE.get(device_type, DEFAULT_TILE_OTHER)


class TileGrid:
    """Which output tile edges a network accepts, from its geometry alone.

    Answers the widgets' and the CLI's questions (smallest tile, step, rounding)
    without building a predictor or touching the model's weights or device.
    """

    def __init__(self, geometry: Any) -> None:
        self.geometry = geometry
        self.valid = geometry.padding == "valid"
        self.divisor = int(geometry.divisor)

    @property
    def out_min(self) -> int:
        """Smallest output edge the network can produce."""
        if not self.valid:
            return self.divisor
        return int(self.geometry.output_size(self.geometry.min_input_size))

    def at_least(self, n: int) -> int:
        """Smallest legal output tile edge >= ``n`` (and >= the grid step)."""
        lo, d = self.out_min, self.divisor
        k = max(0, math.ceil((max(n, d) - lo) / d))
        return lo + k * d

    @property
    def min_tile(self) -> int:
        """Smallest usable output tile.

        Valid-net tile origins sit on the ``divisor`` grid, so a tile must be at
        least one grid step long or neighbouring tiles would leave gaps.
        """
        return self.at_least(self.divisor)

    def round(self, tile: int) -> int:
        """The legal tile edge nearest ``tile``; ValueError below the smallest."""
        lo, d, smallest = self.out_min, self.divisor, self.min_tile
        if tile < smallest:
            raise ValueError(
                f"tile_size {tile} is too small for this depth-{self.geometry.depth} "
                f"{self.geometry.padding}-padding U-Net: legal output tile sizes are "
                f"{smallest}, {smallest + d}, {smallest + 2 * d}, ... "
                f"({lo} + k * {d}, at least {smallest})"
            )
        k = int(math.floor((tile - lo) / d + 0.5))
        return max(smallest, lo + k * d)

    def smaller(self, tile: int) -> int | None:
        """A legal tile of about half the area of ``tile`` (None at the smallest)."""
        if tile <= self.min_tile:
            return None
        return max(self.min_tile, self.round(max(self.min_tile, int(tile / math.sqrt(2)))))

#: The 8 symmetries of the square as (quarter turns, mirror) pairs.
_DIHEDRAL = [(k, flip) for k in range(4) for flip in (False, True)]


class _AxisPlan:
    """Tiling of one image axis: tile length, tile origins and padding, in output pixels."""

    __slots__ = ("tile", "starts", "pad_before", "pad_after")

    def __init__(self, tile: int, starts: list[int], pad_before: int, pad_after: int) -> None:
        self.tile = tile
        self.starts = starts
        self.pad_before = pad_before
        self.pad_after = pad_after


class TilePredictor:
    """Predict class probabilities of slices and stacks tile by tile.

    Args:
        model: a :class:`~napari_unet.model.UNet`, or any module (or plain
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
    """

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
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        if blend not in BLEND_KINDS:
            raise ValueError(f"blend must be one of {BLEND_KINDS}, got {blend!r}")

        self.model = model
        self.geometry = geometry
        self.n_classes = int(config.n_classes)
        self.valid = geometry.padding == "valid"
        self.margin = int(geometry.margin) if self.valid else 0
        self.divisor = int(geometry.divisor)
        self.device = resolve_device(device)
        self._cuda = self.device.type == "cuda"
        if precision is None:
            dtype = autocast_dtype(self.device) if amp else None
        elif precision == "bfloat16" and not amp:
            raise ValueError("precision='bfloat16' contradicts amp=False (which means float32)")
        else:
            dtype = prediction_dtype(self.device, precision if amp else "float32")
        #: The dtype the network's convolutions run in (None: float32).
        self.compute_dtype: torch.dtype | None = dtype
        #: ``"float32"``, ``"bfloat16"`` or ``"float16"``, for provenance records.
        self.precision_used = dtype_name(dtype)
        self.amp = dtype is not None
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.overlap = float(overlap)
        self.blend = blend
        self.progress = progress
        self.should_stop = should_stop
        self.notice = notice
        #: What the predictor changed on its own (e.g. after running out of memory).
        self.notices: list[str] = []
        self.grid = TileGrid(geometry)

        if tile_size is None:
            tile_size = default_tile_size(self.device.type)
        self.tile_size: int = self.grid.round(int(tile_size))

        if isinstance(model, nn.Module):
            model.eval()
            model.to(self.device)
            if self._cuda:
                # cuDNN's fastest convolutions want NHWC; inputs follow suit below
                model.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ sizes
    @property
    def min_tile_size(self) -> int:
        """Smallest usable output tile (see :class:`TileGrid`)."""
        return self.grid.min_tile

    def _legal_at_least(self, n: int) -> int:
        return self.grid.at_least(n)

    def _plan_axis(self, length: int) -> _AxisPlan:
        t = self.tile_size
        if self.valid:
            m, d = self.margin, self.divisor
            if length <= t:
                tile, starts = self._legal_at_least(length), [0]
            else:
                # origins on the pooling grid: spread whole grid blocks evenly
                blocks, per_tile = -(-length // d), t // d
                tile = t
                starts = [s * d for s in tile_starts(blocks, per_tile, per_tile)]
            return _AxisPlan(tile, starts, m, starts[-1] + tile + m - length)
        d = self.divisor
        blocks = -(-length // d)
        if length <= t:
            return _AxisPlan(blocks * d, [0], 0, blocks * d - length)
        per_tile = t // d
        step = max(1, int(round(per_tile * (1.0 - self.overlap))))
        starts = [s * d for s in tile_starts(blocks, per_tile, step)]
        return _AxisPlan(t, starts, 0, blocks * d - length)

    def n_tiles(self, shape: tuple[int, ...]) -> int:
        """Tiles needed for one slice of ``shape`` (the last two axes)."""
        ys, xs = self._plan_axis(int(shape[-2])), self._plan_axis(int(shape[-1]))
        return len(ys.starts) * len(xs.starts)

    # ------------------------------------------------------------- validation
    @staticmethod
    def _check_dtype(dtype: Any) -> None:
        if not np.issubdtype(np.dtype(dtype), np.floating):
            raise ValueError(
                f"expected a normalised floating-point image, got dtype {np.dtype(dtype)}; "
                "normalise it first (e.g. to zero mean, unit variance)"
            )

    def _check_slice(self, image: Any) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"expected a 2D (Y, X) slice, got shape {image.shape}")
        if image.size == 0:
            raise ValueError(f"cannot predict an empty image of shape {image.shape}")
        self._check_dtype(image.dtype)
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        return image.astype(np.float32, copy=False)

    def _check_out(self, out: Any, shape: tuple[int, ...]) -> None:
        if tuple(out.shape) != shape:
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
        if np.dtype(out.dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"out must be float32 or float16, got {np.dtype(out.dtype)}")

    # ------------------------------------------------------------- inference
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_to(self.device, self.compute_dtype):
            logits = self.model(x)
        # softmax in float32 whatever autocast computed the logits in
        return torch.softmax(logits.float(), dim=1)

    def _run_batch(self, batch: np.ndarray) -> np.ndarray:
        """``(B, 1, h, w)`` inputs -> ``(B, C, h - 2m, w - 2m)`` probabilities on the CPU."""
        x = torch.from_numpy(batch)
        if self._cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            x = x.to(self.device)
        if not self.tta:
            probs = self._forward(x)
        else:
            probs = None
            for k, flip in _DIHEDRAL:
                xt = torch.rot90(x, k, dims=(2, 3))
                if flip:
                    xt = torch.flip(xt, dims=(3,))
                y = self._forward(xt)
                if flip:
                    y = torch.flip(y, dims=(3,))
                y = torch.rot90(y, -k, dims=(2, 3))
                probs = y if probs is None else probs + y
            probs = probs / len(_DIHEDRAL)  # type: ignore[operator]
        trim = 2 * self.margin
        expected = (batch.shape[0], self.n_classes, batch.shape[2] - trim, batch.shape[3] - trim)
        if tuple(probs.shape) != expected:
            raise ValueError(
                f"model returned shape {tuple(probs.shape)} for input {batch.shape}, expected "
                f"{expected}; its .geometry/.config do not describe it"
            )
        return probs.cpu().numpy()

    def _tell(self, text: str) -> None:
        self.notices.append(text)
        logger.warning(text)
        if self.notice is not None:
            self.notice(text)

    def _run_batch_fitting(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`_run_batch`, halving the tiles per pass while the device is out of memory."""
        while True:
            try:
                if len(batch) <= self.batch_size:
                    return self._run_batch(batch)
                step = self.batch_size
                return np.concatenate(
                    [self._run_batch(batch[i : i + step]) for i in range(0, len(batch), step)]
                )
            except Exception as exc:
                if not is_out_of_memory(exc) or self.batch_size == 1:
                    raise
                release_memory(self.device)
                self.batch_size = max(1, self.batch_size // 2)
                self._tell(
                    f"Out of {self.device.type} memory: predicting {self.batch_size} tile(s) "
                    "at a time from now on."
                )

    def _predict_slice(self, image: np.ndarray, done: int, total: int) -> np.ndarray:
        """:meth:`_predict_tiles`, with smaller tiles while one tile does not fit in memory."""
        while True:
            try:
                return self._predict_tiles(image, done, total)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                release_memory(self.device)
                smaller = self.grid.smaller(self.tile_size)
                if smaller is None:
                    raise MemoryError(
                        f"out of {self.device.type} memory even with one {self.tile_size} px tile "
                        "at a time; use the CPU or a smaller model"
                    ) from exc
                self._tell(
                    f"Out of {self.device.type} memory: tiles of {smaller} px instead of "
                    f"{self.tile_size} px from now on."
                )
                self.tile_size = smaller

    def _predict_tiles(self, image: np.ndarray, done: int, total: int) -> np.ndarray:
        """One validated float32 slice; ``done``/``total`` place it in the caller's progress."""
        Y, X = image.shape
        py, px = self._plan_axis(Y), self._plan_axis(X)
        pads = ((py.pad_before, py.pad_after), (px.pad_before, px.pad_after))
        padded = np.pad(image, pads, mode="reflect")
        ty, tx, m = py.tile, px.tile, self.margin
        ih, iw = ty + 2 * m, tx + 2 * m
        origins = [(y, x) for y in py.starts for x in px.starts]
        C = self.n_classes

        if self.valid:
            out = np.empty((C, Y, X), dtype=np.float32)
        else:
            acc = np.zeros((C, Y + py.pad_after, X + px.pad_after), dtype=np.float32)
            weight_sum = np.zeros(acc.shape[1:], dtype=np.float32)
            windows: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}
            y_last, x_last = py.starts[-1], px.starts[-1]

        batch = np.empty((self.batch_size, 1, ih, iw), dtype=np.float32)
        with torch.inference_mode():
            for first in range(0, len(origins), self.batch_size):
                if self.should_stop is not None and self.should_stop():
                    raise Cancelled("prediction cancelled")
                chunk = origins[first : first + self.batch_size]
                for i, (y, x) in enumerate(chunk):
                    batch[i, 0] = padded[y : y + ih, x : x + iw]
                probs = self._run_batch_fitting(batch[: len(chunk)])
                for p, (y, x) in zip(probs, chunk):
                    if self.valid:
                        h, w = min(ty, Y - y), min(tx, X - x)
                        out[:, y : y + h, x : x + w] = p[:, :h, :w]
                    else:
                        sides = (y == 0, y == y_last, x == 0, x == x_last)
                        window = windows.get(sides)
                        if window is None:
                            window = windows[sides] = blend_window(
                                (ty, tx), self.blend, flat_sides=sides  # type: ignore[arg-type]
                            )
                        acc[:, y : y + ty, x : x + tx] += p * window
                        weight_sum[y : y + ty, x : x + tx] += window
                done += len(chunk)
                if self.progress is not None:
                    self.progress(done, total)
        if self.valid:
            return out
        return acc[:, :Y, :X] / weight_sum[:Y, :X]

    # ---------------------------------------------------------------- public
    def predict_slice(self, image: np.ndarray) -> np.ndarray:
        """``(Y, X)`` float image -> ``(C, Y, X)`` float32 softmax probabilities."""
        image = self._check_slice(image)
        return self._predict_slice(image, 0, self.n_tiles(image.shape))

    def iter_stack(self, stack: Any) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z, (C, Y, X) probabilities)`` slice by slice, in order.

        Only one slice of ``stack`` is read at a time, so memory-mapped or
        zarr-like stacks larger than memory work.
        """
        shape = tuple(getattr(stack, "shape", ()))
        if len(shape) != 3:
            raise ValueError(f"expected a 3D (Z, Y, X) stack, got shape {shape}")
        self._check_dtype(stack.dtype)
        per_slice = self.n_tiles(shape)
        total = per_slice * shape[0]
        for z in range(shape[0]):
            image = self._check_slice(stack[z])
            yield z, self._predict_slice(image, z * per_slice, total)

    def predict(self, image: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``(Y, X)`` -> ``(C, Y, X)``; ``(Z, Y, X)`` -> ``(Z, C, Y, X)`` probabilities.

        Args:
            image: a normalised float slice or stack (numpy, memmap, zarr-like).
            out: optional preallocated float32/float16 array of the result's
                shape (e.g. a memmap), filled slice by slice and returned.
        """
        if not hasattr(image, "shape"):
            image = np.asarray(image)
        ndim = len(image.shape)
        if ndim == 2:
            if out is None:
                return self.predict_slice(image)
            self._check_out(out, (self.n_classes, *image.shape))
            out[...] = self.predict_slice(image)
            return out
        if ndim != 3:
            raise ValueError(
                "expected a 2D (Y, X) or 3D (Z, Y, X) image, got shape "
                f"{tuple(image.shape)}"
            )
        Z, Y, X = image.shape
        shape = (Z, self.n_classes, Y, X)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        else:
            self._check_out(out, shape)
        for z, probs in self.iter_stack(image):
            out[z] = probs
        return out
