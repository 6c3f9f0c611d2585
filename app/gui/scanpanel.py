"""The Scan view: recipe (with validation on the field that is wrong), identity, plan, start/pause/resume/abort,
progress and the live map.

The Scan tab edits the run fields of the chosen recipe file for one run; every change is validated by the recipe's own
rules (:func:`inspection.settings.from_mapping`), each problem shown on the field it names. **Edit recipe…** (an
operator: **View recipe…**) opens every field of the recipe in the form of :mod:`app.gui.recipeform`. The plan is
computed from the valid recipe (nominal placement; the engine recomputes it after the alignment). The left column
scrolls when the window is too low for it (1366 × 768), so that nothing is squeezed over anything else; the plan's
headline and the scan buttons stay below it. A started scan runs in the station's worker
(:class:`app.gui.station.StationController`); the live map reads the scan file's new lines every second in a
background task (:class:`app.gui.live.LiveMap`).
"""

from __future__ import annotations

import copy
import datetime
import getpass
import re
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.gui.access import AccessController, denied_tip
from app.gui.dialogs import FileKind, save_settings_file
from app.gui.live import LiveMap
from app.gui.mapview import WaferMapView
from app.gui.recipeform import ERROR_STYLE, NOMINAL_ACCEL_UM_S2, READ_ONLY_STYLE, RecipeEditor, report_label
from app.gui.station import StationController, progress_text
from app.gui.tasks import TaskRunner
from inspection.access import AuditAction, Permission, flat_changes
from inspection.job import ScanIdentity
from inspection.plan import ScanPlan, plan_scan
from inspection.recipe import Recipe
from inspection.scan import ScanPhase, ScanProgress
from inspection.scanfile import ScanFile, ScanStatus
from inspection.settings import SettingsError, from_mapping, load_toml
from inspection.wafer import Placement


class RecipeField:
    """One editable recipe field: its dotted path, how it is shown and parsed."""

    def __init__(self, path: str, label: str, *, scale: float = 1.0, unit: str = "", choices: tuple = ()) -> None:
        self.path, self.label, self.scale, self.unit, self.choices = path, label, scale, unit, choices

    def get(self, data: dict[str, Any]) -> Any:
        section, name = self.path.split(".")
        return data.get(section, {}).get(name)

    def set(self, data: dict[str, Any], value: Any) -> None:
        section, name = self.path.split(".")
        data.setdefault(section, {})[name] = value

    def text(self, value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(f"{item * self.scale:g}" for item in value)
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, (int, float)):
            return f"{value * self.scale:g}"
        return "" if value is None else str(value)

    def parse(self, text: str, current: Any) -> Any:
        """The value typed, in the recipe's units; text that is not a number is passed on as text, so the recipe's
        validation names the problem."""
        if self.choices:
            return text
        if isinstance(current, (list, tuple)):
            items = [item for item in re.split(r"[,\s]+", text.strip()) if item]
            return [_number(item) / self.scale if _is_number(item) else item for item in items]
        if _is_number(text):
            return _number(text) / self.scale
        return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(text: str) -> float:
    return float(text)


FIELDS = (
    RecipeField("excitation.powers_w", "Laser powers", scale=1e3, unit="mW, low to high"),
    RecipeField("sampling.mode", "Lines", choices=("raster", "grid-locked")),
    RecipeField("sampling.velocity_um_s", "Stage speed", scale=1e-3, unit="mm/s"),
    RecipeField("sampling.sample_rate_hz", "Sample rate", scale=1e-3, unit="kHz"),
    RecipeField("sampling.line_pitch_um", "Raster line pitch", unit="µm"),
    RecipeField("substrate.edge_exclusion_mm", "Edge exclusion", unit="mm"),
    RecipeField("spectra.pattern", "Spectra", choices=("none", "every-nth", "grid")),
)


