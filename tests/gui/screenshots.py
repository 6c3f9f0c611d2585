"""Screenshots of the main views for docs/gui.md: ``python -m tests.gui.screenshots [OUT_DIR [NAME ...]]`` (default
docs/images), best under Xvfb (``xvfb-run -s "-screen 0 1920x1080x24" ...``). Renders a whole synthetic demo wafer
with its EL reference (about a minute), exports it, runs a demo scan on the virtual station for a few seconds, and
saves gui-*.png. With NAMEs (``gui-recipe-form gui-scan-1366x768`` …) only those are saved, and the demo wafer is
not rendered unless one of its views (:data:`REVIEW_VIEWS`) is asked for. The station's data directory
($PLMAPPER_HOME: password, audit log) and the exports are in a temporary folder."""

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


REVIEW_VIEWS = {
    "gui-review-bins",
    "gui-review-ratio-histogram",
    "gui-review-zoom-defect",
    "gui-chip-details",
    "gui-chip-details-el",
    "gui-compare-pl-el",
    "gui-compare-side-by-side",
    "gui-review-pareto",
    "gui-export",
    "gui-reanalyse",
    "gui-review-1366x768",
}
"""The views that need the rendered demo wafer."""


class Shots:
    """Saves the screenshots asked for (all when ``names`` is empty) into ``out``."""

    def __init__(self, out: Path, names: set[str]) -> None:
        self.out, self.names = out, names

    def wanted(self, name: str) -> bool:
        return not self.names or name in self.names

    def save(self, name: str, widget) -> None:
        if self.wanted(name):
            widget.grab().save(str(self.out / f"{name}.png"))

    def save_screen(self, name: str, application: QApplication) -> None:
        if self.wanted(name):
            application.primaryScreen().grabWindow(0).save(str(self.out / f"{name}.png"))


def main(out: Path, names: list[str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="plmapper-shots-"))
    try:
        shoot(Shots(out, set(names or ())), work)
    finally:  # the demo wafer, the demo scan and the exports take several hundred MB
        shutil.rmtree(work, ignore_errors=True)


