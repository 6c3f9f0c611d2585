"""Physics of the virtual wafer: what each defect looks like to PL, the spectrometer and the EL prober."""

from __future__ import annotations

import time
import tracemalloc

import h5py
import numpy as np
import pytest
from scipy import stats

from cext import reference
from drivers.virtual.profile import WaferProfile, load_profile
from drivers.virtual.world import DefectFlag, ElResult, WaferWorld, classify_el, export_truth
from inspection.settings import SettingsError, from_mapping

LOW_POWER_W = 0.0005
HIGH_POWER_W = 0.02


def make_profile(**sections: dict) -> WaferProfile:
    """A 2" wafer at 200 µm pitch with defect rates high enough to find every kind among ~40 k chips."""
    data = {
        "seed": 5,
        "substrate": {"diameter_mm": 50.8, "edge_exclusion_mm": 2.0},
        "grid": {"pitch_x_um": 200.0, "pitch_y_um": 200.0, "chip_width_um": 60.0, "chip_height_um": 60.0},
        "defects": {
            "dead_fraction": 0.02,
            "dim_fraction": 0.02,
            "leaky_fraction": 0.02,
            "missing_fraction": 0.01,
            "el_open_fraction": 0.01,
            "el_series_fraction": 0.01,
            "particles_per_cm2": 0.5,
            "scratches_per_cm2": 0.2,
        },
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_mapping(WaferProfile, data)


@pytest.fixture(scope="module")
def world() -> WaferWorld:
    return WaferWorld(make_profile())


@pytest.fixture(scope="module")
def table(world: WaferWorld) -> dict[str, np.ndarray]:
    return world.truth_rows(0, world.layout.row_count)


def only(table: dict[str, np.ndarray], flag: DefectFlag) -> np.ndarray:
    """Chips whose only defect is ``flag``."""
    return table["present"] & (table["flags"] == np.uint16(flag))


def efficiency(world: WaferWorld, table: dict[str, np.ndarray], chips: np.ndarray, power_w: float) -> np.ndarray:
    truth = world.chip_truth(table["col"][chips], table["row"][chips])
    return world.chip_pl_v(truth, power_w * truth.excitation) / power_w


def test_same_seed_same_wafer_other_seed_other_wafer(world: WaferWorld) -> None:
    cols, rows = world.layout.usable_chips()
    again = WaferWorld(make_profile()).chip_truth(cols, rows)
    first = world.chip_truth(cols, rows)
    np.testing.assert_array_equal(first.flags, again.flags)
    np.testing.assert_array_equal(first.wavelength_nm, again.wavelength_nm)
    assert world.placement == WaferWorld(make_profile()).placement
    different = WaferWorld(
        from_mapping(
            WaferProfile,
            {
                "seed": 6,
                "grid": {"pitch_x_um": 200.0, "pitch_y_um": 200.0, "chip_width_um": 60.0, "chip_height_um": 60.0},
            },
        )
    )
    assert not np.array_equal(different.chip_truth(cols, rows).a_coeff, first.a_coeff)


def test_defect_rates_match_profile(table: dict[str, np.ndarray]) -> None:
    on_wafer = table["flags"].size
    for flag, rate in [(DefectFlag.DEAD, 0.02), (DefectFlag.LEAKY, 0.02), (DefectFlag.MISSING, 0.01)]:
        fraction = np.count_nonzero(table["flags"] & np.uint16(flag)) / on_wafer
        assert rate * 0.8 < fraction < rate * 1.6, (flag, fraction)


def test_leaky_chip_is_dark_at_low_power_and_almost_normal_at_high_power(world, table) -> None:
    good = only(table, DefectFlag.NONE)
    leaky = only(table, DefectFlag.LEAKY)
    assert leaky.sum() > 50
    ratio_good = efficiency(world, table, good, LOW_POWER_W) / efficiency(world, table, good, HIGH_POWER_W)
    ratio_leaky = efficiency(world, table, leaky, LOW_POWER_W) / efficiency(world, table, leaky, HIGH_POWER_W)
    # the published signature: the low/high efficiency ratio of a leaky chip is far below a good chip's ...
    assert np.percentile(ratio_leaky, 95) < 0.5 * np.percentile(ratio_good, 5)
    # ... while at high power it looks nearly normal
    high_leaky = efficiency(world, table, leaky, HIGH_POWER_W)
    high_good = efficiency(world, table, good, HIGH_POWER_W)
    assert np.median(high_leaky) > 0.6 * np.median(high_good)


def test_dim_chip_is_dim_at_every_power(world, table) -> None:
    good, dim = only(table, DefectFlag.NONE), only(table, DefectFlag.DIM)
    for power in (LOW_POWER_W, HIGH_POWER_W):
        assert np.median(efficiency(world, table, dim, power)) < 0.7 * np.median(efficiency(world, table, good, power))


def test_el_only_failures_have_no_pl_signature(world, table) -> None:
    good = only(table, DefectFlag.NONE)
    spread = np.percentile(efficiency(world, table, good, HIGH_POWER_W), [1, 99])
    for flag in (DefectFlag.EL_OPEN, DefectFlag.EL_SERIES_RESISTANCE):
        chips = only(table, flag)
        assert chips.sum() > 20
        values = efficiency(world, table, chips, HIGH_POWER_W)
        assert np.all((values > spread[0] * 0.9) & (values < spread[1] * 1.1))


def test_smaller_chips_lose_more_to_sidewalls() -> None:
    big = WaferWorld(make_profile(grid={"chip_width_um": 60.0, "chip_height_um": 60.0}))
    small = WaferWorld(make_profile(grid={"chip_width_um": 10.0, "chip_height_um": 10.0}))
    col, row = big.layout.anchor_index
    assert small.chip_truth([col], [row]).a_coeff[0] > 3 * big.chip_truth([col], [row]).a_coeff[0]


def test_dead_chip_gives_background_only_and_missing_chip_nothing(world, table) -> None:
    good, dead, missing = only(table, DefectFlag.NONE), only(table, DefectFlag.DEAD), only(table, DefectFlag.MISSING)

    def signal_at(chips: np.ndarray) -> np.ndarray:
        x, y = table["x_um"][chips][:20], table["y_um"][chips][:20]
        return world.pl_signal_clean_v(x, y, np.full(x.shape, HIGH_POWER_W))

    good_v = signal_at(good)
    dead_v = signal_at(dead)
    scatter_v = world.profile.optics.scatter_v_per_w * HIGH_POWER_W
    np.testing.assert_allclose(dead_v, scatter_v, rtol=0.01)  # filtered laser leak from the chip surface only
    assert dead_v.max() < 0.01 * good_v.min()
    np.testing.assert_allclose(signal_at(missing), 0.0, atol=1e-9)
    noisy = world.pl_signal_v(table["x_um"][dead][:20], table["y_um"][dead][:20], HIGH_POWER_W, np.zeros(20))
    assert np.all(np.abs(noisy - world.profile.optics.background_v - scatter_v) < 5 * world.profile.optics.read_noise_v)


def reference_signal_v(world: WaferWorld, x: np.ndarray, y: np.ndarray, power_w: float) -> np.ndarray:
    """The exact model (cext.reference) over every chip of a rectangle around the line: what the world's
    renderer, with the few chips its band holds, must reproduce."""
    frame = world._grid_frame()
    col_f, row_f = reference.grid_units(frame, x, y)
    reach = world._reach
    first_col, last_col = int(np.floor(col_f.min() + 0.5)) - reach, int(np.floor(col_f.max() + 0.5)) + reach
    first_row, last_row = int(np.floor(row_f.min() + 0.5)) - reach, int(np.floor(row_f.max() + 0.5)) + reach
    col0, band_row0, band_start = reference.full_band(first_col, last_col, first_row, last_row)
    rows, cols = np.meshgrid(np.arange(first_row, last_row + 1), np.arange(first_col, last_col + 1))
    cols, rows = cols.ravel(), rows.ravel()
    inside = world.layout.in_box(cols, rows)
    truth = world.chip_truth(cols[inside], rows[inside])
    chips = {name: np.zeros(cols.size) for name in ("a", "c", "s", "excitation", "gain", "scatter")}
    chips["a"][:] = 1.0
    chips["a"][inside], chips["c"][inside], chips["s"][inside] = truth.a_coeff, truth.c_coeff, truth.shunt
    chips["excitation"][inside] = truth.excitation
    chips["gain"][inside] = world._pl_gain_v_per_w(truth)
    chips["scatter"][inside] = np.where(truth.present, world.profile.optics.scatter_v_per_w, 0.0)
    grid, sigma = world.layout.grid, world.profile.optics.spot_sigma_um
    return reference.render_line(
        x, y, np.full(x.shape, power_w), frame, col0, band_row0, band_start, chips["a"], chips["c"], chips["s"],
        np.full(cols.size, world.profile.defects.leak_saturation_n), chips["excitation"], chips["gain"],
        chips["scatter"], 0.5 * grid.chip_width_um / grid.pitch_x_um, 0.5 * grid.chip_height_um / grid.pitch_y_um,
        sigma / grid.pitch_x_um, sigma / grid.pitch_y_um, world.generation_per_w, reach,
    )  # fmt: skip


def line_through(world: WaferWorld, table: dict[str, np.ndarray], chip: int, angle_deg: float, offset_um: float):
    """A 4 mm line through (beside, by ``offset_um``) chip ``chip`` of the table, at ``angle_deg`` to the x axis."""
    t = np.linspace(-2000.0, 2000.0, 8000)
    angle = np.radians(angle_deg)
    x = table["x_um"][chip] + t * np.cos(angle) - offset_um * np.sin(angle)
    y = table["y_um"][chip] + t * np.sin(angle) + offset_um * np.cos(angle)
    return x, y


@pytest.mark.parametrize(
    ("angle_deg", "offset_um"),
    [(0.0, 0.0), (0.0, 23.0), (0.0, 100.0), (0.7, 10.0), (30.0, 0.0), (90.0, 0.0), (90.0, 41.0)],
    ids=["row centres", "row near edge", "between rows", "rotated wafer", "slanted", "column", "column near edge"],
)
@pytest.mark.parametrize("kind", [DefectFlag.DEAD, DefectFlag.MISSING, DefectFlag.LEAKY])
def test_pl_signal_matches_the_exact_model(world, table, kind, angle_deg, offset_um) -> None:
    """Lines along rows and columns, slanted, beside the chips, over dead, missing and leaky chips."""
    chip = np.flatnonzero(only(table, kind) if kind != DefectFlag.MISSING else table["flags"] & np.uint16(kind))[3]
    x, y = line_through(world, table, chip, angle_deg, offset_um)
    clean = world.pl_signal_clean_v(x, y, np.full(x.shape, HIGH_POWER_W))
    exact = reference_signal_v(world, x, y, HIGH_POWER_W)
    np.testing.assert_allclose(clean, exact, rtol=0, atol=1e-9 * exact.max())


def test_pl_signal_matches_the_exact_model_across_the_wafer_edge(world) -> None:
    """A line from outside the wafer (and the chip grid's box) in to the centre: no chips, then edge chips."""
    x = np.linspace(-world._radius_um - 3000.0, 0.0, 12000)
    y = np.full(x.shape, 1234.0)
    clean = world.pl_signal_clean_v(x, y, np.full(x.shape, HIGH_POWER_W))
    exact = reference_signal_v(world, x, y, HIGH_POWER_W)
    np.testing.assert_allclose(clean, exact, rtol=0, atol=1e-9 * exact.max())
    assert not clean[:1000].any()


@pytest.mark.parametrize("name", ["demo-2in", "green-8in"])
def test_example_wafers_match_the_exact_model(name: str) -> None:
    """The example profiles (100 µm and 20 µm pitch): lines along a row and slanted, at the benchmark's step."""
    world = WaferWorld(load_profile(f"resources/profiles/{name}.toml"))
    x = np.linspace(-1000.0, 1000.0, 10000)
    for y in (np.full(x.shape, 123.0), 123.0 + x * np.tan(np.radians(1.0))):
        clean = world.pl_signal_clean_v(x, y, np.full(x.shape, 0.01))
        exact = reference_signal_v(world, x, y, 0.01)
        np.testing.assert_allclose(clean, exact, rtol=0, atol=1e-9 * exact.max())


def test_noisy_signal_is_reproducible_with_the_documented_noise(world) -> None:
    x_chip, y_chip = world.layout.chip_center_um(*world.layout.anchor_index)
    x = np.linspace(-5000, 5000, 200_000) + x_chip
    y = np.full(x.shape, y_chip + 17.0)
    optics = world.profile.optics
    noisy = world.pl_signal_v(x, y, HIGH_POWER_W, x * 0)
    # a re-measured line gives the same samples; another power, other noise
    np.testing.assert_array_equal(world.pl_signal_v(x, y, HIGH_POWER_W, x * 0), noisy)
    clean = world.pl_signal_clean_v(x, y, np.full(x.shape, HIGH_POWER_W))
    other = world.pl_signal_v(x, y, 2 * HIGH_POWER_W, x * 0) - world.pl_signal_clean_v(x, y, 2 * HIGH_POWER_W)
    assert not np.allclose(other, noisy - clean)
    # read noise plus shot noise on top of the background
    z = (noisy - clean - optics.background_v) / np.sqrt(optics.read_noise_v**2 + optics.shot_noise_v * clean)
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.std() - 1.0) < 0.01
    assert stats.kstest(z, "norm").pvalue > 1e-3
    bright = clean > 0.5 * clean.max()
    assert np.std(noisy[bright] - clean[bright]) > 3 * optics.read_noise_v  # the shot noise shows where it is bright


