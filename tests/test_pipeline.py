"""The analysis pipeline against the virtual wafer's truth: per-chip intensities, registration, drift, banding,
the stored results, and the NumPy reference of the per-chip measurement."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.stats import spearmanr

from app.cli import main
from cext import chip_kernels as k
from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from drivers.virtual.world import DefectFlag, WaferWorld
from inspection.pipeline import (
    CHIP_DTYPE,
    AnalysisSettings,
    ChipFlag,
    ChipResults,
    RegistrationError,
    analyze_scan,
    computed_ahead,
    line_geometry,
)
from inspection.recipe import load_recipe
from inspection.scanfile import ScanFile, ScanFileError, ScanFileWriter
from inspection.wafer import Placement
from tests.chip_reference import accumulate_lines_reference

REPO = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
DEMO_RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"
MIDDLE = slice(900, 1000)  # 100 raster lines through the wafer's middle: 2.5 mm, ~25 chip rows of ~500 chips


def demo_profile(**loading: float):
    profile = load_profile(DEMO_PROFILE)
    if loading:
        profile = dataclasses.replace(profile, loading=dataclasses.replace(profile.loading, **loading))
    return profile


@pytest.fixture(scope="module")
def demo_scan(tmp_path_factory) -> Path:
    """The demo wafer, loaded up to 1 mm off centre and 1° rotated, middle band of lines."""
    path = tmp_path_factory.mktemp("pipeline") / "demo.h5"
    write_synthetic_scan(
        path, demo_profile(max_offset_um=1000.0, max_rotation_deg=1.0), load_recipe(DEMO_RECIPE), lines=MIDDLE
    )
    analyze_scan(path)
    return path


def measured_chips(path: Path, pass_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cols, rows, records) of the usable chips the pass measured with enough samples."""
    with ChipResults(path) as results:
        chips = results.chips(pass_index)
    good = (chips["flags"] & (ChipFlag.OUTSIDE_USABLE | ChipFlag.NOT_MEASURED | ChipFlag.FEW_SAMPLES)) == 0
    rows, cols = np.nonzero(good)
    return cols, rows, chips[rows, cols]


def truth_v(world: WaferWorld, cols: np.ndarray, rows: np.ndarray, power_w: float):
    truth = world.chip_truth(cols, rows)
    return truth, world.chip_pl_v(truth, power_w * truth.excitation)


def test_intensities_rank_like_the_truth_and_dead_chips_sit_at_background(demo_scan: Path) -> None:
    world = WaferWorld(demo_profile(max_offset_um=1000.0, max_rotation_deg=1.0))
    placement = world.placement
    assert abs(placement.rotation_deg) > 0.1 or np.hypot(placement.offset_x_um, placement.offset_y_um) > 100
    with ScanFile(demo_scan) as scan:
        powers = scan.powers_w
    for pass_index, power in enumerate(powers):
        cols, rows, chips = measured_chips(demo_scan, pass_index)
        assert cols.size > 5000
        truth, expected = truth_v(world, cols, rows, power)
        plain = truth.present & (truth.flags == 0)
        rho = spearmanr(chips["intensity_v"][plain], expected[plain]).statistic
        assert rho >= 0.99, f"pass {pass_index}: rank correlation {rho:.4f}"
        dead = (truth.flags & (DefectFlag.DEAD | DefectFlag.MISSING)) != 0
        if dead.any():
            median = float(np.median(chips["intensity_v"][plain]))
            assert np.all(np.abs(chips["intensity_v"][dead]) < 0.05 * median)


def test_leaky_chips_have_a_low_efficiency_ratio(demo_scan: Path) -> None:
    world = WaferWorld(demo_profile(max_offset_um=1000.0, max_rotation_deg=1.0))
    with ChipResults(demo_scan) as results:
        ratio = results.efficiency_ratio()
    cols, rows, _ = measured_chips(demo_scan, 0)
    truth = world.chip_truth(cols, rows)
    values = ratio[rows, cols]
    plain = truth.present & (truth.flags == 0)
    leaky = (truth.flags & DefectFlag.LEAKY) != 0
    assert leaky.any()
    assert np.median(values[leaky]) < 0.6 * np.median(values[plain])


def test_results_are_stored_and_described(demo_scan: Path) -> None:
    with ChipResults(demo_scan) as results:
        assert len(results.powers_w) == 2
        chips = results.chips(1, rows=slice(0, 10))
        assert chips.dtype == CHIP_DTYPE
        summary = results.passes[1]
        assert abs(summary["bidirectional_offset_um"]) < 0.5  # the synthetic scan has no latency
        assert abs(summary["registration_col"]) < 0.02
    with h5py.File(demo_scan, "r") as file:
        assert "results_partial" not in file
        assert file["results"].attrs["format_name"] == "plmapper-results"


