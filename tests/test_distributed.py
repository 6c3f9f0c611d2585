"""Scale-out on a real Dask LocalCluster of worker processes: wafers analysed and classified per wafer and tile by
tile equal the single-process results bit for bit (every array and attribute of /results and /classification but
created_utc); failing wafers among good ones; an existing cluster by its scheduler address; a dead coordinator's
SWMR marks cleared; a stopped pool leaves its files as they were; a cluster with other software refused; the
``analyze`` command on a cluster (``--workers``, ``--tiles``) records the scan history as the in-process command
does."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from distributed import LocalCluster

from app.cli import main
from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from drivers.virtual.world import WaferWorld
from inspection.classify import classify_scan, read_classification
from inspection.distributed import (
    AnalysisPool,
    ClusterEnvironmentError,
    FailureKind,
    WaferOutcome,
    WaferProgress,
    analyze_many,
    check_cluster_environment,
    environment,
    parse_tiles,
)
from inspection.history import History, classification_record
from inspection.pipeline import analyze_scan
from inspection.recipe import load_recipe
from inspection.scanfile import _read_superblock
from inspection.wafer import Placement

REPO = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
DEMO_RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"
WAFERS = {31: slice(900, 960), 32: slice(1000, 1048), 33: slice(820, 860)}  # seed: raster lines (12-15 chip rows)
TILE_ROWS = 8  # tile boundaries inside the measured rows of every wafer (chip rows ~240-270)
VOLATILE_ATTRS = {"created_utc"}

pytestmark = pytest.mark.slow


def demo_profile(seed: int):
    return dataclasses.replace(load_profile(DEMO_PROFILE), seed=seed, name=f"W{seed}")


def stored(path: Path) -> dict[str, object]:
    """Every array and attribute of the file's /results and /classification, keyed by name."""
    items: dict[str, object] = {}
    with h5py.File(path, "r", locking=False) as file:
        for name in ("results", "classification"):
            group = file[name]
            items.update({f"{name}@{key}": value for key, value in group.attrs.items() if key not in VOLATILE_ATTRS})

            def visit(member: str, item: object, name: str = name) -> None:
                if isinstance(item, h5py.Dataset):
                    items[f"{name}/{member}"] = item[()]
                    items.update({f"{name}/{member}@{key}": value for key, value in item.attrs.items()})

            group.visititems(visit)
    return items


