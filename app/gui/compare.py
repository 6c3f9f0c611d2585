"""The Compare view: two maps of the same chip grid side by side (pan and zoom together), or their difference.

Map A is a layer of the scan open in Review; map B a layer of the same scan or of another scan file of the same grid.
**PL prediction vs EL reference** sets A to the PL prediction and B to the EL reference result of the open scan:
the difference map then colours every chip both inspected and probed by agreement (both pass, both fail, false
alarm, miss, miss without a PL signature) and the table counts them, with the recall and false-alarm rate. The
arithmetic is :mod:`app.gui.comparison` (no Qt); reading runs in the background through the window's
:class:`~app.gui.tasks.DocumentKeeper`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QRadioButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.chipdialog import format_value
from app.gui.comparison import CompareKind, Comparison, ComparisonError, Side, agreement_figures
from app.gui.mapdata import NO_BIN, Layer, ScanDocument
from app.gui.mapview import WaferMapView, robust_levels
from app.gui.tasks import DocumentKeeper

SAME_FILE = "this scan (A's file)"


class MapPane:
    """One map widget showing one source (a document's layer, or a comparison): overview, then full-resolution
    windows when zoomed in on a large wafer, read in the background."""

    def __init__(self, view: WaferMapView, keeper: DocumentKeeper) -> None:
        self.view, self.keeper = view, keeper
        self.source: Any = None  # Side or Comparison
        self.document: ScanDocument | None = None  # the document whose lifetime the reads depend on
        self.image: np.ndarray | None = None
        self._pending = False
        self._next: tuple[int, int, int, int] | None = None
        view.detail_wanted.connect(self._detail_wanted)

    def show(self, source: Any, document: ScanDocument, shown: Any = None) -> None:
        """Read ``source``'s overview in the background and show it; ``shown()`` afterwards."""
        # ``image`` is the shown source's overview: the last source's stays painted until this one is read, but is not
        # this source's image (a reader of ``image`` waits for the new one)
        self.source, self.document, self.image = source, document, None

        def work(progress, cancel):
            if isinstance(source, Side):
                return source.document.overview(source.layer, progress=progress, cancel=cancel)
            return source.overview(progress=progress, cancel=cancel)

        def done(image: np.ndarray) -> None:
            if self.source is not source:
                return
            self.image = image
            self._paint(image)
            if shown is not None:
                shown()

        label = source.name if isinstance(source, Side) else source.title
        self.keeper.run(document, work, f"Reading {label}", done)

    def _paint(self, image: np.ndarray) -> None:
        source = self.source
        if isinstance(source, Side):
            layer: Layer = source.layer
            factor = source.document.layer_factor(layer)
            if layer.categorical:
                self.view.show_categories(image, factor, [colour for _, colour in layer.categories])
            else:
                self.view.show_values(image, factor)
            return
        if source.categorical:
            self.view.show_categories(image, source.factor, [colour for _, colour in source.categories])
        else:
            low, high = robust_levels(np.abs(image)) if np.isfinite(image).any() else (0.0, 1.0)
            bound = max(abs(low), abs(high)) or 1.0
            self.view.show_values(image, source.factor, (-bound, bound), diverging=True)

    def clear(self) -> None:
        self.source = self.document = self.image = None
        self.view.overview.clear()
        self.view.hide_detail()

    def _detail_wanted(self, r0: int, r1: int, c0: int, c1: int) -> None:
        source, document = self.source, self.document
        if source is None or document is None or (isinstance(source, Side) and source.layer.downsample > 1):
            return
        if self._pending:
            self._next = (r0, r1, c0, c1)
            return
        self._pending = True

        def work(progress, cancel):
            if isinstance(source, Side):
                return source.document.window(source.layer, slice(r0, r1), slice(c0, c1))
            return source.window(slice(r0, r1), slice(c0, c1))

        def done(image: np.ndarray) -> None:
            if self.source is source:
                self.view.set_detail(image, r0, c0)

        def after() -> None:
            self._pending = False
            if self._next is not None:
                following, self._next = self._next, None
                self._detail_wanted(*following)

        self.keeper.run(document, work, "Reading chips in view", done, visible=False, failed=lambda *_: None,
                        after=after)  # fmt: skip

    def value_at(self, col: int, row: int) -> Any:
        """The shown value of chip (col, row) from memory (the detail if it covers the chip, else the overview)."""
        box = self.view.detail_box
        if box is not None and box[0] <= row < box[1] and box[2] <= col < box[3] and self.view.detail.image is not None:
            return self.view.detail.image[row - box[0], col - box[2]].item()
        if self.image is None or self.source is None:
            return None
        factor = self.view.factor
        i, j = row // factor, col // factor
        if 0 <= i < self.image.shape[0] and 0 <= j < self.image.shape[1]:
            return self.image[i, j].item()
        return None


class ComparePanel(QWidget):
    """See the module docstring. ``chip_requested(col, row)`` on a click (the window opens the chip's details)."""

    chip_requested = Signal(int, int)

    def __init__(self, keeper: DocumentKeeper, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.keeper = keeper
        self.document_a: ScanDocument | None = None
        self.document_b: ScanDocument | None = None  # another file, owned here (None: B is A's file)
        self.comparison: Comparison | None = None
        self.counts: dict[str, Any] | None = None
        self._quiet = False
        self._build()

    # -- widgets -----------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.layer_a = QComboBox()
        self.layer_a.setObjectName("compareLayerA")
        self.layer_a.setMinimumContentsLength(22)
        self.file_b = QComboBox()
        self.file_b.setObjectName("compareFileB")
        self.file_b.setMinimumContentsLength(16)
        self.file_b.addItem(SAME_FILE, "")
        open_b = QPushButton("Open B…")
        open_b.setToolTip("Compare with a map of another scan file of the same chip grid")
        open_b.clicked.connect(self._choose_file_b)
        self.layer_b = QComboBox()
        self.layer_b.setObjectName("compareLayerB")
        self.layer_b.setMinimumContentsLength(22)
        self.side_by_side = QRadioButton("Side by side")
        self.side_by_side.setObjectName("sideBySide")
        self.difference = QRadioButton("Difference")
        self.difference.setObjectName("differenceMode")
        self.side_by_side.setChecked(True)
        modes = QButtonGroup(self)
        modes.addButton(self.side_by_side)
        modes.addButton(self.difference)
        self.preset = QPushButton("PL prediction vs EL reference")
        self.preset.setObjectName("plVsElButton")
        self.preset.setToolTip("A: the PL prediction, B: the EL reference result of the open scan, as a difference")
        self.preset.clicked.connect(self.show_pl_vs_el)
        for widget in (self.layer_a, self.layer_b):
            widget.currentIndexChanged.connect(lambda *_: self.refresh())
        self.file_b.currentIndexChanged.connect(self._file_b_chosen)
        self.side_by_side.toggled.connect(lambda *_: self.refresh())
        top = QHBoxLayout()
        top.addWidget(QLabel("A:"))
        top.addWidget(self.layer_a)
        top.addSpacing(12)
        top.addWidget(QLabel("B:"))
        top.addWidget(self.file_b)
        top.addWidget(open_b)
        top.addWidget(self.layer_b)
        top.addSpacing(12)
        top.addWidget(self.side_by_side)
        top.addWidget(self.difference)
        top.addStretch(1)
        top.addWidget(self.preset)

        self.map_a = WaferMapView()
        self.map_a.setObjectName("compareMapA")
        self.map_b = WaferMapView()
        self.map_b.setObjectName("compareMapB")
        self.pane_a = MapPane(self.map_a, self.keeper)
        self.pane_b = MapPane(self.map_b, self.keeper)
        for view in (self.map_a, self.map_b):
            view.chip_hovered.connect(self._hovered)
            view.chip_clicked.connect(self._clicked)
        self.title_a = QLabel("A")
        self.title_b = QLabel("B")
        for label in (self.title_a, self.title_b):
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            label.setStyleSheet("font-weight:bold;")
        self.maps = QSplitter(Qt.Orientation.Horizontal)
        self.maps.setObjectName("compareMaps")
        for title, view in ((self.title_a, self.map_a), (self.title_b, self.map_b)):
            box = QWidget()
            layout = QVBoxLayout(box)
            layout.setContentsMargins(0, 0, 0, 0)
            layout.addWidget(title)
            layout.addWidget(view, 1)
            self.maps.addWidget(box)
        self.box_b = self.maps.widget(1)

        self.table = QTableWidget(0, 3)
        self.table.setObjectName("compareCounts")
        self.table.setHorizontalHeaderLabels(["", "Chips", "Share"])
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.summary = QLabel("Open a scan in Review, then pick two maps.")
        self.summary.setObjectName("compareSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(self.summary)
        side_layout.addWidget(self.table, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("compareSplitter")
        self.splitter.addWidget(self.maps)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([1200, 380])
        self.hover = QLabel("Hover over a map for both values of a chip; click a chip for its details.")
        self.hover.setObjectName("compareHover")
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.hover)

    # -- documents ---------------------------------------------------------------------------------------------------
    def set_document(self, document: ScanDocument | None) -> None:
        """Follow the Review's open scan (None: it was closed)."""
        if document is self.document_a:
            return
        self.document_a = document
        self.pane_a.clear()
        self.pane_b.clear()
        self.comparison = None
        self._fill_layers(self.layer_a, document)
        if self.file_b.currentData() == "":
            self._fill_layers(self.layer_b, document)
        if document is not None:
            for view in (self.map_a, self.map_b):
                view.set_layout(document.layout)
        self.refresh()

    def release(self, path: Path) -> None:
        """Let go of ``path`` if B shows it (it is about to be written)."""
        if self.document_b is not None and self.document_b.path == Path(path):
            self.file_b.setCurrentIndex(0)

    @staticmethod
    def _fill_layers(combo: QComboBox, document: ScanDocument | None) -> None:
        current = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        if document is not None:
            for layer in document.layers:
                if layer.downsample == 1:
                    combo.addItem(layer.title, layer.key)
            position = combo.findData(current)
            combo.setCurrentIndex(max(position, 0))
        combo.blockSignals(False)

    def _choose_file_b(self) -> None:
        folder = str(self.document_a.path.parent) if self.document_a is not None else ""
        path, _ = QFileDialog.getOpenFileName(self, "Scan file B", folder, "Scan files (*.h5);;All files (*)")
        if path:
            self.open_b(Path(path))

    def open_b(self, path: Path) -> None:
        """Compare with a map of another scan file (opened in the background)."""
        position = self.file_b.findData(str(path))
        if position < 0:
            self.file_b.addItem(path.name, str(path))
            position = self.file_b.count() - 1
        self.file_b.setCurrentIndex(position)

    def _file_b_chosen(self, _index: int) -> None:
        path = self.file_b.currentData()
        self.keeper.retire(self.document_b)
        self.document_b = None
        self.pane_b.clear()
        if not path:
            self._fill_layers(self.layer_b, self.document_a)
            self.refresh()
            return
        self.pane_a.clear()

        def work(progress, cancel):
            return ScanDocument(path)

        def opened(document: ScanDocument) -> None:
            if self.file_b.currentData() != path:
                document.close()
                return
            self.document_b = document
            self._fill_layers(self.layer_b, document)
            self.refresh()

        self.keeper.runner.start(work, f"Opening {Path(path).name}", done=opened)

    # -- showing -----------------------------------------------------------------------------------------------------
    def show_pl_vs_el(self) -> bool:
        """A: PL prediction, B: EL reference result of the open scan, as a difference; False if the scan lacks one."""
        document = self.document_a
        keys = {layer.key for layer in document.layers} if document is not None else set()
        if not {"pl_prediction", "el_result"} <= keys:
            self.summary.setText(
                "The open scan needs a classification and an EL reference (/el_reference) for this comparison."
            )
            return False
        self._quiet = True
        try:
            self.file_b.setCurrentIndex(0)
            self._fill_layers(self.layer_b, document)
            self.layer_a.setCurrentIndex(self.layer_a.findData("pl_prediction"))
            self.layer_b.setCurrentIndex(self.layer_b.findData("el_result"))
            self.difference.setChecked(True)
        finally:
            self._quiet = False
        self.refresh()
        return True

    def _side(self, combo: QComboBox, document: ScanDocument | None) -> Side | None:
        key = combo.currentData()
        if document is None or key is None:
            return None
        return Side(document, document.layer(key))

    def refresh(self) -> None:
        """Show the chosen maps (or their difference) and count."""
        if self._quiet:
            return
        a = self._side(self.layer_a, self.document_a)
        b = self._side(self.layer_b, self.document_b or self.document_a)
        self.comparison, self.counts = None, None
        self.table.setRowCount(0)
        if a is None or b is None:
            self.pane_a.clear()
            self.pane_b.clear()
            return
        try:
            comparison = Comparison(a, b)
        except ComparisonError as error:
            comparison = None
            problem = str(error)
        else:
            problem = ""
        self.comparison = comparison
        difference = self.difference.isChecked()
        self.box_b.setVisible(not difference)
        self._link(not difference)
        if difference:
            if comparison is None:
                self.pane_a.clear()
                self.title_a.setText("no difference map")
                self.summary.setText(problem)
                return
            self.title_a.setText(f"Difference: {comparison.title}")
            self.pane_a.show(comparison, a.document)
        else:
            self.title_a.setText(f"A: {a.name}")
            self.title_b.setText(f"B: {b.name}")
            self.pane_a.show(a, a.document)
            self.pane_b.show(b, b.document)
        if comparison is None:
            self.summary.setText(f"Side by side only: {problem}")
            return
        self.summary.setText("counting …")
        self._count(comparison)

    def _link(self, linked: bool) -> None:
        """B pans and zooms with A while it is shown (a hidden B would hand A the range of a widget of no size)."""
        target = self.map_a.view if linked else None
        if self.map_b.view.linkedView(0) is not target:
            self.map_b.view.setXLink(target)
            self.map_b.view.setYLink(target)

    def _count(self, comparison: Comparison) -> None:
        def work(progress, cancel):
            return comparison.counts(progress=progress, cancel=cancel)

        def counted(counts: dict[str, Any]) -> None:
            if self.comparison is comparison:
                self.counts = counts
                self._fill_counts(comparison, counts)

        self.keeper.run(comparison.a.document, work, "Comparing the maps", counted)

    def _fill_counts(self, comparison: Comparison, counts: dict[str, Any]) -> None:
        if not comparison.categorical:
            self.table.setRowCount(0)
            self.summary.setText(
                f"<b>{comparison.title}</b><br>{counts['chips']:,} chips with both values; mean difference "
                f"{format_value(counts['mean'])}, standard deviation {format_value(counts['std'])}, mean absolute "
                f"difference {format_value(counts['mean_abs'])}. Colours: blue below zero, red above."
            )
            return
        values = counts["categories"]
        total = sum(values)
        self.table.setRowCount(len(values))
        for row, ((name, colour), count) in enumerate(zip(comparison.categories, values, strict=True)):
            item = QTableWidgetItem(name)
            item.setData(Qt.ItemDataRole.DecorationRole, QColor(colour))
            number = QTableWidgetItem(f"{count:,}")
            share = QTableWidgetItem(f"{count / total:.2%}" if total else "—")
            for cell in (number, share):
                cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, 0, item)
            self.table.setItem(row, 1, number)
            self.table.setItem(row, 2, share)
        self.table.resizeColumnToContents(1)
        self.table.resizeColumnToContents(2)
        if comparison.kind is CompareKind.AGREEMENT:
            figures = agreement_figures(values)

            def percent(value: float) -> str:
                if not math.isfinite(value):
                    return "—"
                return f"{value:.3%}" if value < 0.01 else f"{value:.2%}"

            side_by_side = (
                "<br><i>The table counts the difference map (Difference); side by side, each map has its own "
                "colours: hover a chip for its values.</i>"
                if not self.difference.isChecked()
                else ""
            )
            self.summary.setText(
                f"<b>PL prediction vs EL reference</b>: {figures['compared']:,} chips both inspected and probed.<br>"
                f"EL failures {figures['el_fail']:,}, predicted failures {figures['pl_fail']:,}.<br>"
                f"Agreement <b>{percent(figures['agreement'])}</b> · recall {percent(figures['recall'])} "
                f"(of failures PL can see: {percent(figures['recall_detectable'])}) · false-alarm rate "
                f"{percent(figures['false_alarm_rate'])}{side_by_side}"
            )
        else:
            self.summary.setText(f"<b>{comparison.title}</b>: {total:,} chips with a value on both maps.")

    # -- hover and click ---------------------------------------------------------------------------------------------
    def _describe(self, source: Any, value: Any) -> str:
        if value is None:
            return "—"
        categories = source.layer.categories if isinstance(source, Side) else source.categories
        categorical = source.layer.categorical if isinstance(source, Side) else source.categorical
        if categorical:
            return categories[int(value)][0] if value != NO_BIN and int(value) < len(categories) else "—"
        return format_value(float(value))

    def _hovered(self, col: int, row: int, hit: bool) -> None:
        document = self.document_a
        if document is None or not document.layout.in_box(col, row):
            return
        parts = [f"chip ({col}, {row})"]
        if self.difference.isChecked() and self.comparison is not None:
            parts.append(self._describe(self.comparison, self.pane_a.value_at(col, row)))
        else:
            for name, pane in (("A", self.pane_a), ("B", self.pane_b)):
                if pane.source is not None:
                    parts.append(f"{name}: {self._describe(pane.source, pane.value_at(col, row))}")
        self.hover.setText(" · ".join(parts))

    def _clicked(self, col: int, row: int) -> None:
        self.map_a.mark_chip(col, row)
        self.map_b.mark_chip(col, row)
        self.chip_requested.emit(col, row)

    def close_documents(self) -> None:
        """Let go of B's file (on quit)."""
        self.keeper.retire(self.document_b)
        self.document_b = None
