"""Dialogs of the results: export a scan file, a lot report over several scan files, analyse a file again with other
settings. They only ask; the main window runs the work in the background (docs/gui.md, Results)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.exporting import DEFAULT_FORMATS, FORMAT_TITLES
from app.gui.recipeform import ERROR_STYLE
from app.gui.tasks import TaskRunner
from inspection.pipeline import AnalysisSettings

NOTE_STYLE = "color:#5f6368;"


def _settings_list(settings: QSettings, key: str) -> list[str] | None:
    value = settings.value(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value] if value else []
    return [str(entry) for entry in value]


def _folder_row(edit: QLineEdit, browse) -> QHBoxLayout:
    button = QPushButton("Browse…")
    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row


# ---------------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------------


class ExportDialog(QDialog):
    """Which formats, into which folder (both remembered in ``settings``)."""

    def __init__(self, scan_path: Path, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.scan_path, self.settings = Path(scan_path), settings
        self.setWindowTitle(f"Export {self.scan_path.name}")
        self.setObjectName("exportDialog")
        chosen = _settings_list(settings, "export/formats")
        chosen = [name for name in chosen if name in FORMAT_TITLES] if chosen else list(DEFAULT_FORMATS)
        formats = QGroupBox("Formats")
        grid = QGridLayout(formats)
        grid.setColumnStretch(2, 1)
        self.format_boxes: dict[str, QCheckBox] = {}
        stem = self.scan_path.stem
        for row, (name, (title, pattern, what)) in enumerate(FORMAT_TITLES.items()):
            box = QCheckBox(title)
            box.setObjectName(f"format_{name}")
            box.setChecked(name in chosen)
            box.toggled.connect(self._update)
            self.format_boxes[name] = box
            file_label = QLabel(pattern.format(stem=stem))
            file_label.setStyleSheet("font-family:monospace;")
            what_label = QLabel(what)
            what_label.setStyleSheet(NOTE_STYLE)
            grid.addWidget(box, row, 0)
            grid.addWidget(file_label, row, 1)
            grid.addWidget(what_label, row, 2)
        default_folder = self.scan_path.parent / "exports"
        self.folder_edit = QLineEdit(str(settings.value("export/folder", str(default_folder))))
        self.folder_edit.setObjectName("exportFolder")
        self.folder_edit.textChanged.connect(self._update)
        form = QFormLayout()
        form.addRow("Folder:", _folder_row(self.folder_edit, self._browse))
        self.summary = QLabel("")
        self.summary.setObjectName("exportSummary")
        self.summary.setWordWrap(True)
        note = QLabel(
            "Runs in the background (the map stays open); Cancel in the status bar stops it: the file being written "
            "is dropped, the files already complete stay. Every file is written under a temporary name and renamed "
            "when complete, so no half-written file is ever left."
        )
        note.setWordWrap(True)
        note.setStyleSheet(NOTE_STYLE)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.export_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.export_button.setText("Export")
        self.export_button.setObjectName("exportButton")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(formats)
        layout.addLayout(form)
        layout.addWidget(self.summary)
        layout.addWidget(note)
        layout.addStretch(1)
        layout.addWidget(self.buttons)
        self.resize(760, 400)
        self._update()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def formats(self) -> list[str]:
        """The chosen formats, in the order of ``inspection.export.ALL_FORMATS``."""
        return [name for name, box in self.format_boxes.items() if box.isChecked()]

    def folder(self) -> Path:
        return Path(self.folder_edit.text().strip()).expanduser()

    def _update(self, *_: object) -> None:
        formats, text = self.formats(), self.folder_edit.text().strip()
        self.export_button.setEnabled(bool(formats) and bool(text))
        if not formats:
            self.summary.setText("Choose at least one format.")
            return
        if not text:
            self.summary.setText("Choose the folder to write to.")
            return
        folder = self.folder()
        stem = self.scan_path.stem
        existing = sorted(path.name for path in folder.glob(f"{stem}.*")) if folder.is_dir() else []
        where = f"into {folder}" + ("" if folder.is_dir() else " (created)")
        replaced = f"; {len(existing)} earlier export file(s) of {stem} there are replaced" if existing else ""
        self.summary.setText(f"{len(formats)} format(s) {where}{replaced}.")

    def accept(self) -> None:
        self.settings.setValue("export/folder", str(self.folder()))
        self.settings.setValue("export/formats", self.formats())
        super().accept()


class LotReportDialog(QDialog):
    """The scan files of a lot and the report's PDF (the CSV summary goes next to it)."""

    def __init__(self, files: list[Path], settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("Lot report")
        self.setObjectName("lotReportDialog")
        self.files = QListWidget()
        self.files.setObjectName("lotFiles")
        self.files.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        add = QPushButton("Add scan files…")
        add.clicked.connect(self._add)
        remove = QPushButton("Remove")
        remove.clicked.connect(self._remove)
        buttons_row = QHBoxLayout()
        buttons_row.addWidget(add)
        buttons_row.addWidget(remove)
        buttons_row.addStretch(1)
        folder = Path(str(settings.value("export/folder", str(Path.cwd() / "exports"))))
        self.out_edit = QLineEdit(str(folder / "lot-report.pdf"))
        self.out_edit.setObjectName("lotReportOut")
        self.out_edit.textChanged.connect(self._update)
        form = QFormLayout()
        form.addRow("Report (PDF):", _folder_row(self.out_edit, self._browse))
        note = QLabel(
            "The wafers in the order listed (e.g. slot order): yield trend, a table per wafer and the stacked fail "
            "map. Every wafer must be classified and of one chip grid. The CSV summary is written next to the PDF."
        )
        note.setWordWrap(True)
        note.setStyleSheet(NOTE_STYLE)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.write_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.write_button.setText("Write report")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Scan files:"))
        layout.addWidget(self.files, 1)
        layout.addLayout(buttons_row)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.buttons)
        self.resize(720, 440)
        self.add_files(files)

    def add_files(self, files: list[Path]) -> None:
        present = set(self.scan_files())
        for path in files:
            if Path(path) not in present:
                self.files.addItem(str(path))
                present.add(Path(path))
        self._update()

    def _add(self) -> None:
        folder = str(self.settings.value("files/last_dir", str(Path.cwd())))
        chosen, _ = QFileDialog.getOpenFileNames(self, "Scan files of the lot", folder, "Scan files (*.h5)")
        self.add_files([Path(path) for path in chosen])

    def _remove(self) -> None:
        for item in self.files.selectedItems():
            self.files.takeItem(self.files.row(item))
        self._update()

    def _browse(self) -> None:
        chosen, _ = QFileDialog.getSaveFileName(self, "Lot report", self.out_edit.text(), "PDF (*.pdf)")
        if chosen:
            self.out_edit.setText(chosen if chosen.endswith(".pdf") else f"{chosen}.pdf")

    def scan_files(self) -> list[Path]:
        return [Path(self.files.item(index).text()) for index in range(self.files.count())]

    def output(self) -> Path:
        text = self.out_edit.text().strip()
        return Path(text if text.endswith(".pdf") else f"{text}.pdf").expanduser()

    def _update(self, *_: object) -> None:
        self.write_button.setEnabled(self.files.count() > 0 and bool(self.out_edit.text().strip()))