def shoot(shots: Shots, work: Path) -> None:
    os.environ["PLMAPPER_HOME"] = str(work / "home")
    set_engineer_password("engineer secret", user="admin", cost=ScryptCost(n_log2=12, r=8, p=1))
    application = QApplication.instance() or QApplication([])
    settings = QSettings(str(work / "gui.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, station_file=DEFAULT_STATION)
    window.resize(1920, 1050)
    window.show()
    if any(shots.wanted(name) for name in REVIEW_VIEWS):
        shoot_review(shots, application, window, work)
    shoot_scan(shots, application, window, work)
    window.close()


def shoot_review(shots: Shots, application: QApplication, window: MainWindow, work: Path) -> None:
    """Review, chip details, Compare, export and analysing again, on a whole rendered demo wafer."""
    scan_path = make_review_scan(work / "W01-demo.h5", lines=slice(None), spectra=40)
    window.open_file(scan_path)
    wait(application, lambda: window.review.image is not None and window.review.defect_model.rowCount() > 0)
    pump(application, 1.0)
    shots.save("gui-review-bins", window)
    window.review.choose_layer("efficiency_ratio")
    wait(application, lambda: window.review.layer.key == "efficiency_ratio")
    window.review.side_tabs.setCurrentIndex(1)
    pump(application, 0.5)
    shots.save("gui-review-ratio-histogram", window)
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
    shots.save("gui-review-zoom-defect", window)
    with_spectrum = window.review.document._scan.spectra()[5]
    window.review.open_chip(with_spectrum["col"], with_spectrum["row"])
    wait(application, lambda: window.review.chip_dialog is not None)
    pump(application, 0.5)
    shots.save("gui-chip-details", window.review.chip_dialog)
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
    shots.save("gui-chip-details-el", window.review.chip_dialog)
    window.review.chip_dialog.close()

    # compare: PL prediction vs EL reference as a difference map, then two maps side by side
    window.compare_pl_el()
    wait(application, lambda: window.compare.counts is not None and window.compare.pane_a.image is not None)
    pump(application, 0.8)
    shots.save("gui-compare-pl-el", window)
    compare = window.compare
    compare.side_by_side.setChecked(True)
    wait(
        application,
        lambda: compare.pane_a.image is not None and compare.pane_b.image is not None and compare.counts is not None,
    )
    edge = np.argwhere(compare.pane_a.image == 1)
    row, col = (int(v) for v in edge[len(edge) // 3])
    compare.map_a.centre_on(col, row, chips_across=90)
    pump(application, 0.8)
    shots.save("gui-compare-side-by-side", window)
    window.tabs.setCurrentWidget(window.review)
    window.review.side_tabs.setCurrentIndex(2)
    window.review.map.fit()
    pump(application, 0.3)
    shots.save("gui-review-pareto", window.review.side_splitter)
    window.review.side_tabs.setCurrentIndex(0)

    # exporting the open file, and analysing it again with other settings (one field wrong: shown on it)
    window.export_file()
    window.export_dialog.folder_edit.setText(str(work / "exports"))
    pump(application, 0.5)
    shots.save("gui-export", window.export_dialog)
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
    shots.save("gui-reanalyse", dialog)
    dialog.reject()

    # the smaller screen
    window.tabs.setCurrentWidget(window.review)
    window.resize(1366, 740)
    pump(application, 0.8)
    shots.save("gui-review-1366x768", window)
    window.resize(1920, 1050)


def shoot_scan(shots: Shots, application: QApplication, window: MainWindow, work: Path) -> None:
    """Logging in, the Scan tab (also at 1366 × 768), the recipe form, the Station tab and a demo scan."""

    # logging in as engineer: the dialog over the window (the whole screen is grabbed to show both)
    window.tabs.setCurrentWidget(window.scan)
    window.login()
    window.login_dialog.user.setText("bob")
    window.login_dialog.password.setText("wrong password")
    window.login_dialog.submit()
    wait(application, lambda: window.login_dialog.buttons.isEnabled() and window.login_dialog.message.text())
    pump(application, 0.5)
    shots.save_screen("gui-login", application)
    window.login_dialog.password.setText("engineer secret")
    window.login_dialog.submit()
    wait(application, lambda: window.access.session.is_engineer)
    pump(application, 0.5)
    shots.save("gui-scan-engineer", window)
    # the recipe form of an engineer with two fields wrong: each problem on its field, Save off, no plan
    form = window.scan.edit_recipe_file()
    for path, text in (("excitation.powers_w", "0.02, 0.0005"), ("sampling.sample_rate_hz", "500")):
        form.editors[path].widget.setText(text)
        form.editors[path].widget.textEdited.emit(text)
    form.wait_checked()
    wait(application, form.is_checked)
    pump(application, 0.3)
    form.scroll.ensureWidgetVisible(form.editors["sampling.sample_rate_hz"].widget, 0, 80)
    pump(application, 0.5)
    shots.save("gui-recipe-form-problem", form)
    form.load(form.path)  # the file's values again: valid, with the plan
    form.wait_checked()
    wait(application, form.is_checked)
    form.scroll.verticalScrollBar().setValue(0)
    pump(application, 0.5)
    shots.save("gui-recipe-form", form)
    form.done(0)
    window.access.logout()
    # an operator's Scan tab on the smaller screen: the column scrolls, the plan's headline and Start stay in view
    window.resize(1366, 740)
    pump(application, 0.8)
    shots.save("gui-scan-1366x768", window)
    window.resize(1920, 1050)
    window.tabs.setCurrentWidget(window.review)

    # station and a demo scan, a few seconds in
    window.tabs.setCurrentWidget(window.station)
    window.station.toggle_connection()
    wait(application, lambda: window.controller.is_connected, 60)
    window.controller.set_laser_power(0.002)
    window.controller.set_emission(True)
    pump(application, 1.5)
    shots.save("gui-station", window)
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
    shots.save("gui-scan-live", window)
    window.scan.request_abort()
    wait(application, lambda: not window.controller.scanning, 60)
    pump(application, 0.5)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "images", sys.argv[2:])
