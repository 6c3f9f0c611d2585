"""Scan history: an embedded SQLite database of every scan, analysis, classification and import on the station.

``plmapper scan``, ``batch``, ``analyze``, ``classify``, ``import`` and ``probe`` (and the Python API,
:mod:`inspection.api`) record what they do here (analyses on a Dask cluster are recorded by the process that asked
for them once each outcome is back: :meth:`History.add_operation`, :func:`inspection.distributed.record_outcome`);
``plmapper history`` and the GUI query it: list and search scans, lot summaries, yield trends per recipe. The
database is ``$PLMAPPER_HOME/history.sqlite`` (the station's data directory, :func:`inspection.home.station_home`),
or the file ``$PLMAPPER_HISTORY`` names (``off`` records nothing). Documented in docs/history.md.

Schema (version 3)::

    scans        one row per scan file: a wafer inspection (kind "scan"), an imported PL map ("import"), or a file
    │            first seen by analyze/classify ("registered"). path (absolute, as recorded), uuid (the file's),
    │            lot_id, wafer_id, slot, recipe (name), recipe_path, operator, station, status (running, complete,
    │            aborted, failed, interrupted), started_utc, finished_utc, message, host, pid, batch_id,
    │            classification_id (the latest classification), yield_fraction, model_id, model_name
    ├── operations   one row per thing done to a scan file: kind (scan, resume, analysis, classification,
    │   │            import-el, import-pl, probe, export), status (running, then the scan's status or ok / failed /
    │   │            stopped), started_utc, finished_utc, host, pid, user, message, details_json; for a
    │   │            classification also yield_fraction, classifier_kind, classifier_name, model_id, signature
    │   └── bin_counts   (operation_id, code) -> name, fail, chips: a classification's chips per bin
    batches      one row per ``plmapper batch`` run: lot_id, plan_path, status, wafers, succeeded, failed

Times are UTC, ISO 8601 with seconds (``2026-11-22T03:15:00Z``), so they sort as text. Schema changes are
migrations (:data:`MIGRATIONS`): step ``i`` turns version ``i`` into ``i + 1``, in one ``BEGIN IMMEDIATE``
transaction together with ``PRAGMA user_version``; a database from a newer plmapper is refused, never modified.

Concurrency: several processes (CLI commands, the GUI, batch runs) use the database at once. It runs in WAL mode
(readers never block the writer nor the writer the readers), every write is one short ``BEGIN IMMEDIATE``
transaction (so two writers queue on the lock instead of failing on a stale snapshot), and a busy timeout makes a
writer wait for the other (10 s by default). WAL needs a local file system (not NFS/SMB).

A scan whose file was moved or deleted is listed with ``file = "missing"``; a file analysed at its new place
(same uuid, old path gone) takes its row along. A row left ``running`` by a process that died (this host, its pid
gone) is reported ``interrupted``.

Examples
--------
>>> import tempfile, pathlib
>>> history = History(pathlib.Path(tempfile.mkdtemp()) / "history.sqlite")
>>> handle = history.begin_scan("/data/L7/W01.h5", lot_id="L7", wafer_id="W01", recipe="demo 2in")
>>> history.end_scan(handle, "complete", "scan complete")
>>> operation = history.begin_operation(handle.scan_id, "classification")
>>> history.end_operation(operation, "ok", classification=ClassificationRecord(
...     yield_fraction=0.97, bins=((1, "Good", False, 970), (3, "Dead", True, 30)), classifier_kind="rules"))
>>> [(scan.wafer_id, scan.status, scan.yield_fraction, scan.file) for scan in history.scans(lot="L7")]
[('W01', 'complete', 0.97, 'missing')]
>>> history.lot_summary("L7").bins[1]
BinTotal(code=3, name='Dead', fail=True, chips=30)
>>> history.close()
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import json
import math
import os
import re
import socket
import sqlite3
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inspection.home import station_home

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "BinTotal",
    "ClassificationRecord",
    "History",
    "HistoryError",
    "LotRow",
    "LotSummary",
    "OperationRecord",
    "OperationResult",
    "OperationStopped",
    "Recorder",
    "ScanHandle",
    "ScanRecord",
    "TrendPoint",
    "classification_record",
    "default_history_path",
    "parse_time",
    "read_scan_identity",
    "recipe_name",
    "utc_now",
]

DEFAULT_TIMEOUT_S = 10.0
"""How long a writer waits for another one to finish before giving up (SQLite busy timeout)."""

SCAN_STATUSES = ("running", "complete", "aborted", "failed", "interrupted")
OPERATION_KINDS = ("scan", "resume", "analysis", "classification", "import-el", "import-pl", "probe", "export")
TREND_GROUPS = ("day", "week", "month", "lot", "wafer")


class HistoryError(RuntimeError):
    """The history database cannot be used (unreadable, newer than this software, locked too long)."""


def default_history_path() -> Path | None:
    """``$PLMAPPER_HISTORY`` if set (``off``: None, nothing is recorded), else ``$PLMAPPER_HOME/history.sqlite``."""
    chosen = os.environ.get("PLMAPPER_HISTORY", "").strip()
    if chosen.lower() in ("off", "none", "0"):
        return None
    if chosen:
        return Path(chosen)

    return station_home() / "history.sqlite"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhw])\s*$")
_UTC_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def parse_time(text: str, *, end_of_day: bool = False) -> str:
    """A time as the database stores it, from ``2026-11-22``, ``2026-11-22T03:15``, ``2026-11-22 03:15:00Z`` (UTC
    unless an offset is given) or a span back from now: ``7d``, ``12h``, ``2w``. With ``end_of_day`` a bare date
    means the end of that day (for "until").

    >>> parse_time("2026-11-22"), parse_time("2026-11-22", end_of_day=True), parse_time("2026-11-22T04:15+01:00")
    ('2026-11-22T00:00:00Z', '2026-11-22T23:59:59Z', '2026-11-22T03:15:00Z')
    """
    relative = _RELATIVE.match(text)
    if relative:
        hours = float(relative.group(1)) * {"h": 1, "d": 24, "w": 168}[relative.group(2)]
        moment = _dt.datetime.now(_dt.UTC) - _dt.timedelta(hours=hours)
    else:
        try:
            moment = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is not a date or time (use 2026-11-22, 2026-11-22T03:15 or 7d)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_dt.UTC)
        if end_of_day and len(text.strip()) == 10:
            moment += _dt.timedelta(days=1, seconds=-1)
    return moment.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------------------
# Schema and migrations
# ---------------------------------------------------------------------------------------------------------------------


def _v1(db: sqlite3.Connection) -> None:
    """Version 1: scans only; the latest classification's bin counts as JSON."""
    db.execute(
        """CREATE TABLE scans (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,
            lot_id TEXT NOT NULL DEFAULT '',
            wafer_id TEXT NOT NULL DEFAULT '',
            recipe TEXT NOT NULL DEFAULT '',
            operator TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,
            started_utc TEXT NOT NULL,
            finished_utc TEXT,
            yield_fraction REAL,
            bins_json TEXT
        )"""
    )
    db.execute("CREATE INDEX scans_lot ON scans (lot_id, wafer_id)")


