"""What a training run is told (:class:`TrainingConfig`) and what it reports (:class:`TrainEvent`).

The config is typed and checked on construction, including when it is rebuilt
from a checkpoint's plain dict (:meth:`TrainingConfig.from_dict`), so that a bad
value fails before any training starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Literal, Mapping

import numpy as np

from .. import devices
from ..model.config import check_input_slices
from ..model.normalization import Normalization
from .annotations import AnnotationSettings
from .augment import AugmentConfig
from .losses import get_loss

__all__ = ["HARDWARE_FIELDS", "TrainEvent", "TrainingConfig"]

LossName = Literal["auto", "weighted_ce", "ce", "dice", "dice_ce"]

#: TrainingConfig fields that say where and how fast a run goes, not what it learns: they
#: are left out of the recipe a checkpoint stores, so that a model trained on a GPU
#: resumes on a laptop with that machine's own settings.
HARDWARE_FIELDS = ("device", "amp", "prefetch")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides how a model is trained (stored in its checkpoint).

    Defaults: AdamW at 1e-3 with a short warm-up and a cosine decay trains the
    default network from scratch in a few hundred iterations; when fine-tuning
    a checkpoint, a lower rate (:data:`FINETUNE_LEARNING_RATE`) keeps what it
    already knows.
    """

    iterations: int = 500
    # a budget of wall time ("train for 5 minutes"): the run ends when it is spent (or at
    # ``iterations``, whichever comes first), and the learning-rate schedule runs on
    # whichever of the two is further along, so a short budget still ends at a low rate.
    # None: iterations alone. Time-limited runs are not bit-reproducible (the rate
    # depends on the clock).
    time_limit_s: float | None = None
    batch_size: int = 4
    patch_size: int = 128  # output window edge; the input adds the network's context
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 25
    schedule: Literal["cosine", "constant"] = "cosine"
    # "auto": the paper's weighted cross-entropy, plus a foreground soft Dice where painted
    # objects are a minority of the pixels (losses.resolved_loss says why)
    loss: LossName = "auto"
    annotation: AnnotationSettings = field(default_factory=AnnotationSettings)
    foreground_fraction: float = 0.33
    # share of patches centred on painted pixels the current model gets wrong or is unsure
    # of (hard-example mining; found again after 5, 25, 50 and 75 % of the run). Off: on
    # Lucchi it matched the default at 5 minutes and trailed it in the first minute
    hard_fraction: float = 0.0
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    normalization: Normalization = field(default_factory=Normalization)
    val_fraction: float = 0.1
    val_every: int | None = None  # default: 20 validations per run
    # which validated weights the run returns: "last" (the end of the schedule, as
    # nnU-Net does) or "best" (the latest within selection_tolerance of the best
    # validation Dice). The foreground Dice of a few held-out slices is a poor guide to
    # boundaries: on ISBI it peaked early while later weights separated cells far
    # better (adapted Rand error 0.13-0.14 at the Dice peak vs 0.04-0.05 at the end)
    keep: Literal["last", "best"] = "last"
    selection_tolerance: float = 0.01
    seed: int = 0
    # slices the network reads for each one (2.5D, see UNetConfig.input_slices): None keeps
    # the starting model's (1 for a new one); a 2D checkpoint fine-tuned with 3 starts as
    # the same function (the neighbours' weights start at zero) and learns to use them
    input_slices: int | None = None
    device: str = "auto"
    amp: bool = True
    prefetch: int = 3

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "patch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        # the type checks below matter for configs rebuilt from a checkpoint (from_dict),
        # which could otherwise carry a string or a list into the training loop
        for name in ("learning_rate", "weight_decay", "foreground_fraction", "hard_fraction", "val_fraction",
                     "selection_tolerance"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.time_limit_s is not None and (
            not _is_number(self.time_limit_s) or not math.isfinite(self.time_limit_s)
            or self.time_limit_s <= 0
        ):
            raise ValueError(f"time_limit_s must be a positive number of seconds or None, got {self.time_limit_s!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if self.val_every is not None and (not _is_int(self.val_every) or self.val_every < 1):
            raise ValueError(f"val_every must be a positive integer or None, got {self.val_every!r}")
        if self.input_slices is not None:
            check_input_slices(self.input_slices)
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.annotation, AnnotationSettings):
            raise ValueError(f"annotation must be AnnotationSettings, got {type(self.annotation).__name__}")
        if not isinstance(self.normalization, Normalization):
            raise ValueError(f"normalization must be Normalization, got {type(self.normalization).__name__}")
        if self.augment is not None and not isinstance(self.augment, AugmentConfig):
            raise ValueError(f"augment must be AugmentConfig or None, got {type(self.augment).__name__}")
        if not 0.0 <= self.val_fraction < 0.9:
            raise ValueError(f"val_fraction must be in [0, 0.9), got {self.val_fraction}")
        if self.keep not in ("last", "best"):
            raise ValueError(f"keep must be 'last' or 'best', got {self.keep!r}")
        if not 0.0 <= self.selection_tolerance <= 1.0:
            raise ValueError(f"selection_tolerance must be in [0, 1], got {self.selection_tolerance}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.loss != "auto":
            get_loss(self.loss)  # validates the name
        if self.device not in devices.DEVICE_CHOICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be one of {devices.DEVICE_CHOICES}, got {self.device!r}")

    def to_dict(self, *, recipe: bool = False) -> dict[str, Any]:
        """Plain values (nested settings as dicts) that :meth:`from_dict` turns back into this.

        ``recipe=True`` leaves out :data:`HARDWARE_FIELDS`: what a checkpoint stores.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["annotation"] = asdict(self.annotation)
        d["normalization"] = self.normalization.to_dict()
        d["augment"] = None if self.augment is None else self.augment.to_dict()
        if recipe:
            for name in HARDWARE_FIELDS:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an
        error (a typo must not silently train with a default)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"training settings must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(map(str, unknown))}; known: {sorted(known)}")
        values = dict(data)
        nested: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "annotation": _annotation_from_dict,
            "normalization": _normalization_from_dict,
            "augment": AugmentConfig.from_dict,
        }
        for name, build in nested.items():
            if isinstance(values.get(name), Mapping):
                try:
                    values[name] = build(values[name])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"invalid {name} settings: {exc}") from None
        return cls(**values)


def _annotation_from_dict(data: Mapping[str, Any]) -> AnnotationSettings:
    known = {f.name for f in fields(AnnotationSettings)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
    return AnnotationSettings(**data)


def _normalization_from_dict(data: Mapping[str, Any]) -> Normalization:
    known = {f.name for f in fields(Normalization)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
    return Normalization.from_dict(dict(data))


@dataclass(frozen=True)
class TrainEvent:
    """Progress of one training iteration (and the final one with ``done=True``)."""

    iteration: int
    total: int
    loss: float
    lr: float
    patches_per_s: float
    elapsed_s: float
    val_metric: float | None = None  # foreground Dice on held-out pixels, when validated
    best_metric: float | None = None
    is_best: bool = False
    done: bool = False
    cancelled: bool = False
    notice: str | None = None  # a setting the trainer changed on its own (out of memory)
    time_limit_s: float | None = None  # the run's time budget, if it has one

    @property
    def eta_s(self) -> float:
        if self.iteration <= 0:
            return float("nan")
        eta = self.elapsed_s / self.iteration * max(0, self.total - self.iteration)
        if self.time_limit_s is not None:
            eta = min(eta, max(0.0, self.time_limit_s - self.elapsed_s))
        return eta

    @property
    def fraction(self) -> float:
        """How far the run is, 0-1: by iterations, or by time when that is further."""
        done = self.iteration / max(1, self.total)
        if self.time_limit_s:
            done = max(done, self.elapsed_s / self.time_limit_s)
        return min(1.0, done)