def test_lines_over_the_same_chips_reuse_their_truth_and_give_fresh_worlds_results() -> None:
    """Raster lines closer than the chip pitch light the same chips: the world keeps the last band's chip arrays.
    Whatever the order of the lines, every signal equals a fresh world's, bit for bit."""
    shared = WaferWorld(make_profile())
    x_chip, y_chip = shared.layout.chip_center_um(*shared.layout.anchor_index)
    x = np.linspace(-3000, 3000, 30_000) + x_chip
    pitch = shared.layout.grid.pitch_y_um
    offsets = [0.0, 5.0, pitch, 0.0, 5.0]  # two lines over one chip row, one over the next, then back
    signals = [shared.pl_signal_v(x, np.full(x.shape, y_chip + dy), HIGH_POWER_W, x * 0) for dy in offsets]
    for dy, signal in zip(offsets, signals, strict=True):
        fresh = WaferWorld(make_profile()).pl_signal_v(x, np.full(x.shape, y_chip + dy), HIGH_POWER_W, x * 0)
        np.testing.assert_array_equal(signal, fresh)
    # slanted lines 25 µm apart (as on a rotated wafer) light mostly, not exactly, the same chips: only the new ones are
    # looked up, and every signal still equals a fresh world's
    looked_up: list[int] = []
    chip_truth = shared.chip_truth
    shared.chip_truth = lambda col, row: (looked_up.append(np.size(col)), chip_truth(col, row))[1]  # type: ignore[method-assign]
    slant = (x - x_chip) * np.tan(np.radians(2.0))
    shared.forget_kept_band()
    for step in range(4):
        y = y_chip + 25.0 * step + slant
        fresh = WaferWorld(make_profile()).pl_signal_v(x, y, HIGH_POWER_W, x * 0)
        np.testing.assert_array_equal(shared.pl_signal_v(x, y, HIGH_POWER_W, x * 0), fresh)
    assert looked_up[0] > 0 and 0 < sum(looked_up[1:]) < 3 * looked_up[0]
    del shared.chip_truth
    # the kept arrays are reused for the same band and replaced for another
    shared.pl_signal_clean_v(x, np.full(x.shape, y_chip), np.full(x.shape, HIGH_POWER_W))
    kept = shared._last_band
    shared.pl_signal_clean_v(x, np.full(x.shape, y_chip + 5.0), np.full(x.shape, HIGH_POWER_W))
    assert kept is not None and shared._last_band is kept
    shared.pl_signal_clean_v(x, np.full(x.shape, y_chip + pitch), np.full(x.shape, HIGH_POWER_W))
    assert shared._last_band is not kept


