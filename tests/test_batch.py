"""Batch runs of a lot: plan files (TOML and CSV) and their checks, and a lot on the virtual station with a wafer
that fails, its summary, exit code, history, and running the lot again with --resume; a lot whose analyses run on
a Dask LocalCluster while the station scans (results bit-identical to in-process, a failing analysis reported for
its wafer, the history as in process)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import pytest

from app.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, main
from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from drivers.virtual.world import WaferWorld
from inspection.batch import BatchHooks, check_plan, load_batch_plan, run_batch
from inspection.classify import classify_scan, read_classification
from inspection.distributed import ClusterSettings
from inspection.history import History, classification_record
from inspection.pipeline import analyze_scan
from inspection.recipe import load_recipe
from inspection.scan import ScanEngine, ScanProgress
from inspection.settings import SettingsError
from inspection.wafer import Placement
from tests.test_distributed import assert_bit_identical, stored

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
STATION = DATA / "coarse-station.toml"


def tiny_recipe(directory: Path, *, laser_nm: float = 405.0, name: str = "tiny.toml") -> Path:
    """The coarse test wafer's recipe cut to the bone: grid-locked (22 lines a pass), one spectrum, seconds a scan."""
    text = (DATA / "coarse-recipe.toml").read_text()
    for old, new in (
        ('name = "coarse test"', 'name = "tiny test"'),
        ('mode = "raster"', 'mode = "grid-locked"'),
        ("grid_sites = 3", "grid_sites = 1"),
        ("include_flagged = true", "include_flagged = false"),
        ("laser_wavelength_nm = 405.0", f"laser_wavelength_nm = {laser_nm}"),
    ):
        assert old in text
        text = text.replace(old, new)
    path = directory / name
    path.write_text(text)
    return path


def test_toml_plan_with_relative_paths_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "lots").mkdir()
    plan_path = tmp_path / "lots" / "L1.toml"
    plan_path.write_text(
        'lot = "L1"\nrecipe = "../recipes/a.toml"\nout_dir = "scans"\noperator = "ana"\n'
        '[[wafers]]\nslot = 1\nwafer = "W01"\n'
        '[[wafers]]\nslot = 2\nwafer = "W02"\nrecipe = "own.toml"\nout = "other/W02-x.h5"\n'
    )
    plan = load_batch_plan(plan_path)
    assert (plan.lot_id, plan.operator) == ("L1", "ana")
    first, second = plan.wafers
    assert first.recipe == tmp_path / "lots" / "../recipes/a.toml"
    assert first.out == tmp_path / "lots" / "scans" / "W01.h5"
    assert (second.slot, second.recipe, second.out) == (2, tmp_path / "lots" / "own.toml",
                                                       tmp_path / "lots" / "scans" / "other" / "W02-x.h5")  # fmt: skip
    overridden = load_batch_plan(plan_path, lot="L1b", out_dir=tmp_path / "elsewhere", operator="bo")
    assert (overridden.lot_id, overridden.operator) == ("L1b", "bo")
    assert overridden.wafers[0].out == tmp_path / "elsewhere" / "W01.h5"


def test_csv_plan(tmp_path: Path) -> None:
    plan_path = tmp_path / "L2.csv"
    plan_path.write_text("# lot L2, loaded by ana\nslot,wafer,lot,recipe\n1,W01,L2,r.toml\n2, W02 ,L2,\n")
    plan = load_batch_plan(plan_path, recipe=tmp_path / "default.toml")
    assert plan.lot_id == "L2"
    assert [(wafer.slot, wafer.wafer_id, wafer.recipe.name) for wafer in plan.wafers] == [
        (1, "W01", "r.toml"),
        (2, "W02", "default.toml"),
    ]
    assert plan.wafers[1].out == tmp_path / "W02.h5"


