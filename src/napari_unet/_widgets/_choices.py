"""Words the panels show for the engine's options: one place, so Segment and Batch agree."""

from __future__ import annotations

from ..prediction_settings import INSTANCE_METHODS

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
