"""Roles, the engineer password (salted scrypt hash) and the append-only audit log, including appends from several
processes at once."""

from __future__ import annotations

import io
import json
import multiprocessing
import stat
from pathlib import Path

import pytest

from app.cli import main
from inspection import access
from inspection.access import (
    AccessDenied,
    AuditAction,
    AuditLog,
    NoEngineerPassword,
    Permission,
    Role,
    ScryptCost,
    check_password,
    engineer_login,
    engineer_password_set,
    logout,
    operator_session,
    set_engineer_password,
)
from tests.access_worker import append_many

CHEAP = ScryptCost(n_log2=10, r=8, p=1)  # the stored parameters are what verification uses: tests may be cheap


def audit_actions(home: Path) -> list[str]:
    return [entry.action for entry in AuditLog(home / "access" / "audit.jsonl").entries()]


def test_roles() -> None:
    operator = operator_session("ana")
    assert operator.role is Role.OPERATOR and operator.allows(Permission.RUN_RECIPE)
    for permission in (Permission.EDIT_RECIPE, Permission.EDIT_STATION, Permission.EDIT_BIN_TABLE,
                       Permission.DEPLOY_MODEL):  # fmt: skip
        assert not operator.allows(permission)
        with pytest.raises(AccessDenied, match=f"only an engineer may {permission.value}"):
            operator.require(permission)
    engineer = access.Session("bob", Role.ENGINEER)
    assert all(engineer.allows(permission) for permission in Permission)
    engineer.require(Permission.DEPLOY_MODEL)


def test_password_is_stored_as_a_salted_hash_and_verifies(home: Path) -> None:
    assert not engineer_password_set()
    with pytest.raises(NoEngineerPassword, match="plmapper access set-password"):
        check_password("anything")
    set_engineer_password("correct horse", user="admin")  # the default cost, once
    path = home / "access" / "engineer-password.json"
    stored = json.loads(path.read_text())
    assert "correct horse" not in path.read_text()
    assert stored["algorithm"] == "scrypt" and stored["n"] == 2**15 and stored["p"] == 3
    assert len(bytes.fromhex(stored["salt"])) == 16 and len(bytes.fromhex(stored["hash"])) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert check_password("correct horse")
    assert not check_password("correct horsE")
    assert not check_password("")
    assert audit_actions(home) == ["password_set"]


def test_same_password_gets_a_new_salt_and_hash(home: Path) -> None:
    set_engineer_password("first password", cost=CHEAP)
    first = json.loads((home / "access" / "engineer-password.json").read_text())
    set_engineer_password("first password", current="first password", cost=CHEAP)
    second = json.loads((home / "access" / "engineer-password.json").read_text())
    assert first["salt"] != second["salt"] and first["hash"] != second["hash"]
    assert check_password("first password")


def test_changing_the_password_needs_the_current_one(home: Path) -> None:
    set_engineer_password("old password", cost=CHEAP)
    with pytest.raises(AccessDenied):
        set_engineer_password("new password", cost=CHEAP)
    with pytest.raises(AccessDenied):
        set_engineer_password("new password", current="wrong password", cost=CHEAP)
    assert check_password("old password")
    set_engineer_password("new password", current="old password", cost=CHEAP)
    assert check_password("new password") and not check_password("old password")
    with pytest.raises(ValueError, match="at least 8"):
        set_engineer_password("short", current="new password", cost=CHEAP)


def test_damaged_password_file_is_a_clear_error(home: Path) -> None:
    set_engineer_password("some password", cost=CHEAP)
    (home / "access" / "engineer-password.json").write_text("{not json")
    with pytest.raises(access.AccessError, match="unreadable engineer password file"):
        check_password("some password")


def test_login_and_logout_are_audited(home: Path) -> None:
    set_engineer_password("engineer pw", cost=CHEAP, user="admin")
    with pytest.raises(AccessDenied, match="wrong engineer password"):
        engineer_login("bob", "wrong")
    session = engineer_login("bob", "engineer pw")
    assert session.role is Role.ENGINEER and session.user == "bob"
    after = logout(session)
    assert after.role is Role.OPERATOR and after.user == "bob"
    entries = AuditLog(home / "access" / "audit.jsonl").entries()
    assert [(e.action, e.user, e.role) for e in entries] == [
        ("password_set", "admin", "engineer"),
        ("login_failed", "bob", "engineer"),
        ("login", "bob", "engineer"),
        ("logout", "bob", "engineer"),
    ]
    assert all(entry.time_utc.endswith("Z") for entry in entries)