def _v2(db: sqlite3.Connection) -> None:
    """Version 2: operations on a scan file (analyses, classifications, imports), bin counts as rows, the file's
    uuid and who wrote the row; version 1's bin JSON becomes a classification operation with its bin counts."""
    for column in (
        "uuid TEXT",
        "kind TEXT NOT NULL DEFAULT 'scan'",
        "recipe_path TEXT",
        "station TEXT NOT NULL DEFAULT ''",
        "message TEXT NOT NULL DEFAULT ''",
        "host TEXT NOT NULL DEFAULT ''",
        "pid INTEGER",
        "classification_id INTEGER REFERENCES operations (id)",
        "model_id TEXT",
        "model_name TEXT",
    ):
        db.execute(f"ALTER TABLE scans ADD COLUMN {column}")
    db.execute(
        """CREATE TABLE operations (
            id INTEGER PRIMARY KEY,
            scan_id INTEGER NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            started_utc TEXT NOT NULL,
            finished_utc TEXT,
            host TEXT NOT NULL DEFAULT '',
            pid INTEGER,
            user TEXT NOT NULL DEFAULT '',
            message TEXT NOT NULL DEFAULT '',
            details_json TEXT NOT NULL DEFAULT '{}',
            yield_fraction REAL,
            classifier_kind TEXT,
            classifier_name TEXT,
            model_id TEXT,
            signature TEXT
        )"""
    )
    db.execute(
        """CREATE TABLE bin_counts (
            operation_id INTEGER NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
            code INTEGER NOT NULL,
            name TEXT NOT NULL,
            fail INTEGER,
            chips INTEGER NOT NULL,
            PRIMARY KEY (operation_id, code)
        )"""
    )
    rows = db.execute(
        "SELECT id, started_utc, finished_utc, yield_fraction, bins_json FROM scans WHERE bins_json IS NOT NULL"
    ).fetchall()
    for scan_id, started, finished, yield_fraction, bins_json in rows:
        when = finished or started
        operation = db.execute(
            "INSERT INTO operations (scan_id, kind, status, started_utc, finished_utc, yield_fraction, message) "
            "VALUES (?, 'classification', 'ok', ?, ?, ?, 'migrated from history version 1')",
            (scan_id, when, when, yield_fraction),
        ).lastrowid
        counts = json.loads(bins_json)
        db.executemany(
            "INSERT INTO bin_counts (operation_id, code, name, fail, chips) VALUES (?, ?, ?, NULL, ?)",
            [(operation, int(code), f"bin {int(code)}", int(chips)) for code, chips in counts.items()],
        )
        db.execute("UPDATE scans SET classification_id = ? WHERE id = ?", (operation, scan_id))
    db.execute("ALTER TABLE scans DROP COLUMN bins_json")
    db.execute("CREATE INDEX scans_path ON scans (path)")
    db.execute("CREATE INDEX scans_uuid ON scans (uuid)")
    db.execute("CREATE INDEX scans_recipe ON scans (recipe, started_utc)")
    db.execute("CREATE INDEX scans_started ON scans (started_utc)")
    db.execute("CREATE INDEX operations_scan ON operations (scan_id, kind)")


def _v3(db: sqlite3.Connection) -> None:
    """Version 3: lots run with ``plmapper batch`` (a batch row, and each scan's batch and slot)."""
    db.execute(
        """CREATE TABLE batches (
            id INTEGER PRIMARY KEY,
            lot_id TEXT NOT NULL,
            plan_path TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,
            started_utc TEXT NOT NULL,
            finished_utc TEXT,
            wafers INTEGER NOT NULL DEFAULT 0,
            succeeded INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            host TEXT NOT NULL DEFAULT '',
            pid INTEGER
        )"""
    )
    db.execute("ALTER TABLE scans ADD COLUMN batch_id INTEGER REFERENCES batches (id)")
    db.execute("ALTER TABLE scans ADD COLUMN slot INTEGER")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3)