def test_line_signal_is_periodic_at_the_chip_pitch(world) -> None:
    pitch = world.layout.grid.pitch_x_um
    x_chip, y_chip = world.layout.chip_center_um(*world.layout.anchor_index)
    x = np.linspace(-5000, 5000, 20000) + x_chip
    signal = world.pl_signal_clean_v(x, np.full(x.shape, y_chip), np.full(x.shape, HIGH_POWER_W))
    spectrum = np.abs(np.fft.rfft(signal - signal.mean()))
    frequency = np.fft.rfftfreq(x.size, d=x[1] - x[0])
    assert abs(frequency[np.argmax(spectrum)] - 1 / pitch) < 0.02 / pitch
    # peaks sit on chip centres
    peaks = x[(signal > 0.5 * signal.max())]
    assert np.all(np.abs(((peaks - x_chip + pitch / 2) % pitch) - pitch / 2) < 30.0)


def test_spectrum_peaks_at_the_chip_wavelength(world, table) -> None:
    wavelengths = np.arange(400.0, 520.0, 0.05)
    chips = np.flatnonzero(only(table, DefectFlag.NONE))[:10]
    for chip in chips:
        spectrum = world.pl_spectrum_w_per_nm(table["x_um"][chip], table["y_um"][chip], HIGH_POWER_W, wavelengths)
        assert abs(wavelengths[np.argmax(spectrum)] - table["wavelength_nm"][chip]) < 0.1
        half = wavelengths[spectrum > spectrum.max() / 2]
        assert abs((half[-1] - half[0]) - table["fwhm_nm"][chip]) < 0.2