def assert_bit_identical(path: Path, reference: dict[str, object]) -> None:
    got = stored(path)
    assert sorted(got) == sorted(reference)
    for name, expected in reference.items():
        value = got[name]
        if isinstance(expected, np.ndarray):
            assert value.dtype == expected.dtype and value.shape == expected.shape, name
            assert value.tobytes() == expected.tobytes(), f"{path.name}: {name} differs"
        else:
            assert value == expected, f"{path.name}: {name} differs"


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Three small scans of different demo wafers, their single-process results, and two bad files."""
    directory = tmp_path_factory.mktemp("scale-out")
    recipe = load_recipe(DEMO_RECIPE)
    good, reference, records = [], {}, {}
    for seed, lines in WAFERS.items():
        path = write_synthetic_scan(directory / f"W{seed}.h5", demo_profile(seed), recipe, lines=lines)
        single = directory / f"W{seed}-single.h5"
        shutil.copy(path, single)
        analyze_scan(single)
        classify_scan(single)
        good.append(path)
        reference[path.name] = stored(single)
        records[path.name] = classification_record(read_classification(single))
    shifted = directory / "shifted.h5"  # a grid 0.4 pitch off its alignment: RegistrationError
    profile = demo_profile(34)
    placement = WaferWorld(profile).placement
    wrong = Placement(placement.offset_x_um + 40.0, placement.offset_y_um, placement.rotation_deg)
    write_synthetic_scan(shifted, profile, recipe, lines=slice(900, 940), stored_placement=wrong)
    corrupt = directory / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4096))
    return {"good": good, "reference": reference, "records": records, "shifted": shifted, "corrupt": corrupt}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


def analyse(paths: list[Path], **options) -> list[WaferOutcome]:
    """analyze_many, skipped when a plmapper source file was edited after this test process loaded it (the workers
    would run the new code against references made with the old)."""
    try:
        return analyze_many(paths, **options)
    except ClusterEnvironmentError as error:
        if error.stale_here:
            pytest.skip(f"edited on disk during the test run: {', '.join(error.stale_here)}")
        raise


def copies(paths: list[Path], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(path, directory / path.name)) for path in paths]


def test_wafers_on_a_local_cluster_equal_the_single_process_results(scans, tmp_path: Path) -> None:
    good = copies(scans["good"], tmp_path)
    shifted, corrupt = copies([scans["shifted"], scans["corrupt"]], tmp_path)
    missing = tmp_path / "missing.h5"
    paths = [good[0], shifted, good[1], corrupt, good[2], missing, good[0]]  # the first named twice: one outcome
    messages: list[WaferProgress] = []
    outcomes = analyse(paths, workers=2, progress=messages.append)  # small wafers: one task each

    assert [outcome.path for outcome in outcomes] == [good[0], shifted, good[1], corrupt, good[2], missing]
    by_path = {outcome.path: outcome for outcome in outcomes}
    for path in good:
        outcome = by_path[path]
        assert outcome.ok and outcome.tiles == 0 and outcome.worker.startswith("tcp://"), outcome
        assert len(outcome.analysis.passes) == 2 and outcome.analysis.passes[1].chips_measured > 4000
        assert outcome.classification.signature and sum(n for *_, n in outcome.classification.bins) > 0
        assert outcome.classification.record() == scans["records"][path.name]  # what the history keeps
        assert outcome.started_utc <= outcome.analysed_utc <= outcome.finished_utc
        assert_bit_identical(path, scans["reference"][path.name])
    assert by_path[shifted].failure is FailureKind.REGISTRATION and "off their indices" in by_path[shifted].error
    assert by_path[corrupt].failure is FailureKind.INPUT and by_path[missing].failure is FailureKind.INPUT
    assert "no such scan file" in by_path[missing].error
    with h5py.File(shifted, "r", locking=False) as file:
        assert "results" not in file
    # progress: small messages in the caller's thread, each wafer's last one with its outcome
    finals = [message for message in messages if message.outcome is not None]
    assert sorted(message.path for message in finals) == sorted(by_path)
    assert any(message.outcome is None and 0 < message.fraction < 1 for message in messages)


def test_tiles_on_an_existing_cluster_equal_the_single_process_results(scans, cluster, tmp_path: Path) -> None:
    good = copies(scans["good"][:2], tmp_path)
    (shifted,) = copies([scans["shifted"]], tmp_path)
    outcomes = analyse(
        [*good, shifted], scheduler=cluster.scheduler_address, tiles=True, tile_min_chips=0, tile_rows=TILE_ROWS
    )
    rows = load_recipe(DEMO_RECIPE).layout().row_count
    for path, outcome in zip(good, outcomes[:2], strict=True):
        assert outcome.ok, outcome
        assert outcome.tiles == 2 * -(-rows // TILE_ROWS)  # every row of both passes, in tiles of TILE_ROWS
        assert_bit_identical(path, scans["reference"][path.name])
        assert _read_superblock(path)[1] == 0  # no SWMR marks left
    assert outcomes[2].failure is FailureKind.REGISTRATION  # measured before anything is written
    with h5py.File(shifted, "r", locking=False) as file:
        assert "results" not in file and "results_partial" not in file


def test_a_dead_coordinators_marks_are_cleared_and_the_wafer_redone(scans, cluster, tmp_path: Path) -> None:
    (path,) = copies(scans["good"][2:], tmp_path)
    # a coordinator killed while writing in SWMR mode leaves the superblock marks and a half-written group
    killed = (
        "import h5py, os, sys\n"
        "fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)\n"
        "fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)\n"
        "fapl.set_file_locking(False, False)\n"
        "file = h5py.File(h5py.h5f.open(os.fsencode(sys.argv[1]), h5py.h5f.ACC_RDWR, fapl=fapl))\n"
        "file.create_dataset('results_partial/pass_000/chips', shape=(4, 4), dtype='f4')\n"
        "file.swmr_mode = True\n"
        "file.flush()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", killed, str(path)], check=True)
    assert _read_superblock(path)[1] & 0x04
    # one wafer, two workers: tiled by default once it is big enough (here: any size)
    (outcome,) = analyse([path], scheduler=cluster.scheduler_address, tile_min_chips=0, tile_rows=64)
    assert outcome.ok and outcome.tiles == 2 * 8, outcome
    assert_bit_identical(path, scans["reference"][path.name])


def test_a_stopped_pool_leaves_its_files_as_they_were(scans, cluster, tmp_path: Path) -> None:
    (path,) = copies(scans["good"][:1], tmp_path)
    messages: list[WaferProgress] = []
    try:
        pool = AnalysisPool(
            scheduler=cluster.scheduler_address, tiles=True, tile_min_chips=0, tile_rows=2, progress=messages.append
        )
    except ClusterEnvironmentError as error:
        if error.stale_here:
            pytest.skip(f"edited on disk during the test run: {', '.join(error.stale_here)}")
        raise
    with pool:
        pool.submit(path)
        deadline = time.monotonic() + 60
        while not any("tiles)" in message.message for message in messages) and time.monotonic() < deadline:
            assert not pool.poll()  # still running
            time.sleep(0.05)
    # closing stopped the coordinator at its next report, in the middle of writing in SWMR mode
    assert _read_superblock(path)[1] == 0
    with h5py.File(path, "r", locking=False) as file:
        assert "results" not in file
    analyze_scan(path)  # the file is as good as before


class _FakeClient:
    def __init__(self, reported: dict) -> None:
        self.reported = reported

    def run(self, function):
        return self.reported


def test_a_cluster_with_other_software_is_refused() -> None:
    mine = environment()
    other = {**mine, "software": {**mine["software"], "numpy": "1.26.4"}}
    with pytest.raises(ClusterEnvironmentError, match=r"tcp://w2:1: numpy 1\.26\.4"):
        check_cluster_environment(_FakeClient({"tcp://w1:1": mine, "tcp://w2:1": other}))
    edited = {**mine, "code": {**mine["code"], "inspection.pipeline": "0123456789abcdef"}}
    with pytest.raises(ClusterEnvironmentError, match=r"inspection\.pipeline \(code 0123456789abcdef"):
        check_cluster_environment(_FakeClient({"tcp://w1:1": edited}))
    with pytest.warns(UserWarning, match="CPU extensions differ"):
        check_cluster_environment(_FakeClient({"tcp://w1:1": {**mine, "cpu": [*mine["cpu"], "AVX512_FAKE"]}}))
    check_cluster_environment(_FakeClient({"tcp://w1:1": mine}))


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="workers: sets the size of a local cluster"):
        analyze_many([], scheduler="tcp://127.0.0.1:1", workers=2)
    with pytest.raises(ValueError, match="tile_rows"):
        analyze_many([], workers=1, tile_rows=0)


def test_tiles_choices_of_the_command_line() -> None:
    assert parse_tiles("auto") == (None, 50_000_000) and parse_tiles(" OFF ") == (False, 50_000_000)
    assert parse_tiles("20M") == (True, 20_000_000) and parse_tiles("500k") == (True, 500_000)
    assert parse_tiles("1.5M") == (True, 1_500_000) and parse_tiles("0") == (True, 0)
    for bad in ("on", "-3", "1.5", "20G", ""):
        with pytest.raises(ValueError, match="tiles: "):
            parse_tiles(bad)


def run_command(argv: list[str], capsys) -> tuple[int, str, str]:
    """``plmapper`` in this process; skipped like :func:`analyse` when a source file changed during the run."""
    code = main(argv)
    captured = capsys.readouterr()
    if code == 2 and "before the file changed on disk: restart it" in captured.err:
        pytest.skip(f"edited on disk during the test run: {captured.err.strip()}")
    return code, captured.out, captured.err


def history_of(home: Path) -> dict[str, tuple]:
    """Per file name: the scan record's fields, its bins, and its operations' kinds, statuses, detail keys and
    pass details."""
    rows = {}
    with History(home / "history.sqlite") as history:
        for record in history.scans(limit=None):
            operations = history.operations(record.id)
            rows[Path(record.path).name] = (
                (record.kind, record.lot_id, record.wafer_id, record.recipe, record.status, record.file),
                (record.yield_fraction, record.classifier, record.model_id, record.signature),
                [(item.code, item.name, item.fail, item.chips) for item in history.bins(record.id)],
                [(operation.kind, operation.status, sorted(operation.details)) for operation in operations],
                [operation.details.get("passes") for operation in operations],
                record.analysed_utc is not None,
            )
    return rows


def test_the_analyze_command_on_a_local_cluster_and_its_history(
    scans, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``analyze --workers 2 --tiles 0``: every wafer tile by tile, the results bit-identical, exit codes as in
    process, and the scan history as the in-process command writes it (plus the worker and tiles in the details)."""
    monkeypatch.delenv("PLMAPPER_HISTORY", raising=False)
    cluster_files = copies([*scans["good"][:2], scans["corrupt"]], tmp_path / "cluster")
    single_files = copies([*scans["good"][:2], scans["corrupt"]], tmp_path / "single")
    monkeypatch.setenv("PLMAPPER_HOME", str(tmp_path / "home-single"))
    code, _, _ = run_command(["analyze", *map(str, single_files), "--rules", "--json"], capsys)
    assert code == 2
    monkeypatch.setenv("PLMAPPER_HOME", str(tmp_path / "home-cluster"))
    argv = ["analyze", *map(str, cluster_files), "--workers", "2", "--tiles", "0", "--rules", "--json"]
    code, out, _ = run_command(argv, capsys)
    assert code == 2  # one file was not a usable scan; the others are done
    document = json.loads(out)
    assert document["classifier"] == "rule layer"
    files = document["files"]
    assert [entry["status"] for entry in files] == ["ok", "ok", "failed"] and files[2]["failure"] == "input"
    assert [entry["tiles"] for entry in files[:2]] == [2, 2]  # tiled: one tile per pass (the default tile height)
    for path, entry in zip(cluster_files[:2], files, strict=False):
        assert_bit_identical(path, scans["reference"][path.name])
        assert entry["yield"] == scans["records"][path.name].yield_fraction
    single, cluster = history_of(tmp_path / "home-single"), history_of(tmp_path / "home-cluster")
    assert sorted(cluster) == sorted(single) == ["W31.h5", "W32.h5"]  # the corrupt file is recorded by neither
    for name, expected in single.items():
        identity, figures, bins, operations, passes, analysed = cluster[name]
        assert (identity, figures, bins, passes, analysed) == (expected[0], expected[1], expected[2], expected[4], True)
        assert [(kind, status) for kind, status, _ in operations] == [("analysis", "ok"), ("classification", "ok")]
        for (_, _, keys), (_, _, single_keys) in zip(operations, expected[3], strict=True):
            assert set(keys) == {*single_keys, "worker", "tiles"}
