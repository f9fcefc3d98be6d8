"""From painted labels to training targets: "label a few slices".

A z-slice with any non-zero pixel is *annotated*; all other slices are ignored
by training. Two conventions are supported:

``"dense"`` (default, napari's label painting)
    In an annotated slice 0 is background and every other id is one object.
    Touching objects must carry different ids. Each id is split into its
    4-connected components, so a binary mask (e.g. ISBI 2012's 255 = cell,
    0 = membrane) works as it is: every connected cell becomes an instance.
    The target is background/foreground; where two objects touch, a one-pixel
    background line is drawn between them (the paper's separation of touching
    objects) and the weight map emphasises it. With ``boundary_class=True`` the
    object outlines become a third class instead. An optional ``ignore_id``
    (nnU-Net's convention) marks pixels that must not count, so a user can
    annotate part of a slice.

``"scribbles"`` (ilastik's convention)
    0 = unlabelled (ignored by the loss), 1 = background, 2..K = classes K-1.
    Sparse strokes are enough; only stroked pixels count.

Class balancing (the paper's ``w_c``) is on for scribbles, whose class
proportions are whatever the strokes happen to cover, and off for dense slices,
whose proportions are the tissue's own (``balance="auto"``). Balancing a dense
slice trains the network on a prior that is not the data's: Lucchi mitochondria
cover 7 % of the pixels, balancing up-weights them 13x, and the prediction
grows false-positive rims and blobs (precision about 0.5 at recall 0.97); ISBI
cells did as well or better without it. BENCHMARKS.md has the figures. The
border term, which separates touching objects, stays on in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from .weightmap import boundary_weight_map

Mode = Literal["dense", "scribbles"]
MODES = ("dense", "scribbles")
Balance = Literal["auto"] | bool
IGNORE = -1


@dataclass(frozen=True)
class AnnotationSettings:
    """How labels are read and weighted; stored in checkpoints."""

    mode: Mode = "dense"
    ignore_id: int | None = None
    boundary_class: bool = False
    w0: float = 10.0
    sigma: float = 5.0
    # class balancing w_c: "auto" = scribbles only (see the module docstring)
    balance: Balance = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.balance, bool) or self.balance == "auto"):
            raise ValueError(f"balance must be 'auto', True or False, got {self.balance!r}")
        if self.mode not in MODES:
            raise ValueError(f"annotation mode must be one of {MODES}, got {self.mode!r}")
        if self.ignore_id is not None:
            if self.mode != "dense":
                raise ValueError("ignore_id applies to dense mode only (in scribbles, 0 is unlabelled)")
            if int(self.ignore_id) <= 0:
                raise ValueError(f"ignore_id must be a positive label id, got {self.ignore_id}")
        if self.boundary_class and self.mode != "dense":
            raise ValueError("boundary_class applies to dense mode only")
        if self.sigma <= 0 or self.w0 < 0:
            raise ValueError(f"need sigma > 0 and w0 >= 0, got sigma={self.sigma}, w0={self.w0}")

    @property
    def balances(self) -> bool:
        """Whether the weight maps carry class-balancing weights (``"auto"`` resolved)."""
        return self.mode == "scribbles" if self.balance == "auto" else bool(self.balance)


@dataclass
class AnnotatedSlice:
    """Training data of one painted slice."""

    z: int
    target: np.ndarray  # int64 (Y, X): class ids, -1 = ignored
    weight: np.ndarray  # float32 (Y, X): per-pixel loss weight, 0 where ignored
    n_objects: int


@dataclass(frozen=True)
class AnnotationSummary:
    """What training will use, in words a user understands."""

    slices: tuple[int, ...]
    n_objects: int
    classes: tuple[int, ...]
    mode: Mode

    def __str__(self) -> str:
        if not self.slices:
            return "no annotated slice yet: paint at least one slice"
        zs = ", ".join(str(z) for z in self.slices[:12]) + (" ..." if len(self.slices) > 12 else "")
        n = len(self.slices)
        head = f"{n} annotated slice{'s' if n != 1 else ''}: z = {zs}"
        if self.mode == "dense":
            return f"{head}; {self.n_objects} object{'s' if self.n_objects != 1 else ''}"
        names = ", ".join("background" if c == 1 else f"class {c}" for c in self.classes)
        return f"{head}; labels: {names}"


def annotated_slices(labels: np.ndarray) -> list[int]:
    """Indices of the z-slices of a (Z, Y, X) array with any non-zero pixel."""
    flat = np.asarray(labels).reshape(labels.shape[0], -1)
    return [int(z) for z in np.flatnonzero(flat.any(axis=1))]


def n_classes_for(labels: np.ndarray, settings: AnnotationSettings) -> int:
    """Number of network outputs the annotations need."""
    if settings.mode == "dense":
        return 3 if settings.boundary_class else 2
    return max(2, int(np.asarray(labels).max()))


def class_names_for(n_classes: int, settings: AnnotationSettings) -> list[str]:
    if settings.mode == "dense":
        return ["background", "foreground", "boundary"][:n_classes]
    return ["background"] + [f"label {k + 1}" for k in range(1, n_classes)]


def summarize(labels: np.ndarray, settings: AnnotationSettings | None = None) -> AnnotationSummary:
    """Annotated slices and object/class counts, for the widget's live summary."""
    settings = settings or AnnotationSettings()
    zs = annotated_slices(labels)
    n_objects = 0
    classes: set[int] = set()
    for z in zs:
        sl = np.asarray(labels[z])
        if settings.mode == "dense":
            n_objects += len(_instances(sl, settings.ignore_id)[1])
        else:
            classes.update(int(v) for v in np.unique(sl) if v)
    return AnnotationSummary(tuple(zs), n_objects, tuple(sorted(classes)), settings.mode)


