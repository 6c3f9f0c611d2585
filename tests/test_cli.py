"""The command line as a whole: --help with an example on every command, one-line usage errors, --json output,
progress display, exit codes, the history commands, and what scan/analyze/classify record in the history."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import pytest

from app.cli import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, _Progress, commands, main
from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from inspection.history import ClassificationRecord, History
from inspection.recipe import load_recipe
from tests.test_batch import STATION, tiny_recipe

REPO = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
DEMO_RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"


@pytest.fixture(scope="module")
def synthetic_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A band of 40 lines through the demo wafer (~10 chip rows), not analysed."""
    path = tmp_path_factory.mktemp("cli") / "band.h5"
    write_synthetic_scan(path, load_profile(DEMO_PROFILE), load_recipe(DEMO_RECIPE), lines=slice(900, 940))
    return path


def copy_of(path: Path, directory: Path, name: str) -> Path:
    copy = directory / name
    copy.write_bytes(path.read_bytes())
    return copy


def test_every_command_has_help_with_an_example(capsys) -> None:
    paths = list(commands())
    assert ("history", "trend") in paths and ("batch",) in paths and ("station", "check") in paths
    for path in [(), *paths]:
        assert main([*path, "--help"]) == EXIT_OK
        text = capsys.readouterr().out
        examples = text[text.index("examples:") :]
        assert f"plmapper {' '.join(path)}".rstrip() in examples, path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["scan"], "plmapper scan: error: the following arguments are required: --out"),
        (["history", "list", "--status", "done"], "plmapper history list: error: argument --status: invalid choice"),
        (["analyze"], "plmapper analyze: error: the following arguments are required: files"),
        (["classify", "x.h5", "--rules", "--model", "m.skops"], "not allowed with argument --rules"),
        (["scan", "--out", "x.h5", "--colour", "red"], "plmapper: error: unrecognized arguments: --colour red"),
        (["export-everything"], "plmapper: error: argument COMMAND: invalid choice"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], expected: str, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "--help" in lines[0], captured.err
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_a_group_without_its_command_shows_its_help(capsys) -> None:
    assert main(["history"]) == EXIT_BAD_INPUT
    assert "history commands" in capsys.readouterr().out
    assert main(["station"]) == EXIT_BAD_INPUT
    assert "check" in capsys.readouterr().out


