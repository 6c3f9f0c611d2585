"""Screenshots of the main views for docs/gui.md: ``python -m tests.gui.screenshots [OUT_DIR]`` (default
docs/images), best under Xvfb (``xvfb-run -s "-screen 0 1920x1080x24" ...``). Renders a whole synthetic demo wafer
(about a minute), runs a demo scan on the virtual station for a few seconds, and saves gui-*.png."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

import app.gui  # noqa: F401 - the PySide6 guard
from app.gui.mainwindow import DEFAULT_STATION, MainWindow
from tests.gui.data import REPO, make_review_scan


def pump(application: QApplication, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        application.processEvents()
        time.sleep(0.01)


def wait(application: QApplication, condition, timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("screenshot: the GUI did not get there")
        application.processEvents()
        time.sleep(0.01)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="plmapper-shots-"))
    scan_path = make_review_scan(work / "W01-demo.h5", lines=slice(None), spectra=40)
    application = QApplication.instance() or QApplication([])
    settings = QSettings(str(work / "gui.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, station_file=DEFAULT_STATION)
    window.resize(1920, 1050)
    window.show()
    window.open_file(scan_path)
    wait(application, lambda: window.review.image is not None and window.review.defect_model.rowCount() > 0)
    pump(application, 1.0)
    window.grab().save(str(out / "gui-review-bins.png"))
    window.review.choose_layer("efficiency_ratio")
    wait(application, lambda: window.review.layer.key == "efficiency_ratio")
    window.review.side_tabs.setCurrentIndex(1)
    pump(application, 0.5)
    window.grab().save(str(out / "gui-review-ratio-histogram.png"))
    window.review.choose_layer("bin")
    wait(application, lambda: window.review.layer.key == "bin")
    window.review.side_tabs.setCurrentIndex(0)
    window.review.defect_table.selectRow(0)
    pump(application, 0.5)
    col, row = window.review.defect_model.chip(0)
    window.review.map._mouse_moved(
        window.review.map.view.mapViewToScene(
            __import__("PySide6.QtCore", fromlist=["QPointF"]).QPointF(
                *(float(v) for v in window.review.document.layout.chip_center_um(col, row))
            )
        )
    )
    pump(application, 0.3)
    window.grab().save(str(out / "gui-review-zoom-defect.png"))
    with_spectrum = window.review.document._scan.spectra()[5]
    window.review.open_chip(with_spectrum["col"], with_spectrum["row"])
    wait(application, lambda: window.review.chip_dialog is not None)
    pump(application, 0.5)
    window.review.chip_dialog.grab().save(str(out / "gui-chip-details.png"))
    window.review.chip_dialog.close()
    window.review.side_tabs.setCurrentIndex(2)
    window.review.map.fit()
    pump(application, 0.3)
    window.review.side_splitter.grab().save(str(out / "gui-review-pareto.png"))
    window.review.side_tabs.setCurrentIndex(0)

    # the smaller screen
    window.resize(1366, 740)
    pump(application, 0.8)
    window.grab().save(str(out / "gui-review-1366x768.png"))
    window.resize(1920, 1050)

    # station and a demo scan, a few seconds in
    window.tabs.setCurrentWidget(window.station)
    window.station.toggle_connection()
    wait(application, lambda: window.controller.is_connected, 60)
    window.controller.set_laser_power(0.002)
    window.controller.set_emission(True)
    pump(application, 1.5)
    window.grab().save(str(out / "gui-station.png"))
    window.controller.set_emission(False)
    window.scan.select_recipe(REPO / "resources" / "recipes" / "demo-2in.toml")
    window.scan.folder.setText(str(work))
    window.scan.lot.setText("LOT7")
    window.scan.wafer.setText("W02")
    pump(application, 1.0)
    window.tabs.setCurrentWidget(window.scan)
    window.scan.request_start()
    wait(application, lambda: window.scan.live is not None and sum(window.scan.live.lines_read) > 700, 180)
    pump(application, 1.2)
    window.grab().save(str(out / "gui-scan-live.png"))
    window.scan.request_abort()
    wait(application, lambda: not window.controller.scanning, 60)
    pump(application, 0.5)
    window.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "images")