class ScanPanel(QWidget):
    """See the module docstring. ``scan_done(path, status)`` when a scan stops."""

    scan_done = Signal(str, str)

    def __init__(
        self,
        controller: StationController,
        runner: TaskRunner,
        recipes: list[Path],
        parent: QWidget | None = None,
        access: AccessController | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller, self.runner = controller, runner
        self.access = access or AccessController(runner, self)
        self._temporary_recipe: Path | None = None
        self._scan_output: Path | None = None
        self._stop_requested = False
        self.recipe_data: dict[str, Any] = {}
        self.recipe: Recipe | None = None
        self.recipe_path: Path | None = None
        self.live: LiveMap | None = None
        self._live_pending = False
        self._live_again = False
        self._chips_per_line = 0.0
        self._paused = False
        self._build(recipes)
        controller.scan_plan.connect(self._engine_plan)
        controller.scan_progress.connect(self._progress)
        controller.scan_started.connect(self._started)
        controller.scan_finished.connect(self._finished)
        controller.connected.connect(lambda *_: self._update_buttons())
        controller.disconnected.connect(self._update_buttons)
        self._live_timer = QTimer(self, interval=1000)
        self._live_timer.timeout.connect(self._refresh_live)

    # -- widgets -----------------------------------------------------------------------------------------------------
    def _build(self, recipes: list[Path]) -> None:
        recipe_box = QGroupBox("Recipe")
        # A vertical box, not one form: word-wrapped labels as rows of a QFormLayout were given too little height
        # in a low window and drawn over each other (the summary over the operator note at 1400 × 850).
        recipe_layout = QVBoxLayout(recipe_box)
        self.recipe_combo = QComboBox()
        self.recipe_combo.setObjectName("recipeCombo")
        for path in recipes:
            self.recipe_combo.addItem(path.stem, str(path))
        self.recipe_combo.currentIndexChanged.connect(lambda *_: self.load_recipe(self.recipe_combo.currentData()))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_recipe)
        row = QHBoxLayout()
        row.addWidget(QLabel("File:"))
        row.addWidget(self.recipe_combo, 1)
        row.addWidget(browse)
        recipe_layout.addLayout(row)
        self.recipe_summary = QLabel("")
        self.recipe_summary.setObjectName("recipeSummary")
        self.recipe_summary.setWordWrap(True)
        recipe_layout.addWidget(self.recipe_summary)
        self.access_note = QLabel(
            "Operators run recipes as they are. An engineer may change these fields: Access ▸ Log in as engineer."
        )
        self.access_note.setObjectName("recipeAccessNote")
        self.access_note.setWordWrap(True)
        self.access_note.setStyleSheet("color:#5f6368;")
        recipe_layout.addWidget(self.access_note)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.field_widgets: dict[str, QLineEdit | QComboBox] = {}
        for spec in FIELDS:
            if spec.choices:
                widget: QLineEdit | QComboBox = QComboBox()
                widget.addItems(list(spec.choices))
                widget.currentTextChanged.connect(lambda *_: self._validate())
            else:
                widget = QLineEdit()
                widget.textEdited.connect(lambda *_: self._validate())
            widget.setObjectName(f"field_{spec.path}")
            self.field_widgets[spec.path] = widget
            form.addRow(f"{spec.label}{f' ({spec.unit})' if spec.unit else ''}:", widget)
        recipe_layout.addLayout(form)
        self.problems = QLabel("")
        self.problems.setObjectName("recipeProblems")
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet("color:#b3261e;")
        recipe_layout.addWidget(self.problems)
        self.save_recipe_button = QPushButton("Save recipe as…")
        self.save_recipe_button.setObjectName("saveRecipeButton")
        self.save_recipe_button.clicked.connect(self.save_recipe_as)
        self.edit_recipe_button = QPushButton("Edit recipe…")
        self.edit_recipe_button.setObjectName("editRecipeButton")
        self.edit_recipe_button.clicked.connect(self.edit_recipe_file)
        recipe_buttons = QHBoxLayout()
        recipe_buttons.addWidget(self.edit_recipe_button)
        recipe_buttons.addWidget(self.save_recipe_button)
        recipe_buttons.addStretch(1)
        recipe_layout.addLayout(recipe_buttons)
        for widget in self.field_widgets.values():
            self.access.gate(widget, Permission.EDIT_RECIPE, apply=_set_editable)
        self.access.gate(
            self.save_recipe_button, Permission.EDIT_RECIPE, "Write the recipe with the values above to a new file"
        )
        self.access.gate(
            self.edit_recipe_button,
            Permission.EDIT_RECIPE,
            "Every field of the recipe in a form, checked as you type, with the plan",
            apply=_set_form_button,
        )
        self.access.changed.connect(self._session_changed)

        identity_box = QGroupBox("Wafer")
        identity = QFormLayout(identity_box)
        self.lot = QLineEdit("LOT1")
        self.lot.setObjectName("lotId")
        self.wafer = QLineEdit("W01")
        self.wafer.setObjectName("waferId")
        self.operator = QLineEdit(_user())
        self.operator.setObjectName("operator")
        self.folder = QLineEdit(str(Path.cwd() / "scans"))
        self.folder.setObjectName("outputFolder")
        folder_button = QPushButton("…")
        folder_button.clicked.connect(self._browse_folder)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(folder_button)
        self.file_name = QLineEdit()
        self.file_name.setObjectName("outputName")
        self.file_name.setPlaceholderText("<lot>-<wafer>.h5")
        for widget in (self.lot, self.wafer, self.folder, self.file_name):
            widget.textChanged.connect(lambda *_: self._update_buttons())
        self.resume_box = QCheckBox("Resume the stopped scan in this file")
        self.resume_box.setObjectName("resumeBox")
        self.resume_box.toggled.connect(lambda *_: self._update_buttons())
        identity.addRow("Lot ID:", self.lot)
        identity.addRow("Wafer ID:", self.wafer)
        identity.addRow("Operator:", self.operator)
        identity.addRow("Folder:", folder_row)
        identity.addRow("File:", self.file_name)
        identity.addRow(self.resume_box)

        # a label, not a text box: in the scrolling column it shows every line of the plan at its natural height
        self.plan_text = report_label("planText", monospace=True)
        plan_box = QGroupBox("Plan (before alignment)")
        QVBoxLayout(plan_box).addWidget(self.plan_text)

        self.start_button = QPushButton("Start scan (F5)")
        self.start_button.setObjectName("startButton")
        self.start_button.setStyleSheet("font-weight:bold;")
        self.pause_button = QPushButton("Pause (F6)")
        self.pause_button.setObjectName("pauseButton")
        self.abort_button = QPushButton("Abort (F8)")
        self.abort_button.setObjectName("abortButton")
        self.start_button.clicked.connect(self.request_start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.abort_button.clicked.connect(self.request_abort)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.abort_button):
            buttons.addWidget(button)

        column = QWidget()
        column.setObjectName("scanColumn")
        column_layout = QVBoxLayout(column)
        column_layout.setContentsMargins(0, 0, 4, 0)
        for box in (recipe_box, identity_box, plan_box):
            box.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
            column_layout.addWidget(box)
        column_layout.addStretch(1)
        self.left_scroll = QScrollArea()
        self.left_scroll.setObjectName("scanColumnScroll")
        self.left_scroll.setWidgetResizable(True)
        self.left_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.left_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.left_scroll.setWidget(column)
        # the plan's headline stays in view with the buttons, whatever the column is scrolled to
        self.plan_digest = QLabel("")
        self.plan_digest.setObjectName("planDigest")
        self.plan_digest.setWordWrap(True)
        self.plan_digest.setStyleSheet("font-weight:bold;")
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.left_scroll, 1)
        left_layout.addWidget(self.plan_digest)
        left_layout.addLayout(buttons)  # outside the scrolling column: Start, Pause and Abort are always in view

        self.progress = QProgressBar()
        self.progress.setObjectName("scan_progress")
        self.progress.setRange(0, 1000)
        self.progress_label = QLabel("No scan running.")
        self.progress_label.setObjectName("scanProgressLabel")
        self.progress_label.setWordWrap(True)
        self.live_map = WaferMapView()
        self.live_map.setObjectName("liveMap")
        self.live_label = QLabel("Live map: brightest sample on each chip of the pass being mapped (raw, V).")
        self.live_label.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setObjectName("scanLog")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.setFont(QFont("monospace", 9))
        right_splitter = QSplitter(Qt.Orientation.Vertical)
        right_splitter.setObjectName("scanRightSplitter")
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.progress)
        top_layout.addWidget(self.progress_label)
        top_layout.addWidget(self.live_label)
        top_layout.addWidget(self.live_map, 1)
        right_splitter.addWidget(top)
        right_splitter.addWidget(self.log)
        right_splitter.setSizes([600, 160])
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("scanSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(right_splitter)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([420, 900])
        layout = QVBoxLayout(self)
        layout.addWidget(self.splitter)
        self._update_buttons()

    # -- recipe ------------------------------------------------------------------------------------------------------
    def _browse_recipe(self) -> None:
        start = str(self.recipe_path.parent) if self.recipe_path else ""
        path, _ = QFileDialog.getOpenFileName(self, "Recipe", start, "Recipes (*.toml)")
        if path:
            self.select_recipe(Path(path))

    def select_recipe(self, path: Path) -> None:
        position = self.recipe_combo.findData(str(path))
        if position < 0:
            self.recipe_combo.addItem(path.stem, str(path))
            position = self.recipe_combo.count() - 1
        if position == self.recipe_combo.currentIndex():
            self.load_recipe(str(path))
        else:
            self.recipe_combo.setCurrentIndex(position)

    def load_recipe(self, path: str | None) -> None:
        """Read a recipe file into the form (a small TOML file: read here) and validate it."""
        if not path:
            return
        self.recipe_path = Path(path)
        try:
            self.recipe_data = load_toml(self.recipe_path)
        except SettingsError as error:
            self.recipe_data = {}
            self._show_problems("\n".join(error.problems))
            self.plan_text.setText("")
            self.plan_digest.setText("Plan: the recipe file cannot be read (see above).")
            self.recipe = None
            self._update_buttons()
            return
        for spec in FIELDS:
            widget = self.field_widgets[spec.path]
            value = spec.get(self.recipe_data)
            widget.blockSignals(True)
            if isinstance(widget, QComboBox):
                widget.setCurrentText(str(value) if value is not None else spec.choices[0])
            else:
                widget.setText(spec.text(value))
            widget.blockSignals(False)
        self._validate()

    def edited_data(self) -> dict[str, Any]:
        """The recipe file's content with the form's values."""
        data = copy.deepcopy(self.recipe_data)
        for spec in FIELDS:
            widget = self.field_widgets[spec.path]
            text = widget.currentText() if isinstance(widget, QComboBox) else widget.text()
            spec.set(data, spec.parse(text, spec.get(self.recipe_data)))
        return data

    def _session_changed(self, session) -> None:
        self.access_note.setVisible(not session.is_engineer)
        if not session.is_engineer and self.recipe_path is not None:
            self.load_recipe(str(self.recipe_path))  # an operator runs the recipe as it is: edits are dropped

    def _field_tip(self) -> str:
        return "" if self.access.allows(Permission.EDIT_RECIPE) else denied_tip(Permission.EDIT_RECIPE)

    def edited(self) -> bool:
        """Whether the form differs from the recipe file."""
        return bool(self.recipe_data) and self.edited_data() != self.recipe_data

    def save_recipe_as(self) -> None:
        """Write the recipe with the form's values to a new file (engineers; audited) and use it."""
        if not self.access.require(Permission.EDIT_RECIPE) or self.recipe is None:
            return
        start = str(self.recipe_path.with_name(self.recipe_path.stem + "-edited.toml")) if self.recipe_path else ""
        path, _ = QFileDialog.getSaveFileName(self, "Save the recipe as", start, "Recipes (*.toml)")
        if path:
            self.write_recipe(Path(path))

    def write_recipe(self, path: Path) -> bool:
        """Save the form as recipe file ``path`` (checked, audited) and select it."""
        previous = self.recipe_path.read_text("utf-8") if self.recipe_path and self.recipe_path.exists() else None
        text = tomli_w.dumps(self.edited_data())
        if not save_settings_file(FileKind.RECIPE, path, text, self.access, previous_text=previous):
            return False
        self.select_recipe(path)
        self.log.appendPlainText(f"recipe saved: {path}")
        return True

    def edit_recipe_file(self) -> RecipeEditor | None:
        """Every field of the recipe in the recipe form (:class:`~app.gui.recipeform.RecipeEditor`): editable for
        engineers (starting from the run fields as edited here), read-only for operators. A saved recipe is selected
        here at once. Returns the form (None without a recipe)."""
        if self.recipe_path is None:
            return None
        edited = self.edited() and self.access.allows(Permission.EDIT_RECIPE)
        form = RecipeEditor(
            self.recipe_path, self.access, self.runner, self, data=self.edited_data() if edited else None
        )
        form.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # one form per click: closed ones must not pile up
        form.saved.connect(lambda path: self.select_recipe(Path(path)))
        form.saved.connect(lambda path: self.log.appendPlainText(f"recipe saved: {path}"))
        self.recipe_form = form
        form.open()
        return form

    def _validate(self) -> None:
        editable = self.access.allows(Permission.EDIT_RECIPE)
        for widget in self.field_widgets.values():
            widget.setStyleSheet("" if editable else READ_ONLY_STYLE)
            widget.setToolTip(self._field_tip())
        if not self.recipe_data:
            return
        try:
            self.recipe = from_mapping(Recipe, self.edited_data(), source=str(self.recipe_path))
        except SettingsError as error:
            self.recipe = None
            general = []
            for problem in error.problems:
                widget = self._widget_for(problem)
                if widget is None:
                    general.append(problem)
                else:
                    widget.setStyleSheet(ERROR_STYLE)
                    widget.setToolTip(problem if not widget.toolTip() else f"{widget.toolTip()}\n{problem}")
            shown = [f"• {problem}" for problem in error.problems]
            self._show_problems("Fix before scanning:\n" + "\n".join(shown))
            self.plan_text.setText("")
            self.plan_digest.setText("Plan: none until the recipe's problems are fixed.")
            self._update_buttons()
            return
        self._show_problems("")
        recipe = self.recipe
        layout = recipe.layout()
        self.recipe_summary.setText(
            f"{recipe.name}: {recipe.substrate.diameter_mm:g} mm wafer, {recipe.grid.chip_width_um:g} × "
            f"{recipe.grid.chip_height_um:g} µm chips at {recipe.grid.pitch_x_um:g} µm pitch, "
            f"{layout.chip_count:,} usable chips"
        )
        if self.live is None:  # before the first scan the live map shows the wafer the recipe is for
            self.live_map.set_layout(layout)
        plan = plan_scan(recipe, Placement(), accel_um_s2=NOMINAL_ACCEL_UM_S2)
        note = "" if self.controller.is_connected else "\n(stage acceleration assumed 3000 mm/s² until connected)"
        self.plan_text.setText(plan.summary() + note)
        self.plan_digest.setText(plan_digest(plan))
        self._chips_per_line = layout.chip_count / max(plan.line_count, 1)
        self._update_buttons()

    def _show_problems(self, text: str) -> None:
        self.problems.setText(text)
        self.problems.setVisible(bool(text))  # an empty label still takes a line of the column

    def _widget_for(self, problem: str) -> QLineEdit | QComboBox | None:
        """The form field a problem names (its dotted path, possibly with an index: ``excitation.powers_w[1]``)."""
        match = re.match(r"([a-z_]+\.[a-z_]+)", problem)
        if match is None:
            return None
        return self.field_widgets.get(match.group(1))

    # -- output file -------------------------------------------------------------------------------------------------
    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Scan folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def output_path(self) -> Path:
        name = (
            self.file_name.text().strip()
            or f"{self.lot.text().strip() or 'LOT'}-{self.wafer.text().strip() or 'WAFER'}.h5"
        )
        if not name.endswith(".h5"):
            name += ".h5"
        return Path(self.folder.text()).expanduser() / name

    def output_being_written(self) -> Path | None:
        """The scan file the scan started here is writing (None while no scan runs)."""
        output = self._scan_output
        return output.resolve() if self.controller.scanning and output is not None else None

    def offer_resume(self, path: Path) -> None:
        """Set the form up to resume the stopped scan in ``path``."""
        self.folder.setText(str(path.parent))
        self.file_name.setText(path.name)
        self.resume_box.setChecked(True)
        self._update_buttons()

    # -- controls ----------------------------------------------------------------------------------------------------
    def _update_buttons(self) -> None:
        scanning = self.controller.scanning
        connected = self.controller.is_connected
        resume = self.resume_box.isChecked()
        exists = self.output_path().exists()
        ready = connected and not scanning and ((resume and exists) or (not resume and self.recipe is not None))
        self.start_button.setEnabled(ready)
        self.start_button.setText("Resume scan (F5)" if resume else "Start scan (F5)")
        self.pause_button.setEnabled(scanning)
        self.abort_button.setEnabled(scanning)
        if not connected:
            self.start_button.setToolTip("Connect the station first (Station tab)")
        elif exists and not resume:
            self.start_button.setToolTip(f"{self.output_path()} exists: choose another name, or tick resume")
            self.start_button.setEnabled(False)
        else:
            self.start_button.setToolTip("")

    def request_start(self) -> bool:
        """Start (or resume) the scan; True if it was handed to the station."""
        if not self.start_button.isEnabled():
            return False
        output = self.output_path()
        resume = self.resume_box.isChecked()
        if resume:
            recipe_path: Path = output  # a resumed scan uses the recipe stored in its file
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            recipe_path = self._edited_recipe_file(output)
        identity = ScanIdentity(
            operator=self.operator.text().strip() or _user(),
            lot_id=self.lot.text().strip(),
            wafer_id=self.wafer.text().strip(),
        )
        details = {
            "file": str(output),
            "resume": resume,
            "recipe": str(self.recipe_path if not resume else output),
            "operator": identity.operator,
            "lot_id": identity.lot_id,
            "wafer_id": identity.wafer_id,
        }
        if not resume and recipe_path != self.recipe_path:
            details["recipe_changes"] = flat_changes(self.recipe_data, self.edited_data())
        if not self.access.audit(AuditAction.SCAN_START, details):
            self._drop_temporary_recipe()
            return False
        self._scan_output = output
        self._stop_requested = False
        self.log.appendPlainText(f"{'resuming' if resume else 'starting'} {output}")
        self.live = LiveMap(output)
        self.live_map.hide_detail()
        self._live_layout_set = False
        started = self.controller.start_scan(
            recipe_path, output, identity, resume=resume, recipe_source=None if resume else self.recipe_path
        )
        if started is None:
            self.access.audit(AuditAction.SCAN_STOP, {"file": str(output), "status": "not started"})
            self._drop_temporary_recipe()
            return False
        self._paused = False
        self.progress.setValue(0)
        self.progress_label.setText("preparing the station …")
        self._update_buttons()
        self._live_timer.start()
        return True

    def _edited_recipe_file(self, output: Path) -> Path:
        """The recipe file itself when the form is unchanged; else the recipe as edited in a temporary file (the scan
        file stores the recipe's text; the temporary file is deleted when the scan stops)."""
        if not self.edited() and self.recipe_path is not None:
            return self.recipe_path
        handle = tempfile.NamedTemporaryFile("wb", suffix=".toml", prefix=f"{output.stem}-recipe-", delete=False)  # noqa: SIM115
        with handle:
            handle.write(tomli_w.dumps(self.edited_data()).encode())
        self._temporary_recipe = Path(handle.name)
        return self._temporary_recipe

    def _drop_temporary_recipe(self) -> None:
        if self._temporary_recipe is not None:
            self._temporary_recipe.unlink(missing_ok=True)
            self._temporary_recipe = None

    def toggle_pause(self) -> None:
        if not self.controller.scanning:
            return
        if self._paused:
            self.controller.resume_scan()
            self.pause_button.setText("Pause (F6)")
            self.log.appendPlainText("resume requested")
        else:
            self.controller.pause_scan()
            self.pause_button.setText("Resume (F6)")
            self.log.appendPlainText("pause requested: the laser goes off after the current line")
        self._paused = not self._paused

    def request_abort(self) -> None:
        if self.controller.scanning:
            if not self._stop_requested:  # once per scan, however often it is asked
                self._stop_requested = True
                self.access.audit(
                    AuditAction.SCAN_STOP_REQUESTED, {"file": str(self._scan_output or ""), "how": "abort"}
                )
            self.controller.abort_scan()
            self.log.appendPlainText("abort requested: stopping after the current line (the file stays resumable)")

    # -- progress ----------------------------------------------------------------------------------------------------
    def _engine_plan(self, label: str, summary: str) -> None:
        self.log.appendPlainText(f"[{label}]\n{summary}")

    def _started(self, path: str) -> None:
        self.log.appendPlainText(f"scan running into {path}")
        self._update_buttons()

    def _progress(self, progress: ScanProgress) -> None:
        self.progress.setValue(int(progress.fraction * 1000))
        self.progress_label.setText(progress_text(progress, self._chips_per_line))
        if progress.phase is ScanPhase.PAUSED:
            self.log.appendPlainText("paused: laser off")
        elif progress.message and progress.phase is not ScanPhase.MAPPING:
            self.log.appendPlainText(progress.message)

    def _finished(self, path: str, status: str, message: str) -> None:
        self._live_timer.stop()
        self._refresh_live()
        self._drop_temporary_recipe()
        self.access.audit(AuditAction.SCAN_STOP, {"file": path, "status": status, "message": message})
        if status != "not started":
            self.log.appendPlainText(f"{status}: {message}")
            self.progress_label.setText(f"{status}: {message}")
            if status != ScanStatus.COMPLETE.value:
                self.offer_resume(Path(path))
            else:
                self.resume_box.setChecked(False)
        else:
            self.progress_label.setText("The scan did not start (see the message).")
        self.pause_button.setText("Pause (F6)")
        self._update_buttons()
        self.scan_done.emit(path, status)

    # -- live map ----------------------------------------------------------------------------------------------------
    def _refresh_live(self) -> None:
        live = self.live
        if live is None:
            return
        if self._live_pending:
            self._live_again = True  # read once more when the running update ends (the scan's last lines)
            return
        self._live_pending = True
        self._live_again = False

        def work(progress, cancel):
            return live.update()

        def updated(changed: bool) -> None:
            if changed and live is self.live:
                self._paint_live(live)

        def always() -> None:
            self._live_pending = False
            if self._live_again:
                self._refresh_live()

        self.runner.start(work, "Live map", done=updated, visible=False, always=always, failed=lambda *_: None)

    def _paint_live(self, live: LiveMap) -> None:
        if live.layout is None or not live.images:
            return
        if not self._live_layout_set:
            self.live_map.set_layout(live.layout)
            self._live_layout_set = True
        image = live.images[live.current_pass]
        power = live.powers_w[live.current_pass] * 1e3
        self.live_label.setText(
            f"Live map: pass {live.current_pass + 1} ({power:g} mW), brightest sample on each chip (raw, V); "
            f"{live.lines_read[live.current_pass]:,} lines read"
        )
        self.live_map.show_values(image, live.factor)
        placement = live.placement
        if placement is not None:
            self.live_map.set_note(
                f"alignment: offset ({placement.offset_x_um:,.1f}, {placement.offset_y_um:,.1f}) µm, "
                f"rotation {placement.rotation_deg:.4f}°"
            )


def plan_digest(plan: ScanPlan) -> str:
    """The plan in one line: lines, passes, data volume, duration.

    Examples
    --------
    >>> from inspection.recipe import load_recipe
    >>> plan = plan_scan(load_recipe("resources/recipes/demo-2in.toml"), Placement(), accel_um_s2=3e6)
    >>> plan_digest(plan)
    'Plan: 1,830 lines × 2 passes, 276.0 MB, about 0:29:36'
    """
    size = plan.data_bytes
    volume = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    duration = str(datetime.timedelta(seconds=round(plan.estimated_duration_s)))
    return f"Plan: {plan.line_count:,} lines × {plan.pass_count} passes, {volume}, about {duration}"


def _set_form_button(button: QPushButton, allowed: bool) -> None:
    """The recipe form opens for everybody: read-only for an operator (the tooltip says why)."""
    button.setText("Edit recipe…" if allowed else "View recipe…")
    button.setEnabled(True)


def _set_editable(widget: QLineEdit | QComboBox, allowed: bool) -> None:
    """Operators see the recipe's values but cannot change them."""
    if isinstance(widget, QLineEdit):
        widget.setReadOnly(not allowed)
        widget.setStyleSheet("" if allowed else READ_ONLY_STYLE)
    else:
        widget.setEnabled(allowed)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def stored_status(path: Path) -> tuple[ScanStatus, str] | None:
    """The status of an existing scan file (None if it is not one); small header read."""
    try:
        with ScanFile(path) as scan:
            return scan.status, scan.message
    except (OSError, ValueError):
        return None