def test_progress_is_a_bar_on_a_terminal_lines_in_a_log_and_nothing_with_json(capsys, monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with _Progress(quiet=False, interval_s=0.0) as progress:
        assert progress.mode == "bar"
        progress.update(0.5, "analysis", "pass 0")
    assert "50%|" in terminal.getvalue() and "analysis" in terminal.getvalue()
    monkeypatch.undo()
    with _Progress(quiet=False) as progress:
        assert progress.mode == "lines"
        progress.update(0.25, "analysis", "pass 0")
        progress.update(0.5, "analysis", "pass 1")  # within the second: not shown
    assert capsys.readouterr().out == "  analysis   25%  pass 0\n"
    with _Progress(quiet=True) as progress:
        progress.update(0.5, "analysis", "pass 1", force=True)
    assert capsys.readouterr() == ("", "")


def test_analyze_and_classify_json_and_history(synthetic_scan: Path, tmp_path: Path, home: Path, capsys) -> None:
    scan = copy_of(synthetic_scan, tmp_path, "W01.h5")
    assert main(["analyze", str(scan), "--rules", "--json"]) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert document["classifier"] == "rule layer"
    (entry,) = document["files"]
    assert entry["status"] == "ok" and len(entry["passes"]) == 2 and entry["passes"][1]["chips_measured"] > 4000
    classification = entry["classification"]
    assert 0.9 < classification["yield"] <= 1.0
    assert {item["name"] for item in classification["bins"]} >= {"Good", "Dead"}
    assert main(["classify", str(scan), "--rules", "--json"]) == EXIT_OK
    (classified,) = json.loads(capsys.readouterr().out)["files"]
    assert classified["yield"] == classification["yield"] and classified["signature"]
    with History(home / "history.sqlite") as history:
        (record,) = history.scans()
        assert (record.kind, record.lot_id, record.status, record.file) == ("registered", "SYNTHETIC", "complete", "ok")
        assert record.yield_fraction == pytest.approx(classification["yield"])
        kinds = [(operation.kind, operation.status) for operation in history.operations(record.id)]
        assert kinds == [("analysis", "ok"), ("classification", "ok"), ("classification", "ok")]
        assert history.operations(record.id)[0].details["passes"][0]["lines"] == 40


def test_analyze_goes_on_past_a_bad_file_and_refuses_missing_ones(
    synthetic_scan: Path, tmp_path: Path, home: Path, capsys
) -> None:
    good = copy_of(synthetic_scan, tmp_path, "good.h5")
    not_a_scan = tmp_path / "notes.h5"
    with h5py.File(not_a_scan, "w") as file:
        file["x"] = 1
    # a missing file: refused before anything is analysed
    assert main(["analyze", str(good), str(tmp_path / "missing.h5"), "--no-classify"]) == EXIT_BAD_INPUT
    assert "missing.h5: no such scan file" in capsys.readouterr().err
    with h5py.File(good, "r") as file:
        assert "results" not in file
    # a file that is no scan: reported, the next one is still analysed
    assert main(["analyze", str(not_a_scan), str(good), "--no-classify", "--json"]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "not a plmapper scan file" in captured.err and "Traceback" not in captured.err
    bad, fine = json.loads(captured.out)["files"]
    assert bad["status"] == "failed" and fine["status"] == "ok" and fine["classification"] is None
    # classify of an unanalysed file
    other = copy_of(synthetic_scan, tmp_path, "other.h5")
    assert main(["classify", str(other), "--rules"]) == EXIT_BAD_INPUT
    assert "no analysis results" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--tiles", "0"], "--tiles: only with --workers N or --dask ADDRESS"),
        (["--workers", "2", "--tiles", "lots"], "tiles: 'lots' is not auto, off or a chip count"),
        (["--workers", "0"], "--workers: 0 must be at least 1"),
    ],
)
@pytest.mark.parametrize("command", ["analyze", "batch"])
def test_bad_cluster_options_are_one_line_before_anything_starts(
    command: str, argv: list[str], expected: str, *, tmp_path: Path, home: Path, capsys
) -> None:
    scan = tmp_path / "W01.h5"
    scan.write_bytes(b"not looked at")
    plan = tmp_path / "lot.toml"
    plan.write_text(f'lot = "L1"\nrecipe = "{tiny_recipe(tmp_path)}"\n[[wafers]]\nwafer = "W09"\n')
    target = str(scan) if command == "analyze" else str(plan)
    assert main([command, target, "--rules", *argv]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in captured.err, captured.err
    assert not (tmp_path / "W09.h5").exists() and not home.exists()


def test_workers_and_a_scheduler_address_exclude_each_other(tmp_path: Path, capsys) -> None:
    assert main(["batch", str(tmp_path / "lot.toml"), "--workers", "2", "--dask", "tcp://127.0.0.1:1"]) == 2
    assert "argument --dask: not allowed with argument --workers" in capsys.readouterr().err


@pytest.mark.slow
def test_a_scheduler_that_cannot_be_reached_is_one_line(synthetic_scan: Path, tmp_path: Path, home: Path, capsys):
    scan = copy_of(synthetic_scan, tmp_path, "W01.h5")
    assert main(["analyze", str(scan), "--dask", "tcp://127.0.0.1:9", "--rules"]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in captured.err
    assert "Traceback" not in captured.err
    with h5py.File(scan, "r") as file:
        assert "results" not in file


def test_export_writes_the_formats_asked_for_and_records_it(
    synthetic_scan: Path, tmp_path: Path, home: Path, capsys
) -> None:
    scan = copy_of(synthetic_scan, tmp_path, "W03.h5")
    out = tmp_path / "exports"
    assert main(["export", str(scan), "--out-dir", str(out), "--formats", "klarf,e142"]) == EXIT_BAD_INPUT
    assert "plmapper classify" in capsys.readouterr().err  # what to do first
    assert not out.exists()
    assert main(["analyze", str(scan), "--rules", "--json"]) == EXIT_OK
    capsys.readouterr()
    assert main(["export", str(scan), "--out-dir", str(out), "--formats", "klarf,e142,csv", "--json"]) == EXIT_OK
    (entry,) = json.loads(capsys.readouterr().out)["files"]
    assert [Path(item).name for item in entry["written"]] == ["W03.klarf", "W03.e142.xml", "W03.chips.csv"]
    assert all(Path(item).stat().st_size > 0 for item in entry["written"])
    assert main(["export", str(scan), "--out-dir", str(out), "--formats", "klarf,gif"]) == EXIT_BAD_INPUT
    assert "unknown format(s) gif" in capsys.readouterr().err
    with History(home / "history.sqlite") as history:
        (record,) = history.scans()
        export = history.operations(record.id)[-1]
        assert (export.kind, export.status, export.details["formats"]) == ("export", "ok", ["klarf", "e142", "csv"])


def test_scan_json_and_its_history(tmp_path: Path, home: Path, capsys) -> None:
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "W07.h5"
    argv = ["scan", "--recipe", str(recipe), "--station", str(STATION), "--out", str(out), "--lot", "L9"]
    assert main([*argv, "--wafer", "W07", "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"path": str(out), "status": "complete", "message": "scan complete"}
    with History(home / "history.sqlite") as history:
        (record,) = history.scans(lot="L9")
        assert (record.wafer_id, record.recipe, record.status, record.kind) == ("W07", "tiny test", "complete", "scan")
        assert record.uuid and record.finished_utc
    # an existing output file: one line, exit 2, the file untouched, nothing new recorded
    before = out.stat().st_mtime_ns
    assert main([*argv, "--wafer", "W07"]) == EXIT_BAD_INPUT
    assert "already exists" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before
    assert main(["scan", "--resume", "--out", str(out)]) == EXIT_BAD_INPUT  # nothing to resume
    assert "plmapper:" in capsys.readouterr().err
    with History(home / "history.sqlite") as history:
        assert len(history.scans()) == 1


def test_history_commands(tmp_path: Path, home: Path, capsys) -> None:
    present = tmp_path / "W01.h5"
    present.write_bytes(b"scan")
    with History(home / "history.sqlite") as history:
        for path, wafer, value in ((present, "W01", 0.9), (tmp_path / "gone.h5", "W02", 0.7)):
            handle = history.begin_scan(path, lot_id="L5", wafer_id=wafer, recipe="demo 2in", operator="ana")
            history.end_scan(handle, "complete", "scan complete", uuid=f"uuid-{wafer}")
            operation = history.begin_operation(handle.scan_id, "classification")
            record = ClassificationRecord(value, ((1, "Good", False, 9), (3, "Dead", True, 1)), "rules", "rule layer")
            history.end_operation(operation, "ok", classification=record)
    assert main(["history", "list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "W01" in out and f"MISSING {tmp_path / 'gone.h5'}" in out and "90.00%" in out
    assert main(["history", "list", "--wafer", "W0?", "--json"]) == EXIT_OK
    scans = json.loads(capsys.readouterr().out)["scans"]
    assert [(scan["wafer_id"], scan["file"]) for scan in scans] == [("W02", "missing"), ("W01", "ok")]
    assert main(["history", "list", "--since", "not a date"]) == EXIT_BAD_INPUT
    assert "not a date" in capsys.readouterr().err
    assert main(["history", "search", "gone", "--json"]) == EXIT_OK
    assert [scan["wafer_id"] for scan in json.loads(capsys.readouterr().out)["scans"]] == ["W02"]
    assert main(["history", "show", str(present), "--json"]) == EXIT_OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["scan"]["wafer_id"] == "W01" and [item["kind"] for item in shown["operations"]] == [
        "scan",
        "classification",
    ]
    assert shown["bins"][1] == {"code": 3, "name": "Dead", "fail": True, "chips": 1}
    assert main(["history", "show", "1"]) == EXIT_OK
    assert "bins: Good 9, Dead 1" in capsys.readouterr().out
    assert main(["history", "show", "99"]) == EXIT_BAD_INPUT
    assert "no scan 99" in capsys.readouterr().err
    assert main(["history", "lot", "L5", "--json"]) == EXIT_OK
    lot = json.loads(capsys.readouterr().out)
    assert lot["mean_yield"] == pytest.approx(0.8) and lot["bins"][0]["chips"] == 18
    assert main(["history", "lot"]) == EXIT_OK
    assert "L5" in capsys.readouterr().out
    assert main(["history", "lot", "L6"]) == EXIT_BAD_INPUT
    capsys.readouterr()
    assert main(["history", "trend", "--by", "lot", "--json"]) == EXIT_OK
    (point,) = json.loads(capsys.readouterr().out)["points"]
    assert (point["recipe"], point["period"], point["wafers"]) == ("demo 2in", "L5", 2)
    assert main(["history", "trend", "--db", str(tmp_path / "other.sqlite")]) == EXIT_OK
    assert "no classified scans" in capsys.readouterr().out


def test_station_check_json(capsys) -> None:
    code = main(["station", "check", "--station", str(STATION), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == (EXIT_OK if document["failed"] == 0 else EXIT_CHECK_FAILED)
    assert document["station"] == "coarse test station" and document["virtual_profile"].endswith("coarse-profile.toml")
    assert {check["role"] for check in document["checks"]} >= {"stage", "laser", "detector"}
    assert document["passed"] == sum(check["passed"] for check in document["checks"])
