"""Scan file: metadata and layout, edge cases, foreign files, live reading, and crash safety under SIGKILL.

The kill tests run the writer in child processes started from a fork server (so a child starts in milliseconds
instead of re-importing numpy and h5py), SIGKILL them at random moments, and check after every kill that the file
opens, says ``interrupted``, and holds exactly the lines it claims. ``PLMAPPER_KILL_TESTS=500`` runs more kills.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import struct
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from inspection.scanfile import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LINE_RECORD_DTYPE,
    MEASURED_FIELDS,
    POWER_LOG_DTYPE,
    ScanFile,
    ScanFileError,
    ScanFileWriter,
    ScanStatus,
    _clear_writer_marks,
    _lookup3,
    _read_superblock,
)

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and writer locks are tested on Linux")

PLAN_DTYPE = np.dtype([("line_index", "i4"), ("x_start_um", "f8"), ("sample_count", "i4")])
SITE_DTYPE = np.dtype([("kind", "U12"), ("x_um", "f8"), ("y_um", "f8"), ("phase_um", "f8"), ("amplitude", "f8")])


def make_plan(lines: int) -> np.ndarray:
    plan = np.zeros(lines, dtype=PLAN_DTYPE)
    plan["line_index"] = np.arange(lines)
    plan["x_start_um"] = np.arange(lines) * 10.0
    plan["sample_count"] = 100
    return plan


def create(path: Path, *, lines: int = 4, powers: tuple[float, ...] = (0.001, 0.01), **overrides) -> ScanFileWriter:
    arguments = {
        "recipe_toml": 'name = "demo"\n[sampling]\nsample_rate_hz = 100000.0\n',
        "station_toml": '[station]\nname = "virtual"\n',
        "identities": {"laser": "Coherent OBIS 405", "stage": "Zaber X-MCC4"},
        "plan_lines": make_plan(lines),
        "powers_w": powers,
        "plan_summary": f"{lines} lines × {len(powers)} passes",
        "operator": "ann",
        "lot_id": "LOT-7",
        "wafer_id": "W01",
        "software_version": "0.1.0",
        "extra": {"host": "bench-1"},
        "fsync": False,
    }
    arguments.update(overrides)
    return ScanFileWriter.create(path, **arguments)


def record(line: int, pass_index: int = 0) -> dict[str, float]:
    return {name: float(pass_index * 1000 + line + position / 8) for position, name in enumerate(MEASURED_FIELDS)}


def samples(line: int, pass_index: int = 0, size: int = 100) -> np.ndarray:
    return (pass_index * 1000 + line + np.arange(size) / 1000).astype(np.float32)


# -- metadata and layout --------------------------------------------------------------------------------------------
def test_everything_a_reader_needs_is_written_at_create(tmp_path):
    path = tmp_path / "scan.h5"
    create(path).close()
    with ScanFile(path) as scan:
        assert scan.format_version == FORMAT_VERSION
        assert len(scan.uuid) == 36
        assert scan.created_utc.endswith("Z") and scan.created_utc[:2] == "20"
        assert (scan.operator, scan.lot_id, scan.wafer_id, scan.software_version) == ("ann", "LOT-7", "W01", "0.1.0")
        assert scan.recipe_toml.startswith('name = "demo"') and scan.station_toml.startswith("[station]")
        assert scan.identities == {"laser": "Coherent OBIS 405", "stage": "Zaber X-MCC4"}
        assert scan.extra == {"host": "bench-1"}
        np.testing.assert_array_equal(scan.plan_lines, make_plan(4))
        assert scan.plan_lines.dtype == PLAN_DTYPE
        assert scan.powers_w == (0.001, 0.01)
        assert scan.plan_summary == "4 lines × 2 passes"
        assert scan.status is ScanStatus.INTERRUPTED  # closed without finish()
        assert [scan.lines_complete(index) for index in range(2)] == [0, 0]
    with h5py.File(path, "r") as raw:  # closed cleanly: any HDF5 reader opens it, no SWMR needed
        assert raw.attrs["format_name"] == FORMAT_NAME
        assert raw["passes/pass_000/samples_v"].chunks == (131072,)
        assert raw["passes/pass_000/samples_v"].compression is None
        assert raw["passes/pass_001"].attrs["power_w"] == 0.01
        assert h5py.check_enum_dtype(raw["status/code"].dtype) == {
            "running": 0,
            "complete": 1,
            "aborted": 2,
            "failed": 3,
        }
        counters = ["status/message_length", "alignment/count", "spectra/count", "power_log/count", "events/count"]
        for name in [*counters, "passes/pass_000/lines_complete", "passes/pass_001/lines_complete"]:
            layout = raw[name].id.get_create_plist().get_layout()
            assert layout == h5py.h5d.CONTIGUOUS and raw[name].id.get_offset() % 8 == 0, name  # one aligned write
    assert [entry.name for entry in tmp_path.iterdir()] == ["scan.h5"]  # no temporary left behind


def test_create_refuses_to_overwrite(tmp_path):
    path = tmp_path / "scan.h5"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="never overwritten"):
        create(path)
    assert path.read_bytes() == b"precious"
    assert [entry.name for entry in tmp_path.iterdir()] == ["scan.h5"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"powers": ()}, "one or more powers > 0 W"),
        ({"powers": (0.01, -0.001)}, r"one or more powers > 0 W, got \[0.01, -0.001\]"),
        ({"powers": (float("nan"),)}, "finite"),
        ({"plan_lines": np.zeros((2, 2))}, "1-D"),
        ({"plan_lines": np.zeros(2, dtype=[("name", "U8")])}, "HDF5 cannot store"),
        ({"plan_lines": np.zeros(2, dtype=[("xy", [("t", "M8[s]")], (2,))])}, "has a datetime64"),
        ({"identities": {"": "x"}}, "non-empty str"),
        ({"extra": {"a/b": "x"}}, "without '/'"),
    ],
)
def test_create_rejects_bad_arguments(tmp_path, overrides, message):
    powers = overrides.pop("powers", (0.001,))
    with pytest.raises(ValueError, match=message):
        create(tmp_path / "scan.h5", powers=powers, **overrides)
    assert not any(tmp_path.iterdir())


def test_create_rejects_non_text(tmp_path):
    with pytest.raises(TypeError, match="operator must be a str"):
        create(tmp_path / "scan.h5", operator=7)


def test_lines_round_trip_with_records_and_offsets(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path, lines=3) as writer:
        for line in range(3):
            writer.write_line(0, line, samples(line, size=50 + line), record(line))
        writer.write_line(1, 0, np.arange(7, dtype=np.float64), {**record(0, 1), "line_index": 0.0})
        assert (writer.next_line(0), writer.next_line(1)) == (3, 1)
    with ScanFile(path) as scan:
        records = scan.line_records(0)
        assert records.dtype == LINE_RECORD_DTYPE
        assert records["sample_offset"].tolist() == [0, 50, 101]
        assert records["sample_count"].tolist() == [50, 51, 52]
        assert records["power_after_w"][2] == record(2)["power_after_w"]
        for line in range(3):
            got = scan.line_samples(0, line)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, samples(line, size=50 + line))
        np.testing.assert_array_equal(scan.pass_samples(0)[50:101], samples(1, size=51))
        assert scan.line_samples(1, 0).tolist() == list(range(7))
        with pytest.raises(IndexError, match="not complete"):
            scan.line_samples(1, 1)
        with pytest.raises(ValueError, match="pass 2 does not exist"):
            scan.lines_complete(2)


def test_write_line_checks_its_arguments(tmp_path):
    with create(tmp_path / "scan.h5", lines=2) as writer:
        with pytest.raises(ValueError, match="next line is 0"):
            writer.write_line(0, 1, samples(1), record(1))
        with pytest.raises(ValueError, match="pass 5 does not exist"):
            writer.write_line(5, 0, samples(0), record(0))
        with pytest.raises(ValueError, match=r"missing fields \['laser_setpoint_w'\]"):
            writer.write_line(0, 0, samples(0), {k: v for k, v in record(0).items() if k != "laser_setpoint_w"})
        with pytest.raises(ValueError, match=r"unknown fields \['bogus'\]"):
            writer.write_line(0, 0, samples(0), {**record(0), "bogus": 1.0})
        with pytest.raises(ValueError, match="line_index = 3"):
            writer.write_line(0, 0, samples(0), {**record(0), "line_index": 3})
        with pytest.raises(ValueError, match="1-D array"):
            writer.write_line(0, 0, np.zeros((2, 2)), record(0))
        writer.write_line(0, 0, samples(0), record(0))
        writer.write_line(0, 1, samples(1), record(1))
        with pytest.raises(ValueError, match="beyond the plan's 2 lines"):
            writer.write_line(0, 2, samples(2), record(2))
        assert writer.next_line(0) == 2  # nothing was half-written by the refused calls


def test_empty_inputs(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path, lines=1, powers=(0.002,)) as writer:
        writer.write_line(0, 0, np.zeros(0, dtype=np.float32), record(0))
        writer.write_alignment(
            offset_x_um=0.0, offset_y_um=0.0, rotation_deg=0.0, residual_um=float("nan"), sites=np.zeros(0, SITE_DTYPE)
        )
        writer.write_spectrum(
            col=0, row=0, x_um=0.0, y_um=0.0, reason="", wavelength_nm=np.zeros(0), power_w_per_nm=np.zeros(0)
        )
        writer.event("info", "")
        writer.finish(ScanStatus.COMPLETE)
    with ScanFile(path) as scan:
        assert scan.status is ScanStatus.COMPLETE and scan.message == ""
        assert scan.line_samples(0, 0).shape == (0,) and scan.line_samples(0, 0).dtype == np.float32
        alignment = scan.alignment()
        assert alignment["sites"].dtype == SITE_DTYPE and alignment["sites"].shape == (0,)
        assert np.isnan(alignment["residual_um"])
        [spectrum] = scan.spectra()
        assert spectrum["wavelength_nm"].shape == (0,) and spectrum["reason"] == ""
        assert scan.power_log().dtype == POWER_LOG_DTYPE and scan.power_log().shape == (0,)
        assert scan.events()[-1][1:] == ("info", "")


def test_a_plan_without_lines_is_complete_at_once(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path, lines=0) as writer:
        assert writer.next_line(0) == 0
        writer.finish(ScanStatus.COMPLETE, "nothing to scan")
    with ScanFile(path) as scan:
        assert scan.status is ScanStatus.COMPLETE
        assert scan.line_records(0).shape == (0,) and scan.line_records(0).dtype == LINE_RECORD_DTYPE
        assert scan.pass_samples(1).shape == (0,)
        assert scan.plan_lines.dtype == PLAN_DTYPE and scan.plan_lines.shape == (0,)
        assert "0 of 0 lines complete" in scan.summary()


def test_alignment_spectra_power_and_events(tmp_path):
    path = tmp_path / "scan.h5"
    first = np.array([("columns", 1.0, 2.0, 0.5, 3.0)], dtype=SITE_DTYPE)
    second = np.array([[1.0, 2.0], [3.0, 4.0]])
    with create(path) as writer:
        writer.write_alignment(offset_x_um=1.0, offset_y_um=-2.0, rotation_deg=0.01, residual_um=0.2, sites=first)
        writer.write_alignment(offset_x_um=3.0, offset_y_um=4.0, rotation_deg=-0.02, residual_um=0.1, sites=second)
        with pytest.raises(ValueError, match="alignment sites"):
            writer.write_alignment(
                offset_x_um=0.0, offset_y_um=0.0, rotation_deg=0.0, residual_um=0.0, sites=np.array([object()])
            )
        writer.write_spectrum(
            col=3, row=4, x_um=10.0, y_um=20.0, reason="grid", wavelength_nm=[450.0, 451.0], power_w_per_nm=[1.0, 2.0]
        )
        writer.write_spectrum(
            col=5, row=6, x_um=-1.0, y_um=-2.0, reason="flagged: dim", wavelength_nm=[460.0], power_w_per_nm=[3.0]
        )
        with pytest.raises(ValueError, match="at most 64"):
            writer.write_spectrum(
                col=0, row=0, x_um=0, y_um=0, reason="x" * 65, wavelength_nm=[1.0], power_w_per_nm=[1.0]
            )
        with pytest.raises(ValueError, match="must be 1-D and equal"):
            writer.write_spectrum(col=0, row=0, x_um=0, y_um=0, reason="", wavelength_nm=[1.0], power_w_per_nm=[])
        assert writer.spectra_count() == 2
        writer.log_power(100.0, 0.0101)
        writer.log_power(101.0, 0.0102)
        writer.event("warning", "line 3 attempt 1 failed: timeout — retrying")
        with pytest.raises(ValueError, match="at most 16"):
            writer.event("x" * 17, "too long a level")
    with ScanFile(path) as scan:
        alignment = scan.alignment()
        assert (alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"]) == (3.0, 4.0, -0.02)
        np.testing.assert_array_equal(alignment["sites"], second)
        spectra = scan.spectra()
        assert [(s["col"], s["row"], s["reason"]) for s in spectra] == [(3, 4, "grid"), (5, 6, "flagged: dim")]
        assert spectra[0]["wavelength_nm"].tolist() == [450.0, 451.0] and spectra[1]["power_w_per_nm"].tolist() == [3.0]
        assert scan.spectra_count() == 2
        assert scan.power_log().tolist() == [(100.0, 0.0101), (101.0, 0.0102)]  # committed by close()
        events = scan.events()
        assert events[0][1] == "info" and "created" in events[0][2]
        assert events[-1][1:] == ("warning", "line 3 attempt 1 failed: timeout — retrying")
        assert all(events[i][0] <= events[i + 1][0] for i in range(len(events) - 1))
        summary = scan.summary()
        assert "interrupted" in summary and "spectra: 2" in summary and "rotation -0.0200°" in summary


def test_alignment_sites_round_trip_exactly(tmp_path):
    path = tmp_path / "scan.h5"
    sites = np.array([("columns", 1.0, 2.0, 0.5, 3.0), ("rows", -1.0, 5.0, 1.5, 0.25)], dtype=SITE_DTYPE)
    with create(path) as writer:
        writer.write_alignment(offset_x_um=1.0, offset_y_um=2.0, rotation_deg=0.0, residual_um=0.0, sites=sites)
    with ScanFile(path) as scan:
        stored = scan.alignment()["sites"]
    assert stored.dtype == SITE_DTYPE
    np.testing.assert_array_equal(stored, sites)


def test_finish(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path, lines=2, powers=(0.01,)) as writer:
        writer.write_line(0, 0, samples(0), record(0))
        with pytest.raises(ValueError, match=r"passes \[0\] have \[1\] of 2 lines"):
            writer.finish(ScanStatus.COMPLETE)
        with pytest.raises(ValueError, match="not running"):
            writer.finish(ScanStatus.RUNNING)
        writer.write_line(0, 1, samples(1), record(1))
        writer.finish(ScanStatus.COMPLETE, "all lines — done")
        with pytest.raises(ValueError, match="finished"):
            writer.write_line(0, 2, samples(2), record(2))
        with pytest.raises(ValueError, match="finished"):
            writer.event("info", "late")
    with ScanFile(path) as scan:
        assert scan.status is ScanStatus.COMPLETE
        assert scan.message == "all lines — done"
        assert scan.finished_unix_s == pytest.approx(time.time(), abs=60)
        assert "status: complete" in scan.summary() and "2 of 2 lines complete (100%)" in scan.summary()
    with pytest.raises(ScanFileError, match="complete; there is nothing to resume"):
        ScanFileWriter.resume(path)
    with pytest.raises(ValueError, match="closed"):
        writer.event("info", "after close")


def test_abort_then_resume_then_complete(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path, lines=2, powers=(0.01,)) as writer:
        writer.write_line(0, 0, samples(0), record(0))
        writer.finish(ScanStatus.ABORTED, "operator pressed stop")
    with ScanFile(path) as scan:
        assert (scan.status, scan.message, scan.lines_complete(0)) == (ScanStatus.ABORTED, "operator pressed stop", 1)
    with ScanFileWriter.resume(path, fsync=False) as writer:
        assert writer.next_line(0) == 1
        with ScanFile(path) as scan:
            assert scan.status is ScanStatus.RUNNING and scan.message == ""
        writer.write_line(0, 1, samples(1), record(1))
        writer.finish(ScanStatus.COMPLETE, "done")
    with ScanFile(path) as scan:
        assert scan.status is ScanStatus.COMPLETE
        assert "resumed (aborted)" in " ".join(message for _, _, message in scan.events())
        np.testing.assert_array_equal(scan.line_samples(0, 1), samples(1))


def test_resume_of_a_failed_file(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path, lines=2, powers=(0.01,)) as writer:
        writer.finish(ScanStatus.FAILED, "stage stalled")
    with ScanFile(path) as scan:
        assert "stage stalled" in scan.summary()
    with ScanFileWriter.resume(path, fsync=False) as writer:
        assert writer.next_line(0) == 0


# -- foreign, damaged and newer files -------------------------------------------------------------------------------
def test_foreign_and_damaged_files_are_refused_with_the_reason(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as out:
        out["image"] = np.zeros((2, 2))
    named = tmp_path / "named.h5"
    with h5py.File(named, "w") as out:
        out.attrs["format_name"] = "someone-else"
    for path, message in (
        (text, "not an HDF5 file"),
        (empty, "not an HDF5 file"),
        (other, "not a plmapper scan file .no format_name attribute; it holds image"),
        (named, "'someone-else' file, not a 'plmapper-scan'"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(ScanFileError, match=message):
            ScanFile(path)
        if path.is_file():
            with pytest.raises(ScanFileError, match=message):
                ScanFileWriter.resume(path)
    with pytest.raises(FileNotFoundError):
        ScanFile(tmp_path / "missing.h5")
    with pytest.raises(FileNotFoundError):
        ScanFileWriter.resume(tmp_path / "missing.h5")


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "scan.h5"
    create(path).close()
    with h5py.File(path, "r+") as raw:
        raw.attrs["format_version"] = np.int64(FORMAT_VERSION + 1)
    with pytest.raises(ScanFileError, match="format version 2; this plmapper reads versions up to 1"):
        ScanFile(path)
    with pytest.raises(ScanFileError, match="format version 2"):
        ScanFileWriter.resume(path)


def test_inconsistent_counters_are_reported_as_damage(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path) as writer:
        writer.write_line(0, 0, samples(0), record(0))
    with h5py.File(path, "r+") as raw:
        raw["passes/pass_000/lines_complete"][()] = 5
    with pytest.raises(ScanFileError, match="5 lines marked complete but 1 records stored: damaged"):
        ScanFile(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path) as writer:
        writer.write_line(0, 0, samples(0), record(0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ScanFileError, match="HDF5 cannot open the file"):
        ScanFile(path)


def test_resume_needs_an_appendable_hdf5_format(tmp_path):
    path = tmp_path / "imported.h5"
    write_minimal_scan_file(path, libver="earliest")
    with ScanFile(path) as scan:
        assert scan.lines_complete(0) == 2  # readable…
    with h5py.File(path, "r+") as raw:
        raw["status/code"][()] = 0  # …and even if it claims to be running,
    with pytest.raises(ScanFileError, match=r"superblock version 0; appending needs a version 3"):
        ScanFileWriter.resume(path)  # …it cannot be appended to


def test_resume_needs_a_file_from_plmappers_writer(tmp_path):
    path = tmp_path / "imported.h5"
    write_minimal_scan_file(path, libver=("v110", "v110"))
    with h5py.File(path, "r+") as raw:
        raw["status/code"][()] = 3  # failed
    with pytest.raises(ScanFileError, match=r"not written by plmapper's writer .*missing: plan/lines"):
        ScanFileWriter.resume(path)
    with ScanFile(path) as scan:  # untouched, and not left locked or flagged
        assert scan.status is ScanStatus.FAILED
    assert _read_superblock(path) == (3, 0)


# -- the import format: another tool writes a scan file with plain h5py (same code as docs/scan-file.md) ------------
def write_minimal_scan_file(path: Path, libver: str | tuple[str, str] = "earliest") -> None:
    lines = [np.linspace(0.0, 1.0, 5, dtype=np.float32), np.linspace(1.0, 2.0, 3, dtype=np.float32)]
    with h5py.File(path, "w", libver=libver) as f:
        f.attrs["format_name"] = "plmapper-scan"
        f.attrs["format_version"] = 1
        f.attrs["uuid"] = str(uuid.uuid4())
        f.attrs["created_utc"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        f.attrs["powers_w"] = [0.01]  # one pass
        f.attrs["wafer_id"] = "W42"
        code = h5py.enum_dtype({"running": 0, "complete": 1, "aborted": 2, "failed": 3}, basetype="i1")
        f.create_dataset("status/code", data=np.int8(1), dtype=code)  # complete
        records = np.zeros(len(lines), dtype=LINE_RECORD_DTYPE)  # or spell the dtype out, see the layout
        records["line_index"] = np.arange(len(lines))
        records["sample_count"] = [len(line) for line in lines]
        records["sample_offset"] = np.concatenate([[0], np.cumsum(records["sample_count"])[:-1]])
        records["laser_setpoint_w"] = 0.01
        group = f.create_group("passes/pass_000")
        group.create_dataset("samples_v", data=np.concatenate(lines), maxshape=(None,))
        group.create_dataset("lines", data=records, maxshape=(None,))
        group.create_dataset("lines_complete", data=np.int64(len(lines)))


def test_a_minimal_file_written_by_another_tool_reads(tmp_path):
    path = tmp_path / "imported.h5"
    write_minimal_scan_file(path)
    with ScanFile(path) as scan:
        assert scan.status is ScanStatus.COMPLETE and scan.wafer_id == "W42" and scan.operator == ""
        assert scan.lines_complete(0) == 2
        np.testing.assert_array_equal(scan.line_samples(0, 1), np.linspace(1.0, 2.0, 3, dtype=np.float32))
        assert scan.alignment() is None and scan.spectra() == [] and scan.events() == []
        assert scan.recipe_toml == "" and scan.identities == {} and scan.plan_lines.shape == (0,)
        assert "pass 0 at 10 mW: 2 lines complete" in scan.summary()


# -- superblock helpers ---------------------------------------------------------------------------------------------
def test_lookup3_known_answers():
    # test vectors from Bob Jenkins' lookup3.c driver5()
    assert _lookup3(b"") == 0xDEADBEEF
    assert _lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert _lookup3(b"Four score and seven years ago") == 0x17770551
    assert _lookup3(b"Four score and seven years ago", 1) == 0xCD628161


def test_superblock_checksum_matches_hdf5s(tmp_path):
    path = tmp_path / "scan.h5"
    create(path).close()
    raw = path.read_bytes()[:48]
    assert _lookup3(raw[:44]) == struct.unpack("<I", raw[44:48])[0]
    assert _read_superblock(path) == (3, 0)
    assert _clear_writer_marks(path) is False  # a cleanly closed file needs nothing


# -- children for the process tests (module level: the fork server imports them by name) ----------------------------
KILL_PASSES, KILL_LINES = 2, 100


def kill_samples(pass_index: int, line: int) -> np.ndarray:
    size = 2000 + (line * 37) % 500
    return (pass_index * 1000 + line + np.arange(size) / 1000).astype(np.float32)


def kill_record(pass_index: int, line: int) -> dict[str, float]:
    return {name: float(pass_index * 1e4 + line + position / 4) for position, name in enumerate(MEASURED_FIELDS)}


def kill_child(path: str, opened) -> None:
    """Create or resume, then write every line (with power readings, events, spectra) and finish."""
    if os.path.exists(path):
        writer = ScanFileWriter.resume(path)
    else:
        writer = ScanFileWriter.create(
            path,
            recipe_toml="r",
            station_toml="s",
            identities={"laser": "x"},
            plan_lines=make_plan(KILL_LINES),
            powers_w=[0.001, 0.01],
            plan_summary="kill test",
            operator="t",
            lot_id="L",
            wafer_id="W",
            software_version="0",
        )
    opened.set()
    with writer:
        if writer.next_line(0) == 0 and writer.spectra_count() == 0:
            sites = np.array([("columns", 1.0, 2.0, 3.0, 4.0)], dtype=SITE_DTYPE)
            writer.write_alignment(offset_x_um=1.0, offset_y_um=2.0, rotation_deg=0.1, residual_um=0.2, sites=sites)
        for pass_index in range(KILL_PASSES):
            for line in range(writer.next_line(pass_index), KILL_LINES):
                writer.log_power(pass_index * 1e4 + line, 1e-3 * (pass_index + 1))
                writer.write_line(pass_index, line, kill_samples(pass_index, line), kill_record(pass_index, line))
                if line % 25 == 0:
                    writer.event("info", f"pass {pass_index} line {line}")
                wanted = (pass_index * KILL_LINES + line) // 40
                while writer.spectra_count() < wanted:
                    k = writer.spectra_count()
                    writer.write_spectrum(
                        col=k,
                        row=-k,
                        x_um=k * 1.5,
                        y_um=-2.0,
                        reason="grid",
                        wavelength_nm=np.linspace(400.0, 500.0, 50 + k),
                        power_w_per_nm=np.full(50 + k, float(k)),
                    )
        writer.finish(ScanStatus.COMPLETE, "done")


def finish_child(path: str, opened) -> None:
    """Resume a file whose lines are all written and finish it (the trim and the status write)."""
    with ScanFileWriter.resume(path) as writer:
        opened.set()
        writer.finish(ScanStatus.COMPLETE, "done")


def slow_child(path: str, opened) -> None:
    """Create a file and write one small line every 20 ms until killed."""
    with create(Path(path), lines=10_000, powers=(0.01,), fsync=True) as writer:
        opened.set()
        for line in range(10_000):
            writer.write_line(0, line, samples(line), record(line))
            time.sleep(0.02)


def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _expected() -> tuple[list[np.ndarray], list[np.ndarray]]:
    all_samples, all_records = [], []
    for pass_index in range(KILL_PASSES):
        chunks = [kill_samples(pass_index, line) for line in range(KILL_LINES)]
        records = np.zeros(KILL_LINES, dtype=LINE_RECORD_DTYPE)
        records["line_index"] = np.arange(KILL_LINES)
        records["sample_count"] = [chunk.size for chunk in chunks]
        records["sample_offset"] = np.concatenate([[0], np.cumsum(records["sample_count"])[:-1]])
        for line in range(KILL_LINES):
            for name, value in kill_record(pass_index, line).items():
                records[name][line] = value
        all_samples.append(np.concatenate(chunks))
        all_records.append(records)
    return all_samples, all_records


def _check_after_kill(path: Path, previous: list[int], expected) -> tuple[ScanStatus, list[int]]:
    """The file opens, its complete lines are exactly what was written, and nothing complete was lost."""
    expected_samples, expected_records = expected
    with ScanFile(path) as scan:
        status = scan.status
        counts = [scan.lines_complete(index) for index in range(KILL_PASSES)]
        for index in range(KILL_PASSES):
            assert counts[index] >= previous[index], f"complete lines went back from {previous} to {counts}"
            records = scan.line_records(index)
            np.testing.assert_array_equal(records, expected_records[index][: counts[index]])
            end = int(records["sample_offset"][-1] + records["sample_count"][-1]) if counts[index] else 0
            np.testing.assert_array_equal(scan.pass_samples(index), expected_samples[index][:end])
        for k, spectrum in enumerate(scan.spectra()):
            assert (spectrum["col"], spectrum["row"], spectrum["reason"]) == (k, -k, "grid")
            np.testing.assert_array_equal(spectrum["wavelength_nm"], np.linspace(400.0, 500.0, 50 + k))
            np.testing.assert_array_equal(spectrum["power_w_per_nm"], np.full(50 + k, float(k)))
        assert set(scan.power_log()["power_w"]) <= {0.001, 0.002}
        scan.events()
        scan.summary()
    return status, counts


def _run_to_completion_in_process(path: Path) -> None:
    class Flag:
        def set(self) -> None:
            pass

    kill_child(str(path), Flag())


@linux_only
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_file(tmp_path):
    """Kill a writer that creates or resumes the file and writes lines, again and again, until the scan completes
    (then start a new file, until the wanted number of kills is reached); resume must lose nothing complete."""
    kills_wanted = int(os.environ.get("PLMAPPER_KILL_TESTS", "30"))
    context = _context()
    expected = _expected()
    rng = random.Random(20240611)
    phases, flags = Counter(), Counter()
    kills, finished = 0, []
    started = time.monotonic()
    while kills < kills_wanted:
        path = tmp_path / f"killed{len(finished)}.h5"
        previous = [0] * KILL_PASSES
        while True:
            opened = context.Event()
            child = context.Process(target=kill_child, args=(str(path), opened))
            child.start()
            if kills < kills_wanted:
                time.sleep(rng.uniform(0.0, 0.05))
                phase = "writing" if opened.is_set() else "creating/resuming"
                child.kill()
                child.join()
                kills += 1
            else:
                child.join()
                assert child.exitcode == 0
                phase = "final run"
            if not path.exists():
                phases["killed before the file existed"] += 1
                continue
            superblock = _read_superblock(path)
            flags[superblock[1] if superblock else None] += 1
            status, previous = _check_after_kill(path, previous, expected)
            phases[f"{phase}: {status.value}"] += 1
            if phase != "final run":
                assert status is ScanStatus.INTERRUPTED or (
                    status is ScanStatus.COMPLETE and min(previous) == KILL_LINES
                )
            if status is ScanStatus.COMPLETE:
                finished.append(path)
                break
    elapsed = time.monotonic() - started
    print(
        f"\n{kills} SIGKILLs in {elapsed:.1f} s, {len(finished)} scan(s) completed: {dict(phases)}; "
        f"superblock flags after kill: {dict(flags)}"
    )
    assert any(key.startswith("writing") for key in phases), phases

    reference = tmp_path / "reference.h5"
    _run_to_completion_in_process(reference)
    for path in finished:
        with ScanFile(path) as resumed, ScanFile(reference) as straight:
            assert resumed.status is straight.status is ScanStatus.COMPLETE
            for index in range(KILL_PASSES):
                np.testing.assert_array_equal(resumed.line_records(index), straight.line_records(index))
                np.testing.assert_array_equal(resumed.pass_samples(index), straight.pass_samples(index))
            for mine, theirs in zip(resumed.spectra(), straight.spectra(), strict=True):
                for key in ("col", "row", "x_um", "y_um", "reason", "wavelength_nm", "power_w_per_nm"):
                    np.testing.assert_array_equal(mine[key], theirs[key])
            np.testing.assert_array_equal(resumed.alignment()["sites"], straight.alignment()["sites"])
        with h5py.File(path, "r") as mine, h5py.File(reference, "r") as theirs:  # finished: plain HDF5 opens both
            for name in ("passes/pass_000/samples_v", "passes/pass_001/lines", "spectra/wavelength_nm"):
                assert mine[name].shape == theirs[name].shape  # resume's leftovers were trimmed at finish


@linux_only
def test_sigkill_during_resume_and_finish(tmp_path):
    """Kills land in resume's repair, the trim of the tables and the status write; the file stays usable."""
    context = _context()
    expected = _expected()
    prepared = tmp_path / "prepared.h5"
    with create(prepared, lines=KILL_LINES, plan_lines=make_plan(KILL_LINES), fsync=False) as writer:
        for pass_index in range(KILL_PASSES):
            for line in range(KILL_LINES):
                writer.write_line(pass_index, line, kill_samples(pass_index, line), kill_record(pass_index, line))
    rng = random.Random(7)
    outcomes = Counter()
    for trial in range(int(os.environ.get("PLMAPPER_KILL_TESTS", "30")) // 3):
        path = tmp_path / f"finish{trial}.h5"
        path.write_bytes(prepared.read_bytes())
        opened = context.Event()
        child = context.Process(target=finish_child, args=(str(path), opened))
        child.start()
        if trial % 2:  # inside finish(), which takes ~10 ms here
            opened.wait(10)
            time.sleep(rng.uniform(0.0, 0.012))
        else:  # anywhere from the start of the child (resume takes ~45 ms here, with the fork)
            time.sleep(rng.uniform(0.0, 0.05))
        child.kill()
        child.join()
        status, _ = _check_after_kill(path, [KILL_LINES] * KILL_PASSES, expected)
        outcomes[f"{'after' if opened.is_set() else 'before'} resume returned: {status.value}"] += 1
        if status is not ScanStatus.COMPLETE:
            assert status is ScanStatus.INTERRUPTED
            with ScanFileWriter.resume(path, fsync=False) as writer:
                writer.finish(ScanStatus.COMPLETE, "done")
        with ScanFile(path) as scan:
            assert scan.status is ScanStatus.COMPLETE
        path.unlink()
    print(f"\nkills around resume/finish: {dict(outcomes)}")


@linux_only
def test_a_live_writer_is_running_and_a_killed_one_interrupted(tmp_path):
    path = tmp_path / "live.h5"
    context = _context()
    opened = context.Event()
    child = context.Process(target=slow_child, args=(str(path), opened))
    child.start()
    try:
        assert opened.wait(10)
        with ScanFile(path) as scan:  # opened while the writer writes (SWMR read)
            assert scan.status is ScanStatus.RUNNING
            first = scan.lines_complete(0)
            deadline = time.monotonic() + 5
            while scan.lines_complete(0) < first + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen = scan.lines_complete(0)
            assert seen >= first + 3  # the same open reader sees new lines arrive
            np.testing.assert_array_equal(scan.line_samples(0, seen - 1), samples(seen - 1))
            with pytest.raises(ScanFileError, match="being written by another writer"):
                ScanFileWriter.resume(path)
            child.kill()
            child.join()
            assert scan.status is ScanStatus.INTERRUPTED
    finally:
        child.kill()
        child.join()
    assert _read_superblock(path)[1] == 0x05  # a dead SWMR writer's marks: plain HDF5 refuses the file…
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    with ScanFileWriter.resume(path, fsync=False) as writer:  # …resume clears them
        line = writer.next_line(0)
        writer.write_line(0, line, samples(line), record(line))
    with h5py.File(path, "r") as raw:
        assert raw["passes/pass_000/lines_complete"][()] == line + 1


@linux_only
def test_reader_in_the_writers_process(tmp_path):
    path = tmp_path / "scan.h5"
    with create(path) as writer:
        writer.write_line(0, 0, samples(0), record(0))
        with ScanFile(path) as scan:
            assert scan.status is ScanStatus.RUNNING
            assert scan.lines_complete(0) == 1
            writer.write_line(0, 1, samples(1), record(1))
            assert scan.lines_complete(0) == 2
        with pytest.raises(ScanFileError, match="being written"):
            ScanFileWriter.resume(path)
        writer.write_line(0, 2, samples(2), record(2))  # the reader's close did not release the writer's lock
        with ScanFile(path) as scan:
            assert scan.status is ScanStatus.RUNNING


# -- throughput -----------------------------------------------------------------------------------------------------
def _bare_h5py_rate(path: Path, data: np.ndarray, lines: int) -> float:
    """Baseline: the least any durable append costs on this disk now (append, one flush and one fdatasync)."""
    with h5py.File(path, "w", libver=("v110", "v110")) as out:
        dataset = out.create_dataset("s", shape=(0,), maxshape=(None,), chunks=(131072,), dtype=np.float32)
        started = time.perf_counter()
        for line in range(lines):
            dataset.resize(((line + 1) * data.size,))
            dataset[line * data.size :] = data
            out.flush()
            os.fdatasync(out.id.get_vfd_handle())
        return lines * data.size / (time.perf_counter() - started)


@linux_only
def test_write_throughput_of_100k_sample_lines(tmp_path):
    """The engine needs ≥ 20 M samples/s into the file: write_line with fsync on, best of three runs.

    fsync latency depends on what else uses the disk, so a bare h5py append loop is measured in the same rounds;
    if even that cannot reach the requirement, the disk is busy and nothing about our code can be concluded.
    """
    lines, size = 100, 100_000
    data = np.random.default_rng(1).random(size).astype(np.float32)
    rates, baselines = [], []
    for attempt in range(3):
        with create(tmp_path / f"speed{attempt}.h5", lines=lines, powers=(0.01,), fsync=True) as writer:
            started = time.perf_counter()
            for line in range(lines):
                writer.write_line(0, line, data, record(line))
            rates.append(lines * size / (time.perf_counter() - started))
        baselines.append(_bare_h5py_rate(tmp_path / f"bare{attempt}.h5", data, lines))
    best, baseline = max(rates) / 1e6, max(baselines) / 1e6
    print(f"\nwrite_line, 100 k-sample lines, fsync on: {best:.1f} M samples/s (bare h5py + fdatasync: {baseline:.1f})")
    if best < 20 and baseline < 25:
        pytest.skip(f"disk too busy to measure: even bare h5py appends reach only {baseline:.1f} M samples/s")
    assert best >= 20