"""Step ``i`` turns a version-``i`` database into version ``i + 1`` (version 0: empty). Append, never edit."""

SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanHandle:
    """A scan being recorded: its row and the operation (scan or resume) under way."""

    scan_id: int
    operation_id: int


@dataclass(frozen=True)
class ClassificationRecord:
    """What the history keeps of a classification. ``bins``: (code, name, fail, chips) per bin."""

    yield_fraction: float | None
    bins: tuple[tuple[int, str, bool | None, int], ...]
    classifier_kind: str = ""
    classifier_name: str = ""
    model_id: str | None = None
    signature: str = ""


def classification_record(classification: Any) -> ClassificationRecord:
    """The history's record of an :class:`inspection.classify.Classification`."""
    counts = classification.bin_counts()
    value = classification.yield_fraction()
    classifier = classification.classifier
    return ClassificationRecord(
        yield_fraction=None if math.isnan(value) else float(value),  # NaN (nothing inspected) is no yield
        bins=tuple(
            (entry.code, entry.name, bool(entry.fail), int(counts[entry.code]))
            for entry in classification.bin_table.bins
        ),
        classifier_kind=str(classifier.get("kind", "")),
        classifier_name=str(classifier.get("name", "")),
        model_id=classifier.get("model_id"),
        signature=str(classification.signature),
    )


@dataclass(frozen=True)
class ScanRecord:
    """One scan as listed. ``status`` is the effective one (``interrupted`` for a dead writer's ``running``);
    ``file`` is ``ok`` or ``missing`` (moved or deleted since)."""

    id: int
    path: str
    file: str
    kind: str
    uuid: str | None
    lot_id: str
    wafer_id: str
    slot: int | None
    recipe: str
    operator: str
    station: str
    status: str
    started_utc: str
    finished_utc: str | None
    message: str
    yield_fraction: float | None
    classifier: str | None
    model_id: str | None
    signature: str | None
    analysed_utc: str | None
    batch_id: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OperationRecord:
    id: int
    scan_id: int
    kind: str
    status: str
    started_utc: str
    finished_utc: str | None
    host: str
    user: str
    message: str
    details: dict[str, Any]
    yield_fraction: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BinTotal:
    code: int
    name: str
    fail: bool | None
    chips: int


@dataclass(frozen=True)
class LotSummary:
    """A lot: the latest scan of each of its wafers, their yields and bins added up."""

    lot_id: str
    wafers: tuple[ScanRecord, ...]
    scans: int  # every scan of the lot, rescans included
    complete: int  # wafers whose latest scan is complete
    classified: int  # wafers with a yield
    mean_yield: float | None
    min_yield: float | None
    max_yield: float | None
    bins: tuple[BinTotal, ...]
    recipes: tuple[str, ...]
    first_started_utc: str | None
    last_finished_utc: str | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["wafers"] = [wafer.to_json() for wafer in self.wafers]
        return data


@dataclass(frozen=True)
class LotRow:
    lot_id: str
    wafers: int
    classified: int
    mean_yield: float | None
    min_yield: float | None
    last_started_utc: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrendPoint:
    """Yield of one recipe over one period (a day, week or month), one lot, or one wafer (``period`` says which)."""

    recipe: str
    period: str
    wafers: int
    mean_yield: float
    min_yield: float
    max_yield: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------------------------------------------------

_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _effective(status: str, host: str | None, pid: int | None) -> str:
    if status == "running" and host == _HOST and pid and pid != os.getpid() and not _pid_alive(pid):
        return "interrupted"
    return status


_SCAN_SELECT = """
    SELECT s.*, c.classifier_kind, c.classifier_name, c.signature,
           (SELECT MAX(o.finished_utc) FROM operations o
             WHERE o.scan_id = s.id AND o.kind IN ('analysis', 'import-pl') AND o.status = 'ok') AS analysed_utc
      FROM scans s LEFT JOIN operations c ON c.id = s.classification_id
"""

_LATEST_OF_WAFER = "s.id = (SELECT MAX(t.id) FROM scans t WHERE t.lot_id = s.lot_id AND t.wafer_id = s.wafer_id)"
"""A lot's figures count each wafer once: its latest scan (a rescan replaces the earlier ones)."""

_TREND_PERIOD = {
    "day": "substr(s.started_utc, 1, 10)",
    "week": "strftime('%Y-W%W', s.started_utc)",
    "month": "substr(s.started_utc, 1, 7)",
    "lot": "s.lot_id",
    "wafer": "s.lot_id || '/' || s.wafer_id || ' ' || s.started_utc",
}