def _instances(sl: np.ndarray, ignore_id: int | None) -> tuple[np.ndarray, list[int]]:
    """Connected components of every id (so binary masks become instances)."""
    painted = sl if ignore_id is None else np.where(sl == ignore_id, 0, sl)
    inst = connected_components(painted, background=0, connectivity=1).astype(np.int32)
    return inst, list(range(1, int(inst.max()) + 1))


def _touching(inst: np.ndarray) -> np.ndarray:
    """One-pixel line where two different objects touch (4-neighbourhood).

    Of each touching pair, the pixel of the larger id is marked, so the line
    is one pixel wide rather than two.
    """
    line = np.zeros(inst.shape, bool)
    for axis in (0, 1):
        a = inst[:-1, :] if axis == 0 else inst[:, :-1]
        b = inst[1:, :] if axis == 0 else inst[:, 1:]
        touch = (a > 0) & (b > 0) & (a != b)
        mark_a = touch & (a > b)
        mark_b = touch & (b > a)
        if axis == 0:
            line[:-1, :] |= mark_a
            line[1:, :] |= mark_b
        else:
            line[:, :-1] |= mark_a
            line[:, 1:] |= mark_b
    return line


def dense_slice_target(
    sl: np.ndarray, settings: AnnotationSettings
) -> tuple[np.ndarray, np.ndarray, int]:
    """(target, instances used for the weight map, number of objects) of a dense slice."""
    inst, ids = _instances(sl, settings.ignore_id)
    target = (inst > 0).astype(np.int64)
    if settings.boundary_class:
        outline = find_boundaries(inst, mode="inner") & (inst > 0)
        target[outline] = 2
    else:
        line = _touching(inst)
        target[line] = 0
        inst = np.where(line, 0, inst)
    if settings.ignore_id is not None:
        target[sl == settings.ignore_id] = IGNORE
    return target, inst, len(ids)


def prepare_slices(labels: np.ndarray, settings: AnnotationSettings | None = None) -> list[AnnotatedSlice]:
    """Targets and weight maps of every annotated slice, computed once before training.

    Raises ValueError when there is nothing to learn from (no annotated slice,
    a single class).
    """
    settings = settings or AnnotationSettings()
    zs = annotated_slices(labels)
    if not zs:
        raise ValueError(
            "no annotated slice: paint objects (dense mode) or strokes (scribbles mode) on at "
            "least one slice of the annotation layer"
        )
    if settings.mode == "scribbles" and int(np.asarray(labels).max()) > 255:
        raise ValueError(
            "scribbles mode expects a few class ids (1 = background, 2.. = classes); found ids "
            "above 255. Did you mean dense mode (one id per object)?"
        )
    out: list[AnnotatedSlice] = []
    for z in zs:
        sl = np.asarray(labels[z])
        if settings.mode == "dense":
            target, inst, n_obj = dense_slice_target(sl, settings)
            weight = boundary_weight_map(
                inst, w0=settings.w0, sigma=settings.sigma, target=target, balance=settings.balances
            )
        else:
            target = sl.astype(np.int64) - 1
            n_obj = 0
            weight = boundary_weight_map(
                np.zeros(sl.shape, np.int32), w0=0.0, sigma=settings.sigma, target=target,
                balance=settings.balances,
            )
        out.append(AnnotatedSlice(z, target, weight.astype(np.float32, copy=False), n_obj))
    present = set()
    for s in out:
        present.update(int(c) for c in np.unique(s.target) if c >= 0)
    if len(present) < 2:
        if settings.mode == "dense":
            what = "only background" if present == {0} else "only objects, no background"
            hint = (
                "paint some objects" if present == {0}
                else "leave some background (id 0) visible in annotated slices, or use an ignore id"
            )
        else:
            what = f"only label {min(present) + 1 if present else 'none'}"
            hint = "paint background strokes (label 1) and at least one class (label 2)"
        raise ValueError(f"the annotations contain {what}; a network needs two classes: {hint}")
    return out
