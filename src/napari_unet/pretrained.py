"""The built-in starting point for fine-tuning.

A small pretrained EM membrane model will ship inside the package; until it
does, :func:`default_checkpoint` returns None and training starts from scratch.
"""

from __future__ import annotations

from pathlib import Path

_FILENAME = "em_membranes_default.pt"


def default_checkpoint() -> Path | None:
    """Path of the shipped pretrained checkpoint, or None when none ships."""
    path = Path(__file__).with_name("models") / _FILENAME
    return path if path.is_file() else None
