"""The Review view against an analysed, classified scan file: the map, hover, click, layers, defect table, the
overview/detail levels, errors and the saved layout."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PySide6.QtCore import QPointF, QRectF, QSettings, Qt
from PySide6.QtWidgets import QLabel

from app.gui import mapdata
from app.gui.chipdialog import ROWS, format_value
from app.gui.mainwindow import MainWindow
from tests.gui.conftest import COARSE_STATION, open_scan


def stored(path: Path, name: str) -> np.ndarray:
    """A dataset of the scan file, read the way the GUI opens it (HDF5 refuses to open one file twice in a process
    with different locking settings; the scan file's readers switch locking off, docs/scan-file.md)."""
    with h5py.File(path, "r", locking=False) as file:
        return file[name][()]


def pass_chips(path: Path, pass_index: int) -> np.ndarray:
    return stored(path, f"results/pass_{pass_index:03d}/chips")


def test_open_shows_the_bin_map_with_legend_yield_and_defects(qtbot, window, review_scan: Path) -> None:
    open_scan(qtbot, window, review_scan)
    review = window.review
    document = review.document
    assert review.layer.key == "bin"
    assert review.image.shape == document.shape  # the demo wafer is small: one pixel per chip
    classes = stored(review_scan, "classification/defect_class")
    table = document.bin_table
    expected_bins = document.classification.class_to_bin[classes]
    np.testing.assert_array_equal(review.image, expected_bins)
    # legend: one row per bin, counts as in the file, and the yield
    assert review.legend.rowCount() == len(table.bins)
    good = int((classes == 0).sum())
    assert review.legend.item(0, 1).text() == f"{good:,}"
    assert "Yield" in review.yield_label.text() and "%" in review.yield_label.text()
    # the defect table lists every failing chip
    qtbot.waitUntil(lambda: review.defect_model.rowCount() > 0, timeout=10_000)
    fail = table.fail_of(classes)
    assert review.defect_model.rowCount() == int(fail.sum())
    assert "wafer" in window.windowTitle()


def chip_scene_position(window: MainWindow, col: int, row: int) -> QPointF:
    x, y = (float(value) for value in window.review.document.layout.chip_center_um(col, row))
    return window.review.map.view.mapViewToScene(QPointF(x, y))


def test_hover_and_click_show_the_files_values(qtbot, window, review_scan: Path) -> None:
    open_scan(qtbot, window, review_scan)
    review = window.review
    qtbot.waitUntil(lambda: review.defect_model.rowCount() > 0, timeout=10_000)
    col, row = review.defect_model.chip(0)
    review.map.centre_on(col, row)
    qtbot.wait(50)
    scene = chip_scene_position(window, col, row)
    review.map._mouse_moved(scene)
    assert f"chip ({col}, {row})" in review.hover.text()
    assert "bin" in review.hover.text()
    viewport = review.map.graphics.viewport()
    point = review.map.graphics.mapFromScene(scene)
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=point)
    qtbot.waitUntil(lambda: review.chip_dialog is not None and review.chip_dialog.isVisible(), timeout=10_000)
    details = review.chip_dialog.details
    assert (details.col, details.row) == (col, row)
    records = [pass_chips(review_scan, index)[row, col] for index in range(len(review.document.powers_w))]
    values = review.chip_dialog.values
    for column, record in enumerate(records):
        for table_row, (name, _, _, pattern) in enumerate(ROWS[:6]):
            assert values.item(table_row, column).text() == format_value(record[name].item(), pattern)


def test_chip_with_a_spectrum_shows_it(qtbot, window, review_scan: Path) -> None:
    open_scan(qtbot, window, review_scan)
    record = stored(review_scan, "spectra/records")[0]
    window.review.open_chip(int(record["col"]), int(record["row"]))
    qtbot.waitUntil(lambda: window.review.chip_dialog is not None, timeout=10_000)
    dialog = window.review.chip_dialog
    assert dialog.details.spectrum is not None
    assert "fitted peak" in dialog.findChild(QLabel, "spectrumFit").text()


def test_switching_the_measurement_shows_its_values_and_histogram(qtbot, window, review_scan: Path) -> None:
    open_scan(qtbot, window, review_scan)
    review = window.review
    position = review.layer_combo.findData("pass1:intensity_v")
    review.layer_combo.setCurrentIndex(position)
    qtbot.waitUntil(lambda: review.layer.key == "pass1:intensity_v", timeout=10_000)
    expected = pass_chips(review_scan, 1)["intensity_v"]
    np.testing.assert_array_equal(review.image, expected)
    assert review.map.colour_bar.isVisible()
    assert "chips" in review.histogram_note.text()
    # hover now shows the measurement
    rows, cols = np.nonzero(np.isfinite(expected))
    col, row = int(cols[0]), int(rows[0])
    review.map._mouse_moved(chip_scene_position(window, col, row))
    assert format_value(float(expected[row, col])) in review.hover.text()


