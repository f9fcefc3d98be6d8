"""One typed, self-validating description of how to predict.

The Python API (``predict``), the CLI, the Segment and Batch panels, batch
files and the cluster all build a :class:`PredictionSettings` (or the
:class:`~napari_unet.prediction.batch.BatchOptions` that extends it with what to write)
and hand it on, so that a new prediction option is added here, once, and is
validated once, at the edge, with a message a user can act on.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import check_positive_int
from .uncertainty import UNCERTAINTY_METHODS
from .z_context import check_z_smoothing

#: How objects are separated in a foreground mask (see ``postprocess.instance_labels``):
#: the one list the engine, CLI, panels and docs offer.
INSTANCE_METHODS = ("components", "watershed", "fill")
#: Instance methods that draw object borders along the foreground probability.
PROBABILITY_GUIDED = ("watershed", "fill")
#: Device names a user can give (``"cuda:1"`` style indices are accepted too).
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
#: Arithmetic a user can ask prediction to run in (see ``devices.prediction_dtype``).
PRECISION_CHOICES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class PredictionSettings:
    """How to predict a stack, and which results to compute.

    Attributes:
        tile_size: output tile edge in pixels, rounded to a size the network
            accepts; None picks the device's default (512 on CUDA, 256 else).
        batch_size: tiles per forward pass (lowered automatically when the
            device runs out of memory).
        tta: average the softmax over the 8 flips/rotations (8x slower).
        device: ``"auto"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"cpu"``.
        amp: allow mixed precision; False means float32 whatever ``precision``
            says (the older spelling of ``precision="float32"``).
        probabilities: keep the class probabilities.
        instances: label individual objects too.
        instance_method: one of :data:`INSTANCE_METHODS`.
        min_size: drop objects smaller than this many pixels (per slice).
        threshold: foreground probability threshold for 2-class models
            (None: the most probable class).
        precision: one of :data:`PRECISION_CHOICES`. ``"auto"``: bf16 on CUDA
            GPUs with native bf16 (fp16 on older ones), bf16 on CPUs with
            AVX-512-BF16 or AMX (about twice as fast; results within bf16
            rounding, see BENCHMARKS.md), float32 elsewhere. ``"float32"``:
            always full precision. ``"bfloat16"``: bf16 even where it is only
            emulated (slow; a warning says so).
        uncertainty: compute a per-pixel uncertainty map and a per-slice
            score (to choose the next slice to paint).
        uncertainty_method: one of :data:`UNCERTAINTY_METHODS`: ``"entropy"``
            of the softmax, or ``"tta"`` disagreement of the 8 test-time
            augmentation variants (needs ``tta=True``).
        z_smoothing: 3D context for a 2D network: each slice's probabilities
            averaged with its neighbours' (Gaussian, this sigma in slices; 0:
            every slice alone). ``"auto"``: 2 slices when a whole stack whose
            neighbouring slices look alike (near-isotropic voxels, FIB-SEM) is
            predicted, else 0 (serial sections; previews of one slice).
    """

    tile_size: int | None = None
    batch_size: int = 4
    tta: bool = False
    device: str = "auto"
    amp: bool = True
    probabilities: bool = True
    instances: bool = False
    instance_method: str = "components"
    min_size: int = 0
    threshold: float | None = None
    precision: str = "auto"
    uncertainty: bool = False
    uncertainty_method: str = "entropy"
    z_smoothing: float | str = "auto"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        if self.tile_size is not None:
            set_(self, "tile_size", check_positive_int(self.tile_size, "tile_size"))
        set_(self, "batch_size", check_positive_int(self.batch_size, "batch_size"))
        set_(self, "min_size", check_positive_int(self.min_size, "min_size", minimum=0))
        for flag in ("tta", "amp", "probabilities", "instances", "uncertainty"):
            value = getattr(self, flag)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
            set_(self, flag, bool(value))
        if self.instance_method not in INSTANCE_METHODS:
            raise ValueError(
                f"instance_method must be one of {INSTANCE_METHODS}, got {self.instance_method!r}"
            )
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device.strip().lower()):
            raise ValueError(f"device must be one of {DEVICE_CHOICES} or 'cuda:N', got {self.device!r}")
        set_(self, "device", self.device.strip().lower())
        if isinstance(self.threshold, (bool, np.bool_)):
            raise ValueError(f"threshold must be a number in [0, 1], got {self.threshold!r}")
        if self.threshold is not None:
            try:
                threshold = float(self.threshold)
            except (TypeError, ValueError):
                threshold = float("nan")
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
            set_(self, "threshold", threshold)
        precision = self.precision.strip().lower() if isinstance(self.precision, str) else None
        if precision not in PRECISION_CHOICES:
            raise ValueError(
                f"precision must be one of {PRECISION_CHOICES}, got {self.precision!r}"
            )
        set_(self, "precision", precision)
        self._check_uncertainty()
        set_(self, "z_smoothing", check_z_smoothing(self.z_smoothing))
        if self.precision == "bfloat16" and not self.amp:
            raise ValueError(
                "precision='bfloat16' contradicts amp=False (which means float32); drop amp=False"
            )

    def _check_uncertainty(self) -> None:
        if self.uncertainty_method not in UNCERTAINTY_METHODS:
            raise ValueError(
                f"uncertainty_method must be one of {UNCERTAINTY_METHODS}, "
                f"got {self.uncertainty_method!r}"
            )
        if self.uncertainty and self.uncertainty_method == "tta" and not self.tta:
            raise ValueError(
                "uncertainty_method='tta' measures how the 8 test-time augmentation variants "
                "disagree; set tta=True as well (or use uncertainty_method='entropy')"
            )

    @property
    def needs_foreground(self) -> bool:
        """Whether the instance step reads the foreground probability."""
        return self.instances and self.instance_method in PROBABILITY_GUIDED

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls, settings: PredictionSettings | None = None, **options: Any) -> PredictionSettings:
        """``settings`` (or the defaults) with some options replaced; unknown names are errors."""
        known = set(cls.names())
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"unknown prediction option(s) {unknown}; known: {sorted(known)}"
            )
        base = settings if settings is not None else cls()
        if not isinstance(base, PredictionSettings):
            raise TypeError(f"settings must be PredictionSettings, got {type(base).__name__}")
        values = {name: getattr(base, name) for name in known}
        values.update(options)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
