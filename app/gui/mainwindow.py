"""The main window: Review, Scan and Station tabs, menus and shortcuts, progress with Cancel, saved layout."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTabWidget,
)

from app.gui.review import ReviewPanel
from app.gui.scanpanel import ScanPanel
from app.gui.station import StationController
from app.gui.stationpanel import StationPanel
from app.gui.tasks import TaskRunner
from inspection.pipeline import analyze_scan

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
DEFAULT_STATION = RESOURCES / "stations" / "virtual.toml"
RECENT_MAX = 8
POLL_INTERVAL_MS = 500

SHORTCUTS = [
    ("Ctrl+O", "Open a scan file"),
    ("Ctrl+W", "Close the scan file"),
    ("Ctrl+Shift+A", "Analyse the open scan file"),
    ("Ctrl+1 / Ctrl+2 / Ctrl+3", "Review / Scan / Station tab"),
    ("Home", "Whole wafer"),
    ("Ctrl+Up / Ctrl+Down", "Previous / next map layer"),
    ("Ctrl+K", "Connect or disconnect the station"),
    ("Arrow keys, Page Up/Down", "Jog X/Y, Z (jog pad focused)"),
    ("Ctrl+L", "Laser off (pauses a running scan)"),
    ("F5", "Start (or resume) the scan"),
    ("F6", "Pause / resume the scan"),
    ("F8", "Abort the scan (after the current line; resumable)"),
    ("Ctrl+Q", "Quit"),
]


class MainWindow(QMainWindow):
    """The operator's window. ``settings`` defaults to the user's plmapper settings (tests pass their own)."""

    def __init__(self, settings: QSettings | None = None, station_file: Path | None = None) -> None:
        super().__init__()
        self.settings = settings or QSettings("plmapper", "plmapper-gui")
        self.setWindowTitle("plmapper")
        self.last_error: tuple[str, str] | None = None
        self.runner = TaskRunner(self)
        self.controller = StationController(self)
        station_file = station_file or Path(self.settings.value("station/file", str(DEFAULT_STATION)))
        recipes = sorted((RESOURCES / "recipes").glob("*.toml"))
        self.review = ReviewPanel(self.runner)
        self.scan = ScanPanel(self.controller, self.runner, recipes)
        self.station = StationPanel(self.controller, station_file)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("mainTabs")
        self.tabs.addTab(self.review, "Review")
        self.tabs.addTab(self.scan, "Scan")
        self.tabs.addTab(self.station, "Station")
        self.setCentralWidget(self.tabs)
        self._status_bar()
        self._menus()
        self.runner.error.connect(self.show_error)
        self.controller.failed.connect(self.show_error)
        self.controller.scan_started.connect(lambda *_: self.station.set_scanning(True))
        self.controller.scan_finished.connect(lambda *_: self.station.set_scanning(False))
        self.controller.connected.connect(lambda name, _: self.statusBar().showMessage(f"connected to {name}", 5000))
        self.review.resume_requested.connect(self.resume_scan_file)
        self.review.analyse_requested.connect(self.analyse_file)
        self.review.document_changed.connect(self._document_changed)
        self.scan.scan_done.connect(self._scan_done)
        self._poll_timer = QTimer(self, interval=POLL_INTERVAL_MS)
        self._poll_timer.timeout.connect(self.controller.poll)
        self._poll_timer.start()
        self._restore()

    # -- chrome ------------------------------------------------------------------------------------------------------
    def _status_bar(self) -> None:
        bar = self.statusBar()
        self.task_label = QLabel("")
        self.task_label.setObjectName("taskLabel")
        self.task_progress = QProgressBar()
        self.task_progress.setObjectName("taskProgress")
        self.task_progress.setRange(0, 1000)
        self.task_progress.setMaximumWidth(240)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.clicked.connect(self.runner.cancel_visible)
        for widget in (self.task_label, self.task_progress, self.cancel_button):
            bar.addPermanentWidget(widget)
            widget.hide()
        self.runner.busy.connect(self._busy)
        self.runner.progress.connect(self._task_progress)

    def _busy(self, busy: bool) -> None:
        for widget in (self.task_label, self.task_progress, self.cancel_button):
            widget.setVisible(busy)

    def _task_progress(self, message: str, fraction: float) -> None:
        self.task_label.setText(message)
        self.task_progress.setValue(int(fraction * 1000))

    def _action(self, menu, text: str, slot, shortcut: str | None = None, name: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        if name:
            action.setObjectName(name)
        menu.addAction(action)
        return action

    def _menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(file_menu, "&Open scan file…", self.choose_file, "Ctrl+O", "openAction")
        self.recent_menu = file_menu.addMenu("Open &recent")
        self._action(file_menu, "&Close scan file", self.review.close_document, "Ctrl+W")
        self._action(file_menu, "&Analyse scan file", self.analyse_file, "Ctrl+Shift+A")
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, "Ctrl+Q")
        view = bar.addMenu("&View")
        for index, name in enumerate(("Review", "Scan", "Station")):
            self._action(view, name, lambda _=False, i=index: self.tabs.setCurrentIndex(i), f"Ctrl+{index + 1}")
        view.addSeparator()
        self._action(view, "&Whole wafer", self.review.map.fit, "Home")
        self._action(view, "&Previous layer", lambda: self._step_layer(-1), "Ctrl+Up")
        self._action(view, "&Next layer", lambda: self._step_layer(1), "Ctrl+Down")
        station = bar.addMenu("&Station")
        self._action(station, "&Connect / disconnect", self.station.toggle_connection, "Ctrl+K")
        self._action(station, "&Laser off", self.controller.laser_off, "Ctrl+L", "laserOffAction")
        scan = bar.addMenu("S&can")
        self._action(scan, "&Start or resume", self.scan.request_start, "F5")
        self._action(scan, "&Pause / resume", self.scan.toggle_pause, "F6")
        self._action(scan, "&Abort", self.confirm_abort, "F8")
        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "&Keyboard shortcuts", self.show_shortcuts, "F1")
        self._fill_recent()

    def _step_layer(self, step: int) -> None:
        combo = self.review.layer_combo
        if combo.count():
            combo.setCurrentIndex((combo.currentIndex() + step) % combo.count())

    # -- messages ----------------------------------------------------------------------------------------------------
    def show_error(self, title: str, text: str) -> None:
        """A non-blocking message box with what happened and what to do (never a traceback)."""
        self.last_error = (title, text)
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, self)
        box.setObjectName("errorBox")
        box.open()

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td><b>{keys}</b></td><td>&nbsp;&nbsp;{what}</td></tr>" for keys, what in SHORTCUTS)
        QMessageBox.information(self, "Keyboard shortcuts", f"<table>{rows}</table>")

    def confirm_abort(self) -> None:
        if not self.controller.scanning:
            return
        answer = QMessageBox.question(
            self, "Abort the scan", "Stop the scan after the current line? The file stays resumable."
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.scan.request_abort()

    # -- files -------------------------------------------------------------------------------------------------------
    def choose_file(self) -> None:
        folder = str(self.settings.value("files/last_dir", str(Path.cwd())))
        path, _ = QFileDialog.getOpenFileName(self, "Open scan file", folder, "Scan files (*.h5);;All files (*)")
        if path:
            self.open_file(path)

    def open_file(self, path: str | Path) -> None:
        """Open a scan file in the Review tab (in the background)."""
        path = Path(path)
        self.settings.setValue("files/last_dir", str(path.parent))
        self.tabs.setCurrentWidget(self.review)
        self.review.open_path(path, done=lambda document: self._opened(path, document))

    def _opened(self, path: Path, document) -> None:
        recent = [entry for entry in self._recent() if entry != str(path)]
        self.settings.setValue("files/recent", [str(path), *recent][:RECENT_MAX])
        self._fill_recent()
        if document is not None and document.resumable:
            self.statusBar().showMessage(
                f"{path.name} stopped before the end ({document.status.value}): it can be resumed (see above the map)",
                15000,
            )

    def _recent(self) -> list[str]:
        value = self.settings.value("files/recent", [])
        if isinstance(value, str):
            return [value]
        return [str(entry) for entry in (value or [])]

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        entries = self._recent()
        for entry in entries:
            action = self.recent_menu.addAction(entry)
            action.triggered.connect(lambda _=False, p=entry: self.open_file(p))
        self.recent_menu.setEnabled(bool(entries))

    def _document_changed(self, document) -> None:
        self.setWindowTitle(f"plmapper: {document.describe()}" if document is not None else "plmapper")

    def resume_scan_file(self, path: str) -> None:
        """Prepare the Scan tab to resume the stopped scan in ``path`` (the Review lets go of the file: the scan writes
        it)."""
        if self.review.document is not None and self.review.document.path == Path(path):
            self.review.close_document()
        self.scan.offer_resume(Path(path))
        self.tabs.setCurrentWidget(self.scan if self.controller.is_connected else self.station)
        if not self.controller.is_connected:
            self.statusBar().showMessage("Connect the station, then resume the scan in the Scan tab (F5).", 10000)

    def analyse_file(self, path: str | bool | None = None) -> None:
        """Run the analysis on ``path`` (default: the open file) in the background, then show it."""
        if not isinstance(path, str):  # a menu action passes its checked state
            if self.review.document is None:
                return
            path = str(self.review.document.path)
        target = Path(path)
        self.review.close_document()  # the analysis writes into the file: no reader may hold it

        def work(progress, cancel):
            return analyze_scan(target, progress=progress)

        self.runner.start(work, f"Analysing {target.name}", done=lambda *_: self.open_file(target))

    def _scan_done(self, path: str, status: str) -> None:
        """Show the scan just stopped in the Review tab: its banner offers the analysis (or the resume)."""
        if status != "not started" and Path(path).exists():
            self.open_file(path)
            self.statusBar().showMessage(f"scan {status}: {Path(path).name}", 15000)

    # -- settings ----------------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1600, 960)
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        for splitter in self._splitters():
            sizes = self.settings.value(f"splitters/{splitter.objectName()}")
            if isinstance(sizes, QByteArray):
                splitter.restoreState(sizes)
        recipe = self.settings.value("scan/recipe")
        if recipe and Path(str(recipe)).exists():
            self.scan.select_recipe(Path(str(recipe)))
        else:
            self.scan.load_recipe(self.scan.recipe_combo.currentData())
        folder = self.settings.value("scan/folder")
        if folder:
            self.scan.folder.setText(str(folder))
        operator = self.settings.value("scan/operator")
        if operator:
            self.scan.operator.setText(str(operator))
        self.tabs.setCurrentIndex(int(self.settings.value("window/tab", 0)))

    def _splitters(self) -> list:
        return [self.review.splitter, self.review.side_splitter, self.scan.splitter]

    def save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("window/tab", self.tabs.currentIndex())
        for splitter in self._splitters():
            self.settings.setValue(f"splitters/{splitter.objectName()}", splitter.saveState())
        if self.scan.recipe_path is not None:
            self.settings.setValue("scan/recipe", str(self.scan.recipe_path))
        self.settings.setValue("scan/folder", self.scan.folder.text())
        self.settings.setValue("scan/operator", self.scan.operator.text())
        self.settings.setValue("station/file", self.station.station_file.text())
        self.settings.sync()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        if self.controller.scanning:
            answer = QMessageBox.question(
                self, "A scan is running", "Quit anyway? The scan stops after the current line and stays resumable."
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.save_settings()
        self._poll_timer.stop()
        self.runner.cancel_visible()
        self.runner.wait(10_000)
        self.controller.shutdown()
        self.review.close_document()
        event.accept()
