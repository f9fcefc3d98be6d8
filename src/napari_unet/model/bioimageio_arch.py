"""The network as bioimage.io packages describe it: the U-Net ending in a softmax.

A package's ``pytorch_state_dict`` weights name this class
(``ArchitectureFromLibraryDescr``: ``from napari_unet.model.bioimageio_arch import
UNetProbabilities``) with the model config as keyword arguments. It is the
napari-unet :class:`~napari_unet.model.unet.UNet` (same state-dict keys, so the
package's weights load into either) whose output is class probabilities rather
than logits, as a bioimage.io consumer expects. The TorchScript weights are this
module traced. Kept free of bioimageio imports: loading it needs napari-unet and
torch only.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import UNetConfig
from .unet import UNet


class UNetProbabilities(UNet):
    """:class:`UNet` built from config keywords, returning softmax probabilities over classes."""

    def __init__(self, **config: Any) -> None:
        super().__init__(UNetConfig.from_dict(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=1)
