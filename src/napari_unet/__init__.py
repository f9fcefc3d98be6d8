"""napari-unet: segment EM stacks from a few painted slices with a U-Net.

The public API is exported lazily: ``import napari_unet`` does not import
torch, so napari stays fast when it loads the plugin (its TIFF reader, say).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "UNetConfig": "config",
    "preset": "config",
    "PRESETS": "config",
    "UNet": "model",
    "Geometry": "model",
    "AnnotationSettings": "annotations",
    "summarize": "annotations",
    "boundary_weight_map": "weightmap",
    "AugmentConfig": "augment",
    "Normalization": "normalization",
    "TrainingConfig": "training",
    "Trainer": "training",
    "TrainEvent": "training",
    "train": "training",
    "TilePredictor": "overlap_tile",
    "PredictionSettings": "prediction_settings",
    "predict": "inference",
    "predict_steps": "inference",
    "Prediction": "inference",
    "TrainedModel": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "Cancelled": "errors",
    "CheckpointError": "errors",
    "synthetic_em_stack": "synthetic",
    "BatchOptions": "batch",
    "FileResult": "batch",
    "batch_segment": "batch",
    "batch_segment_steps": "batch",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .annotations import AnnotationSettings, summarize
    from .augment import AugmentConfig
    from .batch import BatchOptions, FileResult, batch_segment, batch_segment_steps
    from .checkpoint import TrainedModel, load_checkpoint, save_checkpoint
    from .config import PRESETS, UNetConfig, preset
    from .errors import Cancelled, CheckpointError
    from .inference import Prediction, predict, predict_steps
    from .model import Geometry, UNet
    from .normalization import Normalization
    from .overlap_tile import TilePredictor
    from .prediction_settings import PredictionSettings
    from .synthetic import synthetic_em_stack
    from .training import Trainer, TrainEvent, TrainingConfig, train
    from .weightmap import boundary_weight_map