def test_wavelength_map_has_a_radial_gradient(table) -> None:
    good = only(table, DefectFlag.NONE)
    radius = np.hypot(table["x_um"], table["y_um"])[good]
    wavelength = table["wavelength_nm"][good]
    centre = wavelength[radius < 5000].mean()
    edge = wavelength[radius > 20000].mean()
    assert 2.0 < edge - centre < 4.0  # profile: 3 nm centre to edge


def test_el_reference_results(world, table) -> None:
    result = classify_el(table, world.profile.el_test)
    good = only(table, DefectFlag.NONE)
    assert np.mean(result[good] == ElResult.PASS) > 0.99
    assert np.all(result[only(table, DefectFlag.EL_OPEN)] == ElResult.OPEN)
    assert np.all(result[only(table, DefectFlag.EL_SERIES_RESISTANCE)] == ElResult.FORWARD_VOLTAGE)
    assert np.all(result[only(table, DefectFlag.LEAKY)] == ElResult.LEAKAGE)
    assert np.all(result[only(table, DefectFlag.DEAD)] == ElResult.DEAD)
    assert np.all(result[only(table, DefectFlag.MISSING)] == ElResult.MISSING)
    vf = table["el_forward_v"][good]
    assert 2.8 < np.median(vf) < 3.2


