"""Alignment on the virtual station: offsets up to 1 mm and rotations up to 1°, every chip index right."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from drivers.interfaces import Axis
from drivers.station import load_station_config, open_station
from drivers.virtual.profile import load_profile
from drivers.virtual.station import VirtualStation
from drivers.virtual.world import WaferWorld
from inspection.alignment import AlignmentError, align_wafer, grid_phase
from inspection.recipe import Recipe
from inspection.scan import LineMotion, ScanOptions, acquire_line
from inspection.settings import from_mapping

REPO = Path(__file__).resolve().parent.parent
STATION = REPO / "resources" / "stations" / "virtual.toml"

COARSE = {"pitch_um": 100.0, "chip_um": 60.0, "spot_sigma_um": 8.0, "velocity_um_s": 100_000.0, "rate_hz": 50_000.0}
FINE = {"pitch_um": 20.0, "chip_um": 15.0, "spot_sigma_um": 2.0, "velocity_um_s": 50_000.0, "rate_hz": 50_000.0}


def write_profile(path: Path, seed: int, grid: dict, *, diameter_mm: float = 50.8) -> Path:
    path.write_text(
        f"""
seed = {seed}
[substrate]
diameter_mm = {diameter_mm}
edge_exclusion_mm = 2.0
[grid]
pitch_x_um = {grid["pitch_um"]}
pitch_y_um = {grid["pitch_um"]}
chip_width_um = {grid["chip_um"]}
chip_height_um = {grid["chip_um"]}
[loading]
max_offset_um = 1000.0
max_rotation_deg = 1.0
[optics]
spot_sigma_um = {grid["spot_sigma_um"]}
"""
    )
    return path


def make_recipe(grid: dict, *, diameter_mm: float = 50.8) -> Recipe:
    return from_mapping(
        Recipe,
        {
            "name": "alignment test",
            "substrate": {"diameter_mm": diameter_mm, "edge_exclusion_mm": 2.0},
            "grid": {
                "pitch_x_um": grid["pitch_um"],
                "pitch_y_um": grid["pitch_um"],
                "chip_width_um": grid["chip_um"],
                "chip_height_um": grid["chip_um"],
            },
            "excitation": {"laser_wavelength_nm": 405.0, "powers_w": [0.0005, 0.02]},
            "sampling": {
                "mode": "raster",
                "velocity_um_s": grid["velocity_um_s"],
                "sample_rate_hz": grid["rate_hz"],
                "line_pitch_um": grid["pitch_um"] / 4,
                "run_up_um": 100.0,
            },
            "spectra": {"pattern": "none"},
            "focus": {"focus_z_um": 1000.0, "safe_z_um": 0.0, "max_z_um": 2000.0},
            "alignment": {"enabled": True, "max_offset_um": 1100.0, "max_rotation_deg": 1.1},
        },
    )


def align_on_virtual_station(profile: Path, recipe: Recipe):
    with VirtualStation.start(profile) as virtual:
        station = open_station(load_station_config(STATION), resources=virtual.resources)
        try:
            station.laser.set_power_w(0.02)
            station.laser.set_emission(True)
            motion = LineMotion(
                velocity_um_s=recipe.sampling.velocity_um_s,
                sample_rate_hz=recipe.sampling.sample_rate_hz,
                accel_um_s2=station.stage.acceleration_um_s2(Axis.X),
                run_up_um=recipe.sampling.run_up_um,
            )

            def acquire(start, stop, count):
                return acquire_line(station, start, stop, count, motion=motion, options=ScanOptions()).samples_v

            return align_wafer(recipe, acquire)
        finally:
            station.close()


def assert_every_chip_index_right(truth, found, recipe: Recipe) -> None:
    """Every usable chip's centre, placed with the true placement, maps back to the same index with the found one."""
    layout = recipe.layout()
    cols, rows = layout.usable_chips()
    x, y = layout.chip_center_um(cols, rows)
    stage_x, stage_y = truth.wafer_to_stage(x, y)
    col_found, row_found, hit = layout.chip_at(*found.stage_to_wafer(stage_x, stage_y))
    assert hit.all()
    np.testing.assert_array_equal(col_found, cols)
    np.testing.assert_array_equal(row_found, rows)
    # and the position error is a small fraction of the chip
    x_back, y_back = found.stage_to_wafer(stage_x, stage_y)
    assert np.max(np.hypot(x_back - x, y_back - y)) < 0.05 * recipe.grid.chip_width_um


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_alignment_coarse_grid(tmp_path: Path, seed: int) -> None:
    profile = write_profile(tmp_path / "wafer.toml", seed, COARSE)
    truth = WaferWorld(load_profile(profile)).placement
    recipe = make_recipe(COARSE)
    result = align_on_virtual_station(profile, recipe)
    assert abs(result.placement.rotation_deg - truth.rotation_deg) < 0.005
    assert (
        math.hypot(result.placement.offset_x_um - truth.offset_x_um, result.placement.offset_y_um - truth.offset_y_um)
        < 2.0
    )
    assert result.residual_um < 1.0
    assert_every_chip_index_right(truth, result.placement, recipe)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [21, 22])
def test_alignment_fine_grid(tmp_path: Path, seed: int) -> None:
    profile = write_profile(tmp_path / "wafer.toml", seed, FINE)
    truth = WaferWorld(load_profile(profile)).placement
    recipe = make_recipe(FINE)
    result = align_on_virtual_station(profile, recipe)
    assert abs(result.placement.rotation_deg - truth.rotation_deg) < 0.005
    assert_every_chip_index_right(truth, result.placement, recipe)


def test_grid_phase_known_answer() -> None:
    x = np.arange(0.0, 2000.0, 0.5)
    comb = np.exp(-0.5 * (((x - 37.0 + 50.0) % 100.0 - 50.0) / 8.0) ** 2)  # peaks at 37 + k·100
    phase, component = grid_phase(x, comb, 100.0)
    assert phase == pytest.approx(37.0, abs=1e-6)
    assert abs(component) > 0
    noisy = comb + np.random.default_rng(0).normal(0, 0.05, x.size)
    noisy[(x > 500) & (x < 800)] = 0.0  # a run of dead chips does not move the phase
    assert grid_phase(x, noisy, 100.0)[0] == pytest.approx(37.0, abs=0.5)


def test_no_wafer_is_an_alignment_error() -> None:
    rng = np.random.default_rng(5)

    def dark(start, stop, count):  # the laser is off, or no wafer: background and noise only
        return 0.002 + 0.0002 * rng.standard_normal(count)

    with pytest.raises(AlignmentError, match="no chip grid seen"):
        align_wafer(make_recipe(COARSE), dark)


def test_wrong_pitch_in_the_recipe_is_an_alignment_error(tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "wafer.toml", 31, COARSE)
    wrong = make_recipe({**COARSE, "pitch_um": 110.0, "chip_um": 66.0})
    with pytest.raises(AlignmentError):
        align_on_virtual_station(profile, wrong)
