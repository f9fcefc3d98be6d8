"""Exceptions the core raises on purpose, so callers can tell them from bugs."""

from __future__ import annotations


class Cancelled(Exception):
    """A long job stopped because its caller asked it to (cooperative cancel)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot or must not be loaded (unsafe, corrupt, incompatible)."""
