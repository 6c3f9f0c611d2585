"""Roles in the window: what an operator may not do (and is told why), logging in as engineer (wrong and right
password), logging out, engineer changes and their audit entries, the settings editor."""

from __future__ import annotations

import tomllib
from pathlib import Path

from PySide6.QtWidgets import QLineEdit

from app.gui.access import LoginDialog
from app.gui.dialogs import FileKind, file_problems, save_settings_file
from inspection.access import AuditLog, Permission, Role, Session
from tests.gui.conftest import COARSE_STATION, audit_entries

COARSE_RECIPE = COARSE_STATION.parent / "coarse-recipe.toml"


def log_in(qtbot, window, password: str, user: str = "bob") -> LoginDialog:
    window.login()
    dialog = window.login_dialog
    dialog.user.setText(user)
    dialog.password.setText(password)
    dialog.submit()
    qtbot.waitUntil(dialog.buttons.isEnabled, timeout=10_000)
    return dialog


def test_operator_sees_engineer_actions_disabled_with_the_reason(qtbot, window) -> None:
    assert window.access.session.role is Role.OPERATOR
    assert window.role_label.text().startswith("Operator")
    scan, station = window.scan, window.station
    powers = scan.field_widgets["excitation.powers_w"]
    assert isinstance(powers, QLineEdit) and powers.isReadOnly()
    assert not scan.field_widgets["sampling.mode"].isEnabled()
    assert "Engineers only" in powers.toolTip() and "Log in as engineer" in powers.toolTip()
    for widget in (scan.save_recipe_button, station.edit_station_button):
        assert not widget.isEnabled()
        assert "Engineers only" in widget.toolTip()
    # the recipe form opens for an operator too, read-only (tests/gui/test_recipe_form.py)
    assert scan.edit_recipe_button.isEnabled() and scan.edit_recipe_button.text() == "View recipe…"
    assert "Engineers only" in scan.edit_recipe_button.toolTip()
    assert station.station_file.isReadOnly()
    deploy = window.findChild(type(window.login_action), "deployAction")
    assert not deploy.isEnabled() and "only an engineer may deploy models" in deploy.toolTip()
    # reached by a key anyway: refused with a message
    window.edit_settings(FileKind.BIN_TABLE)
    assert window.last_error[0] == "Engineers only"


def test_engineer_log_in_wrong_then_right_password_and_log_out(qtbot, window, engineer_password, station_home):
    dialog = log_in(qtbot, window, "not the password")
    assert dialog.isVisible() and "Wrong engineer password" in dialog.message.text()
    assert window.access.session.role is Role.OPERATOR
    dialog.password.setText(engineer_password)
    dialog.submit()
    qtbot.waitUntil(lambda: window.access.session.is_engineer, timeout=10_000)
    assert not dialog.isVisible()
    assert window.role_label.text() == "ENGINEER: bob"
    powers = window.scan.field_widgets["excitation.powers_w"]
    assert not powers.isReadOnly() and window.scan.save_recipe_button.isEnabled()
    assert window.findChild(type(window.login_action), "deployAction").isEnabled()
    # an edit, then log out: the operator gets the recipe as it is again
    original = powers.text()
    powers.setText("1, 30")
    powers.textEdited.emit("1, 30")
    assert window.scan.edited()
    window.toggle_login()
    assert window.access.session.role is Role.OPERATOR and powers.isReadOnly()
    assert powers.text() == original and not window.scan.edited()
    actions = [(entry.action, entry.user) for entry in audit_entries(station_home)]
    assert actions == [("password_set", "admin"), ("login_failed", "bob"), ("login", "bob"), ("logout", "bob")]


