"""Who may do what at the station, the engineer password, and the append-only audit log.

The same rules hold in the GUI and on the command line; neither decides them itself.

Roles
-----
An **operator** runs recipes as they are. An **engineer** may also edit recipes, the station configuration and bin
tables, and deploy models (:data:`ROLE_PERMISSIONS`). Everybody starts as an operator
(:func:`operator_session`); :func:`engineer_login` checks the engineer password and returns an engineer session.
A session that lacks a permission raises :class:`AccessDenied` from :meth:`Session.require`, with a message saying
what to do.

The engineer password
---------------------
One password for the engineer role, set with :func:`set_engineer_password` (``plmapper access set-password``;
changing it needs the current one). Only a salted hash is kept: scrypt with a random 16-byte salt per password,
its cost parameters stored with it (so a later, dearer default still verifies old hashes), compared in constant
time. Files, in the station's data directory ``$PLMAPPER_HOME`` (:func:`inspection.home.station_home`)::

    $PLMAPPER_HOME/access/
    ├── engineer-password.json    {"algorithm": "scrypt", "n", "r", "p", "salt", "hash" (hex), "set_utc", "set_by"}
    │                             mode 0600, replaced atomically
    └── audit.jsonl               the audit log: one JSON object per line, only ever appended

The audit log
-------------
Every engineer change, every log-in (and failed attempt) and log-out, every scan start and stop is one line::

    {"seq": 12, "time_utc": "2026-11-22T03:15:00.123Z", "user": "ana", "role": "engineer",
     "action": "recipe_saved", "details": {"file": "...", "changes": {"excitation.powers_w": [[...], [...]]}},
     "host": "station-1", "pid": 4242, "prev_sha256": "<sha256 of the previous line>"}

:meth:`AuditLog.append` opens the file with ``O_APPEND`` and holds an exclusive ``flock`` while it reads the last
line (for ``seq`` and ``prev_sha256``), writes the new line with one ``write`` and ``fsync`` s it, so appends from
several processes never interleave or lose a line. Nothing here ever opens the log other than to append or read;
the hash chain lets :meth:`AuditLog.verify` find a line changed, removed or inserted afterwards. (On the station,
``chattr +a audit.jsonl`` makes the kernel refuse anything but appends as well.)

Examples
--------
>>> allowed(Role.OPERATOR, Permission.RUN_RECIPE), allowed(Role.OPERATOR, Permission.DEPLOY_MODEL)
(True, False)
>>> flat_changes({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "y": 3}, "b": True})
{'a.y': [2, 3], 'b': [None, True]}
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from inspection.home import station_home

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends rely on O_APPEND alone
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ROLE_PERMISSIONS",
    "AccessDenied",
    "AccessError",
    "AuditAction",
    "AuditEntry",
    "AuditLog",
    "AuditLogError",
    "NoEngineerPassword",
    "Permission",
    "Role",
    "ScryptCost",
    "Session",
    "access_dir",
    "allowed",
    "audit",
    "check_password",
    "engineer_login",
    "engineer_password_set",
    "flat_changes",
    "logout",
    "operator_session",
    "set_engineer_password",
]

MIN_PASSWORD_LENGTH = 8
PASSWORD_FILE = "engineer-password.json"
AUDIT_FILE = "audit.jsonl"


class Role(StrEnum):
    OPERATOR = "operator"
    ENGINEER = "engineer"


class Permission(StrEnum):
    """What a role may do; the value completes "only an engineer may …"."""

    RUN_RECIPE = "run recipes"
    EDIT_RECIPE = "edit recipes"
    EDIT_STATION = "edit the station configuration"
    EDIT_BIN_TABLE = "edit bin tables"
    DEPLOY_MODEL = "deploy models"


ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.OPERATOR: frozenset({Permission.RUN_RECIPE}),
    Role.ENGINEER: frozenset(Permission),
}


def allowed(role: Role, permission: Permission) -> bool:
    """Whether ``role`` may do ``permission``."""
    return permission in ROLE_PERMISSIONS[Role(role)]


class AccessError(Exception):
    """Base of this module's errors."""


