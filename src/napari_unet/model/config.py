"""Typed, self-validating model configuration.

One frozen dataclass describes a network completely; checkpoints store it as a
plain dict (``to_dict``) so that a checkpoint rebuilds its own model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

Padding = Literal["valid", "same"]
Norm = Literal["none", "batch", "group"]

_PADDINGS = ("valid", "same")
MAX_INPUT_SLICES = 15


def check_input_slices(value: Any, name: str = "input_slices") -> int:
    """An odd number of slices from 1 to :data:`MAX_INPUT_SLICES` (the slice and as many
    neighbours on each side), or ValueError."""
    if (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_INPUT_SLICES
            or value % 2 == 0):
        raise ValueError(f"{name} must be an odd number from 1 to {MAX_INPUT_SLICES}, got {value!r}")
    return value
_NORMS = ("none", "batch", "group")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a 2D U-Net (Ronneberger et al., 2015).

    The defaults are chosen for biologists on ordinary hardware, not for a
    benchmark leaderboard:

    - ``base_channels=16`` (the paper uses 64): about 1.9 M parameters instead
      of 31 M, 16x fewer FLOPs per pixel, so a few hundred iterations train in
      minutes on a laptop CPU and seconds on a GPU. Few-slice fine-tuning has
      far too little data to need the paper's width.
    - ``depth=4`` poolings as in the paper: a receptive field of ~185 px, enough
      to see whole cells and the membrane context around them in EM.
    - ``padding="valid"`` as in the paper: every output pixel sees its full
      context, so overlap-tile prediction is seamless and exactly equal to a
      whole-image pass (the border is handled by mirroring).
    - ``norm="batch"``: trains much faster than no normalisation; in eval mode
      it is a per-channel affine map, so predictions stay tile-invariant.
      ``"group"`` normalises with statistics of each tile, which makes results
      depend on the tiling; it is offered for batch size 1 training only.
    - ``dropout=0.2`` at the end of the contracting path, as the paper does, to
      regularise training on a handful of slices.
    - ``input_slices=1``: each slice alone. An odd number above 1 (2.5D) gives
      the network slice z and its neighbours (mirrored at the stack ends) as
      input channels, so on near-isotropic volumes it sees the objects'
      shape along z; only the centre slice is segmented.
    """

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_channels: int = 16
    padding: Padding = "valid"
    norm: Norm = "batch"
    dropout: float = 0.2
    groups: int = 8
    input_slices: int = 1

    def __post_init__(self) -> None:
        check_input_slices(self.input_slices)
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {self.in_channels!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(
                f"n_classes must be an integer >= 2 (background + at least one class), "
                f"got {self.n_classes!r}"
            )
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 6:
            raise ValueError(f"depth (number of poolings) must be 1..6, got {self.depth!r}")
        if not isinstance(self.base_channels, int) or self.base_channels < 1:
            raise ValueError(f"base_channels must be a positive integer, got {self.base_channels!r}")
        if self.padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {self.padding!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.norm == "group" and self.base_channels % self.groups:
            raise ValueError(
                f"group norm needs base_channels ({self.base_channels}) divisible by "
                f"groups ({self.groups})"
            )

    @property
    def input_planes(self) -> int:
        """Channels of the first convolution: image channels times input slices."""
        return self.in_channels * self.input_slices

    @property
    def z_radius(self) -> int:
        """Neighbouring slices on each side that the network reads (0: 2D)."""
        return self.input_slices // 2

    def to_dict(self) -> dict[str, Any]:
        """Plain fields; ``input_slices`` only when above 1, so 2D checkpoints stay
        readable by versions that predate it."""
        data = asdict(self)
        if self.input_slices == 1:
            del data["input_slices"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def with_classes(self, n_classes: int) -> UNetConfig:
        return replace(self, n_classes=n_classes)


#: Learning rate for fine-tuning a trained model: lower than training from scratch
#: (1e-3) so that it keeps what it already knows. The CLI, the panels, the demo and
#: the benchmarks all use this one.
FINETUNE_LEARNING_RATE = 3e-4

#: Model size presets offered in the widgets and the CLI.
PRESETS: dict[str, UNetConfig] = {
    # for tests and instant demos: trains in seconds on a CPU
    "tiny": UNetConfig(depth=2, base_channels=8, dropout=0.0),
    "small": UNetConfig(depth=3, base_channels=16),
    "default": UNetConfig(),
    "large": UNetConfig(base_channels=32),
    # the paper's network (31 M parameters)
    "paper": UNetConfig(base_channels=64, norm="none"),
}


def preset(name: str, **overrides: Any) -> UNetConfig:
    """A named model size, optionally with some fields replaced."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return replace(cfg, **overrides) if overrides else cfg