def test_export_truth_writes_every_chip(tmp_path, world) -> None:
    small = WaferWorld(make_profile(grid={"pitch_x_um": 1000.0, "pitch_y_um": 1000.0}))
    count = export_truth(small, tmp_path / "truth.h5")
    assert count == small.layout.physical_chip_count
    with h5py.File(tmp_path / "truth.h5", "r") as stored:
        chips = stored["chips"]
        assert chips["col"].shape == (count,)
        assert set(np.unique(chips["el_result"][...])) <= {int(result) for result in ElResult}
        assert stored.attrs["seed"] == small.seed
    assert not (tmp_path / "truth.h5.partial").exists()


def test_bad_profile_lists_every_problem() -> None:
    with pytest.raises(SettingsError) as caught:
        from_mapping(
            WaferProfile,
            {
                "substrate": {"diameter_mm": 90.0},
                "grid": {"pitch_x_um": -5, "pitch_y_um": 100.0, "chip_width_um": 60.0, "chip_height_um": 60.0},
                "defects": {"leak_strength": [5.0, 1.0]},
                "seedd": 1,
            },
        )
    text = str(caught.value)
    assert "substrate.diameter_mm: 90.0 is not one of" in text
    assert "grid.pitch_x_um: -5 is outside the allowed range" in text
    assert "seedd: unknown setting" in text
    with pytest.raises(SettingsError, match=r"defects.leak_strength: \[5.0, 1.0\] must be \[low, high\]"):
        from_mapping(WaferProfile, {"defects": {"leak_strength": [5.0, 1.0]}})


def test_eight_inch_world_is_created_fast_and_small() -> None:
    profile = from_mapping(
        WaferProfile,
        {
            "substrate": {"diameter_mm": 200.0, "edge_exclusion_mm": 3.0},
            "grid": {"pitch_x_um": 20.0, "pitch_y_um": 20.0, "chip_width_um": 15.0, "chip_height_um": 15.0},
        },
    )
    tracemalloc.start()
    started = time.perf_counter()
    world = WaferWorld(profile)
    count = world.layout.chip_count
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 70e6 < count < 80e6
    assert elapsed < 10.0  # issue bound; typically milliseconds
    assert peak < 2 * 1024**3