class History:
    """The scan history database (created and migrated on first use).

    Parameters
    ----------
    path
        The SQLite file (default :func:`default_history_path`); its directory is created.
    timeout_s
        How long a write waits for another process's write to finish.

    Raises
    ------
    HistoryError
        Not a database, a newer schema than this software knows, or the history is switched off and no path given.
    """

    def __init__(self, path: str | Path | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        chosen = Path(path) if path is not None else default_history_path()
        if chosen is None:
            raise HistoryError("the scan history is switched off (PLMAPPER_HISTORY=off)")
        self.path = chosen
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise HistoryError(f"{self.path}: cannot open the scan history: {error}") from None
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._set_wal(timeout_s)
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise HistoryError(f"{self.path}: not a usable scan history database: {error}") from None
        except BaseException:
            self._db.close()
            raise

    # -- opening -------------------------------------------------------------------------------------------------
    def _set_wal(self, timeout_s: float) -> None:
        # switching a new database to WAL needs a moment alone with it; another process opening it at the same time
        # can make this fail with "locked" before the busy handler applies: try again until the timeout
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"{self.path}: scan history schema version {version} is newer than this plmapper knows "
                f"({SCHEMA_VERSION}); update plmapper (the database was not changed)"
            )
        while version < SCHEMA_VERSION:
            with self._write() as db:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])  # another process may have done it
                if version < SCHEMA_VERSION:
                    MIGRATIONS[version](db)
                    db.execute(f"PRAGMA user_version = {version + 1}")
            version = self.schema_version

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; ``BEGIN IMMEDIATE`` takes the write lock first (waiting up to the timeout)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                raise HistoryError(f"{self.path}: {error} (another program holds the scan history)") from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries (WAL: never waits for a writer)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- recording scans -----------------------------------------------------------------------------------------
    def begin_scan(
        self,
        path: str | Path,
        *,
        lot_id: str = "",
        wafer_id: str = "",
        recipe: str = "",
        recipe_path: str | Path | None = None,
        operator: str = "",
        station: str = "",
        uuid: str | None = None,
        resume: bool = False,
        batch_id: int | None = None,
        slot: int | None = None,
    ) -> ScanHandle:
        """A scan starts writing ``path`` (or, with ``resume``, continues the scan recorded for it)."""
        path_text = _path_text(path)
        now = utc_now()
        with self._write() as db:
            scan_id = None
            if resume:
                found = _find_scan(db, path_text, uuid)
                scan_id = found[0] if found else None
            if scan_id is None:
                scan_id = db.execute(
                    "INSERT INTO scans (path, uuid, kind, lot_id, wafer_id, recipe, recipe_path, operator, station, "
                    "status, started_utc, host, pid, batch_id, slot) "
                    "VALUES (?, ?, 'scan', ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                    (
                        path_text,
                        uuid,
                        lot_id,
                        wafer_id,
                        recipe,
                        _optional_text(recipe_path),
                        operator,
                        station,
                        now,
                        _HOST,
                        os.getpid(),
                        batch_id,
                        slot,
                    ),
                ).lastrowid
            else:
                db.execute(
                    "UPDATE scans SET status = 'running', finished_utc = NULL, message = '', host = ?, pid = ?, "
                    "path = ?, batch_id = COALESCE(?, batch_id), slot = COALESCE(?, slot) WHERE id = ?",
                    (_HOST, os.getpid(), path_text, batch_id, slot, scan_id),
                )
            operation = _insert_operation(db, scan_id, "resume" if resume else "scan", now)
        return ScanHandle(int(scan_id), operation)

    def end_scan(self, handle: ScanHandle, status: str, message: str = "", *, uuid: str | None = None) -> None:
        """The scan stopped with ``status`` (a :class:`~inspection.scanfile.ScanStatus` value)."""
        if status not in SCAN_STATUSES:
            raise ValueError(f"scan status {status!r} is not one of {', '.join(SCAN_STATUSES)}")
        now = utc_now()
        with self._write() as db:
            db.execute(
                "UPDATE scans SET status = ?, finished_utc = ?, message = ?, uuid = COALESCE(?, uuid) WHERE id = ?",
                (status, now, message, uuid, handle.scan_id),
            )
            db.execute(
                "UPDATE operations SET status = ?, finished_utc = ?, message = ? WHERE id = ?",
                (status, now, message, handle.operation_id),
            )

    def register_file(
        self,
        path: str | Path,
        *,
        uuid: str | None,
        lot_id: str = "",
        wafer_id: str = "",
        recipe: str = "",
        operator: str = "",
        status: str = "complete",
        started_utc: str | None = None,
        kind: str = "registered",
    ) -> int:
        """The row of the scan file at ``path``: the one recorded for it (same path and uuid, or same uuid and the
        recorded path gone: the file was moved), else a new one with what the file says."""
        path_text = _path_text(path)
        with self._write() as db:
            found = _find_scan(db, path_text, uuid)
            if found is not None:
                scan_id, recorded_path = found
                if recorded_path != path_text or uuid:
                    db.execute(
                        "UPDATE scans SET path = ?, uuid = COALESCE(uuid, ?) WHERE id = ?", (path_text, uuid, scan_id)
                    )
                return int(scan_id)
            return int(
                db.execute(
                    "INSERT INTO scans (path, uuid, kind, lot_id, wafer_id, recipe, operator, status, started_utc, "
                    "finished_utc, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        path_text,
                        uuid,
                        kind,
                        lot_id,
                        wafer_id,
                        recipe,
                        operator,
                        status,
                        started_utc or utc_now(),
                        utc_now(),
                        _HOST,
                    ),
                ).lastrowid
            )

    def register_scan_file(self, path: str | Path, *, kind: str = "registered") -> int:
        """:meth:`register_file` with the identity read from the scan file itself.

        Raises
        ------
        FileNotFoundError, inspection.scanfile.ScanFileError
            ``path`` is not a readable scan file.
        """
        info = read_scan_identity(path)
        return self.register_file(path, kind=kind, **info)

    # -- recording operations ------------------------------------------------------------------------------------
    def begin_operation(self, scan_id: int, kind: str, details: dict[str, Any] | None = None) -> int:
        """Something starts on a recorded scan file; returns the operation's id."""
        if kind not in OPERATION_KINDS:
            raise ValueError(f"operation kind {kind!r} is not one of {', '.join(OPERATION_KINDS)}")
        with self._write() as db:
            return _insert_operation(db, scan_id, kind, utc_now(), details)

    def end_operation(
        self,
        operation_id: int,
        status: str,
        message: str = "",
        *,
        details: dict[str, Any] | None = None,
        classification: ClassificationRecord | None = None,
    ) -> None:
        """The operation finished (``ok``), failed (``failed``, ``message`` says why) or was stopped (``stopped``).
        A classification's yield and bins become its scan's current ones."""
        with self._write() as db:
            _finish_operation(
                db, operation_id, status, utc_now(), message=message, details=details, classification=classification
            )

    def add_operation(
        self,
        scan_id: int,
        kind: str,
        status: str,
        *,
        started_utc: str,
        finished_utc: str,
        message: str = "",
        details: dict[str, Any] | None = None,
        classification: ClassificationRecord | None = None,
    ) -> int:
        """Record an operation that was done elsewhere and has finished (an analysis on a Dask worker, recorded by
        the process that asked for it once its outcome is back), with its own start and end times; in one
        transaction, so the history never shows it ``running``. Returns the operation's id.

        Raises
        ------
        ValueError
            An unknown ``kind``, or times not in the database's form (:func:`utc_now`, :func:`parse_time`).
        """
        if kind not in OPERATION_KINDS:
            raise ValueError(f"operation kind {kind!r} is not one of {', '.join(OPERATION_KINDS)}")
        for name, value in (("started_utc", started_utc), ("finished_utc", finished_utc)):
            if not _UTC_TIME.match(value):
                raise ValueError(f"{name}: {value!r} is not a UTC time like 2026-11-22T03:15:00Z")
        with self._write() as db:
            operation_id = _insert_operation(db, scan_id, kind, started_utc, details)
            _finish_operation(
                db, operation_id, status, finished_utc, message=message, details=details, classification=classification
            )
        return operation_id

    # -- batches -------------------------------------------------------------------------------------------------
    def begin_batch(self, lot_id: str, plan_path: str | Path, wafers: int) -> int:
        with self._write() as db:
            return int(
                db.execute(
                    "INSERT INTO batches (lot_id, plan_path, status, started_utc, wafers, host, pid) "
                    "VALUES (?, ?, 'running', ?, ?, ?, ?)",
                    (lot_id, _path_text(plan_path), utc_now(), wafers, _HOST, os.getpid()),
                ).lastrowid
            )

    def end_batch(self, batch_id: int, status: str, *, succeeded: int, failed: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE batches SET status = ?, finished_utc = ?, succeeded = ?, failed = ? WHERE id = ?",
                (status, utc_now(), succeeded, failed, batch_id),
            )

    # -- queries -------------------------------------------------------------------------------------------------
    def scans(
        self,
        *,
        lot: str | None = None,
        wafer: str | None = None,
        recipe: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        path: str | None = None,
        text: str | None = None,
        batch_id: int | None = None,
        limit: int | None = 100,
    ) -> list[ScanRecord]:
        """Scans, newest first. ``lot``, ``wafer``, ``recipe`` and ``path`` match exactly or as shell patterns
        (``L7*``, ``W0?``); ``since`` / ``until`` bound the start time (see :func:`parse_time`); ``status`` is the
        effective status (``interrupted`` finds rows whose writer died); ``text`` is found anywhere in the path,
        lot, wafer, recipe, operator or message (case-insensitive); ``limit`` None lists all."""
        if status is not None and status not in SCAN_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(SCAN_STATUSES)}")
        where, values = _filters(lot=lot, wafer=wafer, recipe=recipe, since=since, until=until, path=path)
        if text:
            escaped = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            columns = ("s.path", "s.lot_id", "s.wafer_id", "s.recipe", "s.operator", "s.message")
            where.append("(" + " OR ".join(f"{column} LIKE ? ESCAPE '\\'" for column in columns) + ")")
            values.extend([escaped] * len(columns))
        if batch_id is not None:
            where.append("s.batch_id = ?")
            values.append(batch_id)
        if status is not None:  # running rows may really be interrupted ones: decided below
            where.append("s.status IN (?, 'running')")
            values.append(status)
        sql = (
            _SCAN_SELECT
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY s.started_utc DESC, s.id DESC"
        )
        with self._lock:
            rows = self._db.execute(sql, values).fetchall()
        records = (_scan_record(row) for row in rows)
        chosen = [record for record in records if status is None or record.status == status]
        return chosen if limit is None else chosen[:limit]

    def scan(self, scan_id: int) -> ScanRecord | None:
        with self._lock:
            row = self._db.execute(_SCAN_SELECT + " WHERE s.id = ?", (scan_id,)).fetchone()
        return None if row is None else _scan_record(row)

    def operations(self, scan_id: int) -> list[OperationRecord]:
        """What was done to one scan file, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM operations WHERE scan_id = ? ORDER BY id", (scan_id,)).fetchall()
        return [
            OperationRecord(
                id=row["id"],
                scan_id=row["scan_id"],
                kind=row["kind"],
                status=_effective(row["status"], row["host"], row["pid"]),
                started_utc=row["started_utc"],
                finished_utc=row["finished_utc"],
                host=row["host"],
                user=row["user"],
                message=row["message"],
                details=json.loads(row["details_json"] or "{}"),
                yield_fraction=row["yield_fraction"],
            )
            for row in rows
        ]

    def bins(self, scan_id: int) -> list[BinTotal]:
        """The bin counts of a scan's current classification (empty if it has none)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT b.code, b.name, b.fail, b.chips FROM bin_counts b JOIN scans s ON b.operation_id = "
                "s.classification_id WHERE s.id = ? ORDER BY b.code",
                (scan_id,),
            ).fetchall()
        return [BinTotal(row[0], row[1], None if row[2] is None else bool(row[2]), row[3]) for row in rows]

    def lots(self, *, lot: str | None = None, since: str | None = None, limit: int | None = 50) -> list[LotRow]:
        """Lots, most recently scanned first (``lot``: a shell pattern); like :meth:`lot_summary`, the figures
        come from the latest scan of each wafer."""
        where, values = _filters(lot=lot, since=since)
        where.append(_LATEST_OF_WAFER)
        sql = (
            "SELECT s.lot_id, COUNT(*), COUNT(s.yield_fraction), AVG(s.yield_fraction), MIN(s.yield_fraction), "
            f"MAX(s.started_utc) AS last, MAX(s.id) AS newest FROM scans s WHERE {' AND '.join(where)} "
            "GROUP BY s.lot_id ORDER BY last DESC, newest DESC" + ("" if limit is None else f" LIMIT {int(limit)}")
        )
        with self._lock:
            rows = self._db.execute(sql, values).fetchall()
        return [LotRow(row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows]

    def lot_summary(self, lot_id: str) -> LotSummary:
        """The latest scan of each wafer of ``lot_id`` (rescans replace earlier scans of the same wafer)."""
        with self._read() as db:
            rows = db.execute(
                _SCAN_SELECT + f" WHERE s.lot_id = ? AND {_LATEST_OF_WAFER} ORDER BY COALESCE(s.slot, 1e9), s.wafer_id",
                (lot_id,),
            ).fetchall()
            total = db.execute("SELECT COUNT(*) FROM scans WHERE lot_id = ?", (lot_id,)).fetchone()[0]
            ids = [row["id"] for row in rows]
            bins = db.execute(
                "SELECT b.code, b.name, MAX(b.fail), SUM(b.chips) FROM bin_counts b JOIN scans s ON "
                f"b.operation_id = s.classification_id WHERE s.id IN ({','.join('?' * len(ids))}) "
                "GROUP BY b.code, b.name ORDER BY b.code",
                ids,
            ).fetchall()
        wafers = tuple(_scan_record(row) for row in rows)
        yields = [wafer.yield_fraction for wafer in wafers if wafer.yield_fraction is not None]
        finished = [wafer.finished_utc for wafer in wafers if wafer.finished_utc]
        return LotSummary(
            lot_id=lot_id,
            wafers=wafers,
            scans=int(total),
            complete=sum(wafer.status == "complete" for wafer in wafers),
            classified=len(yields),
            mean_yield=sum(yields) / len(yields) if yields else None,
            min_yield=min(yields) if yields else None,
            max_yield=max(yields) if yields else None,
            bins=tuple(BinTotal(row[0], row[1], None if row[2] is None else bool(row[2]), row[3]) for row in bins),
            recipes=tuple(sorted({wafer.recipe for wafer in wafers})),
            first_started_utc=min((wafer.started_utc for wafer in wafers), default=None),
            last_finished_utc=max(finished, default=None),
        )

    def yield_trend(
        self,
        *,
        recipe: str | None = None,
        by: str = "day",
        since: str | None = None,
        until: str | None = None,
        lot: str | None = None,
    ) -> list[TrendPoint]:
        """Yield per recipe over time: the classified scans' yields grouped ``by`` day, week (``2026-W09``: weeks
        start on Mondays, SQLite's ``%W``), month, lot or wafer (every scan its own point), oldest first."""
        if by not in _TREND_PERIOD:
            raise ValueError(f"by {by!r} is not one of {', '.join(TREND_GROUPS)}")
        where, values = _filters(recipe=recipe, since=since, until=until, lot=lot)
        where.append("s.yield_fraction IS NOT NULL")
        period = _TREND_PERIOD[by]
        sql = (
            f"SELECT s.recipe, {period} AS period, COUNT(*), AVG(s.yield_fraction), MIN(s.yield_fraction), "
            f"MAX(s.yield_fraction), MIN(s.started_utc) AS first FROM scans s WHERE {' AND '.join(where)} "
            "GROUP BY s.recipe, period ORDER BY s.recipe, first"
        )
        with self._lock:
            rows = self._db.execute(sql, values).fetchall()
        return [TrendPoint(row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows]


def _path_text(path: str | Path) -> str:
    return str(Path(path).expanduser().absolute())


def _optional_text(value: str | Path | None) -> str | None:
    return None if value is None else str(value)


def _insert_operation(
    db: sqlite3.Connection, scan_id: int, kind: str, now: str, details: dict[str, Any] | None = None
) -> int:
    return int(
        db.execute(
            "INSERT INTO operations (scan_id, kind, status, started_utc, host, pid, user, details_json) "
            "VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
            (scan_id, kind, now, _HOST, os.getpid(), _user(), json.dumps(details or {})),
        ).lastrowid
    )


def _finish_operation(
    db: sqlite3.Connection,
    operation_id: int,
    status: str,
    finished_utc: str,
    *,
    message: str,
    details: dict[str, Any] | None,
    classification: ClassificationRecord | None,
) -> None:
    """End an operation; a classification's yield and bins become its scan's current ones."""
    db.execute(
        "UPDATE operations SET status = ?, finished_utc = ?, message = ?, "
        "details_json = COALESCE(?, details_json) WHERE id = ?",
        (status, finished_utc, message, None if details is None else json.dumps(details), operation_id),
    )
    if classification is None:
        return
    record = classification
    db.execute(
        "UPDATE operations SET yield_fraction = ?, classifier_kind = ?, classifier_name = ?, model_id = ?, "
        "signature = ? WHERE id = ?",
        (
            record.yield_fraction,
            record.classifier_kind,
            record.classifier_name,
            record.model_id,
            record.signature,
            operation_id,
        ),
    )
    db.executemany(
        "INSERT OR REPLACE INTO bin_counts (operation_id, code, name, fail, chips) VALUES (?, ?, ?, ?, ?)",
        [
            (operation_id, int(code), name, None if fail is None else int(fail), int(chips))
            for code, name, fail, chips in record.bins
        ],
    )
    db.execute(
        "UPDATE scans SET classification_id = ?, yield_fraction = ?, model_id = ?, model_name = ? "
        "WHERE id = (SELECT scan_id FROM operations WHERE id = ?)",
        (
            operation_id,
            record.yield_fraction,
            record.model_id,
            record.classifier_name if record.model_id else None,
            operation_id,
        ),
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _find_scan(db: sqlite3.Connection, path_text: str, uuid: str | None) -> tuple[int, str] | None:
    """The row recorded for the file at ``path_text`` with ``uuid``: same path (and the same uuid, or none recorded),
    else same uuid at a path that no longer exists (the file was moved)."""
    row = db.execute(
        "SELECT id, path, uuid FROM scans WHERE path = ? ORDER BY id DESC LIMIT 1", (path_text,)
    ).fetchone()
    if row is not None and (uuid is None or row["uuid"] in (None, uuid)):
        return int(row["id"]), row["path"]
    if uuid:
        for row in db.execute("SELECT id, path FROM scans WHERE uuid = ? ORDER BY id DESC", (uuid,)).fetchall():
            if not Path(row["path"]).exists():
                return int(row["id"]), row["path"]
    return None


def _filters(**given: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    values: list[Any] = []
    columns = {"lot": "s.lot_id", "wafer": "s.wafer_id", "recipe": "s.recipe", "path": "s.path"}
    for name, value in given.items():
        if value is None:
            continue
        if name in columns:
            pattern = any(mark in value for mark in "*?[")
            where.append(f"{columns[name]} {'GLOB' if pattern else '='} ?")
            values.append(value)
        elif name == "since":
            where.append("s.started_utc >= ?")
            values.append(parse_time(value))
        elif name == "until":
            where.append("s.started_utc <= ?")
            values.append(parse_time(value, end_of_day=True))
    return where, values


def _scan_record(row: sqlite3.Row) -> ScanRecord:
    kind, name = row["classifier_kind"], row["classifier_name"]
    classifier = None if kind is None else (name or kind)
    return ScanRecord(
        id=row["id"],
        path=row["path"],
        file="ok" if Path(row["path"]).exists() else "missing",
        kind=row["kind"],
        uuid=row["uuid"],
        lot_id=row["lot_id"],
        wafer_id=row["wafer_id"],
        slot=row["slot"],
        recipe=row["recipe"],
        operator=row["operator"],
        station=row["station"],
        status=_effective(row["status"], row["host"], row["pid"]),
        started_utc=row["started_utc"],
        finished_utc=row["finished_utc"],
        message=row["message"],
        yield_fraction=row["yield_fraction"],
        classifier=classifier,
        model_id=row["model_id"],
        signature=row["signature"],
        analysed_utc=row["analysed_utc"],
        batch_id=row["batch_id"],
    )


def recipe_name(recipe_toml: str) -> str:
    """The ``name`` of a recipe's TOML text ("" when it has none or does not parse)."""
    try:
        return str(tomllib.loads(recipe_toml).get("name", ""))
    except tomllib.TOMLDecodeError:
        return ""


def read_scan_identity(path: str | Path) -> dict[str, Any]:
    """What a scan file says about itself, as :meth:`History.register_file` takes it."""
    from inspection.scanfile import ScanFile  # noqa: PLC0415 (h5py and NumPy only for files, not for queries)

    with ScanFile(path) as scan:
        return {
            "uuid": scan.uuid,
            "lot_id": scan.lot_id,
            "wafer_id": scan.wafer_id,
            "recipe": recipe_name(scan.recipe_toml),
            "operator": scan.operator,
            "status": scan.status.value,
            "started_utc": _stored_time(scan.created_utc),
        }


def _stored_time(text: str) -> str | None:
    try:
        return parse_time(text) if text else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Recording without ever failing the work
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Records work into the history without ever making the work fail.

    The database is opened on first use. If it cannot be opened or written (a read-only home, a newer schema, a
    lock held too long), ``warn`` is called once with the reason and nothing more is recorded by this recorder;
    the scan or analysis goes on. ``Recorder(None)`` (or ``PLMAPPER_HISTORY=off``) records nothing.
    """

    path: Path | bool | None = True  # True: the default history; None/False: record nothing
    warn: Callable[[str], None] = field(default=lambda message: None)
    _history: History | None = field(default=None, init=False, repr=False)
    _broken: bool = field(default=False, init=False, repr=False)

    @property
    def history(self) -> History | None:
        if self._history is None and not self._broken and self.path not in (None, False):
            location = default_history_path() if self.path is True else Path(self.path)  # type: ignore[arg-type]
            if location is None:
                self._broken = True
                return None
            try:
                self._history = History(location)
            except HistoryError as error:
                self._give_up(error)
        return self._history

    def _give_up(self, error: Exception) -> None:
        self._broken = True
        self.warn(f"scan history not recorded: {error}")

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        history = self.history
        if history is None:
            return None
        try:
            return getattr(history, method)(*args, **kwargs)
        except (HistoryError, sqlite3.Error) as error:
            self._give_up(error)
            return None

    def begin_scan(self, path: str | Path, **identity: Any) -> ScanHandle | None:
        return self._call("begin_scan", path, **identity)

    def end_scan(self, handle: ScanHandle | None, status: str, message: str = "", *, uuid: str | None = None) -> None:
        if handle is not None:
            self._call("end_scan", handle, status, message, uuid=uuid)

    def begin_operation(
        self, path: str | Path, kind: str, details: dict[str, Any] | None = None, *, register_as: str = "registered"
    ) -> int | None:
        """Start recording ``kind`` on the scan file at ``path`` (registered first if the history does not know it).
        None when nothing is recorded, also when ``path`` is no readable scan file (the work will say why)."""
        if self.history is None:
            return None
        from inspection.scanfile import ScanFileError  # noqa: PLC0415 (as above)

        try:
            scan_id = self._call("register_scan_file", path, kind=register_as)
        except (FileNotFoundError, ScanFileError, OSError):
            return None
        return None if scan_id is None else self._call("begin_operation", scan_id, kind, details)

    def end_operation(self, operation_id: int | None, status: str, message: str = "", **extra: Any) -> None:
        if operation_id is not None:
            self._call("end_operation", operation_id, status, message, **extra)

    def add_operation(
        self,
        path: str | Path,
        kind: str,
        status: str,
        *,
        started_utc: str,
        finished_utc: str,
        message: str = "",
        details: dict[str, Any] | None = None,
        classification: ClassificationRecord | None = None,
    ) -> int | None:
        """Record a finished operation on the scan file at ``path`` (registered first if the history does not know
        it), with its own times: :meth:`History.add_operation`. None when nothing is recorded, also when ``path`` is
        no readable scan file."""
        if self.history is None:
            return None
        from inspection.scanfile import ScanFileError  # noqa: PLC0415 (as above)

        try:
            scan_id = self._call("register_scan_file", path)
        except (FileNotFoundError, ScanFileError, OSError):
            return None
        if scan_id is None:
            return None
        return self._call(
            "add_operation",
            scan_id,
            kind,
            status,
            started_utc=started_utc,
            finished_utc=finished_utc,
            message=message,
            details=details,
            classification=classification,
        )

    @contextlib.contextmanager
    def operation(
        self, path: str | Path, kind: str, details: dict[str, Any] | None = None, *, register_as: str = "registered"
    ) -> Iterator[OperationResult]:
        """Record ``kind`` on ``path`` around a block: ``ok`` when it ends, ``failed`` with the error's text when
        it raises, ``stopped`` on Ctrl-C or :class:`OperationStopped`. The block fills in ``result.details`` /
        ``result.classification``."""
        operation_id = self.begin_operation(path, kind, details, register_as=register_as)
        result = OperationResult()
        try:
            yield result
        except KeyboardInterrupt:
            self.end_operation(operation_id, "stopped", "stopped by Ctrl-C")
            raise
        except OperationStopped as stop:
            self.end_operation(operation_id, "stopped", str(stop) or "stopped")
            raise
        except BaseException as error:
            self.end_operation(operation_id, "failed", str(error) or type(error).__name__)
            raise
        self.end_operation(
            operation_id,
            result.status,
            result.message,
            details=result.details or None,
            classification=result.classification,
        )

    def begin_batch(self, lot_id: str, plan_path: str | Path, wafers: int) -> int | None:
        return self._call("begin_batch", lot_id, plan_path, wafers)

    def end_batch(self, batch_id: int | None, status: str, *, succeeded: int, failed: int) -> None:
        if batch_id is not None:
            self._call("end_batch", batch_id, status, succeeded=succeeded, failed=failed)

    def close(self) -> None:
        if self._history is not None:
            self._history.close()
            self._history = None


class OperationStopped(Exception):  # noqa: N818 - a request to stop, not an error
    """Raised inside :meth:`Recorder.operation` when a person stops the work (a Cancel button): recorded as
    ``stopped`` with the exception's text, not as ``failed``."""


@dataclass
class OperationResult:
    """What a block recorded with :meth:`Recorder.operation` found."""

    status: str = "ok"
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    classification: ClassificationRecord | None = None
