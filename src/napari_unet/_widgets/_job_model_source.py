"""The model a Segment or Batch panel runs: trained here, shipped, or a checkpoint file.

Both panels offer the same sources (:func:`._common.model_source_choices`) and
switch to a model as soon as the Train panel publishes it, unless a job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ._choices import checkpoint_edit, model_combo
from ._common import CheckpointCache, empty_path, model_source_choices
from ._state import models_for

if TYPE_CHECKING:
    from ..model.checkpoint import TrainedModel


class ModelSourceMixin:
    """The ``model`` and ``checkpoint`` widgets of a panel, and the choice they make."""

    viewer: Any
    running: bool

    def _init_model_source(self) -> None:
        from ..model.pretrained import default_checkpoint

        self._shipped = default_checkpoint()
        self._checkpoints = CheckpointCache("segments")
        self._store = models_for(self.viewer)
        self.model = model_combo(self._model_choices)
        self.checkpoint = checkpoint_edit()
        self._store.changed.connect(self._on_models_published)

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return model_source_choices(self._store.latest, self._shipped)

    def _on_models_published(self) -> None:
        """A new model was trained: offer it and select it (unless a job is running)."""
        self.model.reset_choices()
        if not self.running:
            self.model.value = "trained"
            self._model_published()

    def _model_published(self) -> None:  # pragma: no cover - overridden
        """Hook: react to the newly selected trained model."""

    def chosen_model(self) -> Union[TrainedModel, Path, str]:
        """The model trained here, the checkpoint file to load, or why there is none."""
        choice = self.model.value
        if choice == "trained":
            latest = self._store.latest
            return latest.model if latest is not None else "No model trained yet in this viewer."
        if choice == "builtin" and self._shipped is not None:
            return Path(self._shipped)
        if empty_path(self.checkpoint.value):
            return "Choose a model: train one in the Train widget, or pick a checkpoint file (.pt)."
        return Path(self.checkpoint.value)
