"""The chip details window: one chip's measurements at every power, its class, its spectrum, its neighbours."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.mapdata import NEIGHBOURHOOD, NO_BIN, ChipDetails
from app.gui.mapview import BACKGROUND, bin_lut, robust_levels
from inspection.bins import BinTable, DefectClass

ROWS = [
    ("intensity_v", "Intensity", "V", "{:.4g}"),
    ("efficiency_v_per_w", "Efficiency", "V/W", "{:.4g}"),
    ("neighbour_ratio", "Neighbour ratio", "", "{:.3f}"),
    ("peak_v", "Peak", "V", "{:.4g}"),
    ("integrated_v_um2", "Integrated", "V·µm²", "{:.4g}"),
    ("street_v", "Street level", "V", "{:.4g}"),
    ("offset_col_um", "Centroid offset x", "µm", "{:+.2f}"),
    ("offset_row_um", "Centroid offset y", "µm", "{:+.2f}"),
    ("core_samples", "Core samples", "", "{:d}"),
    ("flag_names", "Flags", "", "{}"),
]


def format_value(value: object, pattern: str = "{:.4g}") -> str:
    """A table cell: '—' for missing values.

    Examples
    --------
    >>> format_value(float("nan")), format_value(2.5), format_value(None)
    ('—', '2.5', '—')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return pattern.format(value)


