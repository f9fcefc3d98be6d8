"""The model just trained, handed from the Train widget to the Segment widget.

Design choice: one small store *per viewer*, kept in a registry keyed by the
viewer object through weak references, rather than a module-level "current
model" singleton. Two viewers in one Python session (or two tests in one
process) then never see each other's models, and the store disappears with
its viewer, so no model (or GPU memory) outlives the window that made it.

napari hands each dock widget its own ``PublicOnlyProxy`` around the viewer;
the registry keys on the wrapped viewer so both widgets find the same store.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psygnal import Signal

if TYPE_CHECKING:
    from ..model.checkpoint import TrainedModel


@dataclass(frozen=True)
class SharedModel:
    """A trained model with a one-line description for the Segment widget."""

    model: TrainedModel
    description: str


class ViewerModels:
    """Models shared between the widgets of one viewer; emits ``changed`` on update."""

    changed = Signal()

    def __init__(self) -> None:
        self._latest: SharedModel | None = None

    @property
    def latest(self) -> SharedModel | None:
        """The model trained last in this viewer (None before the first training)."""
        return self._latest

    def publish(self, model: TrainedModel, description: str) -> None:
        self._latest = SharedModel(model, description)
        self.changed.emit()


_REGISTRY: weakref.WeakKeyDictionary[Any, ViewerModels] = weakref.WeakKeyDictionary()


def unwrap_viewer(viewer: Any) -> Any:
    """The viewer itself when napari passed a ``PublicOnlyProxy`` around it."""
    return getattr(viewer, "__wrapped__", viewer)


def models_for(viewer: Any) -> ViewerModels:
    """The store of ``viewer`` (created on first use)."""
    key = unwrap_viewer(viewer)
    store = _REGISTRY.get(key)
    if store is None:
        store = _REGISTRY[key] = ViewerModels()
    return store
