"""Saving the trained model from the Train panel, without ever losing it.

:class:`TrainSaving` is a mixin of :class:`.train_widget.TrainWidget`; it
uses the widget's ``trained`` model and its ``save_path`` field.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ._common import empty_path

# logged under the panel's module, where users filtering the log look for it
logger = logging.getLogger(f"{__package__}.train_widget")


class TrainSaving:
    """The Save model button (mixed into a ``JobWidget``)."""

    def save_model(self, *_: Any) -> Path | None:
        """Write the trained model to the chosen .pt file; returns where it went.

        A bad path is reported before writing; a write that fails (full disk,
        permissions) puts the model in a rescue file instead and says where.
        Either way the model stays in memory, so Save can be pressed again.
        """
        from napari.utils.notifications import show_warning

        from ..io._saving import (
            DestinationError,
            ModelNotSaved,
            check_destination,
            save_with_fallback,
        )

        if self.trained is None:
            self.set_status("Train a model first.", "error")
            return None
        if empty_path(self.save_path.value):
            self.set_status("Choose where to save the model ('save model as').", "error")
            return None
        chosen = Path(self.save_path.value)
        # "mito.v2" becomes "mito.v2.pt", not "mito.pt": never a file the user did not name
        path = chosen if chosen.suffix == ".pt" else chosen.with_name(chosen.name + ".pt")
        kept = "The model is kept in memory: choose another place and press Save model again."
        try:
            # the file dialog asks before replacing the file it returns; a name we
            # completed was never shown to the user, so it is not replaced
            check_destination(path, overwrite=path == chosen)
            saved = save_with_fallback(self.trained, path)
        except DestinationError as exc:
            self.report_error(f"Could not save the model: {exc}. {kept}")
            return None
        except ModelNotSaved as exc:
            self.report_error(f"{str(exc)[:1].upper()}{str(exc)[1:]}. {kept}")
            return None
        except Exception as exc:  # never a traceback here, never the model lost
            logger.exception("saving the model to %s failed", path)
            self.report_error(f"Could not save the model to {path}: {type(exc).__name__}: {exc}. {kept}")
            return None
        if saved.rescued:
            message = (
                f"Could not save the model to {path}: {saved.reason}. It was saved to "
                f"{saved.path} instead (and is still in memory)."
            )
            self.set_status(message, "warn")
            show_warning(f"napari-unet: {message}")
            return saved.path
        self.set_status(f"Saved the model to {saved.path}.", "ok")
        logger.info("saved model to %s", saved.path)
        return saved.path
