"""The wafer map: every chip as one pixel of an image, in wafer coordinates, with the wafer outline.

The map is drawn as pyqtgraph :class:`~pyqtgraph.ImageItem` s, never one item per chip. An image ``[i, j]`` of chip
rows and columns (row 0 at the bottom, SEMI E142) is placed in the wafer frame (µm, +x right, +y up, the flat or
notch at the bottom) by the affine map of the chip grid: pixel ``(j, i)`` of an image with ``d`` chips per pixel
whose first pixel is chip ``(c0, r0)`` covers chips ``c0 + j·d .. c0 + j·d + d − 1``, and its corner ``(u, v)`` lands
at ``origin + ex·pitch_x·(c0 + u·d − ½) + ey·pitch_y·(r0 + v·d − ½)`` (``ex``, ``ey`` the grid axes, rotated by the
recipe's ``rotation_deg``).

Two images: the **overview** of the whole chip box (``d ≥ 1``) and, above it, the **detail**: the chips in view at
full resolution, which the owner supplies when :attr:`WaferMapView.detail_wanted` asks for it (zoomed in on a large
wafer). Hovering emits :attr:`chip_hovered`, a click :attr:`chip_clicked`, both with the chip index.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPen, QTransform
from PySide6.QtWidgets import QVBoxLayout, QWidget

from app.gui.mapdata import NO_BIN
from inspection.bins import BinTable
from inspection.wafer import WaferLayout

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

BACKGROUND = "#23262b"
OUTLINE_COLOUR = "#e6e6e6"
EXCLUSION_COLOUR = "#f0b429"
MARKER_COLOUR = "#ff2fd0"
SITE_COLOUR = "#4fc3f7"
DETAIL_CHIPS_PER_PIXEL = 1.0
"""On a wafer with an overview of d > 1 chips per pixel, the full-resolution detail is shown once a screen pixel
covers at most this many chips."""
DETAIL_MAX_CHIPS = 4096
"""Largest detail window per axis (chips)."""
DETAIL_MARGIN = 0.25
"""The detail window extends this fraction of the view beyond it on every side, so small pans need no new read."""
EMPTY_RADIUS_UM = 52_000.0
"""Half the width shown before any wafer is (a 4" wafer's radius): the axes of an empty map read mm, not 0..1 µm."""
CONTINUOUS_MAP = "viridis"
DIVERGING_MAP = "CET-D1"


def bin_lut(table: BinTable) -> np.ndarray:
    """256 RGBA entries: bin index → its colour; NO_BIN (and unused entries) transparent."""
    return category_lut([entry.colour for entry in table.bins])


def category_lut(colours: list[str] | tuple[str, ...]) -> np.ndarray:
    """256 RGBA entries: category value → its colour (#rrggbb); NO_BIN (and unused entries) transparent.

    Examples
    --------
    >>> category_lut(["#ff0000", "#00ff00"])[:3].tolist()
    [[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 0, 0]]
    """
    lut = np.zeros((256, 4), dtype=np.uint8)
    for index, colour in enumerate(colours):
        lut[index, :3] = int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
        lut[index, 3] = 255
    lut[NO_BIN] = 0
    return lut


def image_transform(layout: WaferLayout, factor: int, first_col: int = 0, first_row: int = 0) -> QTransform:
    """Item coordinates of an image (pixel = ``factor`` chips, first pixel = chip (first_col, first_row)) → wafer µm."""
    grid = layout.grid
    (exx, exy), (eyx, eyy) = grid.axes
    x0, y0 = (float(value) for value in layout.chip_center_um(0, 0))
    px, py = grid.pitch_x_um, grid.pitch_y_um
    a, b = first_col - 0.5, first_row - 0.5  # the first pixel's corner in chip coordinates
    dx = x0 + exx * px * a + eyx * py * b
    dy = y0 + exy * px * a + eyy * py * b
    return QTransform(exx * px * factor, exy * px * factor, eyx * py * factor, eyy * py * factor, dx, dy)


class WaferMapView(QWidget):
    """The map widget: overview and detail images, outline, exclusion ring, colour bar, chip marker."""

    chip_hovered = Signal(int, int, bool)  # col, row, on a chip of the box
    chip_clicked = Signal(int, int)
    detail_wanted = Signal(int, int, int, int)  # first row, last row (exclusive), first col, last col (exclusive)
    levels_changed = Signal(float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layout_: WaferLayout | None = None
        self.factor = 1
        self.categorical = False
        self._detail_box: tuple[int, int, int, int] | None = None
        self._fit_when_shown = False
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.plot: pg.PlotItem = self.graphics.addPlot()
        self.plot.setAspectLocked(True)
        self.plot.showGrid(x=False, y=False)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        for name in ("bottom", "left"):
            axis = self.plot.getAxis(name)
            axis.setScale(1e-3)
            axis.enableAutoSIPrefix(False)  # the axes are mm at every zoom (an empty map read "(x1e-06)")
            axis.setPen(pg.mkPen("#9aa0a6"))
            axis.setTextPen(pg.mkPen("#c8ccd0"))
        self.plot.setLabel("bottom", "x (mm)", color="#c8ccd0")
        self.plot.setLabel("left", "y (mm)", color="#c8ccd0")
        self.view: pg.ViewBox = self.plot.getViewBox()
        self.view.setRange(
            QRectF(-EMPTY_RADIUS_UM, -EMPTY_RADIUS_UM, 2 * EMPTY_RADIUS_UM, 2 * EMPTY_RADIUS_UM), padding=0
        )
        self.overview = pg.ImageItem(axisOrder="row-major")
        self.detail = pg.ImageItem(axisOrder="row-major")
        self.detail.setZValue(1)
        self.detail.hide()
        self.plot.addItem(self.overview)
        self.plot.addItem(self.detail)
        self.outline = pg.PlotDataItem(pen=pg.mkPen(OUTLINE_COLOUR, width=1.5))
        self.exclusion = pg.PlotDataItem(pen=pg.mkPen(EXCLUSION_COLOUR, width=1, style=Qt.PenStyle.DashLine))
        for item in (self.outline, self.exclusion):
            item.setZValue(2)
            self.plot.addItem(item)
        self.marker = pg.QtWidgets.QGraphicsPolygonItem()
        pen = QPen(QColor(MARKER_COLOUR))
        pen.setWidthF(2.0)
        pen.setCosmetic(True)
        self.marker.setPen(pen)
        self.marker.setZValue(3)
        self.marker.hide()
        self.plot.addItem(self.marker)
        self.sites = pg.ScatterPlotItem(symbol="+", size=11, pen=pg.mkPen(SITE_COLOUR, width=1.5), brush=None)
        self.sites.setZValue(2)
        self.plot.addItem(self.sites)
        self.note = pg.LabelItem("", color="#e6e6e6", size="9pt", justify="left")
        self.note.setParentItem(self.view)  # fixed on the screen, not in wafer coordinates
        self.note.anchor(itemPos=(0, 0), parentPos=(0, 0), offset=(6, 4))
        self.note.setZValue(4)
        self.colour_bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=CONTINUOUS_MAP, interactive=True, width=18)
        self.colour_bar.setImageItem([], insert_in=self.plot)
        self.colour_bar.sigLevelsChanged.connect(self._bar_levels_changed)
        self.colour_bar.axis.setTextPen(pg.mkPen("#c8ccd0"))
        self.colour_bar.hide()  # until a measurement is shown
        self._lut_continuous = pg.colormap.get(CONTINUOUS_MAP).getLookupTable(nPts=256, alpha=True)
        self._lut_diverging = pg.colormap.get(DIVERGING_MAP).getLookupTable(nPts=256, alpha=True)
        self._lut: np.ndarray | None = None
        self._levels: tuple[float, float] = (0.0, 1.0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics)
        self._range_timer = QTimer(self, singleShot=True, interval=60)
        self._range_timer.timeout.connect(self._range_settled)
        self.view.sigRangeChanged.connect(lambda *_: self._range_timer.start())
        self.graphics.scene().sigMouseMoved.connect(self._mouse_moved)
        self.graphics.scene().sigMouseClicked.connect(self._mouse_clicked)
        self.setMinimumSize(320, 280)

    # -- geometry ----------------------------------------------------------------------------------------------------
    def set_layout(self, layout: WaferLayout) -> None:
        """Draw the substrate outline and the edge-exclusion ring of ``layout``; clear the images."""
        self.layout_ = layout
        x, y = layout.substrate.outline_um(360)
        self.outline.setData(x, y)
        ux, uy = layout.substrate.usable_outline_um(360)
        self.exclusion.setData(ux, uy)
        self.overview.clear()
        self.hide_detail()
        self.marker.hide()
        self.sites.clear()
        self.note.setText("")
        self.fit()
        self._fit_when_shown = not self.isVisible()  # a hidden widget has no size to fit to yet

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if self._fit_when_shown:
            self._fit_when_shown = False
            QTimer.singleShot(0, self.fit)

    def set_note(self, text: str) -> None:
        """A line of text in the map's top left corner (the alignment result); empty to hide it."""
        self.note.setText(text)

    def set_sites(self, x_um: np.ndarray, y_um: np.ndarray) -> None:
        """Mark points in wafer coordinates (the alignment's measurement lines)."""
        self.sites.setData(np.asarray(x_um, dtype=float), np.asarray(y_um, dtype=float))

    def fit(self) -> None:
        """Show the whole wafer."""
        if self.layout_ is None:
            return
        radius = self.layout_.substrate.radius_um * 1.03
        self.view.setRange(QRectF(-radius, -radius, 2 * radius, 2 * radius), padding=0)

    # -- images ------------------------------------------------------------------------------------------------------
    def show_bins(self, image: np.ndarray, factor: int, table: BinTable) -> None:
        """The overview of a bin-index image (``NO_BIN`` transparent), ``factor`` chips per pixel."""
        self.show_categories(image, factor, [entry.colour for entry in table.bins])

    def show_categories(self, image: np.ndarray, factor: int, colours: list[str] | tuple[str, ...]) -> None:
        """The overview of a category image (value ``i`` in ``colours[i]``, ``NO_BIN`` transparent)."""
        self.categorical = True
        self._lut = category_lut(colours)
        self.colour_bar.hide()
        self._set_overview(image, factor)

    def show_values(
        self, image: np.ndarray, factor: int, levels: tuple[float, float] | None = None, *, diverging: bool = False
    ) -> None:
        """The overview of a measurement (NaN transparent) with the colour bar; ``levels`` default to the 1st and
        99th percentiles of its finite values. ``diverging``: a difference, blue below zero and red above."""
        self.categorical = False
        self._lut = self._lut_diverging if diverging else self._lut_continuous
        self.colour_bar.setColorMap(pg.colormap.get(DIVERGING_MAP if diverging else CONTINUOUS_MAP))
        if levels is None:
            levels = robust_levels(image)
        self._levels = levels
        self.colour_bar.show()
        self.colour_bar.setLevels(levels)
        self._set_overview(image, factor)

    def _set_overview(self, image: np.ndarray, factor: int) -> None:
        assert self.layout_ is not None
        self.factor = factor
        self.hide_detail()
        self._paint(self.overview, image)
        self.overview.setTransform(image_transform(self.layout_, factor))
        self._range_timer.start()

    def update_overview(self, image: np.ndarray) -> None:
        """Repaint the overview from (a changed) ``image`` of the same layer: the live map."""
        self._paint(self.overview, image)

    def _paint(self, item: pg.ImageItem, image: np.ndarray) -> None:
        levels = (0, 255) if self.categorical else self._levels
        item.setImage(image, lut=self._lut, levels=levels, autoLevels=False, autoDownsample=False)

    def set_detail(self, image: np.ndarray, first_row: int, first_col: int) -> None:
        """Full-resolution chips from ``(first_col, first_row)`` over the overview."""
        assert self.layout_ is not None
        self._paint(self.detail, image)
        self.detail.setTransform(image_transform(self.layout_, 1, first_col, first_row))
        self.detail.show()
        self._detail_box = (first_row, first_row + image.shape[0], first_col, first_col + image.shape[1])

    def hide_detail(self) -> None:
        self.detail.hide()
        self.detail.clear()
        self._detail_box = None

    @property
    def detail_box(self) -> tuple[int, int, int, int] | None:
        """(first row, end row, first col, end col) of the detail shown, or None."""
        return self._detail_box

    def levels(self) -> tuple[float, float]:
        return self._levels

    def _bar_levels_changed(self, bar: pg.ColorBarItem) -> None:
        if self.categorical:
            return
        self._levels = tuple(float(value) for value in bar.levels())  # type: ignore[assignment]
        for item in (self.overview, self.detail):
            if item.image is not None:
                item.setLevels(self._levels)
        self.levels_changed.emit(*self._levels)

    # -- chip marker and navigation ----------------------------------------------------------------------------------
    def mark_chip(self, col: int, row: int) -> None:
        """Outline chip (col, row)."""
        if self.layout_ is None:
            return
        grid = self.layout_.grid
        (exx, exy), (eyx, eyy) = grid.axes
        x, y = (float(value) for value in self.layout_.chip_center_um(col, row))
        w, h = grid.pitch_x_um / 2, grid.pitch_y_um / 2
        corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
        polygon = pg.QtGui.QPolygonF([QPointF(x + u * exx + v * eyx, y + u * exy + v * eyy) for u, v in corners])
        self.marker.setPolygon(polygon)
        self.marker.show()

    def centre_on(self, col: int, row: int, chips_across: int = 41) -> None:
        """Zoom to show ``chips_across`` chips around chip (col, row) and mark it."""
        if self.layout_ is None:
            return
        x, y = (float(value) for value in self.layout_.chip_center_um(col, row))
        half = chips_across * max(self.layout_.grid.pitch_x_um, self.layout_.grid.pitch_y_um) / 2
        self.view.setRange(QRectF(x - half, y - half, 2 * half, 2 * half), padding=0)
        self.mark_chip(col, row)

    def chip_at_scene(self, scene_pos: QPointF) -> tuple[int, int, bool] | None:
        if self.layout_ is None or not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        point = self.view.mapSceneToView(scene_pos)
        col, row, hit = self.layout_.chip_at(point.x(), point.y())
        return int(col), int(row), bool(hit)

    def _mouse_moved(self, scene_pos: QPointF) -> None:
        found = self.chip_at_scene(scene_pos)
        if found is not None:
            self.chip_hovered.emit(*found)

    def _mouse_clicked(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton or event.double():
            return
        found = self.chip_at_scene(event.scenePos())
        if found is not None and found[2]:
            self.mark_chip(found[0], found[1])
            self.chip_clicked.emit(found[0], found[1])

    # -- which chips are in view -------------------------------------------------------------------------------------
    def visible_box(self) -> tuple[int, int, int, int] | None:
        """(first row, end row, first col, end col) of the chip box in view, clamped to the box."""
        if self.layout_ is None:
            return None
        rect = self.view.viewRect()
        xs = np.array([rect.left(), rect.right(), rect.left(), rect.right()])
        ys = np.array([rect.top(), rect.top(), rect.bottom(), rect.bottom()])
        cols, rows = self.layout_.grid_position(xs, ys)
        r0 = max(0, math.floor(rows.min()))
        r1 = min(self.layout_.row_count, math.ceil(rows.max()) + 1)
        c0 = max(0, math.floor(cols.min()))
        c1 = min(self.layout_.column_count, math.ceil(cols.max()) + 1)
        if r1 <= r0 or c1 <= c0:
            return None
        return r0, r1, c0, c1

    def chips_per_pixel(self) -> float:
        if self.layout_ is None:
            return 1.0
        width_px = max(self.view.width(), 1.0)
        return self.view.viewRect().width() / self.layout_.grid.pitch_x_um / width_px

    def _range_settled(self) -> None:
        if self.layout_ is None or self.factor <= 1 or self.overview.image is None:
            return
        if self.chips_per_pixel() > DETAIL_CHIPS_PER_PIXEL:
            if self.detail.isVisible():
                self.hide_detail()
            return
        box = self.visible_box()
        if box is None:
            return
        r0, r1, c0, c1 = box
        current = self._detail_box
        if current is not None and current[0] <= r0 and r1 <= current[1] and current[2] <= c0 and c1 <= current[3]:
            return  # the detail shown already covers the view
        margin_r, margin_c = int((r1 - r0) * DETAIL_MARGIN), int((c1 - c0) * DETAIL_MARGIN)
        r0, r1 = max(0, r0 - margin_r), min(self.layout_.row_count, r1 + margin_r)
        c0, c1 = max(0, c0 - margin_c), min(self.layout_.column_count, c1 + margin_c)
        if r1 - r0 > DETAIL_MAX_CHIPS or c1 - c0 > DETAIL_MAX_CHIPS:
            return
        self.detail_wanted.emit(r0, r1, c0, c1)


def robust_levels(image: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentiles of the finite values (0..1 when there are none).

    Examples
    --------
    >>> robust_levels(np.array([[np.nan, 1.0], [2.0, 3.0]], dtype=np.float32))
    (1.02, 2.98)
    """
    values = image[np.isfinite(image)] if image.size else image
    if values.size == 0:
        return 0.0, 1.0
    if values.size > 1_000_000:
        values = values[:: values.size // 1_000_000]
    low, high = (float(value) for value in np.percentile(values, [1, 99]))
    if not high > low:
        low, high = low - 0.5, high + 0.5
    return round(low, 6), round(high, 6)
