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
from .held_out import evaluating
from .sampling import PatchSampler

__all__ = ["HARD_PIXELS_PER_REFRESH", "hard_pixels", "refreshed_pools"]

#: A painted pixel is hard while the model gives its painted class less than this.
UNSURE_BELOW = 0.7
#: Pixels of painted slices predicted per refresh: about 3 s of the default network
#: on 2 CPU cores, four refreshes per run.
HARD_PIXELS_PER_REFRESH = 4 * 2**20


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
    out = []
    with evaluating(model, batch_size=batch_size, device=device, amp=amp) as predictor:
        for z, target in slices:
            probs = predictor.predict_slice(normalised(z))  # (C, Y, X)
            painted = np.flatnonzero(target != IGNORE)
            classes = target.reshape(-1)[painted]
            p_true = probs.reshape(probs.shape[0], -1)[classes, painted]
            out.append(painted[p_true < below])
    return out


def refreshed_pools(
    model: UNet,
    sampler: PatchSampler,
    turn: int,
    normalised: Callable[[int], np.ndarray],
    *,
    batch_size: int,
    device: torch.device,
    amp: bool,
) -> tuple[int, list[np.ndarray]]:
    """The hard pixels of ``sampler``'s slices from ``turn`` on, in turn, until
    :data:`HARD_PIXELS_PER_REFRESH` pixels are predicted (at least one slice; the others
    keep what an earlier refresh found): returns the next turn and every slice's pool."""
    n = len(sampler.slices)
    chosen, budget = [], HARD_PIXELS_PER_REFRESH
    for k in range(n):
        s = sampler.slices[(turn + k) % n]
        if chosen and s.shape[0] * s.shape[1] > budget:
            break
        chosen.append((turn + k) % n)
        budget -= s.shape[0] * s.shape[1]
    found = hard_pixels(model, [(sampler.slices[i].z, sampler.unpadded_target(i)) for i in chosen],
                        normalised, batch_size=batch_size, device=device, amp=amp)
    pools = sampler.hard_pools()
    for i, pixels in zip(chosen, found):
        pools[i] = pixels
    return (turn + len(chosen)) % n, pools
