"""Words and widgets the panels show for the engine's options: one place, so Segment and Batch agree."""

from __future__ import annotations

from typing import Any, Callable

from magicgui.widgets import CheckBox, ComboBox, FileEdit, SpinBox

from ..prediction.settings import INSTANCE_METHODS

_METHOD_WORDS = {
    "components": "separate regions",
    "watershed": "split touching objects",
    "fill": "fill boundaries (cells tile the image)",
}

#: (text, value) pairs for an "objects" combo box, in the engine's order.
INSTANCE_METHOD_CHOICES = [(_METHOD_WORDS.get(m, m), m) for m in INSTANCE_METHODS]
INSTANCE_METHOD_LABEL = "objects"
INSTANCE_METHOD_TOOLTIP = (
    "separate regions: each connected region is one object. split touching objects: a "
    "watershed also cuts objects joined by a narrow neck. fill boundaries: objects grow over "
    "the boundary pixels until they touch (membrane-stained EM)."
)


# -- the option widgets Segment and Batch share: built here so both show the same texts --
_TILE_TOOLTIP = (
    "Output tile edge. Bigger tiles are faster but need more memory; it is rounded "
    "to a size the network accepts. "
)


def model_combo(choices: Callable[..., Any]) -> ComboBox:
    """Where the model comes from (``choices``: see ``model_source_choices``)."""
    return ComboBox(label="model", choices=choices)


def checkpoint_edit() -> FileEdit:
    """The checkpoint file, shown when the model source is "checkpoint file"."""
    # a napari-unet checkpoint, or a bioimage.io package napari-unet exported
    return FileEdit(label="checkpoint", mode="r", filter="*.pt *.zip", visible=False)


def device_combo() -> ComboBox:
    """Every device name, marked with what was detected; "auto" picks the best one."""
    from ._common import device_choices

    return ComboBox(label="device", choices=device_choices(), value="auto")


def tile_size_spin(*, auto: bool, value: int = 0) -> SpinBox:
    """Tile edge in pixels. With ``auto`` its minimum (0) reads "auto": the engine chooses.

    Without it the panel sets a legal size itself once a model is chosen.
    """
    spin = SpinBox(
        label="tile size (px)",
        min=0 if auto else 16,
        max=8192,
        step=16,
        value=0 if auto else value,
        tooltip=_TILE_TOOLTIP
        + ("'auto'" if auto else "The default")
        + " suits the model and device.",
    )
    if auto:
        from ._common import show_auto_at_minimum

        show_auto_at_minimum(spin)
    return spin


def batch_size_spin() -> SpinBox:
    return SpinBox(label="batch size", min=1, max=256, value=4, tooltip="Tiles per forward pass.")


def tta_check() -> CheckBox:
    return CheckBox(
        text="test-time augmentation (8x slower)",
        value=False,
        label="",
        tooltip="Average over the 8 flips/rotations of each tile: slightly more accurate.",
    )


def uncertainty_check() -> CheckBox:
    """An '<image> uncertainty' layer (off: it costs a little time and memory)."""
    return CheckBox(
        text="add an uncertainty layer",
        value=False,
        label="",
        tooltip="Where the model is unsure (0..1), as '<image> uncertainty'; the status line "
        "names the most uncertain slices: paint or correct those next.",
    )


def instance_method_combo() -> ComboBox:
    """How objects are separated; shown only when instances are asked for."""
    return ComboBox(
        label=INSTANCE_METHOD_LABEL,
        choices=INSTANCE_METHOD_CHOICES,
        value="components",
        visible=False,
        tooltip=INSTANCE_METHOD_TOOLTIP,
    )


def min_size_spin() -> SpinBox:
    """Smallest object kept; shown only when instances are asked for."""
    return SpinBox(
        label="min object size (px)",
        min=0,
        max=100_000_000,
        value=0,
        visible=False,
        tooltip="Objects smaller than this (pixels per slice) are removed from the instances.",
    )


#: (text, value) pairs of the "3D smoothing" combo box: the engine's ``z_smoothing``.
Z_SMOOTHING_CHOICES = [
    ("auto (on for near-isotropic stacks)", "auto"),
    ("off (each slice alone)", 0.0),
    ("1 slice", 1.0),
    ("2 slices", 2.0),
    ("3 slices", 3.0),
]


def z_smoothing_combo() -> ComboBox:
    """3D context for whole stacks: each slice's probabilities averaged with its neighbours'."""
    return ComboBox(
        label="3D smoothing",
        choices=Z_SMOOTHING_CHOICES,
        value="auto",
        tooltip="Average each slice's probabilities with its neighbours' (a Gaussian of this many "
        "slices). auto: 2 slices when neighbouring slices look alike (FIB-SEM, near-isotropic "
        "voxels), off for serial sections. No extra network time.",
    )
