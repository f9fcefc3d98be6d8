"""Putting a Segment result into the viewer: layers named after the image.

- ``<image> segmentation``: Labels, uint8 class ids (semantic output), or
- ``<image> instances``: Labels, uint32 object ids (instance output), and
- ``<image> probability``: Image, float32 foreground probability (optional).
- ``<image> uncertainty``: Image, float32 0..1 (optional).

Each layer gets the image's scale and translate. With ``overwrite`` a layer
napari-unet created earlier under the same name is replaced; otherwise a new
``<name> [k]`` layer is added. Layers the user painted are never modified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._layers import LayerArray, put_result_layer

if TYPE_CHECKING:
    from ._jobs import SegmentOutcome


def publish_prediction(
    viewer: Any, outcome: SegmentOutcome, *, base: str, where: LayerArray, overwrite: bool
) -> list[Any]:
    """Add (or replace) the result layers of ``outcome``; main thread only."""
    pred = outcome.prediction
    assert pred is not None
    if pred.instances is not None:
        role, data = "instances", pred.instances
    else:
        role, data = "segmentation", pred.semantic
    layers = [
        put_result_layer(
            viewer,
            f"{base} {role}",
            data,
            kind="labels",
            where=where,
            role=role,
            overwrite=overwrite,
        )
    ]
    maps = {"probability": (pred.foreground_probability, 0.6), "uncertainty": (pred.uncertainty, 0.7)}
    for role, (values, opacity) in maps.items():
        if values is not None:  # 0..1 maps, shown over the image
            layers.append(
                put_result_layer(
                    viewer,
                    f"{base} {role}",
                    values.astype("float32", copy=False),
                    kind="image",
                    where=where,
                    role=role,
                    overwrite=overwrite,
                    colormap="magma",
                    contrast_limits=(0.0, 1.0),
                    blending="additive",
                    opacity=opacity,
                )
            )
    return layers


def most_uncertain(scores: Any, n: int = 3) -> str:
    """' Most uncertain: z = 4 (0.52), 1 (0.40), 3 (0.33).' or '' (2D, one slice, no scores)."""
    scores = np.asarray(scores, dtype=float) if scores is not None else np.empty(0)
    scored = [z for z in np.argsort(-np.nan_to_num(scores, nan=-1.0)) if np.isfinite(scores[z])]
    if len(scored) < 2:
        return ""
    words = ", ".join(f"{z} ({scores[z]:.2f})" for z in scored[:n])
    return f" Most uncertain: z = {words}."


def published_message(outcome: SegmentOutcome, layers: list[Any]) -> str:
    """'Segmented 3 slices in 1.2 s -> 'em segmentation'.' for the status line."""
    pred = outcome.prediction
    assert pred is not None
    n = (
        len(outcome.slices)
        if outcome.slices is not None
        else (pred.semantic.shape[0] if pred.semantic.ndim == 3 else 1)
    )
    what = "slice" if n == 1 else "slices"
    names = ", ".join(f"'{layer.name}'" for layer in layers)
    text = f"Segmented {n} {what} in {outcome.elapsed_s:.1f} s -> {names}."
    return text + most_uncertain(pred.slice_scores)
