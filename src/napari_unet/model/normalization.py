"""Intensity normalisation, recorded in checkpoints and replayed at prediction.

EM stacks come as uint8, uint16 or float with arbitrary contrast. Mapping the
``p_low``/``p_high`` percentiles of each stack to 0/1 makes a model trained on
one acquisition usable on the next (robust to outliers such as saturated
pixels). The statistics are taken from a subsample of slices so that stacks
larger than memory are never read whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

Method = Literal["percentile", "fixed", "none"]

#: Slices and pixels read to estimate percentiles (enough for 3 significant digits).
_MAX_SLICES = 16
_MAX_PIXELS_PER_SLICE = 1_000_000


def _sample(stack: Any) -> np.ndarray:
    """A subsample of a (Z, Y, X) stack that is cheap to read from a lazy array."""
    z = stack.shape[0]
    zs = np.unique(np.linspace(0, z - 1, min(z, _MAX_SLICES)).round().astype(int))
    ny, nx = stack.shape[1:]
    step = max(1, int(np.ceil(np.sqrt(ny * nx / _MAX_PIXELS_PER_SLICE))))
    parts = [np.asarray(stack[int(k), ::step, ::step]).ravel() for k in zs]
    values = np.concatenate(parts)
    if values.dtype.kind == "b":  # a mask (image > t): numbers 0/1, as everywhere else
        values = values.astype(np.uint8)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    return values


@dataclass(frozen=True)
class Normalization:
    """How raw intensities become network input.

    - ``"percentile"`` (default): recompute the percentiles on every stack that
      is predicted, so contrast changes between acquisitions do not matter.
    - ``"fixed"``: always use ``low``/``high`` as measured on the training stack
      (for quantitative data whose absolute values carry meaning).
    - ``"none"``: feed the values as they are (already normalised floats).
    """

    method: Method = "percentile"
    p_low: float = 1.0
    p_high: float = 99.8
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "fixed", "none"):
            raise ValueError(f"normalisation method must be percentile/fixed/none, got {self.method!r}")
        if not 0.0 <= self.p_low < self.p_high <= 100.0:
            raise ValueError(f"need 0 <= p_low < p_high <= 100, got {self.p_low}, {self.p_high}")
        if self.method == "fixed" and (self.low is None or self.high is None):
            raise ValueError("fixed normalisation needs low and high values")

    def statistics(self, stack: Any) -> tuple[float, float]:
        """(low, high) for a (Z, Y, X) stack under this method."""
        if self.method == "none":
            return 0.0, 1.0
        if self.method == "fixed":
            return float(self.low), float(self.high)  # type: ignore[arg-type]
        values = _sample(stack)
        if values.size == 0:
            raise ValueError("the image holds only NaN or infinite values; nothing to normalise")
        low, high = np.percentile(values, [self.p_low, self.p_high])
        if high <= low:  # flat image or extreme percentiles: fall back to the full range
            low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1.0
        return float(low), float(high)

    def fit(self, stack: Any) -> Normalization:
        """This normalisation with the training stack's statistics recorded."""
        low, high = self.statistics(stack)
        return replace(self, low=low, high=high)

    @staticmethod
    def apply(slice_: np.ndarray, low: float, high: float) -> np.ndarray:
        """Map ``low``/``high`` to 0/1 as float32 (values outside are kept, not clipped)."""
        out = np.asarray(slice_, dtype=np.float32) - np.float32(low)
        out *= np.float32(1.0 / (high - low))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        return cls(**data)
