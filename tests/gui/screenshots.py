"""Screenshots of the main views for docs/gui.md: ``python -m tests.gui.screenshots [OUT_DIR]`` (default
docs/images), best under Xvfb (``xvfb-run -s "-screen 0 1920x1080x24" ...``). Renders a whole synthetic demo wafer
with its EL reference (about a minute), exports it, runs a demo scan on the virtual station for a few seconds, and
saves gui-*.png. The station's data directory ($PLMAPPER_HOME: password, audit log) and the exports are in a
temporary folder."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

import app.gui  # noqa: F401 - the PySide6 guard
from app.gui.mainwindow import DEFAULT_STATION, MainWindow
from inspection.access import ScryptCost, set_engineer_password
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
    try:
        shoot(out, work)
    finally:  # the demo wafer, the demo scan and the exports take several hundred MB
        shutil.rmtree(work, ignore_errors=True)


def shoot(out: Path, work: Path) -> None:
    os.environ["PLMAPPER_HOME"] = str(work / "home")
    set_engineer_password("engineer secret", user="admin", cost=ScryptCost(n_log2=12, r=8, p=1))
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
    # a chip that fails EL, with its EL reference values
    records = window.review.document.el_records()
    with_spectrum = {(int(r["col"]), int(r["row"])) for r in window.review.document._scan.spectra()}
    leaky = [
        (int(record["col"]), int(record["row"]))
        for record in records[records["fail_mode"] == 3]
        if window.review.document.layout.chip_usable(int(record["col"]), int(record["row"]))
    ]
    chip = next((c for c in leaky if c in with_spectrum), leaky[len(leaky) // 2])
    window.review.open_chip(*chip)
    wait(application, lambda: (window.review.chip_dialog.details.col, window.review.chip_dialog.details.row) == chip)
    pump(application, 0.5)
    window.review.chip_dialog.grab().save(str(out / "gui-chip-details-el.png"))
    window.review.chip_dialog.close()

    # compare: PL prediction vs EL reference as a difference map, then two maps side by side
    window.compare_pl_el()
    wait(application, lambda: window.compare.counts is not None and window.compare.pane_a.image is not None)
    pump(application, 0.8)
    window.grab().save(str(out / "gui-compare-pl-el.png"))
    compare = window.compare
    compare.side_by_side.setChecked(True)
    wait(application, lambda: compare.pane_b.image is not None and compare.counts is not None)
    edge = np.argwhere(compare.pane_a.image == 1)
    row, col = (int(v) for v in edge[len(edge) // 3])
    compare.map_a.centre_on(col, row, chips_across=90)
    pump(application, 0.8)
    window.grab().save(str(out / "gui-compare-side-by-side.png"))
    window.tabs.setCurrentWidget(window.review)
    window.review.side_tabs.setCurrentIndex(2)
    window.review.map.fit()
    pump(application, 0.3)
    window.review.side_splitter.grab().save(str(out / "gui-review-pareto.png"))
    window.review.side_tabs.setCurrentIndex(0)

    # exporting the open file, and analysing it again with other settings (one field wrong: shown on it)
    window.export_file()
    window.export_dialog.folder_edit.setText(str(work / "exports"))
    pump(application, 0.5)
    window.export_dialog.grab().save(str(out / "gui-export.png"))
    window.export_dialog.export_button.click()
    wait(application, lambda: getattr(window, "export_done_box", None) is not None, 180)
    window.export_done_box.close()
    window.reanalyse_file()
    dialog = window.reanalyse_dialog
    wait(application, lambda: "looking up" not in dialog.classifier_info.text(), 60)
    for name, text in (("drift_exponent", "1.4"), ("core_fraction", "1.5")):
        dialog.fields[name].setText(text)
        dialog.fields[name].textEdited.emit(text)
    pump(application, 0.5)
    dialog.grab().save(str(out / "gui-reanalyse.png"))
    dialog.reject()

    # logging in as engineer: the dialog over the window (the whole screen is grabbed to show both)
    window.tabs.setCurrentWidget(window.scan)
    window.login()
    window.login_dialog.user.setText("bob")
    window.login_dialog.password.setText("wrong password")
    window.login_dialog.submit()
    wait(application, lambda: window.login_dialog.buttons.isEnabled() and window.login_dialog.message.text())
    pump(application, 0.5)
    application.primaryScreen().grabWindow(0).save(str(out / "gui-login.png"))
    window.login_dialog.password.setText("engineer secret")
    window.login_dialog.submit()
    wait(application, lambda: window.access.session.is_engineer)
    pump(application, 0.5)
    window.grab().save(str(out / "gui-scan-engineer.png"))
    window.access.logout()
    window.tabs.setCurrentWidget(window.review)

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
