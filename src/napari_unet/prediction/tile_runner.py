"""Running batches of tiles through the network on its device.

Everything between a numpy batch of input tiles and a numpy batch of CPU
probabilities lives here: moving the batch to the device, test-time
augmentation, the precision the convolutions run in (softmax always in
float32), and what to do when the device runs out of memory.

Out of memory, the runner first halves the tiles per pass, down to one tile;
when one tile still does not fit, the caller asks :meth:`TileRunner.smaller_tile`
for a smaller legal tile and predicts the slice again. Both changes are kept
for the next batches and slices and announced once, as a notice.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..devices import (
    autocast_dtype,
    autocast_to,
    dtype_name,
    is_out_of_memory,
    prediction_dtype,
    release_memory,
)

# notices keep the logger name they had before the runner moved out of overlap_tile
logger = logging.getLogger(__package__ + ".overlap_tile")

NoticeCallback = Callable[[str], None]

#: The 8 symmetries of the square as (quarter turns, mirror) pairs.
DIHEDRAL = [(k, flip) for k in range(4) for flip in (False, True)]


def resolve_precision(
    device: torch.device, amp: bool, precision: str | None
) -> torch.dtype | None:
    """The dtype convolutions run in on ``device`` (None: float32).

    ``precision`` None lets ``amp`` alone decide (mixed precision on CUDA
    only); otherwise ``amp=False`` forces float32.
    """
    if precision is None:
        return autocast_dtype(device) if amp else None
    if precision == "bfloat16" and not amp:
        raise ValueError("precision='bfloat16' contradicts amp=False (which means float32)")
    return prediction_dtype(device, precision if amp else "float32")


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy (nats) of ``(B, C, h, w)`` probabilities, as ``(B, 1, h, w)``."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=1, keepdim=True)


class TileRunner:
    """Maps ``(B, 1, h, w)`` input tiles to ``(B, C, h - 2m, w - 2m)`` CPU probabilities.

    The model is switched to eval mode and moved to ``device`` once, here.
    ``batch_size`` is the most tiles per forward pass; it shrinks (for good)
    when the device runs out of memory.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        *,
        device: torch.device,
        compute_dtype: torch.dtype | None,
        n_classes: int,
        margin: int,
        batch_size: int,
        tta: bool,
        notice: NoticeCallback | None,
    ) -> None:
        self.model = model
        self.device = device
        self._cuda = device.type == "cuda"
        #: The dtype the network's convolutions run in (None: float32).
        self.compute_dtype = compute_dtype
        #: ``"float32"``, ``"bfloat16"`` or ``"float16"``, for provenance records.
        self.precision_used = dtype_name(compute_dtype)
        self.amp = compute_dtype is not None
        self.n_classes = n_classes
        self.margin = margin
        self.batch_size = batch_size
        self.tta = tta
        #: With ``tta``: also return the variants' mean entropy (nats) as one
        #: extra, last channel, from which the TTA disagreement is computed.
        self.disagreement = False
        self.notice = notice
        #: What the runner changed on its own (e.g. after running out of memory).
        self.notices: list[str] = []
        if isinstance(model, nn.Module):
            model.eval()
            model.to(device)
            if self._cuda:
                # cuDNN's fastest convolutions want NHWC; inputs follow suit below
                model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of one device batch, without augmentation."""
        if self._cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_to(self.device, self.compute_dtype):
            logits = self.model(x)
        # softmax in float32 whatever autocast computed the logits in
        return torch.softmax(logits.float(), dim=1)

    @property
    def extra_channels(self) -> int:
        """Channels :meth:`run` returns after the class probabilities (0 or 1)."""
        return int(self.tta and self.disagreement)

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of :meth:`forward` over the 8 flips/rotations of ``x``.

        With :attr:`disagreement`, the variants' mean entropy follows as one more
        channel; the mean probabilities are computed as without it (bit-identical).
        """
        probs = entropy = None
        for k, flip in DIHEDRAL:
            xt = torch.rot90(x, k, dims=(2, 3))
            if flip:
                xt = torch.flip(xt, dims=(3,))
            y = self.forward(xt)
            if flip:
                y = torch.flip(y, dims=(3,))
            y = torch.rot90(y, -k, dims=(2, 3))
            probs = y if probs is None else probs + y
            if self.disagreement:
                h = _entropy(y)
                entropy = h if entropy is None else entropy + h
        mean = probs / len(DIHEDRAL)  # type: ignore[operator]
        if entropy is None:
            return mean
        return torch.cat([mean, entropy / len(DIHEDRAL)], dim=1)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One pass over ``batch`` (whatever its length) -> probabilities on the CPU."""
        x = torch.from_numpy(batch)
        if self._cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            x = x.to(self.device)
        probs = self._augmented(x) if self.tta else self.forward(x)
        trim = 2 * self.margin
        channels = self.n_classes + self.extra_channels
        expected = (batch.shape[0], channels, batch.shape[2] - trim, batch.shape[3] - trim)
        if tuple(probs.shape) != expected:
            raise ValueError(
                f"model returned shape {tuple(probs.shape)} for input {batch.shape}, expected "
                f"{expected}; its .geometry/.config do not describe it"
            )
        return probs.cpu().numpy()

    def run_fitting(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`run`, halving the tiles per pass while the device is out of memory."""
        while True:
            try:
                if len(batch) <= self.batch_size:
                    return self.run(batch)
                step = self.batch_size
                return np.concatenate(
                    [self.run(batch[i : i + step]) for i in range(0, len(batch), step)]
                )
            except Exception as exc:
                if not is_out_of_memory(exc) or self.batch_size == 1:
                    raise
                release_memory(self.device)
                self.batch_size = max(1, self.batch_size // 2)
                self.tell(
                    f"Out of {self.device.type} memory: predicting {self.batch_size} tile(s) "
                    "at a time from now on."
                )

    def smaller_tile(self, tile_size: int, grid: Any, exc: BaseException) -> int:
        """After ``exc`` (out of memory with one tile per pass): the next smaller tile.

        Frees the device's cached memory and announces the change; raises
        :class:`MemoryError` when ``tile_size`` is already the smallest legal tile.
        """
        release_memory(self.device)
        smaller = grid.smaller(tile_size)
        if smaller is None:
            raise MemoryError(
                f"out of {self.device.type} memory even with one {tile_size} px tile "
                "at a time; use the CPU or a smaller model"
            ) from exc
        self.tell(
            f"Out of {self.device.type} memory: tiles of {smaller} px instead of "
            f"{tile_size} px from now on."
        )
        return smaller

    def tell(self, text: str) -> None:
        """Record a change the runner made on its own, log it and pass it on."""
        self.notices.append(text)
        logger.warning(text)
        if self.notice is not None:
            self.notice(text)