def test_every_problem_of_a_plan_is_reported_at_once(tmp_path: Path) -> None:
    plan_path = tmp_path / "bad.toml"
    plan_path.write_text(
        'lot = "L1"\nrecipe = "r.toml"\ncolour = "blue"\n'
        '[[wafers]]\nslot = 1\nwafer = "W01"\n'
        '[[wafers]]\nslot = 1\nwafer = "W01"\n'
        '[[wafers]]\nslot = 0\nwafer = "W03"\nrecipie = "x"\n'
        '[[wafers]]\nslot = "two"\n'
        '[[wafers]]\nwafer = "W/05"\n'
    )
    with pytest.raises(SettingsError) as caught:
        load_batch_plan(plan_path)
    text = "\n".join(caught.value.problems)
    for expected in (
        "colour: unknown key",
        "wafers[2].recipie: unknown key",
        "wafers[2].slot: 0 is outside 1..999",
        "wafers[3].slot: 'two' is not a whole number",
        "wafers[3].wafer: missing",
        "wafers[4].wafer: 'W/05' cannot name a file",
        "slot 1: used by more than one wafer",
        "wafer W01: used by more than one wafer",
    ):
        assert expected in text
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("slot,wafer,lot\n1,W01,L1\n2,W02,L2\n3\n")
    with pytest.raises(SettingsError) as caught:
        load_batch_plan(csv_path)
    text = "\n".join(caught.value.problems)
    assert "several lots (L1, L2)" in text and "line 4: 1 values for 3 columns" in text
    assert "recipe: missing" in text


