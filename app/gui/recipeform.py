"""The recipe form: every field of a recipe, generated from the settings dataclasses, checked as it is typed.

:class:`RecipeEditor` shows one group per section of :class:`~inspection.recipe.Recipe` (``[substrate]``,
``[grid]`` …, and the recipe's ``name``), one row per field of the section's frozen settings class. The rows are
made from the dataclass fields and their :func:`~inspection.settings.setting` metadata (type, unit, range, choices,
documentation), not written one by one, so a field added to a settings class appears here by itself:

* a ``bool`` is a checkbox; an enum or a field with ``choices`` a drop-down; a number, a list of numbers or a text
  a line edit (a list as ``a, b, c``). Values are shown in the file's own units, so that the recipe's messages
  (which quote the file's values) match what is typed.
* Every change is checked, after a short pause and **off the GUI thread** (a recipe of a fine grid on a large
  wafer takes a good part of a second), by the rules that load a recipe (:func:`inspection.settings.from_mapping`
  and the classes' ``__post_init__``). Each problem is shown **on the field it names** (red frame, the message
  under the field), a problem of a section as a whole on its group; while the recipe is valid the **plan**
  (:func:`inspection.plan.plan_scan`: lines, samples, data volume, duration) is shown beside the form.
* **Save** / **Save as…** write only a valid recipe, through :func:`app.gui.dialogs.save_settings_file`: checked
  again, the change audited field by field, then written atomically (a temporary file renamed over the target).
  The file's comments and layout are kept: only the values changed are replaced in the text, with tomlkit
  (checked by reading the result back).
* Only engineers edit (:data:`~inspection.access.Permission.EDIT_RECIPE`); an operator sees the same form
  read-only. **Edit as TOML…** opens the text editor (:class:`~app.gui.dialogs.SettingsEditor`) for the rare edit
  the form does not offer (comments, an unknown key to remove).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import math
import re
import tomllib
import typing
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import tomlkit
import tomlkit.exceptions
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.gui.access import AccessController, denied_tip
from app.gui.dialogs import FileKind, SettingsEditor, save_settings_file
from app.gui.tasks import TaskRunner
from inspection.access import Permission
from inspection.plan import plan_scan
from inspection.recipe import Recipe
from inspection.settings import SettingsError, from_mapping, load_toml, range_text
from inspection.wafer import Placement

NOMINAL_ACCEL_UM_S2 = 3e6
"""Stage acceleration the plan assumes before the station is connected (the virtual station's)."""

ERROR_STYLE = "border: 2px solid #d93025; background: #fdecea;"
READ_ONLY_STYLE = "background: #eceff1; color: #37474f;"
MESSAGE_STYLE = "color:#b3261e;"
NOTE_STYLE = "color:#5f6368;"


def report_label(object_name: str, *, monospace: bool = False) -> QLabel:
    """A label for a block of generated text (a plan, a list of problems): wrapped, top-left, selectable to copy."""
    label = QLabel("")
    label.setObjectName(object_name)
    if monospace:
        label.setFont(QFont("monospace", 9))
    label.setWordWrap(True)
    label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


CHECK_DELAY_MS = 200
"""Pause after the last key press before the recipe is checked (every key press would start a check)."""

RECIPE_HEADER = "# plmapper scan recipe; every field is documented in docs/recipes.md\n"

_ABSENT = object()
"""An emptied field: the key is left out of the file (its default applies; a required field is then reported)."""


# ---------------------------------------------------------------------------------------------------------------------
# The fields, from the settings dataclasses
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One field of a recipe: where it is (``section`` is "" for a top-level key), its type and its metadata."""

    section: str
    name: str
    hint: Any
    field: dataclasses.Field

    @property
    def path(self) -> str:
        """The dotted name the recipe's messages use (``sampling.velocity_um_s``)."""
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def meta(self) -> typing.Mapping[str, Any]:
        return self.field.metadata

    @property
    def default(self) -> Any:
        """The field's default in the file's form (an enum by its value), or ``_ABSENT`` for a required field."""
        default = self.field.default
        if default is dataclasses.MISSING:
            return _ABSENT
        return default.value if isinstance(default, enum.Enum) else default

    def describe(self) -> str:
        """What the field is and what is allowed, from its metadata."""
        parts = [self.meta.get("doc", "")]
        if self.meta.get("choices"):
            parts.append("one of " + ", ".join(_text(choice) for choice in self.meta["choices"]))
        elif self.meta.get("minimum") is not None or self.meta.get("maximum") is not None:
            parts.append(range_text(self.meta))
        if self.default is not _ABSENT:
            parts.append(f"default {_text(self.default)}")
        else:
            parts.append("required")
        return " · ".join(part for part in parts if part)


@dataclass(frozen=True)
class SectionSpec:
    """A section of the recipe (``""``: the top-level keys) and its fields."""

    name: str
    doc: str
    fields: tuple[FieldSpec, ...]


def recipe_sections(cls: type = Recipe) -> list[SectionSpec]:
    """The recipe's sections and fields, in the order of the dataclasses: the top-level keys first."""
    hints = typing.get_type_hints(cls)
    top: list[FieldSpec] = []
    sections: list[SectionSpec] = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            inner = typing.get_type_hints(hint)
            specs = tuple(FieldSpec(field.name, sub.name, inner[sub.name], sub) for sub in dataclasses.fields(hint))
            sections.append(SectionSpec(field.name, field.metadata.get("doc", ""), specs))
        else:
            top.append(FieldSpec("", field.name, hint, field))
    return [SectionSpec("", "the recipe", tuple(top)), *sections]


def _text(value: Any) -> str:
    """A value as the form shows it: exact (``repr`` of a float round-trips), lists as ``a, b``."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(item) for item in value)
    return "" if value is None or value is _ABSENT else str(value)


def _number(text: str, hint: Any) -> Any:
    """A number typed into a field of type ``hint``; text that is no number is passed on as text, so the recipe's
    own check names the problem ("expected a number, got 'abc'")."""
    text = text.strip()
    try:
        if hint is int and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) or hint is not int else text


def _typed(value: Any, hint: Any) -> Any:
    """A number in the TOML type of its field (``300000`` typed into a float field is written ``300000.0``)."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _is_enum(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, enum.Enum)


# ---------------------------------------------------------------------------------------------------------------------
# One field's widget
# ---------------------------------------------------------------------------------------------------------------------


class FieldEditor:
    """The widget of one field with its problem message; shows values and gives back what was typed."""

    def __init__(self, spec: FieldSpec, changed) -> None:
        self.spec = spec
        hint = spec.hint
        origin = typing.get_origin(hint)
        self.is_list = origin is tuple
        self.item_hint = typing.get_args(hint)[0] if self.is_list else hint
        choices = [member.value for member in hint] if _is_enum(hint) else list(spec.meta.get("choices") or ())
        self.widget: QLineEdit | QComboBox | QCheckBox
        if hint is bool:
            self.widget = QCheckBox()
            self.widget.toggled.connect(changed)
        elif choices:
            self.widget = QComboBox()
            self.widget.addItems([_text(choice) for choice in choices])
            self.widget.currentTextChanged.connect(changed)
        else:
            self.widget = QLineEdit()
            self.widget.textEdited.connect(changed)
            if spec.default is not _ABSENT:
                self.widget.setPlaceholderText(f"default {_text(spec.default)}")
        self.widget.setObjectName(f"recipe_{spec.path}")
        self.widget.setMinimumWidth(170)
        self.message = QLabel("")
        self.message.setObjectName(f"problem_{spec.path}")
        self.message.setWordWrap(True)
        self.message.setStyleSheet(MESSAGE_STYLE)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        self.editable = True
        self.problem = ""
        self.file_text = ""  # the text of the file's value: a field showing it is unchanged

    def text(self) -> str:
        widget = self.widget
        if isinstance(widget, QCheckBox):
            return _text(widget.isChecked())
        if isinstance(widget, QComboBox):
            return widget.currentText()
        return widget.text()

    def show_value(self, value: Any) -> None:
        """Show ``value`` (the file's, or ``_ABSENT``: the default) without signalling a change."""
        shown = self.spec.default if value is _ABSENT else value
        widget = self.widget
        widget.blockSignals(True)
        try:
            if isinstance(widget, QCheckBox):
                widget.setChecked(bool(shown) if isinstance(shown, bool) else False)
            elif isinstance(widget, QComboBox):
                text = _text(shown)
                if widget.findText(text) < 0:  # a value that is not allowed: shown, and reported by the check
                    widget.addItem(text)
                widget.setCurrentText(text)
            else:
                widget.setText(_text(value))  # absent: empty, the default as placeholder
        finally:
            widget.blockSignals(False)

    def value(self) -> Any:
        """What the field holds, in the file's form; ``_ABSENT`` for an emptied line edit."""
        widget, text = self.widget, self.text()
        if isinstance(widget, QCheckBox):
            return widget.isChecked()
        if self.is_list:
            items = [item for item in re.split(r"[,\s]+", text.strip()) if item]
            return [_typed(_number(item, self.item_hint), self.item_hint) for item in items]
        if not text.strip() and isinstance(widget, QLineEdit) and self.item_hint is not str:
            return _ABSENT
        if self.item_hint in (int, float):
            return _typed(_number(text, self.item_hint), self.item_hint)
        return text

    def set_editable(self, editable: bool) -> None:
        self.editable = editable
        widget = self.widget
        if isinstance(widget, QLineEdit):
            widget.setReadOnly(not editable)
        else:
            widget.setEnabled(editable)
        self._style()

    def set_problem(self, problem: str) -> None:
        self.problem = problem
        self.message.setText(problem)
        self.message.setVisible(bool(problem))
        self._style()

    def _style(self) -> None:
        if self.problem:
            self.widget.setStyleSheet(ERROR_STYLE)
        else:
            self.widget.setStyleSheet("" if self.editable else READ_ONLY_STYLE)
        tip = self.spec.describe()
        if not self.editable:
            tip += "\n\n" + denied_tip(Permission.EDIT_RECIPE)
        self.widget.setToolTip(f"{self.problem}\n\n{tip}" if self.problem else tip)


# ---------------------------------------------------------------------------------------------------------------------
# Checking (on a worker) and writing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeCheck:
    """The outcome of checking a recipe: the recipe (None when invalid), every problem, and the plan's summary."""

    recipe: Recipe | None
    problems: tuple[str, ...]
    plan: str


def check_recipe(data: dict[str, Any], source: str, accel_um_s2: float = NOMINAL_ACCEL_UM_S2) -> RecipeCheck:
    """Check ``data`` (a recipe file's table) by the rules that load a recipe and, when valid, plan its scan at the
    nominal placement. No Qt: runs on a worker.

    Examples
    --------
    >>> from inspection.settings import load_toml
    >>> data = load_toml("resources/recipes/demo-2in.toml")
    >>> "lines per pass: 1,830" in check_recipe(data, "demo").plan
    True
    >>> data["sampling"]["line_pitch_um"] = 40.0
    >>> check_recipe(data, "demo").problems[0].startswith("sampling.line_pitch_um: 40.0 µm must be at most 30 µm")
    True
    """
    try:
        recipe = from_mapping(Recipe, data, source=source)
    except SettingsError as error:
        return RecipeCheck(None, tuple(error.problems), "")
    plan = plan_scan(recipe, Placement(), accel_um_s2=accel_um_s2)
    return RecipeCheck(recipe, (), plan.summary())


def problem_target(problem: str) -> tuple[str, str]:
    """(section, field) a problem names: ``("sampling", "velocity_um_s")`` for ``sampling.velocity_um_s: …``,
    ``("grid", "")`` for ``grid: …``, ``("", "name")`` for ``name: …``; ``("", "")`` for none."""
    match = re.match(r"([A-Za-z_]+)(?:\.([A-Za-z_]+))?(?:\[\d+\])?\s*[:<]", problem)
    if match is None:
        return "", ""
    first, second = match.group(1), match.group(2) or ""
    return (first, second) if second else (first, "")


def patch_toml(text: str, after: dict[str, Any]) -> str | None:
    """``text`` (a TOML file) with its values made those of ``after`` (keys ``after`` lacks removed), comments and
    layout kept (tomlkit); None when ``text`` is not TOML or the result does not read back as ``after``.

    Examples
    --------
    >>> text = 'name = "a"  # the name\\n\\n[grid]\\npitch_um = 2.0  # µm\\n'
    >>> print(patch_toml(text, {"name": "a", "grid": {"pitch_um": 3.5}}))
    name = "a"  # the name
    <BLANKLINE>
    [grid]
    pitch_um = 3.5  # µm
    <BLANKLINE>
    """
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError:
        return None
    _update_table(document, after)
    patched = tomlkit.dumps(document)
    try:
        return patched if tomllib.loads(patched) == after else None
    except tomllib.TOMLDecodeError:
        return None


def _update_table(table: MutableMapping[str, Any], values: dict[str, Any]) -> None:
    """Make a tomlkit table hold ``values``, touching only what differs (an unchanged value keeps its text)."""
    for key in [key for key in table if key not in values]:
        del table[key]
    for key, value in values.items():
        current = table.get(key)
        if isinstance(value, dict) and isinstance(current, MutableMapping):
            _update_table(current, value)
        elif current is None or _plain(current) != value:
            table[key] = value


def _plain(item: Any) -> Any:
    """A tomlkit item as plain Python values (what tomllib would read)."""
    return item.unwrap() if hasattr(item, "unwrap") else item


def recipe_text(original_text: str, after: dict[str, Any]) -> str:
    """The text to write for recipe table ``after``: the original text with the changed values put in place
    (:func:`patch_toml`), else the whole table as TOML."""
    patched = patch_toml(original_text, after) if original_text else None
    return patched if patched is not None else RECIPE_HEADER + tomli_w.dumps(after)


# ---------------------------------------------------------------------------------------------------------------------
# The dialog
# ---------------------------------------------------------------------------------------------------------------------


class RecipeEditor(QDialog):
    """Every field of a recipe file in a form (see the module docstring). ``saved(path)`` after each save.

    ``data`` starts the form with other values than the file's (the Scan tab's edited run fields): the form is then
    edited from the start, and Save writes them.
    """

    saved = Signal(str)

    def __init__(
        self,
        path: Path,
        access: AccessController,
        runner: TaskRunner,
        parent: QWidget | None = None,
        *,
        data: dict[str, Any] | None = None,
        accel_um_s2: float = NOMINAL_ACCEL_UM_S2,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("recipeEditor")
        self.access, self.runner, self.accel_um_s2 = access, runner, accel_um_s2
        self.path = Path(path)
        self.saved_path: Path | None = None
        self.check: RecipeCheck | None = None
        self._generation = 0  # of the form's content; a check's result counts only for the content it checked
        self._checked_generation = -1
        self._check_running = False
        self._closed = False  # a check still running when the form closes must not touch its widgets
        self._timer = QTimer(self, singleShot=True, interval=CHECK_DELAY_MS)
        self._timer.timeout.connect(self._start_check)
        self.editors: dict[str, FieldEditor] = {}
        self.section_messages: dict[str, QLabel] = {}
        self._build()
        self.load(self.path, data)
        access.changed.connect(self._session_changed)
        self._apply_access()
        screen = self.screen().availableGeometry()
        self.resize(min(1400, int(screen.width() * 0.92)), min(900, int(screen.height() * 0.9)))

    # -- widgets -----------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.where = QLabel("")
        self.where.setObjectName("recipeEditorPath")
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.note = QLabel("")
        self.note.setObjectName("recipeEditorNote")
        self.note.setWordWrap(True)
        form = QWidget()
        form_layout = QVBoxLayout(form)
        sections = recipe_sections()
        # one width for the name column of every group, so that the fields line up from group to group
        metrics = self.fontMetrics()
        name_width = max(metrics.horizontalAdvance(spec.name) for section in sections for spec in section.fields)
        unit_width = max(metrics.horizontalAdvance(spec.meta.get("unit", "")) for s in sections for spec in s.fields)
        for section in sections:
            title = f"[{section.name}]  {section.doc}" if section.name else "Recipe"
            box = QGroupBox(title)
            box.setObjectName(f"recipeSection_{section.name or 'top'}")
            grid = QGridLayout(box)
            grid.setColumnStretch(3, 1)
            grid.setColumnMinimumWidth(0, name_width + 8)
            grid.setColumnMinimumWidth(1, 200)
            grid.setColumnMinimumWidth(2, unit_width + 4)
            grid.setVerticalSpacing(3)
            message = QLabel("")
            message.setWordWrap(True)
            message.setStyleSheet(MESSAGE_STYLE)
            message.setObjectName(f"sectionProblem_{section.name or 'top'}")
            message.hide()
            self.section_messages[section.name] = message
            grid.addWidget(message, 0, 0, 1, 4)
            for index, spec in enumerate(section.fields):
                editor = FieldEditor(spec, self._edited)
                self.editors[spec.path] = editor
                row = 1 + 2 * index
                label = QLabel(spec.name)
                label.setToolTip(spec.describe())
                unit = QLabel(spec.meta.get("unit", ""))
                hint = QLabel(spec.describe())
                hint.setWordWrap(True)
                hint.setStyleSheet(NOTE_STYLE)
                grid.addWidget(label, row, 0)
                grid.addWidget(editor.widget, row, 1)
                grid.addWidget(unit, row, 2)
                grid.addWidget(hint, row, 3)
                grid.addWidget(editor.message, row + 1, 1, 1, 3)
            form_layout.addWidget(box)
        form_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setObjectName("recipeFormScroll")
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(form)
        self.scroll = scroll

        self.plan_text = report_label("recipeEditorPlan", monospace=True)
        plan_box = QGroupBox("Plan (nominal placement, before alignment)")
        QVBoxLayout(plan_box).addWidget(self.plan_text)
        self.problems = report_label("recipeEditorProblems")
        problems_box = QGroupBox("Check")
        QVBoxLayout(problems_box).addWidget(self.problems)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(plan_box)
        side_layout.addWidget(problems_box)
        side_layout.addStretch(1)
        side_scroll = QScrollArea()
        side_scroll.setWidgetResizable(True)
        side_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        side_scroll.setWidget(side)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("recipeEditorSplitter")
        splitter.addWidget(scroll)
        splitter.addWidget(side_scroll)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([760, 440])

        self.toml_button = QPushButton("Edit as TOML…")
        self.toml_button.setObjectName("recipeTomlButton")
        self.toml_button.clicked.connect(self.edit_as_toml)
        self.revert_button = QPushButton("Revert")
        self.revert_button.setObjectName("recipeRevertButton")
        self.revert_button.setToolTip("Show the file's values again (the changes are dropped)")
        self.revert_button.clicked.connect(lambda: self.load(self.path))
        self.save_button = QPushButton("Save")
        self.save_button.setObjectName("recipeSaveButton")
        self.save_button.clicked.connect(lambda: self.save())  # noqa: PLW0108 - clicked passes a bool
        self.save_as_button = QPushButton("Save as…")
        self.save_as_button.setObjectName("recipeSaveAsButton")
        self.save_as_button.clicked.connect(self._save_as)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        self.access.gate(self.toml_button, Permission.EDIT_RECIPE, "The recipe file as text (comments, unknown keys)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.toml_button)
        buttons.addWidget(self.revert_button)
        buttons.addStretch(1)
        self.status = QLabel("")
        self.status.setObjectName("recipeEditorStatus")
        self.status.setWordWrap(True)
        buttons.addWidget(self.status, 3)
        for button in (self.save_button, self.save_as_button, close):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.where)
        layout.addWidget(self.note)
        layout.addWidget(splitter, 1)
        layout.addLayout(buttons)

    # -- content -----------------------------------------------------------------------------------------------------
    def load(self, path: Path, data: dict[str, Any] | None = None) -> bool:
        """Show recipe file ``path`` (or ``data`` as an edit of it); False (and the reason in the status line) if the
        file cannot be read."""
        self.path = Path(path)
        self.setWindowTitle(f"Recipe: {self.path.name}")
        self.where.setText(str(self.path))
        try:
            self.file_text = self.path.read_text(encoding="utf-8")
            self.file_data = load_toml(self.path)
        except (OSError, SettingsError) as error:
            problems = error.problems if isinstance(error, SettingsError) else [str(error)]
            self.file_text, self.file_data = "", {}
            self._set_status("Cannot read the recipe: " + "; ".join(problems) + " (Edit as TOML… to repair it).")
        shown = data if data is not None else self.file_data
        for editor in self.editors.values():
            editor.show_value(_lookup(self.file_data, editor.spec))  # the file's value first: what "changed" means
            editor.file_text = editor.text()
            if data is not None:
                editor.show_value(_lookup(shown, editor.spec))
        self._edited()
        return bool(self.file_data)

    def edited_data(self) -> dict[str, Any]:
        """The file's table with the form's changes: a field whose text is as the file has it keeps the file's entry
        (present or absent); an emptied field is left out."""
        data = copy.deepcopy(self.file_data)
        for editor in self.editors.values():
            if editor.text() == editor.file_text:
                continue
            spec, value = editor.spec, editor.value()
            table = data.setdefault(spec.section, {}) if spec.section else data
            if not isinstance(table, dict):
                continue  # "[grid]" is no table in the file: reported by the check, nothing to put a field into
            if value is _ABSENT:
                table.pop(spec.name, None)
            else:
                table[spec.name] = value
        return data

    def is_edited(self) -> bool:
        return bool(self.file_data) and self.edited_data() != self.file_data

    def is_checked(self) -> bool:
        """The latest check is of what the form shows now (no check pending)."""
        return self._checked_generation == self._generation

    def is_valid(self) -> bool:
        """The latest check is of what the form shows now, and it found no problem."""
        return self.is_checked() and self.check is not None and self.check.recipe is not None

    def _edited(self, *_: object) -> None:
        self._generation += 1
        self._timer.start()
        self._update_buttons()

    # -- checking ----------------------------------------------------------------------------------------------------
    def _start_check(self) -> None:
        if self._check_running or self._closed:
            return  # started again when the running one ends (its result is stale by then)
        generation, data, source = self._generation, self.edited_data(), str(self.path)
        self._check_running = True
        accel = self.accel_um_s2

        def work(progress, cancel) -> RecipeCheck:
            return check_recipe(data, source, accel)

        def done(check: RecipeCheck) -> None:
            if generation == self._generation and not self._closed:
                self._show_check(generation, check)

        def failed(title: str, text: str) -> None:
            if generation == self._generation and not self._closed:
                self._show_check(generation, RecipeCheck(None, (f"{title}: {text}",), ""))

        def always() -> None:
            self._check_running = False
            if generation != self._generation:
                self._start_check()

        self.runner.start(work, "Checking the recipe", done=done, failed=failed, always=always, visible=False)

    def wait_checked(self) -> None:
        """Start the check of what the form shows now without the pause (tests, and Save right after a key press)."""
        self._timer.stop()
        self._start_check()

    def _show_check(self, generation: int, check: RecipeCheck) -> None:
        self.check = check
        self._checked_generation = generation
        by_field: dict[str, list[str]] = {}
        by_section: dict[str, list[str]] = {}
        general: list[str] = []
        for problem in check.problems:
            section, name = problem_target(problem)
            path = f"{section}.{name}" if name else section
            if path in self.editors:
                by_field.setdefault(path, []).append(problem)
            elif section in self.section_messages and section:
                by_section.setdefault(section, []).append(problem)
            else:
                general.append(problem)
        for path, editor in self.editors.items():
            editor.set_problem("\n".join(by_field.get(path, [])))
        for section, label in self.section_messages.items():
            text = "\n".join(by_section.get(section, []) + (general if section == "" else []))
            label.setText(text)
            label.setVisible(bool(text))
        if check.recipe is None:
            count = len(check.problems)
            self.problems.setStyleSheet(MESSAGE_STYLE)
            self.problems.setText(
                f"{count} problem{'s' if count != 1 else ''} (marked red on the fields):\n"
                + "\n".join(f"• {problem}" for problem in check.problems)
            )
            self.plan_text.setText("The plan is shown once the recipe is valid.")
        else:
            layout = check.recipe.layout()
            self.problems.setStyleSheet("color:#1e7e34;")
            self.problems.setText(
                f"The recipe is valid: {layout.chip_count:,} usable chips on the "
                f"{check.recipe.substrate.diameter_mm:g} mm wafer."
            )
            note = "" if self.accel_um_s2 != NOMINAL_ACCEL_UM_S2 else "\n(stage acceleration assumed 3000 mm/s²)"
            self.plan_text.setText(check.plan + note)
        self._update_buttons()

    # -- access ------------------------------------------------------------------------------------------------------
    def editable(self) -> bool:
        return self.access.allows(Permission.EDIT_RECIPE)

    def _apply_access(self) -> None:
        editable = self.editable()
        for editor in self.editors.values():
            editor.set_editable(editable)
        if editable:
            self.note.setStyleSheet(NOTE_STYLE)
            self.note.setText(
                "Every field of the recipe file, checked as you type by the rules that load it; a problem is shown on "
                "its field. Save writes only a valid recipe and records the change in the audit log."
            )
        else:
            self.note.setStyleSheet("background:#fff3cd; color:#5c4400; padding:4px;")
            self.note.setText(f"Read-only: {denied_tip(Permission.EDIT_RECIPE)}")
        self._update_buttons()

    def _session_changed(self, session) -> None:
        if not session.is_engineer:
            self.load(self.path)  # as in the Scan tab: an operator sees the recipe as it is, edits are dropped
        self._apply_access()

    def _update_buttons(self) -> None:
        editable, valid, edited = self.editable(), self.is_valid(), self.is_edited()
        pending = not self.is_checked()
        self.save_button.setEnabled(editable and valid and edited)
        self.save_as_button.setEnabled(editable and valid)
        self.revert_button.setEnabled(editable and edited)
        if not editable:
            tip = denied_tip(Permission.EDIT_RECIPE)
        elif pending:
            tip = "checking the recipe …"
        elif not valid:
            tip = "Fix the fields marked red first: only a valid recipe is saved"
        else:
            tip = "Write the recipe (checked again; the change is audited)"
        for button in (self.save_button, self.save_as_button):
            button.setToolTip(tip)
        if editable:
            self._set_status(
                "checking …" if pending else ("changed, not saved" if edited else "as in the file"),
                error=not pending and not valid,
            )
        else:
            self._set_status("read-only")

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status.setStyleSheet(MESSAGE_STYLE if error else NOTE_STYLE)
        self.status.setText(text)

    # -- saving ------------------------------------------------------------------------------------------------------
    def save(self, path: Path | None = None) -> bool:
        """Write the recipe to ``path`` (default: its file): engineers only, only when valid; audited, atomic."""
        target = Path(path) if path is not None else self.path
        if not self.access.require(Permission.EDIT_RECIPE):
            return False
        if not self.is_valid():
            pending = not self.is_checked()
            reason = "still being checked: save again in a moment" if pending else "has problems (marked red)"
            self._set_status(f"Not saved: the recipe {reason}.", error=True)
            if not pending:
                problems = "\n".join(self.check.problems if self.check is not None else ())
                text = f"Not saved. Fix the fields marked red first:\n{problems}"
                self.access.failed.emit("The recipe has problems", text)
            return False
        data = self.edited_data()
        text = recipe_text(self.file_text, data)
        if target == self.path:
            previous: str | None = self.file_text
        else:
            try:
                previous = target.read_text("utf-8") if target.exists() else None
            except OSError:
                previous = None
        if not save_settings_file(FileKind.RECIPE, target, text, self.access, previous_text=previous):
            return False
        self.saved_path = target
        self.load(target)
        self._set_status(f"Saved {target.name} (the change is in the audit log).")
        self.saved.emit(str(target))
        return True

    def _save_as(self) -> None:
        start = str(self.path.with_name(self.path.stem + "-edited.toml"))
        path, _ = QFileDialog.getSaveFileName(self, "Save the recipe as", start, "Recipes (*.toml)")
        if path:
            self.save(Path(path))

    def edit_as_toml(self) -> None:
        """The recipe as text (engineers): the form's values, with the file's comments; the form shows what was
        saved there."""
        if not self.access.require(Permission.EDIT_RECIPE):
            return
        text = recipe_text(self.file_text, self.edited_data()) if self.is_edited() else None
        editor = SettingsEditor(FileKind.RECIPE, self.path, self.access, self, text=text)
        self.toml_editor = editor
        editor.exec()
        if editor.saved_path is not None:
            self.saved_path = editor.saved_path
            self.load(editor.saved_path)
            self.saved.emit(str(editor.saved_path))

    def done(self, result: int) -> None:
        """Closed (saved or not): no more checks, and no more following the session."""
        self._closed = True
        self._timer.stop()
        with contextlib.suppress(RuntimeError, TypeError):  # already disconnected
            self.access.changed.disconnect(self._session_changed)
        super().done(result)

    def reject(self) -> None:
        """Close (the Close button, Escape, the title bar's X): asks first when there are unsaved changes."""
        if self.editable() and self.is_edited():
            answer = QMessageBox.question(
                self, "Unsaved changes", "Close the recipe form and drop the changes that are not saved?"
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        super().reject()


def _lookup(data: dict[str, Any], spec: FieldSpec) -> Any:
    table = data.get(spec.section, {}) if spec.section else data
    return table.get(spec.name, _ABSENT) if isinstance(table, dict) else _ABSENT
