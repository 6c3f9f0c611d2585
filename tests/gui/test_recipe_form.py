"""The recipe form (app/gui/recipeform.py): every field generated from the settings dataclasses, a problem shown on
its field and Save refused, a saved recipe that loads back equal (comments kept, audited), operators read-only."""

from __future__ import annotations

import dataclasses
import shutil
import tomllib
import typing
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit

from app.gui.recipeform import RecipeEditor, patch_toml, problem_target, recipe_sections
from inspection.access import Role, Session
from inspection.recipe import Recipe, load_recipe
from inspection.settings import from_mapping, load_toml
from tests.gui.conftest import audit_entries
from tests.gui.data import DEMO_RECIPE


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    """A copy of the demo recipe (with its comments) that the tests may overwrite."""
    path = tmp_path / "demo.toml"
    shutil.copyfile(DEMO_RECIPE, path)
    return path


def open_form(qtbot, window, path: Path) -> RecipeEditor:
    window.scan.select_recipe(path)
    form = window.scan.edit_recipe_file()
    assert form is not None
    qtbot.addWidget(form)
    checked(qtbot, form)
    return form


def checked(qtbot, form: RecipeEditor) -> None:
    """Wait for the check (on a worker) of what the form shows now."""
    form.wait_checked()
    qtbot.waitUntil(form.is_checked, timeout=10_000)


def type_into(form: RecipeEditor, path: str, text: str) -> None:
    widget = form.editors[path].widget
    if isinstance(widget, QLineEdit):
        widget.setText(text)
        widget.textEdited.emit(text)
    elif isinstance(widget, QComboBox):
        widget.setCurrentText(text)
    else:
        widget.setChecked(text == "true")


def test_every_recipe_field_is_in_the_form_with_its_kind_of_widget(qtbot, window, recipe_file) -> None:
    window.access.set_session(Session("bob", Role.ENGINEER))
    form = open_form(qtbot, window, recipe_file)
    expected = set()
    hints = typing.get_type_hints(Recipe)
    for field in dataclasses.fields(Recipe):
        if dataclasses.is_dataclass(hints[field.name]):
            expected |= {f"{field.name}.{sub.name}" for sub in dataclasses.fields(hints[field.name])}
        else:
            expected.add(field.name)
    assert set(form.editors) == expected
    assert [section.name for section in recipe_sections()][:3] == ["", "substrate", "grid"]
    assert isinstance(form.editors["alignment.enabled"].widget, QCheckBox)
    assert isinstance(form.editors["sampling.mode"].widget, QComboBox)  # an enum
    assert isinstance(form.editors["substrate.diameter_mm"].widget, QComboBox)  # choices in the metadata
    assert isinstance(form.editors["excitation.powers_w"].widget, QLineEdit)
    assert form.editors["excitation.powers_w"].text() == "0.0005, 0.02"
    # the file's values, and the plan of the valid recipe
    assert form.is_valid() and not form.is_edited()
    assert "lines per pass: 1,830" in form.plan_text.text() and "data volume: 276.0 MB" in form.plan_text.text()
    assert "estimated duration" in form.plan_text.text()
    # an optional section the file leaves out shows its defaults
    assert form.editors["classification.dim_fraction"].text() == ""
    assert "default 0.7" in form.editors["classification.dim_fraction"].widget.placeholderText()


def test_a_bad_value_is_shown_on_its_field_and_save_is_refused(qtbot, window, recipe_file, station_home) -> None:
    window.access.set_session(Session("bob", Role.ENGINEER))
    form = open_form(qtbot, window, recipe_file)
    before = recipe_file.read_text()
    type_into(form, "sampling.line_pitch_um", "40")
    checked(qtbot, form)
    editor = form.editors["sampling.line_pitch_um"]
    assert "sampling.line_pitch_um: 40.0 µm must be at most 30 µm in raster mode" in editor.message.text()
    assert editor.message.isVisibleTo(form) and "border" in editor.widget.styleSheet()
    assert editor.problem in editor.widget.toolTip()
    others = [other for path, other in form.editors.items() if path != "sampling.line_pitch_um"]
    assert not any(other.problem for other in others)  # only the wrong field is marked
    assert not form.is_valid() and not form.save_button.isEnabled() and not form.save_as_button.isEnabled()
    assert "plan is shown once the recipe is valid" in form.plan_text.text()
    assert not form.save()
    assert window.last_error[0] == "The recipe has problems"
    assert recipe_file.read_text() == before
    assert not [entry for entry in audit_entries(station_home) if entry.action == "recipe_saved"]
    # text that is no number, and a rule between two fields: each on its own field
    type_into(form, "sampling.line_pitch_um", "25.0")
    type_into(form, "spectra.points", "many")
    type_into(form, "focus.safe_z_um", "3000")
    checked(qtbot, form)
    assert form.editors["sampling.line_pitch_um"].problem == ""
    assert "expected a number, got 'many'" in form.editors["spectra.points"].message.text()
    assert "must be at most focus_z_um" in form.editors["focus.safe_z_um"].message.text()
    assert "2 problems" in form.problems.text()
    # put back as in the file: valid, and nothing to save
    type_into(form, "spectra.points", "801")
    type_into(form, "focus.safe_z_um", "0.0")
    checked(qtbot, form)
    assert form.is_valid() and not form.is_edited() and not form.save_button.isEnabled()


