"""Sample data for the napari plugin: a synthetic EM stack and a partial annotation.

A newcomer can try the whole annotate -> train -> segment loop at once: the
stack is small enough ((16, 256, 256)) to train a small U-Net on in about a
minute on a laptop CPU, and two of its slices are already "painted" the way a
user would paint them in napari (one id per cell, membranes left at 0).
"""

from __future__ import annotations

from typing import Any

#: Slices of the sample that come painted (the user can paint more).
SAMPLE_SHAPE = (16, 256, 256)
SAMPLE_ANNOTATED = (4, 11)
SAMPLE_NAME = "synthetic EM"


def synthetic_em_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """Image layer plus a Labels layer with two painted slices (npe2 sample-data command)."""
    # imported here: napari lists sample data at start-up without running this
    from .synthetic import partial_annotation, synthetic_em_stack

    stack = synthetic_em_stack(SAMPLE_SHAPE, seed=7)
    painted = partial_annotation(stack.instances, list(SAMPLE_ANNOTATED))
    # physical size of a typical serial-section EM voxel (nm): anisotropic on purpose,
    # so the sample also shows that layers keep their scale through the plugin
    scale = (40.0, 8.0, 8.0)
    return [
        (stack.image, {"name": SAMPLE_NAME, "scale": scale, "contrast_limits": (0, 255)}, "image"),
        (painted, {"name": f"{SAMPLE_NAME} annotation", "scale": scale}, "labels"),
    ]