class AccessDenied(AccessError, PermissionError):  # noqa: N818 - the name says what happened
    """Not allowed: the role lacks the permission, or the password is wrong."""


class NoEngineerPassword(AccessError):  # noqa: N818
    """No engineer password has been set on this station."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no engineer password is set on this station ({path} does not exist); "
            "set one with 'plmapper access set-password'"
        )


class AuditLogError(AccessError):
    """The audit log cannot be written or read."""


def access_dir(home: str | Path | None = None) -> Path:
    """``$PLMAPPER_HOME/access`` (or ``home/access``)."""
    return Path(home) / "access" if home is not None else station_home() / "access"


def _utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# ---------------------------------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """Who is at the station and in which role."""

    user: str
    role: Role = Role.OPERATOR
    started_utc: str = field(default_factory=_utc_now)

    @property
    def is_engineer(self) -> bool:
        return self.role is Role.ENGINEER

    def allows(self, permission: Permission) -> bool:
        return allowed(self.role, permission)

    def require(self, permission: Permission) -> None:
        """Raise :class:`AccessDenied` unless this session may do ``permission``."""
        if not self.allows(permission):
            raise AccessDenied(
                f"only an engineer may {permission.value}; {self.user} is logged in as {self.role.value}: "
                "log in as engineer first"
            )


def operator_session(user: str | None = None) -> Session:
    """The session everybody starts with (``user`` defaults to the login name)."""
    return Session(user=(user or "").strip() or _os_user(), role=Role.OPERATOR)


def engineer_login(user: str, password: str, *, home: str | Path | None = None, log: AuditLog | None = None) -> Session:
    """An engineer session for ``user`` if ``password`` is the engineer password; the attempt is audited either way.

    Raises
    ------
    AccessDenied
        Wrong password (audited as ``login_failed``).
    NoEngineerPassword
        None has been set on this station.
    """
    user = user.strip() or _os_user()
    log = log or AuditLog(access_dir(home) / AUDIT_FILE)
    if not check_password(password, home=home):
        log.append(AuditAction.LOGIN_FAILED, user=user, role=Role.ENGINEER)
        raise AccessDenied("wrong engineer password (the attempt is in the audit log)")
    session = Session(user=user, role=Role.ENGINEER)
    log.append(AuditAction.LOGIN, user=user, role=Role.ENGINEER)
    return session


def logout(session: Session, *, home: str | Path | None = None, log: AuditLog | None = None) -> Session:
    """End an engineer session (audited); returns the operator session that follows."""
    if session.is_engineer:
        log = log or AuditLog(access_dir(home) / AUDIT_FILE)
        log.append(AuditAction.LOGOUT, user=session.user, role=session.role)
    return operator_session(session.user)


# ---------------------------------------------------------------------------------------------------------------------
# The engineer password
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScryptCost:
    """scrypt's cost: ``n = 2**n_log2`` (memory 128·r·n bytes), block size ``r``, parallelism ``p``.

    The default (2^15, 8, 3: 32 MiB, about 0.8 s here) is one of OWASP's recommended equivalents.
    """

    n_log2: int = 15
    r: int = 8
    p: int = 3

    def __post_init__(self) -> None:
        if not (10 <= self.n_log2 <= 20 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError(f"scrypt cost out of range: {self}")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + (1 << 20), dklen=32)


def _password_path(home: str | Path | None) -> Path:
    return access_dir(home) / PASSWORD_FILE


def engineer_password_set(*, home: str | Path | None = None) -> bool:
    """Whether an engineer password has been set on this station."""
    return _password_path(home).is_file()


def _stored_hash(path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("algorithm") != "scrypt":
            raise ValueError(f"unknown algorithm {stored.get('algorithm')!r}")
        for name in ("n", "r", "p"):
            stored[name] = int(stored[name])
        stored["salt"], stored["hash"] = bytes.fromhex(stored["salt"]), bytes.fromhex(stored["hash"])
    except FileNotFoundError:
        raise NoEngineerPassword(path) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise AccessError(
            f"{path}: unreadable engineer password file ({error}); set the password again with "
            "'plmapper access set-password' after removing the file"
        ) from None
    return stored


def check_password(password: str, *, home: str | Path | None = None) -> bool:
    """Whether ``password`` is the engineer password (constant-time comparison of the scrypt hashes).

    Raises
    ------
    NoEngineerPassword
        None has been set on this station.
    AccessError
        The password file is damaged.
    """
    stored = _stored_hash(_password_path(home))
    candidate = _scrypt(password, stored["salt"], stored["n"], stored["r"], stored["p"])
    return hmac.compare_digest(candidate, stored["hash"])


def set_engineer_password(
    password: str,
    *,
    current: str | None = None,
    user: str | None = None,
    home: str | Path | None = None,
    cost: ScryptCost | None = None,
) -> None:
    """Set the engineer password (what ``plmapper access set-password`` calls); audited as ``password_set``.

    Changing an existing password needs the ``current`` one. A forgotten password is reset by whoever may delete
    ``$PLMAPPER_HOME/access/engineer-password.json`` (the file system's permissions are the last word).

    Raises
    ------
    ValueError
        The new password is shorter than :data:`MIN_PASSWORD_LENGTH` or only blanks.
    AccessDenied
        A password is set and ``current`` is missing or wrong.
    """
    if len(password) < MIN_PASSWORD_LENGTH or not password.strip():
        raise ValueError(f"the engineer password must have at least {MIN_PASSWORD_LENGTH} characters")
    path = _password_path(home)
    replacing = path.is_file()
    if replacing and (current is None or not check_password(current, home=home)):
        raise AccessDenied("changing the engineer password needs the current one, and it was wrong or missing")
    cost = cost or ScryptCost()
    salt = secrets.token_bytes(16)
    n = 1 << cost.n_log2
    who = (user or "").strip() or _os_user()
    record = {
        "algorithm": "scrypt",
        "n": n,
        "r": cost.r,
        "p": cost.p,
        "salt": salt.hex(),
        "hash": _scrypt(password, salt, n, cost.r, cost.p).hex(),
        "set_utc": _utc_now(),
        "set_by": who,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=2)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)
    AuditLog(access_dir(home) / AUDIT_FILE).append(
        AuditAction.PASSWORD_SET, user=who, role=Role.ENGINEER, details={"changed": replacing}
    )


# ---------------------------------------------------------------------------------------------------------------------
# The audit log
# ---------------------------------------------------------------------------------------------------------------------


class AuditAction(StrEnum):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    PASSWORD_SET = "password_set"
    SCAN_START = "scan_start"
    SCAN_STOP_REQUESTED = "scan_stop_requested"
    SCAN_STOP = "scan_stop"
    RECIPE_SAVED = "recipe_saved"
    STATION_SAVED = "station_saved"
    BIN_TABLE_SAVED = "bin_table_saved"
    MODEL_DEPLOYED = "model_deployed"
    CLASSIFIED = "classified"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    seq: int
    time_utc: str
    user: str
    role: str
    action: str
    details: dict[str, Any]
    host: str
    pid: int
    prev_sha256: str


_TAIL_CHUNK = 8192


def _last_line(descriptor: int, size: int) -> bytes:
    """The file's last complete line (without its newline); b"" for an empty file."""
    end = size
    buffer = b""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        buffer = os.pread(descriptor, end - start, start) + buffer
        end = start
        body = buffer[:-1] if buffer.endswith(b"\n") else buffer
        cut = body.rfind(b"\n")
        if cut >= 0:
            return body[cut + 1 :]
    return buffer[:-1] if buffer.endswith(b"\n") else buffer


class AuditLog:
    """The append-only audit log (see the module docstring); ``path`` defaults to ``$PLMAPPER_HOME``'s."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else access_dir() / AUDIT_FILE

    def append(
        self,
        action: AuditAction | str,
        *,
        user: str,
        role: Role | str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry (safe from several processes at once); returns it.

        Raises
        ------
        AuditLogError
            The log cannot be written (the caller must not go on as if the change were recorded).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as error:
            raise AuditLogError(f"{self.path}: cannot open the audit log ({error})") from None
        try:
            if fcntl is not None:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            size = os.fstat(descriptor).st_size
            last = _last_line(descriptor, size)
            torn = size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"
            seq = self._next_seq(last, descriptor, size)
            entry = AuditEntry(
                seq=seq,
                time_utc=_utc_now(),
                user=str(user),
                role=str(role),
                action=str(action),
                details=json.loads(json.dumps(dict(details or {}), default=str)),
                host=socket.gethostname(),
                pid=os.getpid(),
                prev_sha256=hashlib.sha256(last).hexdigest() if size else "",
            )
            line = json.dumps(entry.__dict__, ensure_ascii=False).encode("utf-8") + b"\n"
            data = (b"\n" if torn else b"") + line
            while data:
                written = os.write(descriptor, data)
                data = data[written:]
            os.fsync(descriptor)
            return entry
        except OSError as error:
            raise AuditLogError(f"{self.path}: cannot write the audit log ({error})") from None
        finally:
            os.close(descriptor)  # closing releases the lock

    @staticmethod
    def _next_seq(last: bytes, descriptor: int, size: int) -> int:
        if not size:
            return 1
        try:
            return int(json.loads(last)["seq"]) + 1
        except (ValueError, KeyError, TypeError):
            # the last line is damaged: count the lines instead (rare: a write torn by a power cut)
            data = os.pread(descriptor, size, 0)
            return data.count(b"\n") + (0 if data.endswith(b"\n") else 1) + 1

    def entries(self) -> list[AuditEntry]:
        """Every entry, oldest first (an empty list when the log does not exist yet).

        Raises
        ------
        AuditLogError
            A line is not a valid entry (its number is named).
        """
        entries = []
        for number, line in enumerate(self._lines(), start=1):
            try:
                entries.append(AuditEntry(**json.loads(line)))
            except (ValueError, TypeError) as error:
                raise AuditLogError(f"{self.path}:{number}: not an audit entry ({error})") from None
        return entries

    def _lines(self) -> list[bytes]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return data.splitlines()

    def verify(self) -> list[str]:
        """Problems that show the log was changed other than by appending (empty when it is intact): damaged
        lines, sequence numbers out of order, and breaks in the hash chain."""
        problems = []
        previous: bytes | None = None
        expected_seq = 1
        for number, line in enumerate(self._lines(), start=1):
            try:
                record = json.loads(line)
                seq, prev = int(record["seq"]), str(record["prev_sha256"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"line {number}: not an audit entry")
                previous, expected_seq = line, expected_seq + 1
                continue
            if seq != expected_seq:
                problems.append(f"line {number}: sequence number {seq}, expected {expected_seq}")
            wanted = hashlib.sha256(previous).hexdigest() if previous is not None else ""
            if prev != wanted:
                problems.append(f"line {number}: does not follow line {number - 1} (hash chain broken)")
            previous, expected_seq = line, seq + 1
        return problems


def audit(
    action: AuditAction | str,
    session: Session,
    details: Mapping[str, Any] | None = None,
    *,
    log: AuditLog | None = None,
) -> AuditEntry:
    """Append ``action`` by ``session``'s user and role to the station's audit log (or ``log``)."""
    return (log or AuditLog()).append(action, user=session.user, role=session.role, details=details)


def flat_changes(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """What changed between two nested mappings (recipes, station files, bin tables), as ``{dotted key: [old,
    new]}``; a key missing on one side is None there. For the audit log's "what changed"."""
    changes: dict[str, list[Any]] = {}
    for key in sorted(set(before) | set(after), key=str):
        old, new = before.get(key), after.get(key)
        name = f"{prefix}{key}"
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changes.update(flat_changes(old, new, f"{name}."))
        elif old != new:
            changes[name] = [old, new]
    return changes