def test_a_good_edit_saves_a_recipe_that_loads_back_equal(qtbot, window, recipe_file, station_home, tmp_path) -> None:
    window.access.set_session(Session("bob", Role.ENGINEER))
    form = open_form(qtbot, window, recipe_file)
    original = load_toml(recipe_file)
    type_into(form, "sampling.velocity_um_s", "80000")
    type_into(form, "spectra.include_flagged", "false")
    type_into(form, "sampling.mode", "grid-locked")
    type_into(form, "classification.dim_fraction", "0.65")  # a section the file does not have
    checked(qtbot, form)
    assert form.is_valid() and form.is_edited() and form.save_button.isEnabled()
    assert "grid-locked lines" in form.plan_text.text()  # the plan follows the edit
    saved: list[str] = []
    form.saved.connect(saved.append)
    form.save_button.click()
    assert saved == [str(recipe_file)] and window.last_error is None
    expected = dict(original)
    expected["sampling"] = {**original["sampling"], "velocity_um_s": 80000.0, "mode": "grid-locked"}
    expected["spectra"] = {**original["spectra"], "include_flagged": False}
    expected["classification"] = {"dim_fraction": 0.65}
    assert load_toml(recipe_file) == expected
    assert load_recipe(recipe_file) == from_mapping(Recipe, expected)
    text = recipe_file.read_text()
    assert text.startswith("# Demo recipe for the virtual 2")  # the file's comments are kept
    assert "velocity_um_s = 80000.0  # 100 mm/s" in text  # the value replaced in place, its comment kept
    assert not list(recipe_file.parent.glob("*.partial"))  # written atomically: no temporary file left
    (entry,) = [entry for entry in audit_entries(station_home) if entry.action == "recipe_saved"]
    assert entry.user == "bob" and entry.details["file"] == str(recipe_file)
    assert entry.details["changes"] == {
        "classification": [None, {"dim_fraction": 0.65}],  # a new section, as flat_changes reports one
        "sampling.mode": ["raster", "grid-locked"],
        "sampling.velocity_um_s": [100000.0, 80000.0],
        "spectra.include_flagged": [True, False],
    }
    assert not form.is_edited()  # the form now shows the saved file
    assert window.scan.recipe_path == recipe_file and window.scan.recipe.sampling.velocity_um_s == 80000.0
    # Save as: a new file, the original untouched
    type_into(form, "name", "demo, slower")
    checked(qtbot, form)
    target = tmp_path / "slower.toml"
    assert form.save(target)
    assert load_recipe(target).name == "demo, slower" and load_recipe(recipe_file).name == "demo 2-inch blue"
    assert form.path == target and window.scan.recipe_path == target


def test_the_run_fields_edited_in_the_scan_tab_open_in_the_form(qtbot, window, recipe_file) -> None:
    window.access.set_session(Session("bob", Role.ENGINEER))
    scan = window.scan
    scan.select_recipe(recipe_file)
    powers = scan.field_widgets["excitation.powers_w"]
    powers.setText("1, 30")
    powers.textEdited.emit("1, 30")
    form = scan.edit_recipe_file()
    qtbot.addWidget(form)
    checked(qtbot, form)
    assert form.editors["excitation.powers_w"].text() == "0.001, 0.03"
    assert form.is_edited() and form.is_valid()
    assert form.edited_data()["excitation"]["powers_w"] == [0.001, 0.03]


