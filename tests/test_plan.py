"""Tests of inspection.plan: line geometry against known answers and brute force, coverage, duration, scale."""

from __future__ import annotations

import dataclasses
import math
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from inspection.plan import (
    LINE_DTYPE,
    LINE_RECORD_BYTES,
    LINE_SETTLE_S,
    SPECTRUM_BASE_S,
    SPECTRUM_PER_POINT_S,
    SPECTRUM_POINT_BYTES,
    ScanPlan,
    duration_parts_s,
    plan_scan,
    planned_spectra_count,
    spectrum_grid_chips,
    trapezoid_move_s,
)
from inspection.recipe import Recipe, ScanMode, SpectrumPattern, load_recipe
from inspection.wafer import Placement, Substrate

RECIPES = Path(__file__).resolve().parent.parent / "resources" / "recipes"
ACCEL_UM_S2 = 3e6  # the virtual station's stage: 3000 mm/s²
ROTATED = Placement(offset_x_um=400.0, offset_y_um=-300.0, rotation_deg=0.5)
PLACEMENTS = [Placement(), ROTATED, Placement(offset_x_um=-1200.0, offset_y_um=800.0, rotation_deg=-2.0)]


def recipe_named(name: str) -> Recipe:
    return load_recipe(RECIPES / f"{name}.toml")


def with_sampling(recipe: Recipe, **changes: object) -> Recipe:
    return dataclasses.replace(recipe, sampling=dataclasses.replace(recipe.sampling, **changes))


def in_mode(recipe: Recipe, mode: ScanMode) -> Recipe:
    return with_sampling(recipe, mode=mode)


