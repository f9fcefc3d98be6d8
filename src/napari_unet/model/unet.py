"""The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015), 2D, returning logits.

Small blocks (two convolutions, down, up-and-concatenate) keep the network
readable; :class:`Geometry` answers the questions the trainer and the
overlap-tile predictor need for a valid-padding network: how much context is
lost at each side, which input sizes are legal, and which input produces a
requested output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import UNetConfig


@dataclass(frozen=True)
class Geometry:
    """Size arithmetic of a U-Net with ``depth`` poolings.

    With ``padding="valid"`` every 3x3 convolution trims one pixel per side and
    every 2x2 pooling needs an even size, so only some input sizes are legal
    and the output is smaller than the input by ``2 * margin``. With
    ``padding="same"`` output == input and inputs must be divisible by
    ``2 ** depth``.
    """

    depth: int
    padding: str

    @property
    def divisor(self) -> int:
        """Legal input sizes are spaced by this many pixels."""
        return 2**self.depth

    def _output_or_none(self, size: int) -> int | None:
        if self.padding == "same":
            return size if size > 0 and size % self.divisor == 0 else None
        s = size
        for _ in range(self.depth):
            s -= 4
            if s <= 0 or s % 2:
                return None
            s //= 2
        s -= 4  # bottom block
        if s <= 0:
            return None
        for _ in range(self.depth):
            s = 2 * s - 4
        return s if s > 0 else None

    @property
    def min_input_size(self) -> int:
        """Smallest legal input size (its output is 4 px for a valid net)."""
        if self.padding == "same":
            return self.divisor
        # the bottom block must output >= 4 px, else the expanding path's
        # convolutions run out of pixels; walk back up the contracting path
        s = 4 + 4
        for _ in range(self.depth):
            s = 2 * s + 4
        return s

    @property
    def margin(self) -> int:
        """Context pixels lost on each side (0 for same padding)."""
        n = self.min_input_size
        return (n - self.output_size(n)) // 2

    def is_valid_input_size(self, size: int) -> bool:
        return self._output_or_none(int(size)) is not None

    def output_size(self, size: int) -> int:
        """Output size for a legal input size; ValueError naming legal neighbours otherwise."""
        out = self._output_or_none(int(size))
        if out is None:
            lo, hi = self.legal_input_size(size, "down"), self.legal_input_size(size, "up")
            near = f"{hi}" if lo is None else f"{lo} or {hi}"
            raise ValueError(
                f"input size {size} is not legal for a depth-{self.depth} {self.padding}-padding "
                f"U-Net; use {near} (legal sizes are {self.min_input_size} + k * {self.divisor})"
            )
        return out

    def legal_input_size(self, size: int, direction: str = "up") -> int | None:
        """Nearest legal input size at or above (``"up"``) or below (``"down"``) ``size``."""
        n0, step = self.min_input_size, self.divisor
        if direction == "up":
            k = max(0, -(-(int(size) - n0) // step))
            return n0 + k * step
        if direction == "down":
            if size < n0:
                return None
            return n0 + ((int(size) - n0) // step) * step
        raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")

    def input_size_for_output(self, output_size: int) -> int:
        """Smallest legal input size whose output covers ``output_size`` pixels."""
        if output_size < 1:
            raise ValueError(f"output size must be positive, got {output_size}")
        return self.legal_input_size(int(output_size) + 2 * self.margin, "up")  # type: ignore[return-value]


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    return nn.Identity()


class TwoConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (optional) normalisation and ReLU."""

    def __init__(self, cin: int, cout: int, padding: str, norm: str, groups: int) -> None:
        pad = 1 if padding == "same" else 0
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=pad, bias=bias),
            _norm(norm, cout, groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=pad, bias=bias),
            _norm(norm, cout, groups),
            nn.ReLU(inplace=True),
        )


class UpCat(nn.Module):
    """2x2 up-convolution halving the channels, crop-and-concatenate the skip, two convolutions."""

    def __init__(self, cin: int, cout: int, padding: str, norm: str, groups: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = TwoConv(2 * cout, cout, padding, norm, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = (skip.shape[-2] - x.shape[-2]) // 2
        dx = (skip.shape[-1] - x.shape[-1]) // 2
        if dy or dx:
            skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """2D U-Net returning per-class logits.

    Args:
        config: architecture; see :class:`~napari_unet.model.config.UNetConfig`.

    Input ``(N, input_planes, H, W)`` (``in_channels`` times ``input_slices``
    neighbouring slices) with H and W legal sizes (see :attr:`geometry`);
    output ``(N, n_classes, H - 2*margin, W - 2*margin)``.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        c = [config.base_channels * 2**i for i in range(config.depth + 1)]
        args = (config.padding, config.norm, config.groups)
        self.encoder = nn.ModuleList(
            [TwoConv(config.input_planes if i == 0 else c[i - 1], c[i], *args) for i in range(config.depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.bottom = TwoConv(c[-2], c[-1], *args)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.decoder = nn.ModuleList([UpCat(c[i + 1], c[i], *args) for i in reversed(range(config.depth))])
        self.head = nn.Conv2d(c[0], config.n_classes, kernel_size=1)
        self.geometry = Geometry(config.depth, config.padding)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation, as the paper recommends for ReLU networks."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reset_head(self) -> None:
        """Fresh 1x1 output layer, for fine-tuning to a different set of classes."""
        nn.init.kaiming_normal_(self.head.weight, nonlinearity="relu")
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
        return self.head(x)

    @property
    def margin(self) -> int:
        return self.geometry.margin

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encoder_keys(self) -> list[str]:
        """State-dict keys that fine-tuning keeps (everything but the head)."""
        return [k for k in self.state_dict() if not k.startswith("head.")]
