"""Self-describing checkpoints that are safe to load from strangers.

A checkpoint is a plain dict of tensors and plain Python values saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which
refuses any pickle that would import or call code. Beside the weights it
stores everything needed to use the model again: the architecture config, the
intensity normalisation, the annotation convention and class names, the
training settings, the package version and a format version.
"""

from __future__ import annotations

import copy
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._atomic import atomic_path
from .annotations import AnnotationSettings
from .config import UNetConfig
from .errors import CheckpointError
from .model import UNet
from .normalization import Normalization

if TYPE_CHECKING:
    import numpy as np

    from .inference import Prediction

FORMAT = "napari-unet-checkpoint"
FORMAT_VERSION = 1


def _package_version() -> str:
    from . import __version__

    return __version__


@dataclass
class TrainedModel:
    """A network plus what it needs to be applied correctly to new stacks."""

    model: UNet
    normalization: Normalization = field(default_factory=Normalization)
    annotation: AnnotationSettings = field(default_factory=AnnotationSettings)
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    training: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None

    @property
    def config(self) -> UNetConfig:
        return self.model.config

    @property
    def n_classes(self) -> int:
        return self.model.config.n_classes

    def predict(self, image: np.ndarray, **kwargs: Any) -> Prediction:
        """Shortcut for :func:`napari_unet.predict` with this model."""
        from .inference import predict

        return predict(self, image, **kwargs)

    def save(self, path: str | os.PathLike, *, half: bool = False, include_optimizer: bool = True) -> Path:
        return save_checkpoint(self, path, half=half, include_optimizer=include_optimizer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainedModel:
        return load_checkpoint(path)

    def copy(self) -> TrainedModel:
        """An independent copy (weights included), e.g. to keep while training goes on."""
        return copy.deepcopy(self)


def _plain(value: Any) -> Any:
    """Recursively turn tuples into lists and reject anything not plain (safe to load)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def save_checkpoint(
    trained: TrainedModel,
    path: str | os.PathLike,
    *,
    half: bool = False,
    include_optimizer: bool = True,
) -> Path:
    """Write ``trained`` to ``path`` atomically (temporary file, then rename).

    ``half=True`` stores float weights as float16 (half the size, for shipping);
    they are loaded back as float32.
    """
    path = Path(path)
    state = {
        k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu())
        for k, v in trained.model.state_dict().items()
    }
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "model_config": trained.config.to_dict(),
        "state_dict": state,
        "normalization": trained.normalization.to_dict(),
        "annotation": _plain(trained.annotation.__dict__),
        "class_names": list(trained.class_names),
        "training": _plain(trained.training),
    }
    if include_optimizer and trained.optimizer_state is not None:
        payload["optimizer"] = _plain(trained.optimizer_state)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), None)
        if detail:  # the file names a Python callable: the way pickles execute code
            raise CheckpointError(
                f"refused to load {path.name}: it contains Python objects that could run code "
                "when loaded, which napari-unet checkpoints never do. Only load checkpoints from "
                f"sources you trust. ({detail[:200]})"
            ) from None
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint (corrupt, truncated or another format)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint (corrupt, truncated or another format): {first}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a napari-unet checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{path.name} has checkpoint format version {version!r}; this napari-unet "
            f"({_package_version()}) reads versions up to {FORMAT_VERSION}. Update napari-unet."
        )
    return payload


def load_checkpoint(path: str | os.PathLike) -> TrainedModel:
    """Load a checkpoint safely; :class:`CheckpointError` (a ValueError) says what is wrong."""
    path = Path(path)
    payload = _read(path)
    try:
        config = UNetConfig.from_dict(payload["model_config"])
        normalization = Normalization.from_dict(payload.get("normalization", {}))
        annotation = AnnotationSettings(**payload.get("annotation", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.name} has an invalid configuration: {exc}") from None
    model = UNet(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    missing, unexpected = _compare_keys(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{path.name}: weights do not fit the stored model config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path.name}: weights do not fit the stored model config: {exc}") from None
    model.eval()
    return TrainedModel(
        model=model,
        normalization=normalization,
        annotation=annotation,
        class_names=list(payload.get("class_names") or [f"class {i}" for i in range(config.n_classes)]),
        training=dict(payload.get("training", {})),
        optimizer_state=payload.get("optimizer"),
    )


def _compare_keys(model: UNet, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = set(model.state_dict())
    return sorted(own - set(state)), sorted(set(state) - own)


def transfer_weights(source: UNet, target: UNet) -> list[str]:
    """Copy every weight of ``source`` whose name and shape fit ``target``.

    Used for fine-tuning: the encoder and decoder are kept, the 1x1 head is
    re-initialised when the number of classes differs. Returns the names of
    the tensors that were *not* transferred.
    """
    if source.config.in_channels != target.config.in_channels:
        raise CheckpointError(
            f"the checkpoint expects {source.config.in_channels} input channel(s), the image has "
            f"{target.config.in_channels}"
        )
    src = source.state_dict()
    dst = target.state_dict()
    skipped = []
    for k, v in dst.items():
        if k in src and src[k].shape == v.shape:
            dst[k] = src[k].clone()
        else:
            skipped.append(k)
    target.load_state_dict(dst)
    return skipped