def test_check_plan_refuses_bad_recipes_and_existing_files_before_anything_moves(tmp_path: Path, capsys) -> None:
    recipe = tiny_recipe(tmp_path)
    broken = tmp_path / "broken.toml"
    broken.write_text(recipe.read_text().replace("powers_w = [0.002, 0.02]", "powers_w = [-1.0]"))
    (tmp_path / "W02.h5").write_text("an earlier scan")
    plan_path = tmp_path / "lot.toml"
    plan_path.write_text(
        f'lot = "L1"\nrecipe = "{recipe.name}"\n[[wafers]]\nwafer = "W01"\nrecipe = "broken.toml"\n'
        '[[wafers]]\nwafer = "W02"\n'
    )
    plan = load_batch_plan(plan_path)
    with pytest.raises(SettingsError) as caught:
        check_plan(plan)
    text = "\n".join(caught.value.problems)
    assert "broken.toml" in text and "powers_w" in text
    assert "W02.h5 already exists (run with --resume" in text
    # the command says so in one message and exit 2, and writes nothing
    assert main(["batch", str(plan_path)]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "already exists" in error and "Traceback" not in error
    assert not (tmp_path / "W01.h5").exists()
    assert main(["batch", str(tmp_path / "missing.toml")]) == EXIT_BAD_INPUT
    assert "file not found" in capsys.readouterr().err


def test_a_lot_on_the_virtual_station(tmp_path: Path, home: Path, capsys) -> None:
    """Three wafers; the second's recipe is for a green laser, so the station refuses it: the lot goes on, the
    summary reports it, exit 5. Run again with --resume after fixing the plan: done wafers are skipped."""
    tiny_recipe(tmp_path)
    tiny_recipe(tmp_path, laser_nm=532.0, name="green.toml")
    plan_path = tmp_path / "lot.toml"
    wafers = '[[wafers]]\nslot = 1\nwafer = "W01"\n[[wafers]]\nslot = 2\nwafer = "W02"\nrecipe = "green.toml"\n'
    wafers += '[[wafers]]\nslot = 3\nwafer = "W03"\n'
    plan_path.write_text(f'lot = "LB1"\nrecipe = "tiny.toml"\nstation = "{STATION}"\n{wafers}')
    summary_path = tmp_path / "summary.json"
    code = main(["batch", str(plan_path), "--rules", "--json", "--summary", str(summary_path)])
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL, captured.err
    document = json.loads(captured.out)
    assert document == json.loads(summary_path.read_text())
    assert (document["lot"], document["status"], document["succeeded"], document["failed"]) == ("LB1", "partial", 2, 1)
    first, second, third = document["wafers"]
    assert (first["status"], third["status"]) == ("ok", "ok")
    assert first["yield"] is not None and sum(first["bins"].values()) > 400
    assert (second["status"], second["stage"]) == ("failed", "scan")
    assert "excites at 532 nm" in second["message"]
    assert not (tmp_path / "W02.h5").exists()
    # the history knows the lot, with slots, and the failed wafer is not there as a scan
    with History(home / "history.sqlite") as history:
        summary = history.lot_summary("LB1")
        assert [(wafer.wafer_id, wafer.slot, wafer.status) for wafer in summary.wafers] == [
            ("W01", 1, "complete"),
            ("W03", 3, "complete"),
        ]
        assert summary.classified == 2 and summary.recipes == ("tiny test",)
        kinds = [operation.kind for operation in history.operations(summary.wafers[0].id)]
        assert kinds == ["scan", "analysis", "classification"]
        batch_id = summary.wafers[0].batch_id
        assert batch_id is not None and summary.wafers[1].batch_id == batch_id
    # fixed plan, run again: W01 and W03 are skipped, W02 is scanned
    plan_path.write_text(plan_path.read_text().replace('recipe = "green.toml"\n', ""))
    assert main(["batch", str(plan_path), "--rules"]) == EXIT_BAD_INPUT  # existing files without --resume
    capsys.readouterr()
    assert main(["batch", str(plan_path), "--rules", "--resume"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "lot LB1: 3 of 3 wafers done, 0 failed" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]
    assert [(row[1], row[2]) for row in rows] == [("W01", "skipped"), ("W02", "ok"), ("W03", "skipped")]
    with History(home / "history.sqlite") as history:
        assert [wafer.wafer_id for wafer in history.lot_summary("LB1").wafers] == ["W01", "W02", "W03"]


def misaligned_scan(path: Path) -> Path:
    """A complete, unanalysed scan of a band of a demo wafer whose stored alignment is 0.4 pitch off: its analysis
    fails with a RegistrationError, in process and on a cluster alike."""
    profile = dataclasses.replace(load_profile(REPO / "resources" / "profiles" / "demo-2in.toml"), seed=34, name="W34")
    placement = WaferWorld(profile).placement
    wrong = Placement(placement.offset_x_um + 40.0, placement.offset_y_um, placement.rotation_deg)
    recipe = load_recipe(REPO / "resources" / "recipes" / "demo-2in.toml")
    return write_synthetic_scan(path, profile, recipe, lines=slice(900, 940), stored_placement=wrong)


@pytest.mark.slow
def test_a_lot_analysed_on_a_local_cluster(tmp_path: Path, home: Path, capsys) -> None:
    """``batch --workers 2``: W01 and W03 are scanned on the virtual station, each analysed and classified on the
    cluster while the next is handled; W02 (a resumed lot: its scan is complete, never analysed) fails its analysis
    on the cluster. The lot goes on, W02 is reported (exit 5), the others equal the in-process results bit for bit,
    and the history holds what an in-process lot records."""
    tiny_recipe(tmp_path)
    misaligned_scan(tmp_path / "W02.h5")
    plan_path = tmp_path / "lot.toml"
    wafers = "".join(f'[[wafers]]\nslot = {slot}\nwafer = "W0{slot}"\n' for slot in (1, 2, 3))
    plan_path.write_text(f'lot = "LB2"\nrecipe = "tiny.toml"\nstation = "{STATION}"\n{wafers}')
    code = main(["batch", str(plan_path), "--rules", "--resume", "--workers", "2", "--json"])
    captured = capsys.readouterr()
    if code == EXIT_BAD_INPUT and "before the file changed on disk: restart it" in captured.err:
        pytest.skip(f"edited on disk during the test run: {captured.err.strip()}")
    assert code == EXIT_PARTIAL, captured.err
    document = json.loads(captured.out)
    assert (document["status"], document["succeeded"], document["failed"]) == ("partial", 2, 1)
    first, second, third = document["wafers"]
    assert (second["status"], second["stage"]) == ("failed", "analysis")
    assert "off their indices" in second["message"] and not second["message"].startswith("analysis:")
    for entry in (first, third):
        path = Path(entry["path"])
        assert entry["status"] == "ok" and entry["scan_status"] == "complete"
        single = tmp_path / f"single-{path.name}"  # the same scan analysed and classified in this process
        shutil.copy(path, single)
        analyze_scan(single)
        classify_scan(single)
        assert_bit_identical(path, stored(single))
        record = classification_record(read_classification(single))
        assert entry["yield"] == record.yield_fraction and entry["signature"] == record.signature
        assert entry["bins"] == {name: chips for _, name, _, chips in record.bins if chips}
    with History(home / "history.sqlite") as history:
        summary = history.lot_summary("LB2")
        assert [(wafer.wafer_id, wafer.slot, wafer.status) for wafer in summary.wafers] == [
            ("W01", 1, "complete"),
            ("W03", 3, "complete"),
        ]
        assert summary.classified == 2 and summary.wafers[0].batch_id is not None
        for wafer, entry in zip(summary.wafers, (first, third), strict=True):
            assert wafer.yield_fraction == entry["yield"] and wafer.classifier == "rule layer"
            operations = history.operations(wafer.id)
            assert [(operation.kind, operation.status) for operation in operations] == [
                ("scan", "complete"),
                ("analysis", "ok"),
                ("classification", "ok"),
            ]
            assert operations[1].details["worker"].startswith("tcp://") and len(operations[1].details["passes"]) == 2
        (failed,) = [record for record in history.scans(limit=None) if Path(record.path).name == "W02.h5"]
        ((kind, status, message),) = [(op.kind, op.status, op.message) for op in history.operations(failed.id)]
        assert (kind, status) == ("analysis", "failed") and "off their indices" in message


@pytest.mark.slow
def test_a_lot_stopped_on_a_cluster_keeps_the_analyses_already_there(tmp_path: Path, home: Path) -> None:
    """Stopped (as Ctrl-C does: the stop flag set, the scan aborted) during W02's scan, with W01's analysis on the
    cluster: W01's analysis finishes and is recorded, W02 is stopped and resumable, W03 is not started."""
    tiny_recipe(tmp_path)
    plan_path = tmp_path / "lot.toml"
    wafers = "".join(f'[[wafers]]\nslot = {slot}\nwafer = "W0{slot}"\n' for slot in (1, 2, 3))
    plan_path.write_text(f'lot = "LB3"\nrecipe = "tiny.toml"\nstation = "{STATION}"\n{wafers}')
    stop = threading.Event()
    engines: list[ScanEngine] = []

    def stop_during_the_second_scan(progress: ScanProgress) -> None:
        if len(engines) == 2 and not stop.is_set():
            stop.set()
            engines[-1].abort()

    hooks = BatchHooks(on_engine=engines.append, on_progress=stop_during_the_second_scan)
    result = run_batch(
        load_batch_plan(plan_path),
        hooks=hooks,
        stop=stop,
        cluster=ClusterSettings(workers=2),
    )
    first, second, third = result.wafers
    assert result.stopped and result.status == "stopped"
    assert (first.status, first.scan_status) == ("ok", "complete") and first.yield_fraction is not None
    assert second.status == "stopped" and "resumable" in second.message and second.scan_status == "aborted"
    assert third.status == "not started" and not third.path.exists()
    assert read_classification(first.path) is not None and read_classification(second.path) is None
    with History(home / "history.sqlite") as history:
        (record,) = [scan for scan in history.scans(limit=None) if scan.wafer_id == "W01"]
        assert [(op.kind, op.status) for op in history.operations(record.id)] == [
            ("scan", "complete"),
            ("analysis", "ok"),
            ("classification", "ok"),
        ]
