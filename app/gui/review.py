"""The Review view: a scan file's wafer map with its bin legend, histogram, bin pareto and defect table.

Everything that reads the file runs as a task (:mod:`app.gui.tasks`); this module only arranges widgets and keeps
track of which document, layer and detail window are current.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.chipdialog import ChipDialog, format_value
from app.gui.mapdata import NO_BIN, DefectList, Layer, ScanDocument
from app.gui.mapview import BACKGROUND, WaferMapView, robust_levels
from app.gui.tasks import DocumentKeeper, TaskRunner
from inspection.bins import DefectClass
from inspection.wafer import Placement

DEFECT_COLUMNS = ["Chip col", "Chip row", "Bin", "Class", "P(EL fail)", "Intensity (V)", "Eff. ratio"]


class DefectTableModel(QAbstractTableModel):
    """The failing chips as a table over NumPy columns: sorting and filtering permute an index array, so a wafer
    with a million failing chips stays quick."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.defects: DefectList | None = None
        self.names: list[str] = []
        self.colours: list[QColor] = []
        self.order = np.zeros(0, dtype=np.int64)
        self._sort: tuple[int, Qt.SortOrder] = (4, Qt.SortOrder.DescendingOrder)
        self._bin: int | None = None
        self._min_probability = 0.0

    def set_defects(self, defects: DefectList | None, names: list[str], colours: list[str]) -> None:
        self.beginResetModel()
        self.defects, self.names = defects, names
        self.colours = [QColor(colour) for colour in colours]
        self._refilter()
        self.endResetModel()

    def set_filter(self, bin_index: int | None, min_probability: float) -> None:
        self.beginResetModel()
        self._bin, self._min_probability = bin_index, min_probability
        self._refilter()
        self.endResetModel()

    def _column(self, column: int) -> np.ndarray:
        d = self.defects
        assert d is not None
        return [d.col, d.row, d.bin_index, d.defect_class, d.el_fail_probability, d.intensity_v, d.efficiency_ratio][
            column
        ]

    def _refilter(self) -> None:
        d = self.defects
        if d is None:
            self.order = np.zeros(0, dtype=np.int64)
            return
        keep = np.ones(len(d), dtype=bool)
        if self._bin is not None:
            keep &= d.bin_index == self._bin
        if self._min_probability > 0:
            keep &= np.nan_to_num(d.el_fail_probability, nan=0.0) >= self._min_probability
        chosen = np.flatnonzero(keep)
        column, order = self._sort
        values = self._column(column)[chosen]
        if values.dtype.kind == "f":
            values = np.where(np.isnan(values), -np.inf, values)  # missing values last when descending
        ranked = np.argsort(values, kind="stable")
        if order == Qt.SortOrder.DescendingOrder:
            ranked = ranked[::-1]
        self.order = chosen[ranked]

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802 - Qt API
        return 0 if parent.isValid() else int(self.order.size)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802 - Qt API
        return 0 if parent.isValid() else len(DEFECT_COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return DEFECT_COLUMNS[section]
        return None

    def chip(self, row: int) -> tuple[int, int]:
        assert self.defects is not None
        index = int(self.order[row])
        return int(self.defects.col[index]), int(self.defects.row[index])

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or self.defects is None:
            return None
        d, i = self.defects, int(self.order[index.row()])
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return str(int(d.col[i]))
            if column == 1:
                return str(int(d.row[i]))
            if column == 2:
                bin_index = int(d.bin_index[i])
                return self.names[bin_index] if bin_index < len(self.names) else "?"
            if column == 3:
                return DefectClass(int(d.defect_class[i])).key.replace("_", " ")
            if column == 4:
                return format_value(float(d.el_fail_probability[i]), "{:.2f}")
            if column == 5:
                return format_value(float(d.intensity_v[i]), "{:.4g}")
            return format_value(float(d.efficiency_ratio[i]), "{:.3f}")
        if role == Qt.ItemDataRole.DecorationRole and column == 2:
            bin_index = int(d.bin_index[i])
            return self.colours[bin_index] if bin_index < len(self.colours) else None
        if role == Qt.ItemDataRole.TextAlignmentRole and column not in {2, 3}:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.layoutAboutToBeChanged.emit()
        self._sort = (column, order)
        self._refilter()
        self.layoutChanged.emit()


class ReviewPanel(QWidget):
    """See the module docstring. ``document_changed`` is emitted with the opened document (or None)."""

    document_changed = Signal(object)
    resume_requested = Signal(str)
    analyse_requested = Signal(str)
    classify_requested = Signal(str)
    reanalyse_requested = Signal()
    export_requested = Signal()

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None, keeper: DocumentKeeper | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.keeper = keeper or DocumentKeeper(runner)
        self.document: ScanDocument | None = None
        self.layer: Layer | None = None
        self.image: np.ndarray | None = None
        self.bins: list[dict[str, Any]] = []
        self.chip_dialog: ChipDialog | None = None
        self._detail_pending = False
        self._detail_next: tuple[int, int, int, int] | None = None
        self._build()

    # -- widgets -----------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        top = QHBoxLayout()
        self.layer_combo = QComboBox()
        self.layer_combo.setObjectName("layerCombo")
        self.layer_combo.setMinimumContentsLength(28)
        self.layer_combo.setToolTip("What the map shows (Ctrl+Up / Ctrl+Down)")
        self.layer_combo.currentIndexChanged.connect(self._layer_chosen)
        self.fit_button = QPushButton("Whole wafer")
        self.fit_button.setToolTip("Show the whole wafer (Home)")
        self.title = QLabel("No scan open: File ▸ Open (Ctrl+O)")
        self.title.setObjectName("reviewTitle")
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.classify_button = QPushButton("Classify…")
        self.classify_button.setObjectName("classifyButton")
        self.classify_button.setToolTip(
            "Classify this scan again: with the deployed model, another model file or the rule layer (Ctrl+Shift+C)"
        )
        self.classify_button.setEnabled(False)
        self.classify_button.clicked.connect(self._classify_clicked)
        self.reanalyse_button = QPushButton("Analyse again…")
        self.reanalyse_button.setObjectName("reanalyseButton")
        self.reanalyse_button.setEnabled(False)
        self.reanalyse_button.clicked.connect(self.reanalyse_requested)
        self.export_button = QPushButton("Export…")
        self.export_button.setObjectName("exportButton")
        self.export_button.setToolTip("KLARF, SEMI E142, CSV, Parquet, PNG maps, the PDF report (Ctrl+Shift+X)")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self.export_requested)
        top.addWidget(QLabel("Show:"))
        top.addWidget(self.layer_combo)
        top.addWidget(self.fit_button)
        top.addWidget(self.classify_button)
        top.addWidget(self.reanalyse_button)
        top.addWidget(self.export_button)
        top.addWidget(self.title, 1)
        self.banner = QLabel()
        self.banner.setObjectName("reviewBanner")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background:#fff3cd; color:#5c4400; padding:6px; border:1px solid #e0c36a;")
        self.banner.hide()
        self.banner_button = QPushButton()
        self.banner_button.hide()
        self.banner_button.clicked.connect(self._banner_action)
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.banner_button)

        self.map = WaferMapView()
        self.map.setObjectName("reviewMap")
        self.fit_button.clicked.connect(self.map.fit)
        self.map.chip_hovered.connect(self._hovered)
        self.map.chip_clicked.connect(self.open_chip)
        self.map.detail_wanted.connect(self._detail_wanted)
        self.map.levels_changed.connect(lambda *_: self._update_histogram_levels())
        self.hover = QLabel("Hover over the map for a chip's values; click a chip for its details.")
        self.hover.setObjectName("hoverLabel")
        self.hover.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.map, 1)
        left_layout.addWidget(self.hover)

        self.yield_label = QLabel("")
        self.yield_label.setObjectName("yieldLabel")
        self.yield_label.setWordWrap(True)
        self.legend = QTableWidget(0, 3)
        self.legend.setObjectName("binLegend")
        self.legend.setHorizontalHeaderLabels(["Bin", "Chips", "Share"])
        self.legend.verticalHeader().hide()
        self.legend.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.legend.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.legend.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.legend.cellDoubleClicked.connect(self._legend_filter)
        legend_box = QWidget()
        legend_layout = QVBoxLayout(legend_box)
        legend_layout.setContentsMargins(0, 0, 0, 0)
        legend_layout.addWidget(self.yield_label)
        legend_layout.addWidget(self.legend)

        self.histogram = pg.PlotWidget(background=BACKGROUND)
        self.histogram.setObjectName("histogram")
        self.histogram.setMenuEnabled(False)
        self.histogram.setLabel("left", "chips")
        self.histogram_curve = self.histogram.plot(
            [0, 1], [0], stepMode="center", fillLevel=0, brush="#4fc3f7aa", pen=pg.mkPen("#4fc3f7")
        )
        self.histogram_lines = [
            pg.InfiniteLine(angle=90, pen=pg.mkPen("#f0b429", style=Qt.PenStyle.DashLine)) for _ in range(2)
        ]
        for line in self.histogram_lines:
            self.histogram.addItem(line)
        self.histogram_note = QLabel("")
        self.histogram_note.setObjectName("histogramNote")
        histogram_box = QWidget()
        histogram_layout = QVBoxLayout(histogram_box)
        histogram_layout.setContentsMargins(0, 0, 0, 0)
        histogram_layout.addWidget(self.histogram, 1)
        histogram_layout.addWidget(self.histogram_note)

        self.pareto = pg.PlotWidget(background=BACKGROUND)
        self.pareto.setObjectName("pareto")
        self.pareto.setMenuEnabled(False)
        self.pareto.setLabel("bottom", "failing chips")
        self.pareto.getViewBox().invertY(True)

        self.defect_model = DefectTableModel(self)
        self.defect_table = QTableView()
        self.defect_table.setObjectName("defectTable")
        self.defect_table.setModel(self.defect_model)
        self.defect_table.setSortingEnabled(True)
        self.defect_table.sortByColumn(4, Qt.SortOrder.DescendingOrder)
        self.defect_table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.defect_table.setSelectionMode(QTableView.SelectionMode.SingleSelection)
        self.defect_table.verticalHeader().setDefaultSectionSize(22)
        self.defect_table.verticalHeader().hide()
        # fixed sizes: measuring the contents of a million rows on every layout would stall the window
        self.defect_table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.defect_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for column, width in enumerate((64, 64, 110, 84, 76, 90, 76)):
            self.defect_table.setColumnWidth(column, width)
        self.defect_table.selectionModel().currentRowChanged.connect(self._defect_selected)
        self.defect_table.doubleClicked.connect(self._defect_opened)
        self.defect_bin = QComboBox()
        self.defect_bin.setObjectName("defectBinFilter")
        self.defect_bin.currentIndexChanged.connect(self._defect_filter_changed)
        self.defect_probability = QDoubleSpinBox()
        self.defect_probability.setObjectName("defectProbabilityFilter")
        self.defect_probability.setRange(0.0, 1.0)
        self.defect_probability.setSingleStep(0.05)
        self.defect_probability.setPrefix("P(EL fail) ≥ ")
        self.defect_probability.valueChanged.connect(self._defect_filter_changed)
        self.defect_count = QLabel("")
        self.defect_count.setObjectName("defectCount")
        filters = QHBoxLayout()
        filters.addWidget(self.defect_bin, 1)
        filters.addWidget(self.defect_probability)
        defects_box = QWidget()
        defects_layout = QVBoxLayout(defects_box)
        defects_layout.setContentsMargins(0, 0, 0, 0)
        defects_layout.addLayout(filters)
        defects_layout.addWidget(self.defect_table, 1)
        defects_layout.addWidget(self.defect_count)

        self.side_tabs = QTabWidget()
        self.side_tabs.setObjectName("reviewSideTabs")
        self.side_tabs.addTab(defects_box, "Defects")
        self.side_tabs.addTab(histogram_box, "Histogram")
        self.side_tabs.addTab(self.pareto, "Pareto")
        self.side_splitter = QSplitter(Qt.Orientation.Vertical)
        self.side_splitter.setObjectName("reviewSideSplitter")
        self.side_splitter.addWidget(legend_box)
        self.side_splitter.addWidget(self.side_tabs)
        self.side_splitter.setSizes([280, 480])
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("reviewSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.side_splitter)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([900, 420])

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(banner_row)
        layout.addWidget(self.splitter, 1)

    # -- opening -----------------------------------------------------------------------------------------------------
    def open_path(self, path: str | Path, done: Any = None) -> None:
        """Open ``path`` in the background; ``done(document)`` after its first map is shown."""
        path = Path(path)

        def work(progress, cancel):
            progress(0.0, f"opening {path.name}")
            document = ScanDocument(path)
            try:
                layer = document.default_layer
                image = None
                if layer is not None:
                    image = document.overview(layer, progress=progress, cancel=cancel)
                counts = document.class_counts(cancel=cancel)
            except BaseException:
                document.close()
                raise
            return document, layer, image, counts

        def opened(result) -> None:
            self.set_document(*result)
            if done is not None:
                done(self.document)

        self.runner.start(work, f"Opening {path.name}", done=opened)

    def set_document(self, document: ScanDocument, layer: Layer | None, image: np.ndarray | None, counts) -> None:
        """Show a freshly opened document (GUI thread)."""
        self._retire(self.document)
        self.document, self.layer, self.image = document, layer, image
        self.map.set_layout(document.layout)
        self._show_alignment(document)
        self.classify_button.setEnabled(document.has_results)
        self.export_button.setEnabled(True)
        self.title.setText(document.describe())
        self.bins = document.bin_summary(counts)
        self._fill_legend()
        self._fill_pareto()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for item in document.layers:
            self.layer_combo.addItem(item.title, item.key)
        self.layer_combo.blockSignals(False)
        self._show_banner(document)
        if layer is not None and image is not None:
            self._show_image(layer, image)
        self.defect_model.set_defects(None, [], [])
        self.defect_bin.blockSignals(True)
        self.defect_bin.clear()
        self.defect_bin.addItem("All failing bins", None)
        for entry in self.bins:
            if entry["fail"]:
                self.defect_bin.addItem(f"{entry['code']} {entry['name']}", entry["index"])
        self.defect_bin.blockSignals(False)
        if document.has_classification:
            self._list_defects(document)
            self.defect_count.setText("listing failing chips …")
        else:
            self.defect_count.setText("No classification in this file: the defect table needs one.")
        self.document_changed.emit(document)

    def _show_banner(self, document: ScanDocument) -> None:
        self._banner_kind = ""
        if document.resumable:
            done = ", ".join(str(count) for count in document.lines_complete)
            self.banner.setText(
                f"This scan stopped before the end ({document.status.value}"
                + (f": {document.message}" if document.message else "")
                + f"). Lines complete per pass: {done} of {document.lines_planned}. It can be resumed on the station."
            )
            self.banner_button.setText("Resume scan…")
            self._banner_kind = "resume"
        elif not document.has_results:
            self.banner.setText(
                "This scan has no analysis results yet: the map needs them. Analyse now runs the analysis, then "
                "classifies the chips (the station's deployed model, or the rule layer), as plmapper analyze does."
            )
            self.banner_button.setText("Analyse now")
            self._banner_kind = "analyse"
        elif not document.has_classification:
            self.banner.setText("This scan is analysed but not classified yet: bins, yield and defects need it.")
            self.banner_button.setText("Classify…")
            self._banner_kind = "classify"
        self.banner.setVisible(bool(self._banner_kind))
        self.banner_button.setVisible(bool(self._banner_kind))

    def _banner_action(self) -> None:
        if self.document is None:
            return
        if self._banner_kind == "resume":
            self.resume_requested.emit(str(self.document.path))
        elif self._banner_kind == "analyse":
            self.analyse_requested.emit(str(self.document.path))
        elif self._banner_kind == "classify":
            self.classify_requested.emit(str(self.document.path))

    def set_reanalysis_allowed(self, reason: str | None) -> None:
        """Enable "Analyse again…", or disable it with ``reason`` as its tooltip."""
        self.reanalyse_button.setEnabled(reason is None)
        self.reanalyse_button.setToolTip(
            reason or "Analyse this scan again with other settings, then classify it again (Ctrl+Shift+R)"
        )

    def _classify_clicked(self) -> None:
        if self.document is not None:
            self.classify_requested.emit(str(self.document.path))

    def _show_alignment(self, document: ScanDocument) -> None:
        """The alignment result in the map's corner, and its measurement lines as crosses."""
        alignment = document.alignment
        if alignment is None:
            self.map.set_note("not aligned (no alignment stored)")
            return
        residual = alignment["residual_um"]
        residual_text = f", residual {residual:.2f} µm" if math.isfinite(residual) else ""
        self.map.set_note(
            f"alignment: offset ({alignment['offset_x_um']:,.1f}, {alignment['offset_y_um']:,.1f}) µm, "
            f"rotation {alignment['rotation_deg']:.4f}°{residual_text}"
        )
        sites = alignment.get("sites")
        names = getattr(getattr(sites, "dtype", None), "names", None) or ()
        if {"x_um", "y_um"} <= set(names) and sites.size:
            placement = Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
            x, y = placement.stage_to_wafer(sites["x_um"], sites["y_um"])
            self.map.set_sites(x, y)

    def close_document(self) -> None:
        """Forget the open document (closed once no task reads it any more)."""
        self._retire(self.document)
        self.document = None
        self.layer = self.image = None
        self.title.setText("No scan open: File ▸ Open (Ctrl+O)")
        self.classify_button.setEnabled(False)
        self.export_button.setEnabled(False)
        self.map.set_note("")
        self.layer_combo.clear()
        self.banner.hide()
        self.banner_button.hide()
        self.document_changed.emit(None)

    def _retire(self, document: ScanDocument | None) -> None:
        self.keeper.retire(document)

    def _run(self, work, label: str, done, *, visible: bool = True, failed=None, after=None) -> None:
        """Run a task that reads the current document, keeping the document open until it ends."""
        document = self.document
        assert document is not None
        self.keeper.run(
            document, work, label, done, visible=visible, failed=failed, after=after, current=lambda: self.document
        )

    # -- layers ------------------------------------------------------------------------------------------------------
    def _layer_chosen(self, index: int) -> None:
        document = self.document
        key = self.layer_combo.itemData(index)
        if document is None or key is None:
            return
        self.choose_layer(key)

    def choose_layer(self, key: str) -> None:
        """Show layer ``key`` (reads its overview in the background unless cached)."""
        document = self.document
        if document is None:
            return
        layer = document.layer(key)
        position = self.layer_combo.findData(key)
        if position >= 0 and position != self.layer_combo.currentIndex():
            self.layer_combo.blockSignals(True)
            self.layer_combo.setCurrentIndex(position)
            self.layer_combo.blockSignals(False)

        def work(progress, cancel):
            return layer, document.overview(layer, progress=progress, cancel=cancel)

        self._run(work, f"Reading {layer.label}", lambda result: self._show_image(*result))

    def _show_image(self, layer: Layer, image: np.ndarray) -> None:
        document = self.document
        assert document is not None
        self.layer, self.image = layer, image
        factor = document.layer_factor(layer)
        if layer.categorical:
            self.map.show_categories(image, factor, [colour for _, colour in layer.categories])
        else:
            self.map.show_values(image, factor)
        self._fill_histogram()

    # -- detail level ------------------------------------------------------------------------------------------------
    def _detail_wanted(self, r0: int, r1: int, c0: int, c1: int) -> None:
        if self.document is None or self.layer is None or self.layer.downsample > 1:
            return
        if self._detail_pending:
            self._detail_next = (r0, r1, c0, c1)
            return
        self._detail_pending = True
        document, layer = self.document, self.layer

        def work(progress, cancel):
            return layer, r0, c0, document.window(layer, slice(r0, r1), slice(c0, c1))

        def shown(result) -> None:
            shown_layer, row, col, image = result
            if shown_layer is self.layer:
                self.map.set_detail(image, row, col)

        def always_next() -> None:
            self._detail_pending = False
            if self._detail_next is not None:
                following, self._detail_next = self._detail_next, None
                self._detail_wanted(*following)

        self._run(work, "Reading chips in view", shown, visible=False, failed=lambda *_: None, after=always_next)

    # -- hover and click ---------------------------------------------------------------------------------------------
    def value_at(self, col: int, row: int) -> tuple[float | int | None, bool]:
        """The shown layer's value of chip (col, row) from memory, and whether it is the chip's own value (False:
        the overview block's representative chip)."""
        document, image = self.document, self.image
        if document is None or image is None or self.layer is None:
            return None, False
        box = self.map.detail_box
        if box is not None and box[0] <= row < box[1] and box[2] <= col < box[3] and self.map.detail.image is not None:
            return self.map.detail.image[row - box[0], col - box[2]].item(), True
        factor = document.layer_factor(self.layer)
        i, j = row // factor, col // factor
        if 0 <= i < image.shape[0] and 0 <= j < image.shape[1]:
            return image[i, j].item(), factor == 1
        return None, False

    def _hovered(self, col: int, row: int, hit: bool) -> None:
        document = self.document
        if document is None:
            return
        if not document.layout.in_box(col, row):
            self.hover.setText("outside the chip box")
            return
        x, y = (float(value) for value in document.layout.chip_center_um(col, row))
        parts = [f"chip ({col}, {row})", f"x {x:,.1f} µm, y {y:,.1f} µm"]
        if not hit:
            parts.append("street")
        value, exact = self.value_at(col, row)
        if self.layer is not None and value is not None:
            if self.layer.categorical:
                categories = self.layer.categories
                if value == NO_BIN or int(value) >= len(categories):
                    parts.append("no chip" if self.layer.key == "bin" else f"{self.layer.label}: —")
                elif self.layer.key == "bin":
                    parts.append(f"bin {categories[int(value)][0]}")
                else:
                    parts.append(categories[int(value)][0])
            else:
                unit = f" {self.layer.unit}" if self.layer.unit else ""
                approx = "" if exact else " (block of chips; zoom in for this chip)"
                parts.append(f"{self.layer.label}: {format_value(float(value))}{unit}{approx}")
        self.hover.setText(" · ".join(parts))

    def open_chip(self, col: int, row: int) -> None:
        """Read chip (col, row)'s details in the background and show them."""
        document = self.document
        if document is None:
            return
        self.map.mark_chip(col, row)

        def work(progress, cancel):
            return document.chip_details(col, row)

        def show(details) -> None:
            if self.chip_dialog is not None:
                self.chip_dialog.close()
            self.chip_dialog = ChipDialog(details, document.bin_table, self)
            self.chip_dialog.show()

        self._run(work, f"Reading chip ({col}, {row})", show, visible=False)

    def jump_to(self, col: int, row: int) -> None:
        self.map.centre_on(col, row)

    def go_to_chip(self, col: int, row: int) -> bool:
        """Zoom to chip (col, row), mark it and show its values under the map; False if it is outside the box."""
        document = self.document
        if document is None or not document.layout.in_box(col, row):
            return False
        self.jump_to(col, row)
        self._hovered(col, row, True)
        return True

    # -- legend, pareto, histogram -----------------------------------------------------------------------------------
    def _fill_legend(self) -> None:
        self.legend.setRowCount(0)
        if not self.bins:
            self.yield_label.setText("No classification in this file: bins, yield and pareto need one.")
            return
        inspected = sum(entry["count"] for entry in self.bins if entry["inspected"])
        good = sum(entry["count"] for entry in self.bins if entry["inspected"] and not entry["fail"])
        value = ScanDocument.yield_fraction(self.bins)
        yield_text = f"{value:.2%}" if math.isfinite(value) else "—"
        self.yield_label.setText(f"<b>Yield {yield_text}</b> ({good:,} good of {inspected:,} inspected chips)")
        self.legend.setRowCount(len(self.bins))
        for row, entry in enumerate(self.bins):
            name = QTableWidgetItem(f"{entry['code']:>3}  {entry['name']}")
            name.setData(Qt.ItemDataRole.DecorationRole, QColor(entry["colour"]))
            name.setToolTip("reject" if entry["fail"] else "pass")
            count = QTableWidgetItem(f"{entry['count']:,}")
            share = QTableWidgetItem(
                f"{entry['share']:.2%}" if entry["inspected"] and math.isfinite(entry["share"]) else ""
            )
            for item in (count, share):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.legend.setItem(row, 0, name)
            self.legend.setItem(row, 1, count)
            self.legend.setItem(row, 2, share)
        self.legend.resizeColumnToContents(1)
        self.legend.resizeColumnToContents(2)
        self.legend.verticalHeader().setDefaultSectionSize(22)

    def _fill_pareto(self) -> None:
        self.pareto.clear()
        failing = sorted((entry for entry in self.bins if entry["fail"] and entry["count"]), key=lambda e: -e["count"])
        if not failing:
            self.pareto.setTitle("no failing chips" if self.bins else "no classification")
            return
        self.pareto.setTitle("")
        total = sum(entry["count"] for entry in failing)
        counts = np.array([entry["count"] for entry in failing], dtype=float)
        brushes = [QBrush(QColor(entry["colour"])) for entry in failing]
        bars = pg.BarGraphItem(x0=0, y=np.arange(len(failing)), height=0.7, width=counts, brushes=brushes,
                               pen=pg.mkPen("#9aa0a6"))  # fmt: skip
        self.pareto.addItem(bars)
        cumulative = np.cumsum(counts) / total
        ticks = [
            (index, f"{entry['name']}  {entry['count']:,} ({cumulative[index]:.0%})")
            for index, entry in enumerate(failing)
        ]
        self.pareto.getAxis("left").setTicks([ticks])
        self.pareto.setXRange(0, counts.max() * 1.05)
        self.pareto.setYRange(-0.6, len(failing) - 0.4)

    def _fill_histogram(self) -> None:
        image, layer = self.image, self.layer
        if image is None or layer is None:
            return
        if layer.categorical:
            self.histogram_curve.setData([0, 1], [0])
            self.histogram_note.setText("The bin map has no histogram: see the legend and the pareto.")
            return
        values = image[np.isfinite(image)]
        if values.size == 0:
            self.histogram_curve.setData([0, 1], [0])
            self.histogram_note.setText("no values")
            return
        low, high = (float(v) for v in np.percentile(values, [0.1, 99.9]))
        if not high > low:
            low, high = low - 0.5, high + 0.5
        counts, edges = np.histogram(values, bins=120, range=(low, high))
        self.histogram_curve.setData(edges, counts)
        self.histogram.setLabel("bottom", layer.title)
        factor = self.document.layer_factor(layer) if self.document is not None else 1
        sampled = f", sampled: 1 chip in {factor * factor}" if factor > 1 else ""
        self.histogram_note.setText(
            f"{values.size:,} chips{sampled}; median {np.median(values):.4g}; dashed lines: the colour range"
        )
        self._update_histogram_levels()

    def _update_histogram_levels(self) -> None:
        low, high = self.map.levels()
        for line, value in zip(self.histogram_lines, (low, high), strict=True):
            line.setValue(value)

    # -- defect table ------------------------------------------------------------------------------------------------
    def _list_defects(self, document: ScanDocument) -> None:
        def work(progress, cancel):
            return document.defects(progress=progress, cancel=cancel)

        def listed(defects: DefectList) -> None:
            names = [entry["name"] for entry in self.bins]
            colours = [entry["colour"] for entry in self.bins]
            self.defect_model.set_defects(defects, names, colours)
            self._update_defect_count()

        self._run(work, "Listing failing chips", listed)

    def _defect_filter_changed(self, *_: object) -> None:
        self.defect_model.set_filter(self.defect_bin.currentData(), self.defect_probability.value())
        self._update_defect_count()

    def _legend_filter(self, row: int, _column: int) -> None:
        if row < len(self.bins) and self.bins[row]["fail"]:
            position = self.defect_bin.findData(self.bins[row]["index"])
            if position >= 0:
                self.defect_bin.setCurrentIndex(position)
                self.side_tabs.setCurrentIndex(0)

    def _update_defect_count(self) -> None:
        shown = self.defect_model.rowCount()
        total = len(self.defect_model.defects) if self.defect_model.defects is not None else 0
        self.defect_count.setText(
            f"{shown:,} of {total:,} failing chips; select one to go to it, double-click for details"
        )

    def _defect_selected(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            self.jump_to(*self.defect_model.chip(current.row()))

    def _defect_opened(self, index: QModelIndex) -> None:
        if index.isValid():
            self.open_chip(*self.defect_model.chip(index.row()))

    def robust_levels(self) -> tuple[float, float]:
        return robust_levels(self.image) if self.image is not None else (0.0, 1.0)
