"""The main window: Review, Compare, Scan and Station tabs, menus and shortcuts, progress with Cancel, the role
(operator or engineer) with log-in and log-out, saved layout; analysing, classifying and exporting the open scan file
in the background, recorded in the scan history as the command line records them (:mod:`inspection.api`)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QKeySequence
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
from app.gui.exporting import ExportCancelled, expected_files, export_job, lot_report_job, run_job
from app.gui.mapdata import ScanDocument, TaskCancelled
from app.gui.resultdialogs import ExportDialog, LotReportDialog, ReanalyseDialog
from app.gui.review import ReviewPanel
from app.gui.scanpanel import ScanPanel
from app.gui.station import StationController
from app.gui.stationpanel import StationPanel
from app.gui.tasks import DocumentKeeper, Task, TaskRunner
from inspection.access import AuditAction, AuditLog, Permission, Session, audit
from inspection.bins import DEFAULT_BIN_TABLE
from inspection.history import Recorder
from inspection.pipeline import AnalysisSettings
from inspection.scanfile import ScanStatus
from inspection.wafer import Placement

log = logging.getLogger("plmapper.gui")

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
DEFAULT_STATION = RESOURCES / "stations" / "virtual.toml"
RECENT_MAX = 8
POLL_INTERVAL_MS = 500

SHORTCUTS = [
    ("Ctrl+O", "Open a scan file"),
    ("Ctrl+W", "Close the scan file"),
    ("Ctrl+Shift+A", "Analyse the open scan file, then classify it (as plmapper analyze)"),
    ("Ctrl+Shift+R", "Analyse the open scan file again with other settings"),
    ("Ctrl+Shift+C", "Classify the open scan file again (another model, the rules)"),
    ("Ctrl+Shift+X", "Export the open scan file (KLARF, E142, CSV, Parquet, PNG, PDF)"),
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

    history_warning = Signal(str)  # the scan history could not be written (from a worker; the work went on)

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
        self.history_warning.connect(self._history_warning)
        self.controller.history_warning.connect(self._history_warning)
        self.controller.failed.connect(self.show_error)
        self.controller.scan_started.connect(lambda *_: self.station.set_scanning(True))
        self.controller.scan_finished.connect(lambda *_: self.station.set_scanning(False))
        self.controller.scan_started.connect(lambda *_: self._update_file_actions())
        self.controller.scan_finished.connect(lambda *_: self._update_file_actions())
        self.controller.connected.connect(lambda name, _: self.statusBar().showMessage(f"connected to {name}", 5000))
        self.review.resume_requested.connect(self.resume_scan_file)
        self.review.analyse_requested.connect(self.analyse_file)
        self.review.classify_requested.connect(self.classify_file)
        self.review.reanalyse_requested.connect(self.reanalyse_file)
        self.review.export_requested.connect(self.export_file)
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
        self._update_file_actions()

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
        self._action(file_menu, "&Analyse and classify scan file", self.analyse_file, "Ctrl+Shift+A", "analyseAction")
        self.reanalyse_action = self._action(
            file_menu, "Analyse a&gain with other settings…", self.reanalyse_file, "Ctrl+Shift+R", "reanalyseAction"
        )
        self._action(file_menu, "C&lassify scan file…", self.classify_file, "Ctrl+Shift+C", "classifyAction")
        file_menu.addSeparator()
        self.export_action = self._action(file_menu, "&Export…", self.export_file, "Ctrl+Shift+X", "exportAction")
        self._action(file_menu, "Lo&t report…", self.lot_report, None, "lotReportAction")
        file_menu.setToolTipsVisible(True)
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
            ("Edit &recipe…", FileKind.RECIPE, "editRecipeAction"),
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
        self._update_file_actions()

    def resume_scan_file(self, path: str) -> None:
        """Prepare the Scan tab to resume the stopped scan in ``path`` (the Review lets go of the file: the scan writes
        it)."""
        if self.review.document is not None and self.review.document.path == Path(path):
            self.review.close_document()
        self.scan.offer_resume(Path(path))
        self.tabs.setCurrentWidget(self.scan if self.controller.is_connected else self.station)
        if not self.controller.is_connected:
            self.statusBar().showMessage("Connect the station, then resume the scan in the Scan tab (F5).", 10000)

    def analyse_file(self, path: str | bool | None = None) -> Task | None:
        """Analyse ``path`` (default: the open file) with the default settings and classify it, as ``plmapper
        analyze`` does, in one background task (:meth:`run_analysis`); then show its bin map. Returns the task (None
        when refused)."""
        if not isinstance(path, str):  # a menu action passes its checked state
            if self.review.document is None:
                return None
            path = str(self.review.document.path)
        return self.run_analysis(Path(path), None, classify=True, layer="bin")

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

    # -- the scan history --------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _recording(self) -> Iterator[Recorder]:
        """A recorder of the scan history for one piece of work (on its worker), as the command line uses one: a
        history that cannot be written is said once in the status bar, the work goes on."""
        recorder = Recorder(True, warn=self._warn_history)
        try:
            yield recorder
        finally:
            recorder.close()

    def _warn_history(self, message: str) -> None:
        with contextlib.suppress(RuntimeError):  # the window is gone
            self.history_warning.emit(message)

    def _history_warning(self, message: str) -> None:
        log.warning("%s", message)
        self.statusBar().showMessage(message, 15000)

    # -- analysing again ---------------------------------------------------------------------------------------------
    def reanalysis_blocked(self, document: ScanDocument | None = None) -> str | None:
        """Why the open scan file (or ``document``) cannot be analysed again; None if it can."""
        document = self.review.document if document is None else document
        if document is None:
            return "Open a scan file first (File ▸ Open, Ctrl+O)."
        name = document.path.name
        if document.status is ScanStatus.RUNNING or self.scan.output_being_written() == document.path.resolve():
            return f"{name} is still being written by a scan: analyse it again once the scan has stopped."
        if not document.has_raw_lines:
            return (
                f"{name} holds no raw lines (an imported map: its results came with the import), so there is nothing "
                "to analyse again. Classify it again instead (Ctrl+Shift+C)."
            )
        return None

    def _update_file_actions(self) -> None:
        reason = self.reanalysis_blocked() if self.review.document is not None else "Open a scan file first."
        tip = reason or "Analyse the open scan file again with other settings, then classify it again (Ctrl+Shift+R)"
        self.reanalyse_action.setEnabled(reason is None)
        self.reanalyse_action.setToolTip(tip)
        self.reanalyse_action.setStatusTip(tip)
        self.review.set_reanalysis_allowed(reason)
        self.export_action.setEnabled(self.review.document is not None)

    def reanalyse_file(self, *_: object) -> None:
        """Ask for the analysis settings, then analyse the open file again (and classify it again)."""
        document = self.review.document
        reason = self.reanalysis_blocked(document)
        if reason is not None or document is None:
            self.show_error("Cannot analyse again", reason or "Open a scan file first.")
            return
        path = document.path
        dialog = ReanalyseDialog(path.name, document.analysis_settings, self.runner, self)
        self.reanalyse_dialog = dialog

        def accepted() -> None:
            settings = dialog.settings()
            if settings is not None:
                self.run_reanalysis(path, settings, classify=dialog.classify_after())

        dialog.accepted.connect(accepted)
        dialog.open()

    def run_reanalysis(self, path: Path, settings: AnalysisSettings, *, classify: bool = True) -> Task | None:
        """Analyse ``path`` again with ``settings``, then (``classify``) classify it again; see
        :meth:`run_analysis`. Shown again on the layer that was shown."""
        path = Path(path)
        document = self.review.document
        same = document is not None and document.path == path
        layer = self.review.layer.key if same and self.review.layer is not None else None
        return self.run_analysis(path, settings, classify=classify, layer=layer, again=True)

    def run_analysis(
        self,
        path: Path,
        settings: AnalysisSettings | None,
        *,
        classify: bool = True,
        layer: str | None = None,
        again: bool = False,
    ) -> Task | None:
        """Analyse ``path`` with ``settings`` (None: the pipeline's defaults) and then, with ``classify``, classify it
        as ``plmapper analyze`` does, with the same functions: ``inspection.api.analyze``, then
        ``inspection.api.classify`` with ``inspection.api.classifier_options("deployed", …)`` (the station's
        deployed model, or the rule layer when none is deployed), keeping the file's bin table if it has one (the
        default table otherwise, as the CLI); the classification is audited. One background task with progress
        (analysis 80 %, classification 20 %) and Cancel, recorded in the scan history; then the file is shown again
        on ``layer``. Returns the task (None when refused: a file being written, or without raw lines). Cancel
        during the analysis keeps the previous results; during the classification, the new results with the
        previous classification (or none), which a message says."""
        path = Path(path)
        document = self.review.document
        same = document is not None and document.path == path
        reason = self.reanalysis_blocked(document) if same else None
        verb = "analyse again" if again else "analyse"
        if reason is not None:
            self.show_error(f"Cannot {verb}", reason)
            return None
        table = document.bin_table if same else None
        had_classification = bool(same and document.has_classification)
        session = self.access.session
        readers = self._release(path)  # the analysis writes into the file: no reader may hold it
        state = {"analysed": False, "classified": False, "failed": False}
        unclassified = (STALE_CLASSIFICATION if had_classification else UNCLASSIFIED).format(name=path.name)

        def work(progress, cancel):
            from inspection import api  # noqa: PLC0415 - imports the classifier (seconds): not on the GUI thread

            options = None
            if classify:  # the model first: a broken deployment is said before anything is written
                progress(0.0, "loading the deployed model")
                options = api.classifier_options("deployed", table)
            _wait_closed(readers, cancel)
            share = 0.8 if classify else 1.0
            with self._recording() as recorder:  # recorded in the scan history as `plmapper analyze` records it
                summary = api.analyze(
                    path, settings=settings, progress=_cancellable(progress, cancel, 0.0, share), record=recorder
                )
                state["analysed"] = True
                if options is None:
                    return summary, None
                classification = api.classify(
                    path, options=options, progress=_cancellable(progress, cancel, share, 1.0 - share), record=recorder
                )
            state["classified"] = True
            audit(
                AuditAction.CLASSIFIED,
                session,
                {"file": str(path), "classifier": classification.classifier, "counts": classification.bin_counts()},
            )
            return summary, classification.classifier

        def done(result) -> None:
            summary, classifier = result
            text = f"{path.name} analysed{' again' if again else ''} in {summary.seconds:.1f} s"
            if classifier is not None:
                name = classifier.get("name", classifier.get("kind", "?"))
                text += f" and classified{' again' if again and had_classification else ''} ({name})"
            self.statusBar().showMessage(text, 15000)

        def failed(title: str, text: str) -> None:
            state["failed"] = True
            if state["analysed"] and classify and not state["classified"]:
                text += f"\n\n{unclassified}"
            self.show_error(title, text)

        def always() -> None:
            # shown again whatever happened (an interrupted analysis leaves the previous results, or none)
            self.open_file(path, layer)
            if state["analysed"] and classify and not state["classified"] and not state["failed"]:
                self.show_error("Classification cancelled", unclassified)

        label = f"Analysing {path.name}{' again' if again else ''}"
        return self.runner.start(work, label, done=done, failed=failed, always=always)

    # -- exports -----------------------------------------------------------------------------------------------------
    def export_file(self, *_: object) -> None:
        """File ▸ Export…: choose formats and folder, then export the open file in the background."""
        document = self.review.document
        if document is None:
            self.statusBar().showMessage("Open a scan file first (File ▸ Open, Ctrl+O).", 5000)
            return
        if not document.has_results or not document.has_classification:
            missing = "no analysis results" if not document.has_results else "not classified yet"
            first = "analyse it (File ▸ Analyse and classify, Ctrl+Shift+A)" if not document.has_results else (
                "classify it first (File ▸ Classify…, Ctrl+Shift+C)"
            )  # fmt: skip
            self.show_error("Cannot export", f"{document.path.name}: {missing}; {first}. Nothing was written.")
            return
        path = document.path
        passes = len(document.powers_w)
        spectra = any(layer.key == "wavelength_map_nm" for layer in document.layers)
        png_maps = 1 + passes + (passes >= 2) + 2 * spectra
        dialog = ExportDialog(path, self.settings, self)
        self.export_dialog = dialog
        dialog.accepted.connect(lambda: self.run_export(path, dialog.folder(), dialog.formats(), png_maps=png_maps))
        dialog.open()

    def run_export(self, path: Path, folder: Path, formats: list[str], *, png_maps: int = 4):
        """Export ``path`` in ``formats`` into ``folder`` (``inspection.export.export_scan`` in a child process:
        app/gui/exporting.py), recorded in the scan history as ``plmapper export`` records it. Cancel stops after
        the files already complete (they stay). Returns the task."""
        path, folder, formats = Path(path), Path(folder), list(formats)
        outcome: dict[str, Any] = {}

        def work(progress, cancel):
            progress(0.0, f"exporting {path.name} (starting the export process)")
            job = export_job(path, folder, formats)
            stopped = None
            with (
                self._recording() as recorder,
                recorder.operation(path, "export", {"formats": formats}) as result,
            ):
                try:
                    written = run_job(job, progress, cancel, expected=expected_files(formats, png_maps))
                except ExportCancelled as cancelled:
                    stopped, written = cancelled, cancelled.written
                    result.status, result.message = "stopped", CANCELLED
                result.details = {"formats": formats, "files": [str(item) for item in written]}
            if stopped is not None:
                outcome["cancelled"] = stopped.written
                raise stopped
            return written

        def always() -> None:
            if "cancelled" in outcome:
                written = outcome["cancelled"]
                self.statusBar().showMessage(
                    f"export of {path.name} cancelled; {len(written)} file(s) were complete and stay in {folder}", 15000
                )

        return self.runner.start(
            work, f"Exporting {path.name}", done=lambda written: self._exported(folder, written), always=always
        )

    def lot_report(self, *_: object) -> None:
        """File ▸ Lot report…: choose the lot's scan files and the report file, then write it in the background."""
        files = [self.review.document.path] if self.review.document is not None else []
        dialog = LotReportDialog(files, self.settings, self)
        self.lot_report_dialog = dialog
        dialog.accepted.connect(lambda: self.run_lot_report(dialog.scan_files(), dialog.output()))
        dialog.open()

    def run_lot_report(self, scans: list[Path], out: Path):
        """A lot report of ``scans`` into ``out`` (PDF) and its CSV (``inspection.export.lot_report`` in a child
        process). Returns the task."""
        scans, out = [Path(scan) for scan in scans], Path(out)

        def work(progress, cancel):
            progress(0.0, f"lot report of {len(scans)} wafer(s) (starting the export process)")
            return run_job(lot_report_job(scans, out), progress, cancel)

        return self.runner.start(
            work, "Lot report", done=lambda written: self._exported(out.parent, written, "Lot report written")
        )

    def _exported(self, folder: Path, written: list[Path], title: str = "Export complete") -> None:
        """Say what was written, with a button that opens the folder."""
        names = "\n".join(f"  {path.name}" for path in written[:12]) + ("\n  …" if len(written) > 12 else "")
        self.statusBar().showMessage(f"{len(written)} file(s) written to {folder}", 15000)
        box = QMessageBox(
            QMessageBox.Icon.Information,
            title,
            f"{len(written)} file(s) written to {folder}:\n{names}",
            QMessageBox.StandardButton.Close,
            self,
        )
        box.setObjectName("exportDoneBox")
        button = box.addButton("Open folder", QMessageBox.ButtonRole.ActionRole)
        button.setObjectName("openFolderButton")
        button.clicked.connect(lambda: self.open_folder(folder))
        self.export_done_box = box
        box.open()

    def open_folder(self, folder: Path) -> None:
        """Show ``folder`` in the desktop's file manager."""
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
            self.show_error(
                "Cannot open the folder", f"No file manager opened {folder}.\n\nWhat to do: open it by hand."
            )

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
            from inspection.classify import ClassifyOptions  # noqa: PLC0415
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

            from inspection import api  # noqa: PLC0415

            options = ClassifyOptions(bin_table=table or default_bin_table(), model=model)
            # a cancel stops it before anything is written: the file keeps its classification
            with self._recording() as recorder:  # recorded in the scan history as `plmapper classify` records it
                classification = api.classify(
                    path, options=options, progress=_cancellable(progress, cancel), record=recorder
                )
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
        # the tab by its name: an index saved before the Compare tab existed opened the tab after the one left
        names = [self.tabs.tabText(index) for index in range(self.tabs.count())]
        tab = str(self.settings.value("window/tab_name", "Review"))
        self.tabs.setCurrentIndex(names.index(tab) if tab in names else 0)

    def _splitters(self) -> list:
        return [self.review.splitter, self.review.side_splitter, self.scan.splitter, self.compare.splitter]

    def save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("window/tab_name", self.tabs.tabText(self.tabs.currentIndex()))
        self.settings.remove("window/tab")  # the index of earlier versions (see _restore)
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


CANCELLED = "cancelled in the window"
"""What the scan history says of work cancelled here."""
STALE_CLASSIFICATION = (
    "{name} was analysed again, but it was not classified again: the bins shown are those of the previous analysis. "
    "What to do: classify it again (File ▸ Classify…, Ctrl+Shift+C)."
)
UNCLASSIFIED = (
    "{name} was analysed, but it was not classified: it has measurements but no bins yet. "
    "What to do: classify it (File ▸ Classify…, Ctrl+Shift+C)."
)


def _cancellable(
    progress: Callable[[float, str], None], cancel: threading.Event, start: float = 0.0, share: float = 1.0
) -> Callable[[float, str], None]:
    """A progress callback for work that reports often: raises :class:`TaskCancelled` once ``cancel`` is set (not at
    the report of its end: the work is done by then), and maps the work's 0..1 onto ``start .. start + share`` of the
    task."""

    def report(fraction: float, message: str) -> None:
        if cancel.is_set() and fraction < 1.0:
            raise TaskCancelled(CANCELLED)
        progress(start + share * fraction, message)

    return report


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