# ---------------------------------------------------------------------------------------------------------------------
# Analyse again with other settings
# ---------------------------------------------------------------------------------------------------------------------

ANALYSIS_FIELDS = (
    ("memory_mb", "Memory bound", "MB", "working memory for one band of chip rows; the results do not depend on it"),
    ("drift_exponent", "Drift exponent k", "", "PL ∝ Pᵏ in the laser drift correction (1 = linear)"),
    ("core_fraction", "Core fraction", "", "the chip's centre where the whole spot is on the chip, of its size"),
    ("min_core_samples", "Fewest core samples", "", "fewer flag the chip 'few samples'"),
    ("saturation_v", "Saturation", "V", "samples at or above are over range"),
    ("registration_tolerance", "Registration tolerance", "pitches", "largest offset of the chip comb in the data"),
)
"""The :class:`~inspection.pipeline.AnalysisSettings` fields as the dialog shows them: name, label, unit, help."""


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def analysis_settings_from_texts(texts: dict[str, str]) -> tuple[AnalysisSettings | None, dict[str, str]]:
    """The settings typed, or None and the problem of each field (by field name), as AnalysisSettings words them.

    Examples
    --------
    >>> settings, problems = analysis_settings_from_texts({"memory_mb": "8", "core_fraction": "half"})
    >>> settings is None, sorted(problems)
    (True, ['core_fraction', 'memory_mb'])
    >>> problems["memory_mb"]
    'memory_mb: 8.0 is outside 16..1e6'
    """
    defaults = AnalysisSettings()
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field in dataclasses.fields(AnalysisSettings):
        text = texts.get(field.name, "").strip()
        if not text:
            values[field.name] = getattr(defaults, field.name)
            continue
        try:
            number = float(text)
        except ValueError:
            problems[field.name] = f"{field.name}: {text!r} is not a number"
            continue
        if not math.isfinite(number):
            problems[field.name] = f"{field.name}: {text!r} is not a finite number"
        elif isinstance(getattr(defaults, field.name), int):
            if number != int(number):
                problems[field.name] = f"{field.name}: {text!r} is not a whole number"
            values[field.name] = int(number)
        else:
            values[field.name] = number
    # the rules of AnalysisSettings itself name every field that is out of range ("name: ...; name: ...")
    try:
        checked = AnalysisSettings(**values)
    except ValueError as error:
        for problem in str(error).split("; "):
            name = problem.split(":", 1)[0].strip()
            problems.setdefault(name, problem)
        checked = None
    return (checked if not problems else None), problems