def test_after_an_engineer_logs_out_the_status_bar_shows_the_operator_again(
    qtbot, window, engineer_password, tmp_path
) -> None:
    """Regression: the operator session after a log-out kept the engineer's name (inspection.access.logout)."""
    operator = window.access.session
    before = window.role_label.text()
    assert before == f"Operator: {operator.user}"
    engineer = "eng-" + operator.user  # never the operator's own name
    dialog = log_in(qtbot, window, engineer_password, user=engineer)
    qtbot.waitUntil(lambda: window.access.session.is_engineer, timeout=10_000)
    assert not dialog.isVisible() and window.role_label.text() == f"ENGINEER: {engineer}"
    window.login_button.click()  # Log out
    assert window.access.session == operator
    label = window.role_label.text()
    assert label == before and "ENGINEER" not in label and engineer not in label
    assert window.login_button.text() == "Log in as engineer…"
    # also when the log-out cannot be audited (the fallback path): an audit log under a plain file
    window.access.set_session(Session(engineer, Role.ENGINEER))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    window.access.log = AuditLog(blocker / "audit.jsonl")
    window.access.logout()
    assert window.access.session == operator and window.role_label.text() == before


def test_no_engineer_password_says_how_to_set_one(qtbot, window) -> None:
    dialog = log_in(qtbot, window, "whatever")
    assert "plmapper access set-password" in dialog.message.text()
    assert window.access.session.role is Role.OPERATOR


def test_engineer_saves_an_edited_recipe_and_the_change_is_audited(qtbot, window, station_home, tmp_path):
    window.access.set_session(Session("bob", Role.ENGINEER))
    scan = window.scan
    scan.select_recipe(COARSE_RECIPE)
    powers = scan.field_widgets["excitation.powers_w"]
    before = tomllib.loads(COARSE_RECIPE.read_text())["excitation"]["powers_w"]
    powers.setText("1, 30")
    powers.textEdited.emit("1, 30")
    target = tmp_path / "coarse-edited.toml"
    assert scan.write_recipe(target)
    assert tomllib.loads(target.read_text())["excitation"]["powers_w"] == [0.001, 0.03]
    assert scan.recipe_path == target and not scan.edited()
    (entry,) = [entry for entry in audit_entries(station_home) if entry.action == "recipe_saved"]
    assert entry.user == "bob" and entry.role == "engineer"
    assert entry.details["file"] == str(target)
    assert entry.details["changes"] == {"excitation.powers_w": [before, [0.001, 0.03]]}


def test_settings_editor_checks_and_saves_only_for_engineers(qtbot, window, station_home, tmp_path) -> None:
    station_text = COARSE_STATION.read_text()
    assert file_problems(FileKind.STATION, station_text, str(COARSE_STATION)) == []
    broken = station_text.replace('driver = "zaber-x-mcc"', 'driver = "no-such-stage"')
    assert broken != station_text
    assert any("instruments.stage.driver" in problem for problem in file_problems(FileKind.STATION, broken, "s"))
    table = (Path(__file__).resolve().parents[2] / "resources" / "bins" / "default.toml").read_text()
    assert file_problems(FileKind.BIN_TABLE, table, "t") == []
    assert file_problems(FileKind.BIN_TABLE, table.replace('colour = "#', 'colour = "x', 1), "t")
    assert "not valid TOML" in file_problems(FileKind.BIN_TABLE, "name = ", "t")[0]
    target = tmp_path / "station.toml"
    target.write_text(station_text)
    changed = station_text.replace("time_scale = 0.0", "time_scale = 0.5")
    assert changed != station_text
    # an operator: refused, nothing written
    assert not save_settings_file(FileKind.STATION, target, changed, window.access, previous_text=station_text)
    assert target.read_text() == station_text and window.last_error[0] == "Engineers only"
    window.access.set_session(Session("eve", Role.ENGINEER))
    assert not save_settings_file(FileKind.STATION, target, broken, window.access, previous_text=station_text)
    assert target.read_text() == station_text  # refused: the problems are listed
    assert save_settings_file(FileKind.STATION, target, changed, window.access, previous_text=station_text)
    assert target.read_text() == changed
    (entry,) = [entry for entry in audit_entries(station_home) if entry.action == "station_saved"]
    assert entry.user == "eve" and entry.details["changes"] == {"station.time_scale": [0.0, 0.5]}


def test_permissions_follow_the_session(qtbot, window) -> None:
    access = window.access
    for permission in Permission:
        assert access.allows(permission) == (permission is Permission.RUN_RECIPE)
    access.set_session(Session("bob", Role.ENGINEER))
    assert all(access.allows(permission) for permission in Permission)
    assert window.station.edit_station_button.isEnabled() and not window.station.station_file.isReadOnly()
