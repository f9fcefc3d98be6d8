"""The Batch results table (a mixin of ``BatchWidget``).

One row per input file with its status: *waiting*, *running*, *done*,
*skipped* (its outputs exist) or *failed* with the reason. Double-clicking a
finished row (or "Open selected") opens its outputs in the viewer:
labels/instances as Labels layers, probabilities as an Image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, PushButton

if TYPE_CHECKING:
    from ..prediction.batch import FileResult

#: Table columns.
COL_FILE, COL_STATUS, COL_DETAILS = 0, 1, 2


class BatchTableMixin:
    """``table`` (in ``table_box``), ``open_selected``, and ``results`` by row."""

    viewer: Any
    _inputs: list[Path]

    def _init_table(self) -> None:
        from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget

        self.results: dict[int, FileResult] = {}  # table row -> its result
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["file", "status", "details"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(
            COL_DETAILS, QHeaderView.ResizeMode.Stretch
        )
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(140)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_outputs(row))
        self.table.itemSelectionChanged.connect(self._update_open_button)
        self.table_box = Container(labels=False, label="")
        self.table_box.native.layout().addWidget(self.table)
        self.open_selected = PushButton(text="Open selected in viewer", label="", enabled=False)
        self.open_selected.changed.connect(self._on_open_clicked)

    def _fill_table(self) -> None:
        self.table.setRowCount(0)
        self.table.setRowCount(len(self._inputs))
        for row, path in enumerate(self._inputs):
            self._set_row(row, "waiting", "", name=path.name)
        self._update_open_button()

    def _set_row(self, row: int, status: str, details: str, *, name: str | None = None) -> None:
        from qtpy.QtWidgets import QTableWidgetItem

        if not 0 <= row < self.table.rowCount():
            return
        values = {COL_STATUS: status, COL_DETAILS: details}
        if name is not None:
            values[COL_FILE] = name
        for col, text in values.items():
            item = QTableWidgetItem(text)
            item.setToolTip(text)
            self.table.setItem(row, col, item)

    def _show_result(self, row: int, result: FileResult) -> None:
        self.results[row] = result
        if result.status == "done":
            outputs = ", ".join(p.name for p in result.outputs if p.suffix != ".json")
            details = f"{result.seconds:.1f} s -> {outputs}"
        else:
            details = result.reason
        self._set_row(row, result.status, details)
        self._update_open_button()

    def row_status(self, row: int) -> str:
        """The status shown in the table for ``row`` (for tests and scripts)."""
        item = self.table.item(row, COL_STATUS)
        return item.text() if item is not None else ""

    def row_details(self, row: int) -> str:
        item = self.table.item(row, COL_DETAILS)
        return item.text() if item is not None else ""

    def _openable(self, row: int) -> list[Path]:
        result = self.results.get(row)
        if result is None or result.status not in ("done", "skipped"):
            return []
        return [p for p in result.outputs if p.suffix.lower() in (".tif", ".tiff") and p.is_file()]

    def _selected_row(self) -> int | None:
        rows = {index.row() for index in self.table.selectionModel().selectedRows()}
        return min(rows) if rows else None

    def _update_open_button(self) -> None:
        row = self._selected_row()
        self.open_selected.enabled = row is not None and bool(self._openable(row))

    def _on_open_clicked(self, *_: Any) -> None:
        row = self._selected_row()
        if row is not None:
            self.open_outputs(row)

    def open_outputs(self, row: int) -> list[Any]:
        """Add the outputs of a finished row to the viewer: labels as Labels, probabilities as Image."""
        from .._reader import read_tiff_layers

        paths = self._openable(row)
        if not paths:
            self.set_status("This file has no finished output to open.", "warn")  # type: ignore[attr-defined]
            return []
        layers = []
        for path in paths:
            try:
                data, kwargs, _kind = read_tiff_layers(path)[0]
            except (OSError, ValueError) as exc:
                self.report_error(f"Cannot open '{path.name}': {exc}")  # type: ignore[attr-defined]
                continue
            if path.stem.endswith("_probabilities"):
                kwargs.setdefault("colormap", "magma")
                kwargs["blending"] = "additive"
                layers.append(self.viewer.add_image(data, **kwargs))
            else:
                kwargs.pop("contrast_limits", None)
                layers.append(self.viewer.add_labels(data, **kwargs))
        if layers:
            names = ", ".join(f"'{layer.name}'" for layer in layers)
            self.set_status(f"Opened {names}.", "ok")  # type: ignore[attr-defined]
        return layers