def chip_centres_in_stage(recipe: Recipe, placement: Placement) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage (x, y) and row of every usable chip centre."""
    layout = recipe.layout()
    col, row = layout.usable_chips()
    x, y = placement.wafer_to_stage(*layout.chip_center_um(col, row))
    return np.asarray(x), np.asarray(y), row


def brute_force_extent(substrate: Substrate, placement: Placement, y: float, step_um: float) -> tuple[float, float]:
    """First and last stage x on row y where ``substrate.usable`` holds, by sampling (public API only)."""
    x = np.arange(-120_000.0, 120_000.0, step_um)
    inside = substrate.usable(*placement.stage_to_wafer(x, np.full_like(x, y)))
    hits = np.flatnonzero(inside)
    return (float(x[hits[0]]), float(x[hits[-1]])) if hits.size else (math.inf, -math.inf)


# --- raster lines ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", [Placement(), ROTATED], ids=["nominal", "rotated"])
def test_raster_lines_in_the_round_part_are_chords_of_the_grown_usable_circle(placement: Placement) -> None:
    recipe = recipe_named("green-8in")  # notch at the bottom, no flats: the upper half is a plain circle
    recipe = in_mode(recipe, ScanMode.RASTER)
    plan = plan_scan(recipe, placement, accel_um_s2=ACCEL_UM_S2)
    # Usable radius grown by one chip pitch (20 µm): 100 mm − 3 mm + 20 µm.
    radius_um = 97_020.0
    lines = plan.lines
    height = lines["y_start_um"] - placement.offset_y_um
    upper = height > 0.0
    half_chord = np.sqrt(radius_um**2 - height[upper] ** 2)
    left = np.minimum(lines["x_start_um"], lines["x_stop_um"])[upper]
    right = np.maximum(lines["x_start_um"], lines["x_stop_um"])[upper]
    forward = (lines["x_stop_um"] > lines["x_start_um"])[upper]
    centre_x = placement.offset_x_um
    # The start is exact; the stop lies up to one sample pitch beyond the chord (whole samples).
    start_error = np.where(forward, left - (centre_x - half_chord), right - (centre_x + half_chord))
    stop_excess = np.where(forward, right - (centre_x + half_chord), (centre_x - half_chord) - left)
    # Within a nanometre (the boundary tolerance of 1e-9 µm widens near-tangent chords by up to ~1e-6 µm).
    assert np.abs(start_error).max() < 1e-3
    assert stop_excess.min() > -1e-3 and stop_excess.max() < plan.sample_pitch_um + 1e-3
    # Rows span the circle: rows are a line pitch apart and only rows that miss it are dropped.
    assert radius_um - height.max() <= recipe.sampling.line_pitch_um


@pytest.mark.parametrize("placement", PLACEMENTS, ids=["nominal", "rotated", "rotated-2deg"])
@pytest.mark.parametrize("name", ["demo-2in", "red-4in", "green-8in"])
def test_raster_extents_match_brute_force_sampling_of_usable(name: str, placement: Placement) -> None:
    recipe = in_mode(recipe_named(name), ScanMode.RASTER)
    plan = plan_scan(recipe, placement, accel_um_s2=ACCEL_UM_S2)
    margin_mm = max(recipe.grid.pitch_x_um, recipe.grid.pitch_y_um) / 1000.0
    grown = Substrate(recipe.substrate.diameter_mm, edge_exclusion_mm=recipe.substrate.edge_exclusion_mm - margin_mm)
    lines = plan.lines
    # Every line near the bottom and top (flats, notch) and a sample of the rest.
    picks = np.unique(np.r_[np.arange(40), np.arange(len(lines) - 40, len(lines)), np.arange(0, len(lines), 97)])
    step_um = 2.0
    for line in lines[picks]:
        low, high = brute_force_extent(grown, placement, float(line["y_start_um"]), step_um)
        left, right = sorted((float(line["x_start_um"]), float(line["x_stop_um"])))
        forward = line["x_stop_um"] > line["x_start_um"]
        start, end = (left, right) if forward else (right, left)
        first, last = (low, high) if forward else (high, low)
        assert abs(start - first) <= step_um, (line, low, high)
        assert -step_um <= (end - last) * (1 if forward else -1) <= step_um + plan.sample_pitch_um, (line, low, high)
    # And rows the plan leaves out really miss the grown area.
    bottom = float(lines["y_start_um"][0]) - recipe.sampling.line_pitch_um
    top = float(lines["y_start_um"][-1]) + recipe.sampling.line_pitch_um
    assert brute_force_extent(grown, placement, bottom, step_um) == (math.inf, -math.inf)
    assert brute_force_extent(grown, placement, top, step_um) == (math.inf, -math.inf)


@pytest.mark.parametrize("notch_angle_deg", [0.0, 90.0, 200.0, 270.0])
def test_line_extent_with_the_notch_at_any_angle_matches_brute_force(notch_angle_deg: float) -> None:
    # A notch on the side makes lines end in it; at the bottom it only makes a hole in the middle of the line.
    substrate = Substrate(200.0, edge_exclusion_mm=0.5, notch_angle_deg=notch_angle_deg)
    uy = math.sin(math.radians(notch_angle_deg))
    # Lines across the notch mouth (perpendicular distance from the notch axis up to ±3 mm) in wafer frame,
    # running along the wafer x axis.
    y = np.linspace(-3000.0, 3000.0, 121)
    depth = substrate.radius_um - 2500.0
    # Points on the notch axis at `depth`, shifted across it: the lines are y = const in the wafer frame.
    base_y = depth * uy + y
    ax, ay = np.zeros_like(base_y), base_y
    lo, hi = substrate.line_extent(ax, ay, (1.0, 0.0), inset_um=substrate.edge_exclusion_um)
    x = np.arange(-101_000.0, 101_000.0, 0.5)
    for index in range(len(y)):
        inside = np.flatnonzero(substrate.usable(x, np.full_like(x, base_y[index])))
        if inside.size == 0:
            assert lo[index] > hi[index], (index, notch_angle_deg)
            continue
        assert abs(lo[index] - x[inside[0]]) <= 0.5, (index, notch_angle_deg)
        assert abs(hi[index] - x[inside[-1]]) <= 0.5, (index, notch_angle_deg)
    assert (lo <= hi).sum() > 50


def test_line_extent_known_answers_with_the_notch() -> None:
    substrate = Substrate(200.0)  # notch at the bottom, apex 1 mm inside the edge
    # Up the notch axis: the line starts at the apex and ends at the top of the wafer.
    lo, hi = substrate.line_extent(np.array([0.0]), np.array([0.0]), (0.0, 1.0), inset_um=0.0)
    assert lo[0] == pytest.approx(-99_000.0) and hi[0] == pytest.approx(100_000.0)
    # Across the notch 500 µm below its apex: the full chord (the hole in the middle does not shorten it).
    lo, hi = substrate.line_extent(np.array([0.0]), np.array([-99_500.0]), (1.0, 0.0), inset_um=0.0)
    assert hi[0] == pytest.approx(math.sqrt(100_000.0**2 - 99_500.0**2)) and lo[0] == pytest.approx(-hi[0])
    # Far above the wafer: nothing.
    lo, hi = substrate.line_extent(np.array([0.0]), np.array([150_000.0]), (1.0, 0.0), inset_um=0.0)
    assert lo[0] > hi[0]


def test_every_usable_chip_centre_is_on_a_raster_line() -> None:
    for name in ("demo-2in", "red-4in"):
        recipe = in_mode(recipe_named(name), ScanMode.RASTER)
        for placement in PLACEMENTS:
            plan = plan_scan(recipe, placement, accel_um_s2=ACCEL_UM_S2)
            x, y, _ = chip_centres_in_stage(recipe, placement)
            line_y = plan.lines["y_start_um"]
            nearest = np.clip(np.searchsorted(line_y, y), 1, len(line_y) - 1)
            nearest = np.where(np.abs(line_y[nearest - 1] - y) <= np.abs(line_y[nearest] - y), nearest - 1, nearest)
            assert np.abs(line_y[nearest] - y).max() <= recipe.sampling.line_pitch_um / 2 + 1e-9
            chosen = plan.lines[nearest]
            left = np.minimum(chosen["x_start_um"], chosen["x_stop_um"])
            right = np.maximum(chosen["x_start_um"], chosen["x_stop_um"])
            # With room for the whole chip and its street on both sides.
            assert (x - left).min() >= recipe.grid.pitch_x_um / 2
            assert (right - x).min() >= recipe.grid.pitch_x_um / 2


# --- grid-locked lines ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", PLACEMENTS, ids=["nominal", "rotated", "rotated-2deg"])
@pytest.mark.parametrize("grid_rotation_deg", [0.0, 0.3])
def test_grid_locked_lines_pass_through_every_usable_chip_centre_of_their_row(
    placement: Placement, grid_rotation_deg: float
) -> None:
    recipe = recipe_named("demo-2in")
    recipe = dataclasses.replace(
        in_mode(recipe, ScanMode.GRID_LOCKED), grid=dataclasses.replace(recipe.grid, rotation_deg=grid_rotation_deg)
    )
    plan = plan_scan(recipe, placement, accel_um_s2=ACCEL_UM_S2)
    x, y, row = chip_centres_in_stage(recipe, placement)
    rows_with_chips = np.unique(row)
    assert plan.line_count == len(rows_with_chips)
    line = plan.lines[np.searchsorted(rows_with_chips, row)]
    start_x, start_y = line["x_start_um"], line["y_start_um"]
    along_x, along_y = line["x_stop_um"] - start_x, line["y_stop_um"] - start_y
    length = np.hypot(along_x, along_y)
    across = np.abs(along_x * (y - start_y) - along_y * (x - start_x)) / length
    assert across.max() < 0.5
    position = (along_x * (x - start_x) + along_y * (y - start_y)) / length
    # Half a pitch of run-in before the first centre; the stop is at least half a pitch after the last.
    half_pitch = recipe.grid.pitch_x_um / 2
    assert position.min() >= half_pitch - 1e-6
    assert (length - position).min() >= half_pitch - 1e-6
    first_of_line = np.array([position[line["line_index"] == index].min() for index in range(0, plan.line_count, 50)])
    np.testing.assert_allclose(first_of_line, half_pitch, atol=1e-6)
    if placement.rotation_deg + grid_rotation_deg != 0.0:
        # Slanted in the stage frame: the engine moves X and Y together.
        slope = along_y / along_x
        np.testing.assert_allclose(
            slope, math.tan(math.radians(placement.rotation_deg + grid_rotation_deg)), rtol=1e-6, atol=1e-12
        )


def test_grid_locked_needs_several_times_fewer_lines_than_raster() -> None:
    recipe = recipe_named("demo-2in")
    assert recipe.sampling.line_pitch_um <= recipe.grid.pitch_y_um / 3
    raster = plan_scan(in_mode(recipe, ScanMode.RASTER), ROTATED, accel_um_s2=ACCEL_UM_S2)
    locked = plan_scan(in_mode(recipe, ScanMode.GRID_LOCKED), ROTATED, accel_um_s2=ACCEL_UM_S2)
    assert raster.line_count / locked.line_count >= 3
    assert raster.total_samples / locked.total_samples >= 3
    assert locked.estimated_duration_s < raster.estimated_duration_s / 2.5


# --- both -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(ScanMode))
def test_lines_are_serpentine_bottom_to_top(mode: ScanMode) -> None:
    plan = plan_scan(in_mode(recipe_named("red-4in"), mode), ROTATED, accel_um_s2=ACCEL_UM_S2)
    lines = plan.lines
    assert lines.dtype == LINE_DTYPE
    np.testing.assert_array_equal(lines["line_index"], np.arange(plan.line_count))
    direction = np.sign(lines["x_stop_um"] - lines["x_start_um"])
    np.testing.assert_array_equal(direction, np.where(np.arange(plan.line_count) % 2 == 0, 1.0, -1.0))
    middle_y = (lines["y_start_um"] + lines["y_stop_um"]) / 2
    assert (np.diff(middle_y) > 0).all()
    if mode is ScanMode.RASTER:
        np.testing.assert_array_equal(lines["y_start_um"], lines["y_stop_um"])
        np.testing.assert_allclose(np.diff(lines["y_start_um"]), recipe_named("red-4in").sampling.line_pitch_um)


@pytest.mark.parametrize("mode", list(ScanMode))
def test_every_line_holds_a_whole_number_of_samples(mode: ScanMode) -> None:
    plan = plan_scan(in_mode(recipe_named("demo-2in"), mode), ROTATED, accel_um_s2=ACCEL_UM_S2)
    lines = plan.lines
    length = np.hypot(lines["x_stop_um"] - lines["x_start_um"], lines["y_stop_um"] - lines["y_start_um"])
    np.testing.assert_allclose(length, (lines["sample_count"] - 1) * plan.sample_pitch_um, atol=1e-6)
    assert plan.total_samples == int(lines["sample_count"].sum()) * plan.pass_count


def test_plan_is_read_only() -> None:
    plan = plan_scan(recipe_named("demo-2in"), Placement(), accel_um_s2=ACCEL_UM_S2)
    with pytest.raises(ValueError, match="read-only"):
        plan.lines["x_start_um"][0] = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.chip_count = 0  # type: ignore[misc]


# --- duration, data, summary ---------------------------------------------------------------------------------------


def test_trapezoid_known_answers() -> None:
    assert trapezoid_move_s(1000.0, 100.0, 1000.0) == pytest.approx(10.1)  # 10 µm up, 980 µm cruise, 10 µm down
    assert trapezoid_move_s(10.0, 100.0, 1000.0) == pytest.approx(0.2)  # triangle: 2·sqrt(10/1000)
    assert trapezoid_move_s(-10.0, 100.0, 1000.0) == pytest.approx(0.2)
    assert trapezoid_move_s(0.0, 100.0, 1000.0) == 0.0
    np.testing.assert_allclose(trapezoid_move_s([10.0, 1000.0], 100.0, 1000.0), [0.2, 10.1])


def test_duration_of_two_lines_known_answer() -> None:
    recipe = recipe_named("demo-2in")
    recipe = dataclasses.replace(
        with_sampling(recipe, velocity_um_s=1000.0, run_up_um=100.0),
        alignment=dataclasses.replace(recipe.alignment, enabled=False),
    )
    lines = np.zeros(2, dtype=LINE_DTYPE)
    lines[0] = (0, 0.0, 0.0, 1000.0, 0.0, 50_001)
    lines[1] = (1, 1000.0, 10.0, 0.0, 10.0, 50_001)
    parts = duration_parts_s(lines, recipe, accel_um_s2=1e4, spectra_count=0)
    # Each line: 1000 µm + 2 × 100 µm run-up at 1000 µm/s, 100 µm to reach speed and 100 µm to stop: 1.2 + 0.1 s.
    assert parts["lines"] == pytest.approx(2 * 2 * 1.3)
    # Between the lines 10 µm in y (a triangle, 2·sqrt(10 / 1e4)), once per pass, and 10 µm back between passes.
    hop = 2 * math.sqrt(10 / 1e4)
    assert parts["moves"] == pytest.approx(3 * hop)
    assert parts["settling"] == pytest.approx(2 * (2 * LINE_SETTLE_S + 0.2))
    assert parts["spectra"] == 0.0 and parts["alignment"] == 0.0


def test_duration_of_spectra_and_alignment_known_answer() -> None:
    recipe = recipe_named("demo-2in")
    lines = np.zeros(0, dtype=LINE_DTYPE)
    # 100 mm/s at 1e7 µm/s²: 10 ms and 0.5 mm to reach speed and as much to stop; every move here is longer.
    parts = duration_parts_s(lines, recipe, accel_um_s2=1e7, spectra_count=10, travel_velocity_um_s=1e5)
    usable_radius = 23_400.0
    hop = math.sqrt(math.pi * usable_radius**2 / 10)
    assert parts["spectra"] == pytest.approx(10 * (SPECTRUM_BASE_S + SPECTRUM_PER_POINT_S * 801 + hop / 1e5 + 0.01))
    radius = 0.7 * usable_radius
    chord = 2 * radius * math.sin(math.pi / 4)
    moves = 2 * (radius / 1e5 + 0.01) + 3 * (chord / 1e5 + 0.01)
    scan = (1000.0 + 2 * 500.0) / 1e5 + 0.01  # 1 mm alignment scan plus 2 × 0.5 mm run-up
    assert parts["alignment"] == pytest.approx(moves + 4 * 2 * (scan + LINE_SETTLE_S))
    assert parts["lines"] == parts["moves"] == 0.0
    assert parts["settling"] == pytest.approx(2 * 0.2)  # the laser settles once per pass


def test_plan_totals_and_data_volume() -> None:
    recipe = recipe_named("demo-2in")
    plan = plan_scan(recipe, ROTATED, accel_um_s2=ACCEL_UM_S2, spectra_count=12)
    assert plan.estimated_duration_s == pytest.approx(sum(plan.duration_parts_s.values()))
    assert plan.data_bytes == (
        plan.total_samples * 4
        + plan.line_count * plan.pass_count * LINE_RECORD_BYTES
        + 12 * recipe.spectra.points * SPECTRUM_POINT_BYTES
    )
    assert plan.chip_count == recipe.layout().chip_count
    assert plan.powers_w == recipe.excitation.powers_w and plan.mode is recipe.sampling.mode
    faster = plan_scan(recipe, ROTATED, accel_um_s2=ACCEL_UM_S2, spectra_count=12, travel_velocity_um_s=3e5)
    assert faster.estimated_duration_s < plan.estimated_duration_s


def test_summary_shows_the_numbers() -> None:
    plan = plan_scan(recipe_named("blue-6in"), ROTATED, accel_um_s2=ACCEL_UM_S2)
    text = plan.summary()
    seconds = round(plan.estimated_duration_s)
    hms = f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    for expected in (
        "grid-locked",
        f"{plan.chip_count:,} usable chips",
        "passes: 2 (0.5 mW, 20 mW)",
        f"lines per pass: {plan.line_count:,}",
        f"samples: {plan.total_samples:,} in all ({plan.total_samples // 2:,} per pass)",
        "2 µm apart at 300 mm/s and 150 kHz",
        f"spectra: {plan.spectra_count:,}",
        f"data volume: {plan.data_bytes / 1e9:.2f} GB",
        f"estimated duration: {hms}",
    ):
        assert expected in text, (expected, text)
    small = plan_scan(recipe_named("demo-2in"), Placement(), accel_um_s2=ACCEL_UM_S2)
    assert f"data volume: {small.data_bytes / 1e6:.1f} MB" in small.summary()
    assert "raster lines every 25 µm" in small.summary()


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("accel_um_s2", 0.0), ("accel_um_s2", math.inf), ("travel_velocity_um_s", -1.0), ("spectra_count", -1)],
)
def test_bad_planning_arguments_are_refused(keyword: str, value: float) -> None:
    arguments: dict[str, float] = {"accel_um_s2": ACCEL_UM_S2, keyword: value}
    with pytest.raises(ValueError, match=f"^{keyword}: "):
        plan_scan(recipe_named("demo-2in"), Placement(), **arguments)  # type: ignore[arg-type]


# --- spectra --------------------------------------------------------------------------------------------------------


def test_spectrum_sites() -> None:
    recipe = recipe_named("demo-2in")
    col, row = spectrum_grid_chips(recipe)
    layout = recipe.layout()
    assert layout.chip_usable(col, row).all()
    assert len(set(zip(col.tolist(), row.tolist(), strict=True))) == len(col) == 21  # 5 × 5 less the corners
    assert planned_spectra_count(recipe) == 21 + 50
    every = dataclasses.replace(
        recipe, spectra=dataclasses.replace(recipe.spectra, pattern=SpectrumPattern.EVERY_NTH, include_flagged=False)
    )
    assert planned_spectra_count(every) == math.ceil(layout.chip_count / 1000)
    none = dataclasses.replace(every, spectra=dataclasses.replace(every.spectra, pattern=SpectrumPattern.NONE))
    assert planned_spectra_count(none) == 0
    assert plan_scan(none, Placement(), accel_um_s2=ACCEL_UM_S2).duration_parts_s["spectra"] == 0.0


# --- the examples and scale -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["red-4in", "blue-6in", "green-8in"])
def test_examples_plan_in_both_modes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = recipe_named(name)
    plans: dict[ScanMode, ScanPlan] = {}
    for mode in ScanMode:
        start = time.perf_counter()
        plans[mode] = plan_scan(in_mode(recipe, mode), ROTATED, accel_um_s2=ACCEL_UM_S2)
        assert time.perf_counter() - start < 5.0
    raster, locked = plans[ScanMode.RASTER], plans[ScanMode.GRID_LOCKED]
    assert raster.line_count / locked.line_count >= 2.9  # line pitch = chip pitch / 3 in these examples
    assert locked.estimated_duration_s < raster.estimated_duration_s
    with capsys.disabled():
        print(f"\n{name} ({recipe.sampling.velocity_um_s / 1000:g} mm/s, {ACCEL_UM_S2 / 1e3:g} mm/s²):")
        for mode, plan in plans.items():
            print(
                f"  {mode:<11}: {plan.line_count:>6,} lines/pass, {plan.total_samples:>14,} samples, "
                f"{plan.data_bytes / 1e9:6.2f} GB, {plan.estimated_duration_s / 3600:5.2f} h"
            )


def test_an_8_inch_raster_plan_is_fast_and_small() -> None:
    recipe = in_mode(recipe_named("green-8in"), ScanMode.RASTER)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        plan = plan_scan(recipe, ROTATED, accel_um_s2=ACCEL_UM_S2)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.line_count > 29_000
    assert elapsed < 5.0
    assert peak < 100e6  # O(lines): a few MB, far below the ~1 GB budget