class ReanalyseDialog(QDialog):
    """The analysis settings (prefilled with those of the stored results), each checked by
    :class:`~inspection.pipeline.AnalysisSettings`'s own rules with the problem shown on the field; and whether to
    classify again afterwards (the station's deployed model, else the rule layer)."""

    def __init__(
        self,
        scan_name: str,
        current: dict[str, Any],
        runner: TaskRunner | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Analyse {scan_name} again")
        self.setObjectName("reanalyseDialog")
        defaults = dataclasses.asdict(AnalysisSettings())
        intro = QLabel(
            f"Runs the analysis of {scan_name} again from its raw lines with these settings; the new results replace "
            "the stored ones only when the analysis is complete (Cancel keeps the old ones)."
        )
        intro.setWordWrap(True)
        box = QGroupBox("Analysis settings (now: those of the stored results)")
        form = QFormLayout(box)
        self.fields: dict[str, QLineEdit] = {}
        for name, label, unit, what in ANALYSIS_FIELDS:
            edit = QLineEdit(_shown(current.get(name, defaults[name])))
            edit.setObjectName(f"analysis_{name}")
            edit.setPlaceholderText(f"default {_shown(defaults[name])}")
            edit.textEdited.connect(self._validate)
            edit.setFixedWidth(120)
            hint = QLabel(f"{what} (default {_shown(defaults[name])})")
            hint.setStyleSheet(NOTE_STYLE)
            hint.setWordWrap(True)
            row = QHBoxLayout()
            row.addWidget(edit)
            row.addWidget(hint, 1)
            self.fields[name] = edit
            form.addRow(f"{label}{f' ({unit})' if unit else ''}:", row)
        self.problems = QLabel("")
        self.problems.setObjectName("analysisProblems")
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet("color:#b3261e;")
        defaults_button = QPushButton("Defaults")
        defaults_button.setToolTip("Put every field back to the pipeline's default")
        defaults_button.clicked.connect(self.restore_defaults)
        self.classify_box = QCheckBox("Then classify it again with the station's deployed model")
        self.classify_box.setObjectName("classifyAfter")
        self.classify_box.setChecked(True)
        self.classifier_info = QLabel("looking up the deployed model …")
        self.classifier_info.setObjectName("classifierInfo")
        self.classifier_info.setWordWrap(True)
        self.classifier_info.setStyleSheet(f"{NOTE_STYLE} margin-left:22px;")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.analyse_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.analyse_button.setText("Analyse")
        self.analyse_button.setObjectName("analyseButton")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        bottom = QHBoxLayout()
        bottom.addWidget(defaults_button)
        bottom.addStretch(1)
        bottom.addWidget(self.buttons)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(box)
        layout.addWidget(self.problems)
        layout.addWidget(self.classify_box)
        layout.addWidget(self.classifier_info)
        layout.addStretch(1)
        layout.addLayout(bottom)
        self.resize(780, 430)
        self._validate()
        if runner is not None:

            def lookup(progress, cancel):
                from inspection.deployment import current_model_info  # noqa: PLC0415 - scikit-learn: not here

                return current_model_info()

            runner.start(lookup, "Deployed model", done=self._deployed_found, failed=self._lookup_failed, visible=False)

    def _deployed_found(self, info: dict[str, Any] | None) -> None:
        if info is None:
            self.classify_box.setText("Then classify it again with the rule layer")
            self.classifier_info.setText(
                "No model is deployed on this station: the rule layer (the recipe's [classification] thresholds) "
                "decides. The file's bin table is kept."
            )
        else:
            self.classifier_info.setText(
                f"{info.get('name', '?')} ({info.get('model_id', '?')}), deployed {info.get('deployed_utc', '?')} by "
                f"{info.get('deployed_by', '?')}. The file's bin table is kept."
            )

    def _lookup_failed(self, title: str, text: str) -> None:
        self.classifier_info.setText(f"{title}: {text}")

    def texts(self) -> dict[str, str]:
        return {name: edit.text() for name, edit in self.fields.items()}

    def restore_defaults(self) -> None:
        for name, value in dataclasses.asdict(AnalysisSettings()).items():
            if name in self.fields:
                self.fields[name].setText(_shown(value))
        self._validate()

    def _validate(self, *_: object) -> None:
        settings, problems = analysis_settings_from_texts(self.texts())
        for name, edit in self.fields.items():
            problem = problems.get(name)
            edit.setStyleSheet(ERROR_STYLE if problem else "")
            edit.setToolTip(problem or "")
        self.problems.setText(
            ("Fix before analysing:\n" + "\n".join(f"• {problem}" for problem in problems.values())) if problems else ""
        )
        self.analyse_button.setEnabled(settings is not None)

    def settings(self) -> AnalysisSettings | None:
        """The settings typed (None while a field is wrong)."""
        return analysis_settings_from_texts(self.texts())[0]

    def classify_after(self) -> bool:
        return self.classify_box.isChecked()
