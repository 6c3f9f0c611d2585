"""The scan history: schema and migrations, recording, queries, missing and moved files, dead writers, and several
processes writing and reading at once."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
from pathlib import Path

import pytest

from inspection.history import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ClassificationRecord,
    History,
    HistoryError,
    Recorder,
    default_history_path,
    parse_time,
    utc_now,
)


def classification(yield_fraction: float, good: int, dead: int) -> ClassificationRecord:
    return ClassificationRecord(
        yield_fraction=yield_fraction,
        bins=((1, "Good", False, good), (3, "Dead", True, dead)),
        classifier_kind="rules",
        classifier_name="rule layer",
        signature="random",
    )


def record_scan(
    history: History,
    path: Path | str,
    *,
    lot: str,
    wafer: str,
    recipe: str = "demo 2in",
    status: str = "complete",
    result: ClassificationRecord | None = None,
) -> int:
    handle = history.begin_scan(path, lot_id=lot, wafer_id=wafer, recipe=recipe, operator="ana")
    history.end_scan(handle, status, f"scan {status}")
    if result is not None:
        operation = history.begin_operation(handle.scan_id, "classification")
        history.end_operation(operation, "ok", classification=result)
    return handle.scan_id


def set_started(history_path: Path, scan_id: int, when: str) -> None:
    with sqlite3.connect(history_path) as db:
        db.execute("UPDATE scans SET started_utc = ? WHERE id = ?", (when, scan_id))


def test_a_new_database_has_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "history.sqlite"
    with History(path) as history:
        assert history.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"scans", "operations", "bin_counts", "batches"} <= tables


def test_default_location_is_the_station_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLMAPPER_HISTORY", raising=False)
    monkeypatch.setenv("PLMAPPER_HOME", str(tmp_path / "home"))
    assert default_history_path() == tmp_path / "home" / "history.sqlite"
    monkeypatch.setenv("PLMAPPER_HISTORY", str(tmp_path / "elsewhere.sqlite"))
    assert default_history_path() == tmp_path / "elsewhere.sqlite"
    monkeypatch.setenv("PLMAPPER_HISTORY", "off")
    assert default_history_path() is None
    with pytest.raises(HistoryError, match="switched off"):
        History()


def test_upgrade_from_version_1_keeps_every_scan_and_its_bins(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with sqlite3.connect(path) as db:  # a database as version 1 of plmapper left it
        MIGRATIONS[0](db)
        db.execute("PRAGMA user_version = 1")
        db.executemany(
            "INSERT INTO scans (path, lot_id, wafer_id, recipe, operator, status, started_utc, finished_utc, "
            "yield_fraction, bins_json) VALUES (?, 'L1', ?, 'demo 2in', 'ana', ?, ?, ?, ?, ?)",
            [
                ("/old/W01.h5", "W01", "complete", "2026-01-05T10:00:00Z", "2026-01-05T10:30:00Z", 0.9,
                 json.dumps({"1": 900, "3": 100})),
                ("/old/W02.h5", "W02", "complete", "2026-01-05T11:00:00Z", "2026-01-05T11:30:00Z", 0.8,
                 json.dumps({"1": 800, "3": 200})),
                ("/old/W03.h5", "W03", "failed", "2026-01-05T12:00:00Z", None, None, None),
            ],
        )  # fmt: skip
    with History(path) as history:
        assert history.schema_version == SCHEMA_VERSION
        scans = history.scans(lot="L1")
        assert [scan.wafer_id for scan in scans] == ["W03", "W02", "W01"]
        assert [scan.status for scan in scans] == ["failed", "complete", "complete"]
        assert all(scan.file == "missing" for scan in scans)
        summary = history.lot_summary("L1")
        assert summary.mean_yield == pytest.approx(0.85)
        assert [(entry.code, entry.chips) for entry in summary.bins] == [(1, 1700), (3, 300)]
        migrated = history.operations(scans[1].id)
        assert [(item.kind, item.status, item.yield_fraction) for item in migrated] == [("classification", "ok", 0.8)]
        # the new version's features work on the old rows
        operation = history.begin_operation(scans[0].id, "analysis")
        history.end_operation(operation, "ok", details={"seconds": 1.0})
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(scans)")}
    assert "bins_json" not in columns and {"uuid", "classification_id", "batch_id", "slot"} <= columns


def test_a_newer_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    History(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(HistoryError, match="newer than this plmapper knows"):
        History(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_a_file_that_is_no_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(HistoryError, match="not a usable scan history"):
        History(path)


def test_listing_filters_and_patterns(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        ids = {
            "a": record_scan(history, tmp_path / "a.h5", lot="L7-01", wafer="W01", result=classification(0.9, 9, 1)),
            "b": record_scan(history, tmp_path / "b.h5", lot="L7-01", wafer="W02", status="aborted"),
            "c": record_scan(history, tmp_path / "c.h5", lot="L8-01", wafer="W01", recipe="red 4in"),
        }
        set_started(path, ids["a"], "2026-03-01T08:00:00Z")
        set_started(path, ids["b"], "2026-03-02T08:00:00Z")
        set_started(path, ids["c"], "2026-03-03T23:59:00Z")
        assert [scan.id for scan in history.scans()] == [ids["c"], ids["b"], ids["a"]]
        assert [scan.id for scan in history.scans(lot="L7-01")] == [ids["b"], ids["a"]]
        assert [scan.id for scan in history.scans(lot="L7*", wafer="W01")] == [ids["a"]]
        assert [scan.id for scan in history.scans(recipe="red 4in")] == [ids["c"]]
        assert [scan.id for scan in history.scans(status="aborted")] == [ids["b"]]
        assert [scan.id for scan in history.scans(since="2026-03-02")] == [ids["c"], ids["b"]]
        assert [scan.id for scan in history.scans(until="2026-03-02")] == [ids["b"], ids["a"]]
        assert [scan.id for scan in history.scans(since="2026-03-03", until="2026-03-03")] == [ids["c"]]
        assert [scan.id for scan in history.scans(text="l8-")] == [ids["c"]]
        assert [scan.id for scan in history.scans(text="aborted")] == [ids["b"]]  # the status message
        assert history.scans(text="%") == []  # LIKE wildcards are plain text
        assert len(history.scans(limit=2)) == 2
        first = history.scan(ids["a"])
        assert first is not None and first.yield_fraction == 0.9 and first.classifier == "rule layer"
        assert [(entry.name, entry.chips) for entry in history.bins(ids["a"])] == [("Good", 9), ("Dead", 1)]
        with pytest.raises(ValueError, match="not a date"):
            history.scans(since="last tuesday")
        with pytest.raises(ValueError, match="status"):
            history.scans(status="done")


def test_missing_and_moved_files(tmp_path: Path) -> None:
    scan_file = tmp_path / "W01.h5"
    scan_file.write_bytes(b"scan")
    with History(tmp_path / "history.sqlite") as history:
        scan_id = history.register_file(scan_file, uuid="uuid-1", lot_id="L1", wafer_id="W01")
        assert history.scans()[0].file == "ok"
        moved = tmp_path / "archive" / "W01.h5"
        moved.parent.mkdir()
        scan_file.rename(moved)
        listed = history.scans()[0]
        assert (listed.file, listed.path) == ("missing", str(scan_file))
        # the file is seen at its new place (same uuid, old path gone): its row follows it
        assert history.register_file(moved, uuid="uuid-1") == scan_id
        assert history.scans()[0].path == str(moved) and history.scans()[0].file == "ok"
        # a copy (same uuid, the original still there) is a scan file of its own
        copy = tmp_path / "copy.h5"
        copy.write_bytes(moved.read_bytes())
        assert history.register_file(copy, uuid="uuid-1") != scan_id
        # the same path with another uuid (a new scan at a reused name) is a new row too
        assert history.register_file(moved, uuid="uuid-2") not in (scan_id, None)
        assert len(history.scans()) == 3


def test_a_scan_whose_process_died_is_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        handle = history.begin_scan(tmp_path / "W01.h5", lot_id="L1", wafer_id="W01")
        assert history.scans()[0].status == "running"  # this process is alive
        dead = subprocess.Popen(["true"])
        dead.wait()
        with sqlite3.connect(path) as db:
            db.execute("UPDATE scans SET pid = ? WHERE id = ?", (dead.pid, handle.scan_id))
            db.execute("UPDATE operations SET pid = ? WHERE id = ?", (dead.pid, handle.operation_id))
        assert history.scans()[0].status == "interrupted"
        assert [scan.id for scan in history.scans(status="interrupted")] == [handle.scan_id]
        assert history.scans(status="running") == []
        assert history.operations(handle.scan_id)[0].status == "interrupted"
        # resuming it continues the same row
        resumed = history.begin_scan(tmp_path / "W01.h5", resume=True)
        assert resumed.scan_id == handle.scan_id
        history.end_scan(resumed, "complete", "scan complete")
        assert [item.kind for item in history.operations(handle.scan_id)] == ["scan", "resume"]
        assert history.scans()[0].status == "complete"


def test_lot_summary_uses_the_latest_scan_of_each_wafer(tmp_path: Path) -> None:
    with History(tmp_path / "history.sqlite") as history:
        record_scan(history, tmp_path / "W01.h5", lot="L1", wafer="W01", result=classification(0.5, 5, 5))
        record_scan(history, tmp_path / "W01b.h5", lot="L1", wafer="W01", result=classification(0.9, 9, 1))  # rescan
        record_scan(history, tmp_path / "W02.h5", lot="L1", wafer="W02", result=classification(0.7, 7, 3))
        record_scan(history, tmp_path / "W03.h5", lot="L1", wafer="W03", status="failed")
        record_scan(history, tmp_path / "X01.h5", lot="L2", wafer="X01", result=classification(0.1, 1, 9))
        summary = history.lot_summary("L1")
        assert [wafer.wafer_id for wafer in summary.wafers] == ["W01", "W02", "W03"]
        assert (summary.scans, summary.complete, summary.classified) == (4, 2, 2)
        assert summary.mean_yield == pytest.approx(0.8)
        assert (summary.min_yield, summary.max_yield) == (0.7, 0.9)
        assert [(entry.name, entry.fail, entry.chips) for entry in summary.bins] == [
            ("Good", False, 16),
            ("Dead", True, 4),
        ]
        assert summary.to_json()["wafers"][0]["wafer_id"] == "W01"
        lots = history.lots()
        assert [(row.lot_id, row.wafers, row.classified) for row in lots] == [("L2", 1, 1), ("L1", 3, 2)]
        empty = history.lot_summary("nothing")
        assert empty.wafers == () and empty.mean_yield is None


def test_yield_trend_per_recipe(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        days = ["2026-03-01T08:00:00Z", "2026-03-01T12:00:00Z", "2026-03-02T08:00:00Z", "2026-03-09T08:00:00Z"]
        for day, value in zip(days, (0.9, 0.7, 0.8, 0.6), strict=True):
            scan_id = record_scan(history, tmp_path / f"{value}.h5", lot="L1", wafer=f"W{value}",
                                  result=classification(value, 1, 1))  # fmt: skip
            set_started(path, scan_id, day)
        other = record_scan(
            history, tmp_path / "r.h5", lot="L2", wafer="R1", recipe="red", result=classification(0.5, 1, 1)
        )
        set_started(path, other, "2026-03-01T09:00:00Z")
        record_scan(history, tmp_path / "none.h5", lot="L1", wafer="W9")  # not classified: not in the trend
        by_day = history.yield_trend(recipe="demo 2in")
        assert [(point.period, point.wafers) for point in by_day] == [
            ("2026-03-01", 2),
            ("2026-03-02", 1),
            ("2026-03-09", 1),
        ]
        assert by_day[0].mean_yield == pytest.approx(0.8) and by_day[0].min_yield == 0.7
        weeks = history.yield_trend(recipe="demo*", by="week")
        assert [point.wafers for point in weeks] == [2, 1, 1]  # weeks start on Mondays; 2026-03-01 is a Sunday
        every = history.yield_trend(by="wafer")
        assert [point.recipe for point in every] == ["demo 2in"] * 4 + ["red"]
        assert [point.period for point in history.yield_trend(by="lot")] == ["L1", "L2"]
        assert [point.period for point in history.yield_trend(since="2026-03-02")] == ["2026-03-02", "2026-03-09"]
        with pytest.raises(ValueError, match="by"):
            history.yield_trend(by="hour")


def test_parse_time_spans() -> None:
    assert parse_time("2026-11-22 03:15:00Z") == "2026-11-22T03:15:00Z"
    assert parse_time("7d") < parse_time("1d") < parse_time("1h")


def _hammer(path: str, worker: int, rounds: int) -> int:
    """Record ``rounds`` scans with analyses and classifications, reading listings in between."""
    history = History(path)
    try:
        for index in range(rounds):
            handle = history.begin_scan(f"/data/{worker}/{index}.h5", lot_id=f"LOT{worker}", wafer_id=f"W{index:03d}")
            history.end_scan(handle, "complete", "scan complete")
            operation = history.begin_operation(handle.scan_id, "analysis")
            history.end_operation(operation, "ok")
            operation = history.begin_operation(handle.scan_id, "classification")
            history.end_operation(operation, "ok", classification=classification(index / rounds, index, rounds - index))
            if index % 4 == 0:
                history.scans(limit=20)
                history.lot_summary(f"LOT{worker}")
                history.yield_trend()
        return rounds
    finally:
        history.close()


def test_several_processes_write_and_read_at_once_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"  # not there yet: the processes race to create and migrate it too
    workers, rounds = 4, 40
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        done = pool.starmap(_hammer, [(str(path), worker, rounds) for worker in range(workers)])
    assert done == [rounds] * workers
    with History(path) as history:
        scans = history.scans(limit=None)
        assert len(scans) == workers * rounds
        assert len({scan.path for scan in scans}) == workers * rounds
        assert all(scan.status == "complete" and scan.yield_fraction is not None for scan in scans)
        for worker in range(workers):
            summary = history.lot_summary(f"LOT{worker}")
            assert len(summary.wafers) == rounds
            assert {entry.name: entry.chips for entry in summary.bins} == {
                "Good": sum(range(rounds)),
                "Dead": sum(rounds - index for index in range(rounds)),
            }
        operations = sum(len(history.operations(scan.id)) for scan in scans)
        assert operations == 3 * workers * rounds


def test_the_recorder_never_fails_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("")
    warnings: list[str] = []
    recorder = Recorder(blocker / "history.sqlite", warn=warnings.append)  # its folder cannot be made
    assert recorder.begin_scan(tmp_path / "W01.h5", lot_id="L1") is None
    recorder.end_scan(None, "complete")
    with recorder.operation(tmp_path / "W01.h5", "analysis") as result:
        result.details["seconds"] = 1.0
    assert len(warnings) == 1 and "scan history not recorded" in warnings[0]
    # switched off: nothing recorded, nothing said
    monkeypatch.setenv("PLMAPPER_HISTORY", "off")
    quiet: list[str] = []
    off = Recorder(True, warn=quiet.append)
    assert off.begin_scan(tmp_path / "W01.h5") is None and quiet == []
    # a failing block is recorded as failed and its error goes on
    with History(tmp_path / "history.sqlite") as history:
        scan_id = history.register_file(tmp_path / "W01.h5", uuid=None)
    working = Recorder(tmp_path / "history.sqlite")
    monkeypatch.setattr("inspection.history.read_scan_identity", lambda path: {"uuid": None})
    with pytest.raises(RuntimeError, match="grid"), working.operation(tmp_path / "W01.h5", "analysis"):
        raise RuntimeError("the grid does not fit")
    working.close()
    with History(tmp_path / "history.sqlite") as history:
        (operation,) = history.operations(scan_id)
    assert (operation.kind, operation.status, operation.message) == ("analysis", "failed", "the grid does not fit")


def test_an_operation_done_elsewhere_is_recorded_finished_with_its_own_times(tmp_path: Path) -> None:
    """An analysis and classification on a Dask worker are recorded by the caller once the outcome is back: one
    transaction each, with the worker's times, never shown running; the classification becomes the scan's."""
    with History(tmp_path / "history.sqlite") as history:
        scan_id = record_scan(history, tmp_path / "W01.h5", lot="L9", wafer="W01")
        analysis = history.add_operation(
            scan_id,
            "analysis",
            "ok",
            started_utc="2026-11-22T03:15:00Z",
            finished_utc="2026-11-22T03:15:07Z",
            details={"worker": "tcp://10.0.0.7:40001", "tiles": 0},
        )
        history.add_operation(
            scan_id,
            "classification",
            "ok",
            started_utc="2026-11-22T03:15:07Z",
            finished_utc="2026-11-22T03:15:09Z",
            classification=classification(0.95, 950, 50),
        )
        failed = history.add_operation(
            scan_id,
            "analysis",
            "failed",
            started_utc="2026-11-22T04:00:00Z",
            finished_utc="2026-11-22T04:00:01Z",
            message="analysis: the chip grid sits off its indices",
        )
        operations = {operation.id: operation for operation in history.operations(scan_id)}
        done = operations[analysis]
        assert (done.status, done.started_utc, done.finished_utc) == (
            "ok",
            "2026-11-22T03:15:00Z",
            "2026-11-22T03:15:07Z",
        )
        assert done.details == {"worker": "tcp://10.0.0.7:40001", "tiles": 0}
        assert operations[failed].status == "failed" and "off its indices" in operations[failed].message
        record = history.scan(scan_id)
        assert (record.yield_fraction, record.classifier, record.signature) == (0.95, "rule layer", "random")
        assert record.analysed_utc == "2026-11-22T03:15:07Z"  # the latest analysis that went well
        assert [(item.name, item.chips) for item in history.bins(scan_id)] == [("Good", 950), ("Dead", 50)]
        with pytest.raises(ValueError, match="is not a UTC time"):
            history.add_operation(scan_id, "analysis", "ok", started_utc="yesterday", finished_utc=utc_now())
        with pytest.raises(ValueError, match="operation kind 'render'"):
            history.add_operation(scan_id, "render", "ok", started_utc=utc_now(), finished_utc=utc_now())
    # through a recorder: a path that is no scan file is not recorded, and nothing fails
    recorder = Recorder(tmp_path / "history.sqlite")
    missing = tmp_path / "missing.h5"
    assert recorder.add_operation(missing, "analysis", "failed", started_utc=utc_now(), finished_utc=utc_now()) is None
    recorder.close()
