"""Small data and models for the batch, CLI and distributed tests (kept tiny: 2 shared cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_unet.io.tiff import write_tiff
from napari_unet.model.checkpoint import TrainedModel
from napari_unet.model.config import preset
from napari_unet.model.unet import UNet
from napari_unet.synthetic import synthetic_em_stack

SPACING = (40.0, 4.0, 4.0)  # z, y, x
UNIT = "nm"


def tiny_model(seed: int = 0) -> TrainedModel:
    """An untrained tiny U-Net: random but deterministic predictions, enough for I/O tests."""
    torch.manual_seed(seed)
    return TrainedModel(UNet(preset("tiny")))


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    return tiny_model(seed).save(path)


def write_stack(path: Path, shape=(4, 48, 56), seed: int = 0, spacing=SPACING, unit=UNIT, **kw) -> np.ndarray:
    """A synthetic EM stack (2D if ``shape`` has 2 axes) written with resolution metadata."""
    image = synthetic_em_stack(tuple(shape), seed=seed).image
    sp = None if spacing is None else (spacing if len(shape) == 3 else spacing[1:])
    write_tiff(path, image, spacing=sp, unit=unit, **kw)
    return image