def test_an_operator_sees_the_form_read_only(qtbot, window, recipe_file, station_home) -> None:
    assert window.access.session.role is Role.OPERATOR
    assert window.scan.edit_recipe_button.text() == "View recipe…" and window.scan.edit_recipe_button.isEnabled()
    form = open_form(qtbot, window, recipe_file)
    assert "Read-only" in form.note.text() and "Log in as engineer" in form.note.text()
    for editor in form.editors.values():
        widget = editor.widget
        assert widget.isReadOnly() if isinstance(widget, QLineEdit) else not widget.isEnabled()
        assert "Engineers only" in widget.toolTip()
    for button in (form.save_button, form.save_as_button, form.toml_button, form.revert_button):
        assert not button.isEnabled()
    assert "lines per pass" in form.plan_text.text()  # the plan is there for the operator too
    before = recipe_file.read_text()
    assert not form.save()
    assert window.last_error[0] == "Engineers only" and recipe_file.read_text() == before
    # an engineer logs in with the form open: it becomes editable; logging out drops the edits
    window.access.set_session(Session("bob", Role.ENGINEER))
    assert not form.editors["grid.pitch_x_um"].widget.isReadOnly() and window.scan.edit_recipe_button.text() == (
        "Edit recipe…"
    )
    type_into(form, "grid.pitch_x_um", "120")
    assert form.is_edited()
    window.access.logout()
    assert not form.is_edited() and form.editors["grid.pitch_x_um"].widget.isReadOnly()
    assert not [entry for entry in audit_entries(station_home) if entry.action == "recipe_saved"]


def test_problems_name_their_field() -> None:
    assert problem_target("sampling.velocity_um_s: 0 is outside") == ("sampling", "velocity_um_s")
    assert problem_target("excitation.powers_w[1]: 'x' is not a number") == ("excitation", "powers_w")
    assert problem_target("grid: the chips do not fit") == ("grid", "")
    assert problem_target("name: '' must not be empty") == ("name", "")
    assert problem_target("classification.missing_fraction < dead_fraction < dim_fraction is required") == (
        "classification",
        "missing_fraction",
    )
    assert problem_target("not valid TOML: Invalid value") == ("", "")


def test_patching_keeps_comments_and_layout() -> None:
    text = DEMO_RECIPE.read_text()
    before = tomllib.loads(text)
    after = {**before, "focus": {**before["focus"], "max_z_um": 4000.0}, "extra": {"a": 1}}
    patched = patch_toml(text, after)
    assert patched is not None and tomllib.loads(patched) == after
    assert "max_z_um = 4000.0  # below the probe contact height" in patched
    assert patched.count("\n#") == text.count("\n#")  # every comment line kept
    assert patched.endswith("[extra]\na = 1\n")
    # only the changed lines differ
    changed = [pair for pair in zip(text.splitlines(), patched.splitlines(), strict=False) if pair[0] != pair[1]]
    assert [old.split("=")[0].strip() for old, _ in changed] == ["max_z_um"]
    # a multi-line value keeps the comment after it; a removed key goes, the rest stays as written
    multi = 'name = "x"  # the name\n[excitation]\npowers_w = [\n  0.001,\n  0.02,\n]  # W\nsettle_s = 0.2\n'
    data = tomllib.loads(multi)
    changed_powers = {**data, "excitation": {**data["excitation"], "powers_w": [0.002, 0.02]}}
    patched = patch_toml(multi, changed_powers)
    assert patched is not None and tomllib.loads(patched) == changed_powers and "]  # W" in patched
    without = patch_toml(multi, {"name": "x", "excitation": {"powers_w": [0.001, 0.02]}})
    assert without == 'name = "x"  # the name\n[excitation]\npowers_w = [\n  0.001,\n  0.02,\n]  # W\n'
    # a '#' inside a string is no comment
    quoted = 'name = "a # b"  # the name\n'
    assert patch_toml(quoted, {"name": "c"}) == 'name = "c"  # the name\n'
    assert patch_toml("not = = toml", {"name": "c"}) is None


def test_a_closed_form_is_left_alone_by_its_running_check_and_the_session(qtbot, window, recipe_file) -> None:
    """Regression: the access controller kept the closed form's gated button and touched it at the next log-out."""
    window.access.set_session(Session("bob", Role.ENGINEER))
    window.scan.select_recipe(recipe_file)
    form = window.scan.edit_recipe_file()  # not given to qtbot: the form deletes itself when closed
    gated = len(window.access._gated)
    type_into(form, "grid.pitch_x_um", "120")
    form.wait_checked()  # a check on the worker, still running when the form closes
    form.done(0)  # closed without the question (the Close button asks first: there is an unsaved change)
    qtbot.waitUntil(lambda: not shiboken6.isValid(form), timeout=10_000)
    assert window.runner.wait(10_000)
    # the check's outcome is delivered (GUI thread, after the worker ended): it must not touch the deleted widgets
    qtbot.waitUntil(lambda: not window.runner.running("Checking the recipe"), timeout=10_000)
    assert len(window.access._gated) < gated
    window.access.logout()  # nor may the session change reach the deleted form
    assert window.access.session.role is Role.OPERATOR
