"""napari-unet: segment EM stacks from a few painted slices with a U-Net.

The public API is exported lazily: ``import napari_unet`` does not import
torch, so napari stays fast when it loads the plugin (its TIFF reader, say).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "UNetConfig": "model.config",
    "preset": "model.config",
    "PRESETS": "model.config",
    "UNet": "model.unet",
    "Geometry": "model.unet",
    "AnnotationSettings": "training.annotations",
    "summarize": "training.annotations",
    "suggest_slices": "training.suggest",
    "copy_prediction": "training.correction",
    "boundary_weight_map": "training.weightmap",
    "AugmentConfig": "training.augment",
    "Normalization": "model.normalization",
    "TrainingConfig": "training.trainer",
    "Trainer": "training.trainer",
    "TrainEvent": "training.trainer",
    "train": "training.trainer",
    "TilePredictor": "prediction.overlap_tile",
    "PredictionSettings": "prediction.settings",
    "predict": "prediction.inference",
    "predict_steps": "prediction.inference",
    "Prediction": "prediction.inference",
    "TrainedModel": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "export_bioimageio": "model.bioimageio",
    "Cancelled": "errors",
    "CheckpointError": "errors",
    "synthetic_em_stack": "synthetic",
    "BatchOptions": "prediction.batch",
    "FileResult": "prediction.batch",
    "batch_segment": "prediction.batch",
    "batch_segment_steps": "prediction.batch",
    "segment_volume": "prediction.volume",
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
    from .errors import Cancelled, CheckpointError
    from .model.bioimageio import export_bioimageio
    from .model.checkpoint import TrainedModel, load_checkpoint, save_checkpoint
    from .model.config import PRESETS, UNetConfig, preset
    from .model.normalization import Normalization
    from .model.unet import Geometry, UNet
    from .prediction.batch import BatchOptions, FileResult, batch_segment, batch_segment_steps
    from .prediction.inference import Prediction, predict, predict_steps
    from .prediction.overlap_tile import TilePredictor
    from .prediction.settings import PredictionSettings
    from .prediction.volume import segment_volume
    from .synthetic import synthetic_em_stack
    from .training.annotations import AnnotationSettings, summarize
    from .training.augment import AugmentConfig
    from .training.correction import copy_prediction
    from .training.suggest import suggest_slices
    from .training.trainer import Trainer, TrainEvent, TrainingConfig, train
    from .training.weightmap import boundary_weight_map
