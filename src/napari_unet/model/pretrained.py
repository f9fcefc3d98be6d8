"""The built-in starting point for fine-tuning: a pretrained EM membrane model.

``weights/em_membranes_default.pt`` is the default-size U-Net trained on the
first 20 slices of the ISBI 2012 ssTEM stack (cells vs. membranes), stored as
float16 weights (a few MB) with its config, so it ships inside the package.
Its model card (``em_membranes_default.md``) says how it was trained and how
well it does; ``benchmarks/train_pretrained.py`` rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

_FILENAME = "em_membranes_default.pt"


def default_checkpoint() -> Path | None:
    """Path of the shipped pretrained checkpoint, or None in a copy without it."""
    path = Path(__file__).with_name("weights") / _FILENAME
    return path if path.is_file() else None
