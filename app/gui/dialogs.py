"""Small dialogs: re-run the classification, pick a chip index, edit a recipe / station / bin table file (engineers),
read the audit log."""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.gui.access import AccessController
from app.gui.tasks import TaskRunner
from drivers.station import StationConfig
from inspection.access import AuditAction, AuditLog, Permission, flat_changes
from inspection.bins import BinTable
from inspection.recipe import recipe_from_text
from inspection.settings import SettingsError, from_mapping

# ---------------------------------------------------------------------------------------------------------------------
# Re-run the classification
# ---------------------------------------------------------------------------------------------------------------------


class ModelChoice(Enum):
    DEPLOYED = "deployed"
    RULES = "rules"
    FILE = "file"


@dataclass(frozen=True)
class ClassifyRequest:
    """What the operator chose: which classifier, and (engineers) whether to deploy the chosen model file."""

    choice: ModelChoice
    model_file: Path | None = None
    deploy: bool = False


class ClassifyDialog(QDialog):
    """Pick the classifier for a re-run: the station's deployed model, the rule layer, or a model file."""

    def __init__(self, scan_name: str, access: AccessController, runner: TaskRunner, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Classify {scan_name}")
        self.setObjectName("classifyDialog")
        self.deployed = QRadioButton("The station's deployed model")
        self.deployed.setObjectName("useDeployed")
        self.deployed_info = QLabel("looking up the deployed model …")
        self.deployed_info.setObjectName("deployedInfo")
        self.deployed_info.setWordWrap(True)
        self.deployed_info.setStyleSheet("color:#5f6368; margin-left:22px;")
        self.rules = QRadioButton("The rule layer only (the recipe's [classification] thresholds)")
        self.rules.setObjectName("useRules")
        self.from_file = QRadioButton("A model file:")
        self.from_file.setObjectName("useFile")
        self.model_path = QLineEdit()
        self.model_path.setObjectName("modelPath")
        self.model_path.setPlaceholderText("model.skops (made by plmapper train)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.deploy = QCheckBox("Also deploy this model as the station's current one")
        self.deploy.setObjectName("deployBox")
        access.gate(self.deploy, Permission.DEPLOY_MODEL, "Copy the model into the station's store and make it current")
        group = QButtonGroup(self)
        for button in (self.deployed, self.rules, self.from_file):
            group.addButton(button)
            button.toggled.connect(self._update)
        self.model_path.textChanged.connect(self._update)
        file_row = QHBoxLayout()
        file_row.addWidget(self.from_file)
        file_row.addWidget(self.model_path, 1)
        file_row.addWidget(browse)
        note = QLabel(
            "The new classification replaces the one stored in the scan file (its bin table is kept); it runs in the "
            "background and can be cancelled (the file is then unchanged)."
        )
        note.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Classify")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.deployed)
        layout.addWidget(self.deployed_info)
        layout.addWidget(self.rules)
        layout.addLayout(file_row)
        layout.addWidget(self.deploy)
        layout.addWidget(note)
        layout.addWidget(self.buttons)
        self.deployed.setChecked(True)
        self.resize(620, 280)

        def lookup(progress, cancel):
            from inspection.deployment import current_model_info  # noqa: PLC0415 - imports scikit-learn (5 s): not on the GUI thread

            return current_model_info()

        runner.start(lookup, "Deployed model", done=self._deployed_found, failed=self._deployed_failed, visible=False)

    def _deployed_found(self, info: dict[str, Any] | None) -> None:
        if info is None:
            self.deployed_info.setText("No model is deployed on this station (the rule layer would decide).")
        else:
            self.deployed_info.setText(
                f"{info.get('name', '?')} ({info.get('model_id', '?')}), deployed {info.get('deployed_utc', '?')} "
                f"by {info.get('deployed_by', '?')}"
            )

    def _deployed_failed(self, title: str, text: str) -> None:
        self.deployed_info.setText(f"{title}: {text}")

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", self.model_path.text(), "Models (*.skops)")
        if path:
            self.model_path.setText(path)
            self.from_file.setChecked(True)

    def _update(self, *_: object) -> None:
        wants_file = self.from_file.isChecked()
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(
            not wants_file or bool(self.model_path.text().strip())
        )

    def request(self) -> ClassifyRequest:
        if self.rules.isChecked():
            return ClassifyRequest(ModelChoice.RULES)
        if self.from_file.isChecked():
            return ClassifyRequest(
                ModelChoice.FILE,
                Path(self.model_path.text().strip()),
                self.deploy.isChecked() and self.deploy.isEnabled(),
            )
        return ClassifyRequest(ModelChoice.DEPLOYED)


# ---------------------------------------------------------------------------------------------------------------------
# A chip index
# ---------------------------------------------------------------------------------------------------------------------


class ChipIndexDialog(QDialog):
    """Column and row of a chip (SEMI E142: from the lower left of the chip box)."""

    def __init__(self, title: str, columns: int, rows: int, note: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setObjectName("chipIndexDialog")
        self.col = QSpinBox()
        self.col.setObjectName("chipCol")
        self.col.setRange(0, max(columns - 1, 0))
        self.row = QSpinBox()
        self.row.setObjectName("chipRow")
        self.row.setRange(0, max(rows - 1, 0))
        form = QFormLayout()
        form.addRow(f"Column (0–{columns - 1}):", self.col)
        form.addRow(f"Row (0–{rows - 1}):", self.row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        if note:
            label = QLabel(note)
            label.setObjectName("chipIndexNote")
            label.setWordWrap(True)
            layout.addWidget(label)
        layout.addWidget(buttons)
        self.resize(420, 160)

    def chip(self) -> tuple[int, int]:
        return self.col.value(), self.row.value()


# ---------------------------------------------------------------------------------------------------------------------
# Editing a settings file (engineers)
# ---------------------------------------------------------------------------------------------------------------------


class FileKind(Enum):
    """The files an engineer edits: (what, permission, audit action)."""

    RECIPE = ("recipe", Permission.EDIT_RECIPE, AuditAction.RECIPE_SAVED)
    STATION = ("station file", Permission.EDIT_STATION, AuditAction.STATION_SAVED)
    BIN_TABLE = ("bin table", Permission.EDIT_BIN_TABLE, AuditAction.BIN_TABLE_SAVED)

    @property
    def what(self) -> str:
        return self.value[0]

    @property
    def permission(self) -> Permission:
        return self.value[1]

    @property
    def action(self) -> AuditAction:
        return self.value[2]


def file_problems(kind: FileKind, text: str, source: str) -> list[str]:
    """Every problem of ``text`` as a file of ``kind`` (empty when it is valid), by the same rules that load it."""
    try:
        if kind is FileKind.RECIPE:
            recipe_from_text(text, source=source)
            return []
        data = tomllib.loads(text)
        if kind is FileKind.STATION:
            from_mapping(StationConfig, {**data, "source": source}, source=source)
        else:
            from_mapping(BinTable, data, source=source)
    except SettingsError as error:
        return list(error.problems)
    except tomllib.TOMLDecodeError as error:
        return [f"not valid TOML: {error}"]
    except ValueError as error:
        return str(error).splitlines()
    return []


def save_settings_file(
    kind: FileKind, path: Path, text: str, access: AccessController, *, previous_text: str | None = None
) -> bool:
    """Check, audit and write ``text`` to ``path`` (atomically); False with nothing written if a check or the
    audit fails. The audit entry says what changed, field by field."""
    if not access.require(kind.permission):
        return False
    problems = file_problems(kind, text, str(path))
    if problems:
        access.failed.emit(f"The {kind.what} has problems", "\n".join(problems))
        return False
    try:
        before = tomllib.loads(previous_text) if previous_text else {}
    except tomllib.TOMLDecodeError:
        before = {}
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text, encoding="utf-8")
    except OSError as error:
        access.failed.emit("Cannot save", f"{path}: {error}\n\nWhat to do: choose a folder you may write to.")
        return False
    details = {
        "file": str(path),
        "sha256_before": hashlib.sha256(previous_text.encode()).hexdigest() if previous_text else "",
        "sha256_after": hashlib.sha256(text.encode()).hexdigest(),
        "changes": flat_changes(before, tomllib.loads(text)),
    }
    if not access.audit(kind.action, details):
        partial.unlink(missing_ok=True)
        return False
    os.replace(partial, path)
    return True


class SettingsEditor(QDialog):
    """A recipe, station file or bin table as TOML text, checked by the rules that load it; Save writes it and the
    audit log (engineers only). ``text`` starts the editor with other text than the file's (the recipe form's
    unsaved values); the audit entry still compares with the file."""

    def __init__(
        self,
        kind: FileKind,
        path: Path,
        access: AccessController,
        parent: QWidget | None = None,
        *,
        text: str | None = None,
    ) -> None:
        super().__init__(parent)
        self.kind, self.path, self.access = kind, Path(path), access
        self.setObjectName("settingsEditor")
        self.setWindowTitle(f"Edit {kind.what}: {self.path.name}")
        try:
            self.original = self.path.read_text(encoding="utf-8")
        except OSError:
            self.original = ""
        self.saved_path: Path | None = None
        self.where = QLabel(str(self.path))
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text = QPlainTextEdit(self.original if text is None else text)
        self.text.setObjectName("editorText")
        self.text.setFont(QFont("monospace", 10))
        self.problems = QLabel("")
        self.problems.setObjectName("editorProblems")
        self.problems.setWordWrap(True)
        self.problems.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        check = QPushButton("Check")
        check.clicked.connect(self.check)
        self.save_button = QPushButton("Save")
        self.save_button.setObjectName("editorSave")
        self.save_button.clicked.connect(lambda: self.save(self.path))
        save_as = QPushButton("Save as…")
        save_as.clicked.connect(self._save_as)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        for button in (self.save_button, save_as):
            access.gate(button, kind.permission, f"Write the {kind.what} (checked first; the change is audited)")
        buttons = QHBoxLayout()
        for button in (check, self.save_button, save_as):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.where)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.problems)
        layout.addLayout(buttons)
        self.resize(760, 720)

    def check(self) -> bool:
        problems = file_problems(self.kind, self.text.toPlainText(), str(self.path))
        if problems:
            self.problems.setStyleSheet("color:#b3261e;")
            self.problems.setText("Problems:\n" + "\n".join(f"• {problem}" for problem in problems))
        else:
            self.problems.setStyleSheet("color:#1e7e34;")
            self.problems.setText(f"The {self.kind.what} is valid.")
        return not problems

    def save(self, path: Path) -> bool:
        if not self.check():
            return False
        previous = self.original if path == self.path else (path.read_text("utf-8") if path.exists() else None)
        if not save_settings_file(self.kind, path, self.text.toPlainText(), self.access, previous_text=previous):
            return False
        self.saved_path = path
        self.problems.setText(f"Saved {path} (the change is in the audit log).")
        if path == self.path:
            self.original = self.text.toPlainText()
        return True

    def _save_as(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, f"Save the {self.kind.what} as", str(self.path), "TOML (*.toml)")
        if path:
            self.save(Path(path))


# ---------------------------------------------------------------------------------------------------------------------
# The audit log
# ---------------------------------------------------------------------------------------------------------------------


class AuditLogDialog(QDialog):
    """The latest entries of the audit log, newest last, and whether its hash chain is intact."""

    SHOWN = 500

    def __init__(self, log: AuditLog, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Audit log")
        self.setObjectName("auditLogDialog")
        text = QPlainTextEdit()
        text.setObjectName("auditText")
        text.setReadOnly(True)
        text.setFont(QFont("monospace", 9))
        try:
            entries = log.entries()
            problems = log.verify()
        except Exception as error:  # noqa: BLE001 - shown, not raised: the log is only being read
            entries, problems = [], [str(error)]
        lines = [
            f"{entry.seq:>6}  {entry.time_utc}  {entry.user:<12} {entry.role:<9} {entry.action:<20} "
            f"{_short(entry.details)}"
            for entry in entries[-self.SHOWN :]
        ]
        text.setPlainText("\n".join(lines) or "(empty)")
        status = QLabel(
            f"{log.path} · {len(entries):,} entries · "
            + ("hash chain intact" if not problems else "PROBLEMS: " + "; ".join(problems[:5]))
        )
        status.setObjectName("auditStatus")
        status.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(status)
        layout.addWidget(text, 1)
        layout.addWidget(buttons)
        self.resize(1100, 600)


def _short(details: dict[str, Any], limit: int = 160) -> str:
    text = ", ".join(f"{key}={value}" for key, value in details.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"