def test_defect_table_sorts_filters_and_jumps_to_the_chip(qtbot, window, review_scan: Path) -> None:
    open_scan(qtbot, window, review_scan)
    review = window.review
    qtbot.waitUntil(lambda: review.defect_model.rowCount() > 0, timeout=10_000)
    review.defect_table.sortByColumn(5, Qt.SortOrder.AscendingOrder)  # intensity: dimmest first
    model = review.defect_model
    first = float(model.data(model.index(0, 5)))
    last = float(model.data(model.index(model.rowCount() - 1, 5)))
    assert first <= last
    dead = review.defect_bin.findText("3 Dead")
    review.defect_bin.setCurrentIndex(dead)
    assert model.rowCount() > 0
    assert all(model.data(model.index(index, 2)) == "Dead" for index in range(model.rowCount()))
    review.defect_table.selectRow(0)
    col, row = model.chip(0)
    x, y = (float(value) for value in review.document.layout.chip_center_um(col, row))
    rect = review.map.view.viewRect()
    assert rect.contains(QPointF(x, y))
    assert rect.width() < 60 * review.document.layout.grid.pitch_x_um  # zoomed in to the chip
    assert review.map.marker.isVisible()


def test_large_wafers_show_an_overview_and_full_resolution_when_zoomed(qtbot, window, review_scan, monkeypatch):
    monkeypatch.setattr(mapdata, "OVERVIEW_SIZE", 64)  # the demo wafer (~500 chips across) becomes "large": d = 8
    open_scan(qtbot, window, review_scan)
    review = window.review
    assert review.document.factor == 8
    assert review.image.shape == (62, 63)
    review.choose_layer("pass1:intensity_v")
    qtbot.waitUntil(lambda: review.layer.key == "pass1:intensity_v", timeout=10_000)
    expected = pass_chips(review_scan, 1)["intensity_v"]
    np.testing.assert_array_equal(review.image, expected[4::8, 4::8])  # the centre chip of each 8 x 8 block
    rows, cols = np.nonzero(np.isfinite(expected))
    col, row = int(cols[cols.size // 2]), int(rows[rows.size // 2])
    review.map.centre_on(col, row, chips_across=60)
    qtbot.waitUntil(lambda: review.map.detail_box is not None, timeout=10_000)
    r0, r1, c0, c1 = review.map.detail_box
    np.testing.assert_array_equal(review.map.detail.image, expected[r0:r1, c0:c1])
    value, exact = review.value_at(col, row)
    assert exact and value == pytest.approx(float(expected[row, col]))
    # zoomed out until a screen pixel covers several chips: the overview alone
    review.map.view.setRange(QRectF(-300_000.0, -300_000.0, 600_000.0, 600_000.0), padding=0)
    qtbot.waitUntil(lambda: review.map.detail_box is None, timeout=5_000)


def test_errors_are_messages_without_a_traceback(qtbot, window, tmp_path: Path) -> None:
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not a scan")
    window.open_file(not_hdf5)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=10_000)
    title, text = window.last_error
    assert title == "Scan file problem" and "not an HDF5 file" in text
    assert "Traceback" not in text and "What to do" in text
    window.last_error = None
    window.open_file(tmp_path / "missing.h5")
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=10_000)
    assert window.last_error[0] == "File not found"
    assert window.review.document is None


def test_layout_recent_files_and_recipe_persist(qtbot, window, review_scan: Path, settings_file: Path) -> None:
    open_scan(qtbot, window, review_scan)
    window.review.splitter.setSizes([700, 500])
    recipe = COARSE_STATION.parent / "coarse-recipe.toml"
    window.scan.select_recipe(recipe)
    sizes = window.review.splitter.sizes()
    window.tabs.setCurrentWidget(window.station)
    window.close()
    settings = QSettings(str(settings_file), QSettings.Format.IniFormat)
    settings.setValue("window/tab", 2)  # the index an earlier version saved (before the Compare tab): ignored
    settings.sync()
    again = MainWindow(settings=QSettings(str(settings_file), QSettings.Format.IniFormat), station_file=COARSE_STATION)
    qtbot.addWidget(again)
    again.resize(1600, 960)
    again.show()
    assert again.tabs.currentWidget() is again.station  # the tab left, by its name
    again.tabs.setCurrentWidget(again.review)
    assert again.review.splitter.sizes() == sizes
    assert again.scan.recipe_path == recipe
    assert again.recent_menu.actions()[0].text() == str(review_scan)
    again.close()