def test_audit_log_appends_and_detects_rewriting(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.entries() == [] and log.verify() == []
    session = access.Session("bob", Role.ENGINEER)
    access.audit(AuditAction.RECIPE_SAVED, session, {"changes": {"a.b": [1, 2]}}, log=log)
    access.audit(AuditAction.SCAN_START, session, {"file": "W01.h5"}, log=log)
    access.audit(AuditAction.SCAN_STOP, session, {"status": "complete"}, log=log)
    entries = log.entries()
    assert [entry.seq for entry in entries] == [1, 2, 3]
    assert entries[0].details == {"changes": {"a.b": [1, 2]}} and entries[0].prev_sha256 == ""
    assert log.verify() == []
    # rewriting a line in the middle breaks the chain after it
    lines = log.path.read_text().splitlines()
    lines[1] = lines[1].replace("W01.h5", "W02.h5")
    log.path.write_text("\n".join(lines) + "\n")
    assert log.verify() == ["line 3: does not follow line 2 (hash chain broken)"]
    # removing a line shows too
    log.path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    assert "sequence number 3, expected 2" in log.verify()[0]


def test_a_torn_last_line_does_not_swallow_the_next_entry(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(AuditAction.LOGIN, user="bob", role=Role.ENGINEER)
    with log.path.open("ab") as stream:
        stream.write(b'{"seq": 2, "time_utc": "2026-')  # a write cut short by a power failure
    log.append(AuditAction.LOGOUT, user="bob", role=Role.ENGINEER)
    lines = log.path.read_bytes().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["action"] == "logout"
    assert json.loads(lines[2])["seq"] == 3
    assert log.verify() == ["line 2: not an audit entry"]


def test_concurrent_appends_from_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    workers, count = 4, 60
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=append_many, args=(str(path), worker, count)) for worker in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    log = AuditLog(path)
    entries = log.entries()
    assert len(entries) == workers * count
    assert [entry.seq for entry in entries] == list(range(1, workers * count + 1))
    for worker in range(workers):  # each worker's entries all there, in its own order
        mine = [entry.details["index"] for entry in entries if entry.user == f"worker{worker}"]
        assert mine == list(range(count))
    assert log.verify() == []


def test_flat_changes() -> None:
    before = {"name": "r", "excitation": {"powers_w": [0.0005, 0.02]}, "grid": {"pitch_x_um": 100.0}}
    after = {"name": "r", "excitation": {"powers_w": [0.001, 0.02]}, "grid": {"pitch_x_um": 100.0}, "x": 1}
    changes = access.flat_changes(before, after)
    assert changes == {"excitation.powers_w": [[0.0005, 0.02], [0.001, 0.02]], "x": [None, 1]}


def test_command_line_password_and_log(home: Path, monkeypatch, capsys) -> None:
    def run(*arguments: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(list(arguments))

    assert run("access", "set-password", "--user", "lead", stdin="short\nshort\n") == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert run("access", "set-password", "--user", "lead", stdin="first-pass\nsecond-pass\n") == 2
    assert "differ" in capsys.readouterr().err
    assert run("access", "set-password", "--user", "lead", stdin="first-pass\nfirst-pass\n") == 0
    # changing it needs the current one
    assert run("access", "set-password", "--user", "eve", stdin="guess-what\nnew-pass-1\nnew-pass-1\n") == 2
    assert run("access", "set-password", "--user", "lead", stdin="first-pass\nnew-pass-1\nnew-pass-1\n") == 0
    assert access.check_password("new-pass-1")
    capsys.readouterr()
    assert run("access", "log", "--verify") == 0
    out = capsys.readouterr().out
    assert "password_set" in out and "audit log intact: 2 entries" in out
