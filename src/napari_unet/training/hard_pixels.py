"""Painted pixels the current model gets wrong or is unsure of: where the next patches should go.

Few painted slices hold many easy pixels (plain cytoplasm, the middle of big
objects) and a few hard ones (thin or faint objects, touching borders). Once the
easy ones are learned, patches drawn uniformly or on random object pixels spend
most of the remaining steps on them; centring a share of patches on the hard
pixels is hard-example mining, refreshed during the run as the model changes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..model.unet import UNet
from .annotations import IGNORE

__all__ = ["hard_pixels"]

#: A painted pixel is hard while the model gives its painted class less than this.
UNSURE_BELOW = 0.7


def hard_pixels(
    model: UNet,
    slices: list[tuple[int, np.ndarray]],
    normalised: Callable[[int], np.ndarray],
    *,
    batch_size: int,
    device: torch.device,
    amp: bool,
    below: float = UNSURE_BELOW,
) -> list[np.ndarray]:
    """For each ``(z, target)``: flat indices of the painted pixels whose painted class
    gets a probability below ``below`` (wrong, or right by a small margin).

    Predicts each whole slice once, as validation does (eval mode, the run's
    precision), and leaves the model in train mode.
    """
    from ..prediction.overlap_tile import TilePredictor

    model.eval()
    try:
        predictor = TilePredictor(model, batch_size=batch_size, device=device, amp=amp,
                                  precision="auto" if amp else "float32")
        out = []
        for z, target in slices:
            probs = predictor.predict_slice(normalised(z))  # (C, Y, X)
            painted = np.flatnonzero(target != IGNORE)
            classes = target.reshape(-1)[painted]
            p_true = probs.reshape(probs.shape[0], -1)[classes, painted]
            out.append(painted[p_true < below])
        return out
    finally:
        model.train()