def test_neighbour_ratio_is_intensity_over_the_neighbours_median(demo_scan: Path) -> None:
    with ChipResults(demo_scan) as results:
        chips = results.chips(1)
    intensity = chips["intensity_v"].astype(np.float64)
    rows, cols = np.nonzero(np.isfinite(chips["neighbour_ratio"]))
    pick = np.random.default_rng(0).choice(rows.size, 200, replace=False)
    for row, col in zip(rows[pick], cols[pick], strict=True):
        around = intensity[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2].copy()
        around[row - max(row - 1, 0), col - max(col - 1, 0)] = np.nan
        expected = intensity[row, col] / np.nanmedian(around)
        assert chips["neighbour_ratio"][row, col] == pytest.approx(expected, rel=1e-5)


def test_per_chip_intensity_equals_the_numpy_reference(demo_scan: Path) -> None:
    recipe = load_recipe(DEMO_RECIPE)
    layout = recipe.layout()
    settings = AnalysisSettings()
    with ScanFile(demo_scan) as scan:
        records = scan.line_records(1)
        samples = scan.pass_samples(1)
        alignment = scan.alignment()
        plan = scan.plan_lines[records["line_index"]]
    placement = Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
    with ChipResults(demo_scan) as results:
        offset = results.passes[1]["bidirectional_offset_um"]
        chips = results.chips(1)
    geometry = line_geometry(plan, layout, placement, recipe.sampling.sample_pitch_um, bidirectional_offset_um=offset)
    half_w = 0.5 * layout.grid.chip_width_um / layout.grid.pitch_x_um
    half_h = 0.5 * layout.grid.chip_height_um / layout.grid.pitch_y_um
    acc = accumulate_lines_reference(
        samples,
        records["sample_offset"].astype(np.int64),
        records["sample_count"].astype(np.int64),
        geometry.col0,
        geometry.row0,
        geometry.dcol,
        geometry.drow,
        half_w,
        half_h,
        half_w * settings.core_fraction,
        half_h * settings.core_fraction,
        settings.saturation_v,
        0,
        0,
        (layout.row_count, layout.column_count),
    )
    with ChipResults(demo_scan) as results:
        dark_v = results.passes[1]["dark_v"]
        loss = np.asarray(results.passes[1]["line_phase_loss"])
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = acc[k.SUM_CORE] / acc[k.N_CORE] - dark_v
    check = np.isfinite(raw) & (np.abs(raw) > 1e-3)
    assert check.sum() > 5000 and loss.size == 64
    # the stored intensity is the reference's divided by the sampling-phase loss of one of the 64 phase bins
    divisor = raw[check] / chips["intensity_v"][check]
    nearest = np.abs(divisor[:, None] - loss[None, :]).min(axis=1)
    assert np.all(nearest < 2e-5 * loss.max())


