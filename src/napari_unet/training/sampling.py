"""Random training patches from annotated slices only.

A patch is an input window of the network's input size whose centre (the
output window) lies on annotated pixels; the surrounding context comes from
the real image, mirrored at the image border exactly as at prediction time.
A fraction of patches is centred on a random object/class pixel so that small
or rare structures are seen often (nnU-Net oversamples foreground the same
way); in scribbles mode every patch is centred on a stroke, with classes drawn
uniformly, since most pixels there carry no label. With ``hard_fraction``, a
share of patches is centred on painted pixels that the current model gets
wrong or is unsure of (:meth:`PatchSampler.set_hard`, refreshed by the training
loop), so that later steps spend less time on what is already learned.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .annotations import IGNORE
from .augment import AugmentConfig, augment_patch, warp_border


@dataclass
class SliceData:
    """One annotated slice, padded once so any window can be cut without bounds checks."""

    image: np.ndarray  # float32 (C, H, W), normalised, padded by `pad` in y and x
    target: np.ndarray  # int64, padded with IGNORE
    weight: np.ndarray  # float32, padded with 0
    pad: int
    shape: tuple[int, int]
    classes: dict[int, np.ndarray]  # class id -> flat indices (unpadded) of its labelled pixels
    z: int


class HardPools:
    """Hard pixels per slice, and updates waiting for the batch they start from.

    The training thread schedules an update while batches are drawn in another:
    naming the batch keeps a run reproducible for a seed, whatever the threads'
    timing, as long as that batch has not been started yet.
    """

    def __init__(self) -> None:
        self.current: list[np.ndarray] | None = None  # flat unpadded indices per slice
        self._pending: list[tuple[int, list[np.ndarray]]] = []
        self._lock = threading.Lock()
        self._batches = 0  # batches started so far

    def schedule(self, pixels: list[np.ndarray], from_batch: int) -> None:
        with self._lock:
            if from_batch < self._batches:
                raise ValueError(f"batch {from_batch} was already drawn ({self._batches} so far)")
            self._pending.append((int(from_batch), [np.asarray(p, np.int64) for p in pixels]))
            self._pending.sort(key=lambda item: item[0])

    def latest(self) -> list[np.ndarray] | None:
        """The newest pools, pending ones included."""
        with self._lock:
            return list(self._pending[-1][1]) if self._pending else (
                None if self.current is None else list(self.current))

    def next_batch(self) -> None:
        """A batch starts: take the updates scheduled for it."""
        with self._lock:
            while self._pending and self._pending[0][0] <= self._batches:
                self.current = self._pending.pop(0)[1]
            self._batches += 1


class PatchSampler:
    """Draws augmented (input, target, weight) batches, deterministic for a seed."""

    def __init__(
        self,
        images: list[np.ndarray],
        targets: list[np.ndarray],
        weights: list[np.ndarray],
        *,
        input_size: int,
        output_size: int,
        foreground_fraction: float = 0.33,
        scribbles: bool = False,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        zs: list[int] | None = None,
        hard_fraction: float = 0.0,
    ) -> None:
        if not images:
            raise ValueError("no slices to sample from")
        self.input_size = int(input_size)
        self.output_size = int(output_size)
        self.margin = (self.input_size - self.output_size) // 2
        self.foreground_fraction = float(foreground_fraction)
        self.hard_fraction = float(hard_fraction)
        self.scribbles = scribbles
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        # real image around each window, so that the warp never reads mirrored window edges
        border = warp_border(augment, self.input_size)
        self._border = border
        pad = self.input_size + border
        self.slices: list[SliceData] = []
        for i, (img, tgt, wgt) in enumerate(zip(images, targets, weights)):
            img = img if img.ndim == 3 else img[None]  # (C, H, W): a slice and its neighbours
            classes = {int(c): np.flatnonzero(tgt == c) for c in np.unique(tgt) if c != IGNORE}
            classes = {c: idx for c, idx in classes.items() if idx.size}
            if not classes:
                continue
            self.slices.append(
                SliceData(
                    image=np.pad(img.astype(np.float32, copy=False), ((0, 0), (pad, pad), (pad, pad)),
                                 mode="reflect"),
                    target=np.pad(tgt, pad, mode="constant", constant_values=IGNORE),
                    weight=np.pad(wgt.astype(np.float32, copy=False), pad, mode="constant"),
                    pad=pad,
                    shape=img.shape[1:],
                    classes=classes,
                    z=zs[i] if zs is not None else i,
                )
            )
        if not self.slices:
            raise ValueError("the training region holds no labelled pixel")
        # slices are drawn in proportion to their labelled pixels
        counts = np.array([sum(len(v) for v in s.classes.values()) for s in self.slices], float)
        self._slice_p = counts / counts.sum()
        self.hard = HardPools()

    def set_hard(self, pixels: list[np.ndarray], from_batch: int) -> None:
        """Centre ``hard_fraction`` of the patches on ``pixels`` (flat indices into each of
        :attr:`slices`, in order) from batch number ``from_batch`` on (see :class:`HardPools`)."""
        if len(pixels) != len(self.slices):
            raise ValueError(f"expected hard pixels for {len(self.slices)} slices, got {len(pixels)}")
        self.hard.schedule(pixels, from_batch)

    def hard_pools(self) -> list[np.ndarray]:
        """The latest hard pixels given to :meth:`set_hard`, or empty pools."""
        latest = self.hard.latest()
        return latest if latest is not None else [np.zeros(0, np.int64) for _ in self.slices]

    def unpadded_target(self, i: int) -> np.ndarray:
        """Slice ``i``'s target without the sampler's padding."""
        s = self.slices[i]
        return s.target[s.pad:s.pad + s.shape[0], s.pad:s.pad + s.shape[1]]

    def _hard_centre(self, i: int) -> tuple[int, int] | None:
        """A centre on one of slice ``i``'s hard pixels, or None (not drawn this time)."""
        pools = self.hard.current
        if self.hard_fraction <= 0 or pools is None or not pools[i].size:
            return None
        if self.rng.random() >= self.hard_fraction:
            return None
        s = self.slices[i]
        pool = pools[i]
        cy, cx = divmod(int(pool[int(self.rng.integers(pool.size))]), s.shape[1])
        half = self.output_size // 2
        return (cy + int(self.rng.integers(-half // 2, half // 2 + 1)),
                cx + int(self.rng.integers(-half // 2, half // 2 + 1)))

    def _centre(self, s: SliceData) -> tuple[int, int]:
        """Centre (unpadded coordinates) of the next output window."""
        fg_classes = [c for c in s.classes if c != 0]
        if self.scribbles or (fg_classes and self.rng.random() < self.foreground_fraction):
            pool = list(s.classes) if self.scribbles else fg_classes
            c = pool[int(self.rng.integers(len(pool)))]
            idx = s.classes[c][int(self.rng.integers(len(s.classes[c])))]
            cy, cx = divmod(int(idx), s.shape[1])
            # jitter so the object is not always dead centre
            half = self.output_size // 2
            cy += int(self.rng.integers(-half // 2, half // 2 + 1))
            cx += int(self.rng.integers(-half // 2, half // 2 + 1))
            return cy, cx
        # uniform: output window inside the slice where it fits
        h, w = s.shape
        o = self.output_size
        cy = int(self.rng.integers(0, max(1, h - o + 1))) + o // 2 if h >= o else h // 2
        cx = int(self.rng.integers(0, max(1, w - o + 1))) + o // 2 if w >= o else w // 2
        return cy, cx

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch: inputs (B, C, n, n) float32, targets (B, o, o) int64, weights (B, o, o) float32."""
        n, o, m, b = self.input_size, self.output_size, self.margin, self._border
        xs = np.empty((batch_size, self.slices[0].image.shape[0], n, n), np.float32)
        ts = np.empty((batch_size, o, o), np.int64)
        ws = np.empty((batch_size, o, o), np.float32)
        self.hard.next_batch()
        for i in range(batch_size):
            k = int(self.rng.choice(len(self.slices), p=self._slice_p))
            s = self.slices[k]
            cy, cx = self._hard_centre(k) or self._centre(s)
            h, w = s.shape
            cy = int(np.clip(cy, 0, h - 1))
            cx = int(np.clip(cx, 0, w - 1))
            # top-left of the warped window (input window + border) in padded coordinates
            y0 = cy - o // 2 - m - b + s.pad
            x0 = cx - o // 2 - m - b + s.pad
            win = (slice(y0, y0 + n + 2 * b), slice(x0, x0 + n + 2 * b))
            img, tgt, wgt = s.image[(slice(None), *win)], s.target[win], s.weight[win]
            if img.shape[0] == 1:
                img = img[0]  # one plane: the 2D path, bit for bit as before
            if self.augment is not None:  # returns the input window: the border was context
                img, (tgt, wgt) = augment_patch(img, [tgt, wgt], self.rng, self.augment, crop=b)
            # (without augmentation the border is 0: the window is the input window)
            xs[i] = img
            ts[i] = tgt[m:m + o, m:m + o]
            ws[i] = wgt[m:m + o, m:m + o]
        return xs, ts, ws
