"""The main window: Review, Compare, Scan and Station tabs, menus and shortcuts, progress with Cancel, the role
(operator or engineer) with log-in and log-out, saved layout."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTabWidget,
)

from app.gui.access import AccessController, LoginDialog
from app.gui.compare import ComparePanel
from app.gui.dialogs import (
    AuditLogDialog,
    ChipIndexDialog,
    ClassifyDialog,
    ClassifyRequest,
    FileKind,
    ModelChoice,
    SettingsEditor,
)
from app.gui.mapdata import TaskCancelled
from app.gui.review import ReviewPanel
from app.gui.scanpanel import ScanPanel
from app.gui.station import StationController
from app.gui.stationpanel import StationPanel
from app.gui.tasks import DocumentKeeper, TaskRunner
from inspection.access import AuditAction, AuditLog, Permission, Session, audit
from inspection.bins import DEFAULT_BIN_TABLE
from inspection.pipeline import analyze_scan
from inspection.wafer import Placement

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
DEFAULT_STATION = RESOURCES / "stations" / "virtual.toml"
RECENT_MAX = 8
POLL_INTERVAL_MS = 500

SHORTCUTS = [
    ("Ctrl+O", "Open a scan file"),
    ("Ctrl+W", "Close the scan file"),
    ("Ctrl+Shift+A", "Analyse the open scan file"),
    ("Ctrl+Shift+C", "Classify the open scan file again (another model, the rules)"),
    ("Ctrl+1 / Ctrl+2 / Ctrl+3 / Ctrl+4", "Review / Compare / Scan / Station tab"),
    ("Home", "Whole wafer"),
    ("Ctrl+J", "Show a chip by its index (Review)"),
    ("Ctrl+G", "Move the stage to a chip by its index"),
    ("Ctrl+E / Ctrl+Shift+E", "Log in as engineer / log out"),
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
        self.keeper = DocumentKeeper(self.runner)
        self.access = AccessController(self.runner, self)
        self.controller = StationController(self)
        station_file = station_file or Path(self.settings.value("station/file", str(DEFAULT_STATION)))
        recipes = sorted((RESOURCES / "recipes").glob("*.toml"))
        self.review = ReviewPanel(self.runner, keeper=self.keeper)
        self.compare = ComparePanel(self.keeper)
        self.scan = ScanPanel(self.controller, self.runner, recipes, access=self.access)
        self.station = StationPanel(self.controller, station_file, access=self.access)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("mainTabs")
        self.tabs.addTab(self.review, "Review")
        self.tabs.addTab(self.compare, "Compare")
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
        self.review.classify_requested.connect(self.classify_file)
        self.review.document_changed.connect(self._document_changed)
        self.review.document_changed.connect(self.compare.set_document)
        self.compare.chip_requested.connect(self.review.open_chip)
        self.station.go_to_chip_requested.connect(self.move_to_chip)
        self.access.failed.connect(self.show_error)
        self.access.changed.connect(self._session_changed)
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
        self.role_label = QLabel("")
        self.role_label.setObjectName("roleLabel")
        self.login_button = QPushButton("Log in as engineer…")
        self.login_button.setObjectName("loginButton")
        self.login_button.clicked.connect(self.toggle_login)
        bar.addPermanentWidget(self.role_label)
        bar.addPermanentWidget(self.login_button)
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
        self._action(file_menu, "C&lassify scan file…", self.classify_file, "Ctrl+Shift+C", "classifyAction")
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, "Ctrl+Q")
        view = bar.addMenu("&View")
        for index, name in enumerate(("Review", "Compare", "Scan", "Station")):
            self._action(view, name, lambda _=False, i=index: self.tabs.setCurrentIndex(i), f"Ctrl+{index + 1}")
        view.addSeparator()
        self._action(view, "&Whole wafer", self.review.map.fit, "Home")
        self._action(view, "&Previous layer", lambda: self._step_layer(-1), "Ctrl+Up")
        self._action(view, "&Next layer", lambda: self._step_layer(1), "Ctrl+Down")
        self._action(view, "&Go to chip index…", self.show_chip, "Ctrl+J", "showChipAction")
        self._action(view, "PL prediction vs &EL reference", self.compare_pl_el, "", "plVsElAction")
        station = bar.addMenu("&Station")
        self._action(station, "&Connect / disconnect", self.station.toggle_connection, "Ctrl+K")
        self._action(station, "&Go to chip…", self.move_to_chip, "Ctrl+G", "moveToChipAction")
        self._action(station, "&Laser off", self.controller.laser_off, "Ctrl+L", "laserOffAction")
        scan = bar.addMenu("S&can")
        self._action(scan, "&Start or resume", self.scan.request_start, "F5")
        self._action(scan, "&Pause / resume", self.scan.toggle_pause, "F6")
        self._action(scan, "&Abort", self.confirm_abort, "F8")
        access = bar.addMenu("&Access")
        access.setToolTipsVisible(True)
        self.login_action = self._action(access, "&Log in as engineer…", self.login, "Ctrl+E", "loginAction")
        self.logout_action = self._action(access, "Log &out", self.access.logout, "Ctrl+Shift+E", "logoutAction")
        access.addSeparator()
        for text, kind, name in (
            ("Edit &recipe file…", FileKind.RECIPE, "editRecipeAction"),
            ("Edit &station file…", FileKind.STATION, "editStationAction"),
            ("Edit &bin table…", FileKind.BIN_TABLE, "editBinTableAction"),
        ):
            action = self._action(access, text, lambda _=False, k=kind: self.edit_settings(k), None, name)
            self.access.gate(action, kind.permission, f"{text.replace('&', '').rstrip('…')} (audited)")
        deploy = self._action(access, "&Deploy model…", self.deploy_model_file, None, "deployAction")
        self.access.gate(deploy, Permission.DEPLOY_MODEL, "Make a model file the station's current model (audited)")
        access.addSeparator()
        self._action(access, "Audit &log", self.show_audit_log, None, "auditLogAction")
        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "&Keyboard shortcuts", self.show_shortcuts, "F1")
        self._fill_recent()
        self._session_changed(self.access.session)

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

    def open_file(self, path: str | Path, layer: str | None = None) -> None:
        """Open a scan file in the Review tab (in the background), showing ``layer`` if it has it."""
        path = Path(path)
        self.settings.setValue("files/last_dir", str(path.parent))
        self.tabs.setCurrentWidget(self.review)
        self.review.open_path(path, done=lambda document: self._opened(path, document, layer))

    def _opened(self, path: Path, document, layer: str | None = None) -> None:
        keys = {entry.key for entry in document.layers} if document is not None else set()
        if layer in keys and layer != document.default_layer.key:
            self.review.choose_layer(layer)
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
        readers = self._release(target)  # the analysis writes into the file: no reader may hold it

        def work(progress, cancel):
            _wait_closed(readers, cancel)
            return analyze_scan(target, progress=progress)

        self.runner.start(work, f"Analysing {target.name}", done=lambda *_: self.open_file(target))

    def _release(self, path: Path) -> list:
        """Let go of every open document of ``path`` (Review, Compare); returns them, to wait until they are closed."""
        documents = [self.review.document] if self.review.document is not None else []
        documents = [document for document in documents if document.path == path]
        if documents:
            self.review.close_document()
        if self.compare.document_b is not None and self.compare.document_b.path == path:
            documents.append(self.compare.document_b)
            self.compare.release(path)
        return documents

    # -- classification ----------------------------------------------------------------------------------------------
    def classify_file(self, path: str | bool | None = None) -> None:
        """Ask which classifier, then classify ``path`` (default: the open file) again in the background."""
        if not isinstance(path, str):
            if self.review.document is None:
                return
            path = str(self.review.document.path)
        dialog = ClassifyDialog(Path(path).name, self.access, self.runner, self)
        self.classify_dialog = dialog
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        self.run_classification(Path(path), dialog.request())

    def run_classification(self, path: Path, request: ClassifyRequest) -> None:
        """Classify ``path`` with the chosen classifier (deploying the model file first if asked and allowed); the
        map shows the new classification afterwards. Cancel leaves the file as it was."""
        if request.deploy and not self.access.require(Permission.DEPLOY_MODEL):
            return
        document = self.review.document
        table = document.bin_table if document is not None and document.path == path else None
        layer = self.review.layer.key if self.review.layer is not None and document is not None else None
        session = self.access.session
        readers = self._release(path)

        def work(progress, cancel):
            from inspection.bins import default_bin_table  # noqa: PLC0415 - the classifier imports scikit-learn
            from inspection.classify import ClassifyOptions, classify_scan  # noqa: PLC0415
            from inspection.deployment import deployed_model  # noqa: PLC0415
            from inspection.model import load_model  # noqa: PLC0415

            model = None
            if request.choice is ModelChoice.FILE:
                assert request.model_file is not None
                progress(0.0, f"loading {request.model_file.name}")
                model = load_model(request.model_file)
                if request.deploy:
                    _deploy(request.model_file, session)
            elif request.choice is ModelChoice.DEPLOYED:
                model = deployed_model()
                if model is None:
                    raise ValueError(
                        "no model is deployed on this station: choose the rule layer or a model file (an engineer "
                        "deploys models)"
                    )
            _wait_closed(readers, cancel)

            def report(fraction: float, message: str) -> None:
                if cancel.is_set():
                    raise TaskCancelled  # before anything is written: the file keeps its classification
                progress(fraction, message)

            options = ClassifyOptions(bin_table=table or default_bin_table(), model=model)
            classification = classify_scan(path, options, progress=report)
            audit(
                AuditAction.CLASSIFIED,
                session,
                {"file": str(path), "classifier": classification.classifier, "counts": classification.bin_counts()},
            )
            return classification.classifier

        def done(classifier) -> None:
            name = classifier.get("name", classifier.get("kind", "?"))
            self.statusBar().showMessage(f"{path.name} classified again ({name})", 15000)

        self.runner.start(work, f"Classifying {path.name}", done=done, always=lambda: self.open_file(path, layer))

    def deploy_model_file(self) -> None:
        """Choose a model file and make it the station's current model (engineers; audited)."""
        if not self.access.require(Permission.DEPLOY_MODEL):
            return
        folder = str(self.settings.value("files/last_model_dir", str(Path.cwd())))
        chosen, _ = QFileDialog.getOpenFileName(self, "Deploy model", folder, "Models (*.skops)")
        if chosen:
            self.settings.setValue("files/last_model_dir", str(Path(chosen).parent))
            self.deploy_model(Path(chosen))

    def deploy_model(self, path: Path) -> None:
        session = self.access.session

        def work(progress, cancel):
            return _deploy(path, session)

        def done(record) -> None:
            self.statusBar().showMessage(f"deployed {record['name']!r} ({record['model_id']})", 15000)

        self.runner.start(work, f"Deploying {path.name}", done=done)

    # -- engineers ---------------------------------------------------------------------------------------------------
    def login(self) -> None:
        if self.access.session.is_engineer:
            return
        self.login_dialog = LoginDialog(self.access, self)
        self.login_dialog.open()

    def toggle_login(self) -> None:
        if self.access.session.is_engineer:
            self.access.logout()
        else:
            self.login()

    def _session_changed(self, session: Session) -> None:
        engineer = session.is_engineer
        self.role_label.setText(self.access.describe())
        self.role_label.setStyleSheet(
            "background:#1f6fb2; color:white; font-weight:bold; padding:2px 8px; border-radius:3px;"
            if engineer
            else "padding:2px 8px;"
        )
        self.login_button.setText("Log out" if engineer else "Log in as engineer…")
        self.login_button.setToolTip(
            "End the engineer session (Ctrl+Shift+E)"
            if engineer
            else "Engineers edit recipes, the station, bin tables and deploy models (Ctrl+E)"
        )
        self.login_action.setEnabled(not engineer)
        self.logout_action.setEnabled(engineer)

    def edit_settings(self, kind: FileKind) -> None:
        """Open a recipe, station file or bin table in the editor (engineers)."""
        if not self.access.require(kind.permission):
            return
        if kind is FileKind.RECIPE:
            self.scan.edit_recipe_file()
            return
        if kind is FileKind.STATION:
            self.station.edit_station_file()
            return
        folder = str(DEFAULT_BIN_TABLE.parent)
        chosen, _ = QFileDialog.getOpenFileName(self, "Bin table", folder, "Bin tables (*.toml)")
        if chosen:
            SettingsEditor(FileKind.BIN_TABLE, Path(chosen), self.access, self).exec()

    def show_audit_log(self) -> None:
        AuditLogDialog(self.access.log or AuditLog(), self).exec()

    # -- chips by index ----------------------------------------------------------------------------------------------
    def show_chip(self) -> None:
        """Zoom the review map to a chip by its index."""
        document = self.review.document
        if document is None:
            self.statusBar().showMessage("Open a scan file first.", 5000)
            return
        rows, cols = document.shape
        dialog = ChipIndexDialog("Go to chip", cols, rows, parent=self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.tabs.setCurrentWidget(self.review)
            self.review.go_to_chip(*dialog.chip())

    def move_to_chip(self) -> None:
        """Move the stage so that the spot is on a chip picked by index."""
        if not self.controller.is_connected:
            self.show_error("Go to chip", "The station is not connected: connect it first (Station ▸ Connect).")
            return
        target = self.chip_target()
        if target is None:
            self.show_error("Go to chip", "Open a scan file, or choose a valid recipe in the Scan tab, first.")
            return
        recipe, _, note = target
        layout = recipe.layout()
        dialog = ChipIndexDialog("Move the stage to a chip", layout.column_count, layout.row_count, note, self)
        self.chip_index_dialog = dialog
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.move_stage_to_chip(*dialog.chip())

    def chip_target(self):
        """The recipe, placement and an explanation for moving to chips: the open scan's alignment if it has one,
        else the Scan tab's recipe at the nominal placement."""
        document = self.review.document
        if document is not None:
            alignment = document.alignment
            if alignment is not None:
                placement = Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
                return document.recipe, placement, f"Through the alignment of {document.path.name} (the wafer must "
                "not have moved since it was scanned)."
            return document.recipe, Placement(), f"{document.path.name} holds no alignment: nominal placement."
        if self.scan.recipe is not None:
            return (
                self.scan.recipe,
                Placement(),
                (
                    "No scan open: the nominal placement of the recipe (centred, not rotated); the wafer's real load "
                    "offset is known only after an alignment."
                ),
            )
        return None

    def move_stage_to_chip(self, col: int, row: int) -> bool:
        target = self.chip_target()
        if target is None:
            return False
        recipe, placement, _ = target
        layout = recipe.layout()
        if not layout.in_box(col, row):
            return False
        x_um, y_um = layout.chip_center_um(col, row)
        stage_x, stage_y = placement.wafer_to_stage(float(x_um), float(y_um))
        self.statusBar().showMessage(f"moving to chip ({col}, {row}): stage ({stage_x:,.1f}, {stage_y:,.1f}) µm", 8000)
        future = self.controller.move_to_point(
            float(stage_x), float(stage_y), safe_z_um=recipe.focus.safe_z_um, focus_z_um=recipe.focus.focus_z_um
        )
        return future is not None

    def compare_pl_el(self) -> None:
        self.tabs.setCurrentWidget(self.compare)
        self.compare.show_pl_vs_el()

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
        return [self.review.splitter, self.review.side_splitter, self.scan.splitter, self.compare.splitter]

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
        self.compare.close_documents()
        self.access.logout()
        event.accept()


def _wait_closed(documents: list, cancel, timeout_s: float = 60.0) -> None:
    """Wait (on a worker) until the readers of a file a task is about to write have closed it."""
    for document in documents:
        waited = 0.0
        while not document.closed.wait(0.1):
            waited += 0.1
            if cancel.is_set():
                raise TaskCancelled
            if waited > timeout_s:
                raise OSError(f"{document.path}: still being read; try again in a moment")


def _deploy(path: Path, session: Session) -> dict:
    """Check a model file, write the audit entry, deploy it (on a worker: loading imports scikit-learn)."""
    from inspection.deployment import deploy_model  # noqa: PLC0415
    from inspection.model import load_model  # noqa: PLC0415

    session.require(Permission.DEPLOY_MODEL)
    model = load_model(path)  # refused here, before the audit entry, if it is no usable model
    audit(
        AuditAction.MODEL_DEPLOYED,
        session,
        {"file": str(path), "model_id": model.model_id, "name": model.name, "sha256": model.sha256},
    )
    return deploy_model(path, user=session.user)
