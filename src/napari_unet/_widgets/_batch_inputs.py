"""What a batch reads and where it writes (a mixin of ``BatchWidget``).

The input is a folder of TIFF stacks or a list of files; the output is one
folder, created when the batch starts if it does not exist.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit

from ._common import empty_path


class BatchInputsMixin:
    """The input/output widgets, the files they name, and what is wrong with them."""

    def _init_inputs(self) -> None:
        self.source = ComboBox(
            label="input", choices=[("a folder of TIFFs", "folder"), ("files", "files")]
        )
        self.input_folder = FileEdit(label="input folder", mode="d")
        self.input_files = FileEdit(
            label="input files", mode="rm", filter="*.tif *.tiff", visible=False
        )
        self.output_folder = FileEdit(label="output folder", mode="d")

    def _update_input_fields(self) -> None:
        self.input_folder.visible = self.source.value == "folder"
        self.input_files.visible = self.source.value == "files"

    def input_items(self) -> list[Path]:
        """What the user chose as input: the folder, or the files (empty when nothing)."""
        if self.source.value == "folder":
            value = self.input_folder.value
            return [] if empty_path(value) else [Path(value)]
        value = self.input_files.value
        if value is None:
            return []
        items = [value] if isinstance(value, (str, Path)) else list(value)
        return [Path(p) for p in items if not empty_path(p)]

    def expanded_inputs(self) -> list[Path] | str:
        """The TIFF files the batch will segment, or why there are none."""
        from ..prediction.batch import expand_inputs

        items = self.input_items()
        if not items:
            what = "an input folder" if self.source.value == "folder" else "input files"
            return f"Choose {what} with .tif/.tiff stacks."
        try:
            return expand_inputs(items)
        except ValueError as exc:
            return f"Input: {exc}."

    def output_problem(self) -> str | None:
        """Why the output folder cannot be used, or None."""
        out = self.output_folder.value
        if empty_path(out):
            return "Choose an output folder (it is created if it does not exist)."
        if Path(out).exists() and not Path(out).is_dir():
            return f"Output folder '{out}' is a file, not a folder."
        return None
