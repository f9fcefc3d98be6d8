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
    """The Save model and Export buttons (mixed into a ``JobWidget``)."""

    _exporting: Any = None  # the running export worker

    def enable_model_actions(self, enabled: bool) -> None:
        """Save and Export act on the trained model: usable exactly when there is one."""
        self.save.enabled = bool(enabled)
        self.export.enabled = bool(enabled) and self._exporting is None

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

    def export_model(self, *_: Any) -> Path | None:
        """Write the trained model as a bioimage.io package beside 'save model as' (.zip).

        Tracing and validating the package takes seconds, so it runs in a worker
        on a copy of the model (a new training run may start meanwhile).
        """
        import copy

        from napari.qt.threading import create_worker

        if self.trained is None:
            self.set_status("Train a model first.", "error")
            return None
        if empty_path(self.save_path.value):
            self.set_status(
                "Choose a name under 'save model as'; the package is written beside it (.zip).",
                "error",
            )
            return None
        path = Path(self.save_path.value).with_suffix(".zip")
        if path.exists():  # a name we derived, never shown in a dialog: never replaced
            self.set_status(f"{path} exists; choose another name under 'save model as'.", "error")
            return None
        from ..model.bioimageio import export_bioimageio

        worker = create_worker(export_bioimageio, copy.deepcopy(self.trained), path,
                               _start_thread=False)
        worker.returned.connect(lambda written: self._exported(Path(written or path)))
        worker.errored.connect(self._export_failed)
        worker.finished.connect(self._export_finished)
        self._exporting = worker
        self.export.enabled = False
        self.set_status(f"Exporting a bioimage.io package to {path}...", "info")
        worker.start()
        return path

    def _exported(self, path: Path) -> None:
        self.set_status(
            f"Exported a bioimage.io package to {path}: open it in Fiji with deepImageJ, or "
            "use it with 'napari-unet segment -m' and in the Segment panel.",
            "ok",
        )

    def _export_failed(self, exc: BaseException) -> None:
        logger.warning("bioimage.io export failed: %s", exc)
        self.report_error(f"Could not export the model: {str(exc).strip() or type(exc).__name__}")

    def _export_finished(self) -> None:
        self._exporting = None
        self.enable_model_actions(self.trained is not None)