class ChipDialog(QDialog):
    """Non-modal; one per click (the review keeps the latest open)."""

    def __init__(self, details: ChipDetails, table: BinTable | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.details = details
        self.setWindowTitle(f"Chip ({details.col}, {details.row})")
        self.setObjectName("chipDialog")
        layout = QGridLayout(self)
        layout.addWidget(self._header(details, table), 0, 0, 1, 2)
        self.values = self._values_table(details)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.values)
        self.el_box = self._el_view(details)
        left_layout.addWidget(self.el_box)
        left_layout.addStretch(1)
        layout.addWidget(left, 1, 0)
        layout.addWidget(self._neighbour_view(details, table), 1, 1)
        layout.addWidget(self._spectrum_view(details), 2, 0, 1, 2)
        layout.setColumnStretch(0, 3)
        layout.setColumnStretch(1, 2)
        layout.setRowStretch(1, 0)  # the values and neighbours as tall as they need, the spectrum gets the rest
        layout.setRowStretch(2, 1)
        self.resize(900, 860)
        if details.spectrum is None:  # as tall as its content: no stretched empty rows
            layout.activate()
            # the wrapped header needs the height it has at this width, not at its preferred one
            wanted = layout.totalHeightForWidth(900) if layout.hasHeightForWidth() else self.sizeHint().height()
            self.resize(900, min(860, max(wanted, self.sizeHint().height())))

    def _header(self, details: ChipDetails, table: BinTable | None) -> QLabel:
        parts = [
            f"<b>Chip ({details.col}, {details.row})</b> at x = {details.x_um:,.1f} µm, y = {details.y_um:,.1f} µm",
            "usable" if details.usable else ("on the wafer, outside the usable area" if details.on_substrate else
                                              "no chip here"),
        ]  # fmt: skip
        if table is not None and details.bin_index is not None and details.bin_index != NO_BIN:
            entry = table.bins[details.bin_index]
            name = DefectClass(details.defect_class).key.replace("_", " ") if details.defect_class is not None else ""
            swatch = f"<span style='background:{entry.colour}'>&nbsp;&nbsp;&nbsp;&nbsp;</span>"
            parts.append(f"bin {swatch} <b>{entry.code} {entry.name}</b> (class: {name})")
            parts.append(f"P(EL fail) = {format_value(details.el_fail_probability, '{:.2f}')}")
        if details.efficiency_ratio is not None:
            parts.append(f"efficiency ratio (low/high) = {format_value(details.efficiency_ratio, '{:.3f}')}")
        label = QLabel(" · ".join(parts))
        label.setObjectName("chipHeader")
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    def _values_table(self, details: ChipDetails) -> QTableWidget:
        table = QTableWidget(len(ROWS), len(details.passes))
        table.setObjectName("chipValues")
        table.setHorizontalHeaderLabels([f"{values['power_w'] * 1e3:g} mW" for values in details.passes])
        table.setVerticalHeaderLabels([f"{label} ({unit})" if unit else label for _, label, unit, _ in ROWS])
        for column, values in enumerate(details.passes):
            for row, (name, _, _, pattern) in enumerate(ROWS):
                item = QTableWidgetItem(format_value(values.get(name), pattern))
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
                table.setItem(row, column, item)
        table.horizontalHeader().setStretchLastSection(True)
        table.resizeColumnsToContents()
        # as tall as its rows: no empty area under them
        table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        table.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        return table

    def _el_view(self, details: ChipDetails) -> QGroupBox:
        """The chip's EL reference values and how the PL prediction compares with them."""
        box = QGroupBox("EL reference")
        box.setObjectName("elBox")
        form = QFormLayout(box)
        form.setContentsMargins(8, 4, 8, 4)
        self.el_labels: dict[str, QLabel] = {}

        def add(key: str, label: str, text: str) -> None:
            value = QLabel(text)
            value.setObjectName(f"el_{key}")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.el_labels[key] = value
            form.addRow(label, value)

        probability = format_value(details.el_fail_probability, "{:.3f}")
        if details.el_fail_predicted is None:
            predicted = "— (not classified or not inspected)"
        else:
            predicted = f"{'fails' if details.el_fail_predicted else 'passes'} EL (P(EL fail) = {probability})"
        el = details.el
        if not details.has_el_reference:
            add("result", "EL result:", "no EL reference in this file (import the prober's results first)")
        elif el is None:
            add("result", "EL result:", "this chip was not probed")
        else:
            verdict = "pass" if el["passed"] else f"FAIL: {el['fail_mode']}"
            code = el["fail_code"].strip()
            if code and not el["passed"] and code.lower() != el["fail_mode"].replace(" ", "_"):
                verdict += f" (prober code {code})"
            add("result", "EL result:", verdict)
            add("forward_v", "Forward voltage Vf:", f"{format_value(el['forward_v'], '{:.3f}')} V")
            unit = f" {el['el_intensity_unit']}" if el["el_intensity_unit"] else ""
            add("el_intensity", "EL intensity:", f"{format_value(el['el_intensity'], '{:.4g}')}{unit}")
            add("reverse_current_a", "Reverse current Ir:", f"{format_value(el['reverse_current_a'], '{:.3g}')} A")
        add("prediction", "PL prediction:", predicted)
        if el is not None and details.el_fail_predicted is not None:
            add("agreement", "Agreement:", _agreement_text(details.el_fail_predicted, el))
        return box

    def _neighbour_view(self, details: ChipDetails, table: BinTable | None) -> QGroupBox:
        box = QGroupBox(f"Neighbours ({2 * NEIGHBOURHOOD + 1} × {2 * NEIGHBOURHOOD + 1})")
        layout = QVBoxLayout(box)
        # the dialog's own colour (opaque): the space around the square grid is no dark block
        plot = pg.PlotWidget(background=self.palette().window().color())
        plot.setObjectName("neighbourPlot")
        plot.setAspectLocked(True)
        plot.setMinimumSize(240, 240)
        plot.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)  # as tall as the values beside
        plot.hideAxis("left")
        plot.hideAxis("bottom")
        plot.setMouseEnabled(False, False)
        plot.setMenuEnabled(False)
        plot.hideButtons()
        image = pg.ImageItem(axisOrder="row-major")
        if details.neighbour_bins is not None and table is not None:
            image.setImage(details.neighbour_bins, lut=bin_lut(table), levels=(0, 255), autoLevels=False)
            what = "bins"
        else:
            values = details.neighbours
            levels = robust_levels(values)
            lut = pg.colormap.get("viridis").getLookupTable(nPts=256, alpha=True)
            image.setImage(values, lut=lut, levels=levels, autoLevels=False)
            what = "intensity at the highest power"
        plot.addItem(image)
        n = NEIGHBOURHOOD
        centre = pg.QtWidgets.QGraphicsRectItem(n, n, 1, 1)
        pen = pg.mkPen("#ff2fd0", width=2)
        pen.setCosmetic(True)
        centre.setPen(pen)
        plot.addItem(centre)
        size = 2 * NEIGHBOURHOOD + 1
        plot.setRange(QRectF(0, 0, size, size), padding=0)
        # each neighbour's intensity relative to the chip's, printed on it
        own = details.neighbours[n, n]
        for i in range(2 * n + 1):
            for j in range(2 * n + 1):
                value = details.neighbours[i, j]
                if not np.isfinite(value):
                    continue
                text = f"{value / own:.2f}" if np.isfinite(own) and own > 0 else f"{value:.2g}"
                label = pg.TextItem(text, color="#ffffff", anchor=(0.5, 0.5))
                label.setPos(j + 0.5, i + 0.5)
                plot.addItem(label)
        layout.addWidget(plot, 1)
        note = QLabel(f"colours: {what}; numbers: intensity relative to this chip")
        note.setWordWrap(True)
        layout.addWidget(note)
        return box

    def _spectrum_view(self, details: ChipDetails) -> QGroupBox:
        box = QGroupBox("Spectrum")
        layout = QVBoxLayout(box)
        if details.spectrum is None:
            label = QLabel("No spectrum was taken of this chip.")
            label.setObjectName("noSpectrum")
            layout.addWidget(label)
            box.setMaximumHeight(80)
            return box
        wavelength, power = details.spectrum
        plot = pg.PlotWidget(background=BACKGROUND)
        plot.setObjectName("spectrumPlot")
        plot.setMinimumHeight(200)
        plot.plot(wavelength, power * 1e9, pen=pg.mkPen("#4fc3f7", width=1.5))
        plot.setLabel("bottom", "wavelength (nm)")
        plot.setLabel("left", "power (nW/nm)")
        fit = details.spectrum_fit or {}
        text = f"taken: {details.spectrum_reason or '?'}"
        if fit:
            text += (
                f" · fitted peak {format_value(fit.get('peak_nm'), '{:.2f}')} nm, FWHM "
                f"{format_value(fit.get('fwhm_nm'), '{:.2f}')} nm, quality {fit.get('quality', '?')}"
            )
            if math.isfinite(fit.get("peak_nm", math.nan)):
                plot.addItem(
                    pg.InfiniteLine(fit["peak_nm"], angle=90, pen=pg.mkPen("#f0b429", style=Qt.PenStyle.DashLine))
                )
        label = QLabel(text)
        label.setObjectName("spectrumFit")
        layout.addWidget(label)
        layout.addWidget(plot)
        return box


def _agreement_text(predicted_fail: bool, el: dict) -> str:
    """How the PL prediction and the EL result of one chip compare, in the Compare view's words."""
    el_fail = not el["passed"]
    if predicted_fail and el_fail:
        return "agree: both fail"
    if not predicted_fail and not el_fail:
        return "agree: both pass"
    if predicted_fail:
        return "false alarm: PL predicts a failure, the chip passes EL"
    if el["no_pl_signature"]:
        return f"miss, but {el['fail_mode']} has no PL signature (PL cannot see it)"
    return "miss: the chip fails EL, PL predicts a pass"