def test_small_memory_bands_give_the_same_results(demo_scan: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.h5"
    copy.write_bytes(demo_scan.read_bytes())
    analyze_scan(copy, AnalysisSettings(memory_mb=16))
    with ChipResults(demo_scan) as whole, ChipResults(copy) as banded:
        for pass_index in (0, 1):
            a, b = whole.chips(pass_index), banded.chips(pass_index)
            for name in CHIP_DTYPE.names:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_latency_is_measured_and_corrected(tmp_path: Path) -> None:
    path = tmp_path / "late.h5"
    profile = demo_profile()
    write_synthetic_scan(path, profile, load_recipe(DEMO_RECIPE), lines=slice(900, 960), latency_um=6.0)
    summary = analyze_scan(path)
    for result in summary.passes:
        assert result.bidirectional_offset_um == pytest.approx(6.0, abs=1.0)
        assert abs(result.registration_col) < 0.03


def test_laser_drift_is_corrected_from_the_power_meter(tmp_path: Path) -> None:
    steady, drifting = tmp_path / "steady.h5", tmp_path / "drifting.h5"
    profile, recipe = demo_profile(), load_recipe(DEMO_RECIPE)
    write_synthetic_scan(steady, profile, recipe, lines=slice(900, 960))
    write_synthetic_scan(drifting, profile, recipe, lines=slice(900, 960), power_drift_fraction=0.2)
    analyze_scan(steady)
    analyze_scan(drifting)
    with ChipResults(steady) as a, ChipResults(drifting) as b:
        assert b.passes[1]["power_spread"] == pytest.approx(0.2 / 1.1, rel=0.02)  # (max - min) / median
        ratio = b.chips(1)["intensity_v"] / a.chips(1)["intensity_v"]
    ratio = ratio[np.isfinite(ratio)]
    # corrected to first order; the rest is the ABC model's nonlinearity (PL grows faster than P): a few %
    assert abs(np.median(ratio) - 1.0) < 0.05
    assert np.percentile(np.abs(ratio - 1.0), 90) < 0.08


def test_a_grid_off_its_alignment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shifted.h5"
    profile = demo_profile()
    true = WaferWorld(profile).placement
    wrong = Placement(true.offset_x_um + 40.0, true.offset_y_um, true.rotation_deg)  # 0.4 pitch off
    write_synthetic_scan(path, profile, load_recipe(DEMO_RECIPE), lines=slice(900, 940), stored_placement=wrong)
    with pytest.raises(RegistrationError, match="off their indices"):
        analyze_scan(path)
    with h5py.File(path, "r") as file:
        assert "results" not in file  # nothing half-written


def test_a_wrong_pitch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pitch.h5"
    recipe = load_recipe(DEMO_RECIPE)
    wider = dataclasses.replace(recipe, grid=dataclasses.replace(recipe.grid, pitch_x_um=101.0))
    write_synthetic_scan(path, demo_profile(), wider, lines=slice(900, 940))
    with pytest.raises(RegistrationError):
        analyze_scan(path)


def test_results_missing_or_newer_are_clear_errors(tmp_path: Path, demo_scan: Path) -> None:
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w"):
        pass
    with pytest.raises(ValueError, match="no analysis results"):
        ChipResults(bare)
    newer = tmp_path / "newer.h5"
    newer.write_bytes(demo_scan.read_bytes())
    with h5py.File(newer, "r+") as file:
        file["results"].attrs["format_version"] = 99
    with pytest.raises(ValueError, match="newer"):
        ChipResults(newer)


def test_bad_settings_name_every_field() -> None:
    with pytest.raises(ValueError, match=r"memory_mb.*core_fraction"):
        AnalysisSettings(memory_mb=1.0, core_fraction=0.0)


def test_a_scan_still_being_written_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "running.h5"
    plan = np.zeros(1, dtype=[("line_index", "i4"), ("sample_count", "i4")])
    writer = ScanFileWriter.create(
        path, recipe_toml="", station_toml="", identities={}, plan_lines=plan, powers_w=[0.01],
        plan_summary="", operator="", lot_id="", wafer_id="", software_version="",
    )  # fmt: skip
    with writer, pytest.raises(ScanFileError, match="still writing"):
        analyze_scan(path)


def test_analyze_command_reports_results_and_bad_input(demo_scan: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copy.h5"
    copy.write_bytes(demo_scan.read_bytes())
    assert main(["analyze", str(copy)]) == 0
    assert "pass 1: 20 mW" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path / "missing.h5")]) == 2
    assert "no such scan file" in capsys.readouterr().err
    assert main(["analyze", str(copy), "--memory-mb", "1"]) == 2
    assert "memory_mb" in capsys.readouterr().err
    shifted = tmp_path / "shifted.h5"
    profile = demo_profile()
    true = WaferWorld(profile).placement
    wrong = Placement(true.offset_x_um + 40.0, true.offset_y_um, true.rotation_deg)
    write_synthetic_scan(shifted, profile, load_recipe(DEMO_RECIPE), lines=slice(900, 940), stored_placement=wrong)
    assert main(["analyze", str(shifted), str(copy)]) == 1  # the other file is still analysed
    captured = capsys.readouterr()
    assert "off their indices" in captured.err and str(copy) in captured.out


def test_bands_computed_ahead_come_in_order_and_stop_with_the_caller() -> None:
    running, most, started = 0, 0, []
    lock = threading.Lock()

    def task(index: int):
        def run() -> int:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
                started.append(index)
            time.sleep(0.02 * (index % 3 == 0))  # the slow ones must not overtake the order
            with lock:
                running -= 1
            return index

        return run

    assert list(computed_ahead((task(i) for i in range(10)), 2)) == list(range(10))
    assert most <= 2
    started.clear()
    results = computed_ahead((task(i) for i in range(10)), 2)
    assert [next(results), next(results)] == [0, 1]
    results.close()  # the caller stops (an error, a cancel): nothing beyond the window was started
    time.sleep(0.1)
    assert {0, 1} <= set(started) <= {0, 1, 2}
