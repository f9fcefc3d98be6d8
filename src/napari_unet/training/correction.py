"""Copy a prediction into the annotation, as a starting point to correct.

Correcting a mostly right prediction is much faster than painting a slice
from scratch. :func:`copy_prediction` turns predicted slices into annotation
slices in the annotation's own convention, so that once copied (and fixed) a
slice is an ordinary painted slice to training. It returns new slices and
never touches its inputs: the caller (the GUI, with undo) decides what to
write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .annotations import MODES


@dataclass
class CopyResult:
    """What :func:`copy_prediction` made.

    Attributes:
        slices: z -> new ``(Y, X)`` annotation slice, of dtype :attr:`dtype`.
        written: the z indices in :attr:`slices`, in the order asked.
        skipped: z indices left alone because they were already painted.
        dtype: the slices' dtype: the annotation's, or a wider one when the
            new ids do not fit (then :attr:`upcast` is True and the caller
            must convert the whole annotation, e.g. ``annotation.astype(dtype)``,
            before writing the slices; :meth:`applied_to` does that).
        upcast: whether :attr:`dtype` is wider than the annotation's.
        note: a sentence for the user, or "".
    """

    slices: dict[int, np.ndarray] = field(default_factory=dict)
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint32))
    upcast: bool = False
    note: str = ""

    def applied_to(self, annotation: np.ndarray) -> np.ndarray:
        """A copy of ``annotation`` (in :attr:`dtype`) with the new slices written."""
        out = np.array(annotation, dtype=self.dtype, copy=True)
        for z, sl in self.slices.items():
            out[z] = sl
        return out


def _check_inputs(annotation: Any, predicted: Any, zs: Any, mode: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    annotation, predicted = np.asarray(annotation), np.asarray(predicted)
    if annotation.ndim != 3:
        raise ValueError(f"annotation must be a (Z, Y, X) stack, got shape {annotation.shape}")
    if not np.issubdtype(annotation.dtype, np.integer):
        raise ValueError(f"annotation must hold integer label ids, got dtype {annotation.dtype}")
    if not (np.issubdtype(predicted.dtype, np.integer) or predicted.dtype == bool):
        raise ValueError(f"predicted must hold integer ids, got dtype {predicted.dtype}")
    if predicted.ndim not in (2, 3) or predicted.shape[-2:] != annotation.shape[-2:]:
        raise ValueError(
            f"predicted must be a (Y, X) slice or (Z, Y, X) stack with Y, X = "
            f"{annotation.shape[-2:]}, got shape {predicted.shape}"
        )
    if predicted.ndim == 3 and predicted.shape != annotation.shape:
        raise ValueError(f"predicted stack {predicted.shape} does not match the annotation {annotation.shape}")
    zs = [int(zs)] if np.ndim(zs) == 0 else [int(z) for z in zs]
    if predicted.ndim == 2 and len(zs) != 1:
        raise ValueError(f"a single predicted (Y, X) slice goes to exactly one z, got zs = {zs}")
    for z in zs:
        if not 0 <= z < annotation.shape[0]:
            raise ValueError(f"slice {z} is outside the annotation (0..{annotation.shape[0] - 1})")
    if predicted.size and int(predicted.min()) < 0:
        raise ValueError("predicted ids must be >= 0 (0 = background)")
    return annotation, predicted, zs


def _relabel(sl: np.ndarray, first: int, ignore_id: int | None) -> tuple[np.ndarray, int]:
    """Ids of ``sl`` mapped in order to consecutive ids from ``first`` (skipping ``ignore_id``).

    Each predicted id stays one id, however many connected pieces it has.
    Returns the new slice (int64) and the last id used (``first - 1`` if none).
    """
    ids = np.unique(sl)
    ids = ids[ids != 0]
    new = np.arange(first, first + len(ids) + 1, dtype=np.int64)
    if ignore_id is not None:
        new = new[new != ignore_id]
    new = new[: len(ids)]
    out = np.zeros(sl.shape, np.int64)
    if len(ids):
        out[sl != 0] = new[np.searchsorted(ids, sl[sl != 0])]
    return out, int(new[-1]) if len(ids) else first - 1


def _fitting_dtype(dtype: np.dtype, highest: int) -> np.dtype:
    """``dtype``, or the narrowest integer type holding its values and ``highest``."""
    if highest <= np.iinfo(dtype).max:
        return dtype
    return np.promote_types(dtype, np.min_scalar_type(highest))


def copy_prediction(
    annotation: Any,
    predicted: Any,
    zs: int | Sequence[int],
    *,
    mode: str = "dense",
    overwrite: bool = False,
    ignore_id: int | None = None,
) -> CopyResult:
    """New annotation slices made from a prediction; the inputs are not changed.

    Args:
        annotation: the ``(Z, Y, X)`` integer annotation stack.
        predicted: ``(Z, Y, X)`` stack (slice ``z`` is taken for each z) or one
            ``(Y, X)`` slice (then ``zs`` is a single z). Dense mode: instance
            ids (0 = background); scribbles mode: semantic class ids
            (0 = background class), e.g. ``Prediction.semantic``.
        zs: the slice(s) to fill.
        mode: the annotation convention, ``"dense"`` or ``"scribbles"``.
        overwrite: replace slices that are already painted (default: skip them).
        ignore_id: dense mode's ignore id, never handed out as an object id.

    Dense: each slice's objects get consecutive ids above the largest id in
    the whole annotation (and above those of slices written before), so they
    never merge with existing objects; background stays 0. Scribbles:
    background becomes 1 and class k becomes k + 1, every pixel labelled.
    """
    annotation, predicted, zs = _check_inputs(annotation, predicted, zs, mode)
    result = CopyResult(dtype=annotation.dtype)
    next_id = max(int(annotation.max()) if annotation.size else 0, 0) + 1
    raw: dict[int, np.ndarray] = {}
    for z in zs:
        if not overwrite and np.any(annotation[z]):
            result.skipped.append(z)
            continue
        sl = predicted if predicted.ndim == 2 else predicted[z]
        if mode == "dense":
            raw[z], last = _relabel(sl, next_id, ignore_id)
            next_id = last + 1
        else:
            raw[z] = sl.astype(np.int64) + 1
        result.written.append(z)
    highest = max((int(s.max()) for s in raw.values() if s.size), default=0)
    result.dtype = _fitting_dtype(annotation.dtype, highest)
    if result.dtype != annotation.dtype:
        result.upcast = True
        result.note = (
            f"label id {highest} does not fit the annotation's {annotation.dtype}; the new slices "
            f"are {result.dtype}: convert the annotation to {result.dtype} before writing them"
        )
    result.slices = {z: s.astype(result.dtype) for z, s in raw.items()}
    return result
