"""PL spectrum fits (peak, FWHM, power, quality flags) against synthetic lines and the virtual AQ6373 on the virtual
wafer, and the interpolation of site values into chip maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import Delaunay

from drivers.virtual.aq6370_twin import AQ6370Twin, slit_convolved
from drivers.virtual.profile import load_profile
from drivers.virtual.world import DefectFlag, WaferWorld
from inspection import spectra_analysis
from inspection.recipe import load_recipe
from inspection.spectra_analysis import (
    FWHM_PER_SIGMA,
    SPECTRUM_RESULT_DTYPE,
    SpectrumQuality,
    chip_map,
    deconvolve_fwhm_nm,
    fit_spectra,
    fit_spectrum,
    interpolate_chip_map,
)

WINDOW_NM = np.linspace(420.0, 500.0, 801)


def gaussian(wavelength_nm: np.ndarray, centre_nm: float, fwhm_nm: float, area_w: float) -> np.ndarray:
    """A Gaussian line of the given centre, FWHM and area (W), in W/nm."""
    sigma = fwhm_nm / FWHM_PER_SIGMA
    return area_w / (sigma * math.sqrt(2 * math.pi)) * np.exp(-0.5 * ((wavelength_nm - centre_nm) / sigma) ** 2)


def noisy_line(
    *, centre_nm: float = 455.3, fwhm_nm: float = 20.0, area_w: float = 1e-5, snr: float = 200.0, seed: int = 0
) -> np.ndarray:
    """A line with background and white noise whose σ is the line height / ``snr``."""
    line = gaussian(WINDOW_NM, centre_nm, fwhm_nm, area_w)
    rng = np.random.default_rng(seed)
    return line + 3e-9 + rng.standard_normal(WINDOW_NM.size) * line.max() / snr


def assert_line(fit, centre_nm: float, fwhm_nm: float, area_w: float, *, quality=SpectrumQuality.OK) -> None:
    assert fit.quality == quality
    assert fit.peak_nm == pytest.approx(centre_nm, abs=0.05)
    assert fit.fwhm_nm == pytest.approx(fwhm_nm, rel=0.02)
    assert fit.integrated_w == pytest.approx(area_w, rel=0.01)


# -- synthetic spectra ---------------------------------------------------------------------------------------------


def test_gaussian_with_noise_background_and_spikes() -> None:
    power = noisy_line()
    height = power.max()
    power[300] += 20 * height  # cosmic-ray spike on the flank
    power[700] -= 5 * height  # a dropout in the wing
    fit = fit_spectrum(WINDOW_NM, power)
    assert_line(fit, 455.3, 20.0, 1e-5)
    assert fit.background_w_per_nm == pytest.approx(3e-9, abs=3 * height / 200 / math.sqrt(100))
    assert fit.peak_w_per_nm == pytest.approx(gaussian(np.array([455.3]), 455.3, 20.0, 1e-5)[0], rel=0.01)
    assert fit.noise_w_per_nm == pytest.approx(height / 200, rel=0.2)
    assert fit.residual_rms_w_per_nm == pytest.approx(height / 200, rel=0.2)  # the spikes do not count


def test_world_line_shape_through_the_slit_is_deconvolved() -> None:
    # the world's Gaussian seen through a 2 nm Gaussian slit, as the AQ6373 twin renders it: 5 % wider
    resolution_nm = 2.0
    power = slit_convolved(lambda grid: gaussian(grid, 450.0, 6.0, 1e-6), WINDOW_NM, resolution_nm)
    power += np.random.default_rng(1).standard_normal(WINDOW_NM.size) * 1e-11 / resolution_nm
    measured = fit_spectrum(WINDOW_NM, power)
    assert measured.fwhm_nm == pytest.approx(math.hypot(6.0, resolution_nm), rel=0.005)
    assert_line(fit_spectrum(WINDOW_NM, power, resolution_nm=resolution_nm), 450.0, 6.0, 1e-6)


def test_wavelength_order_does_not_matter() -> None:
    power = noisy_line(seed=2)
    forward = fit_spectrum(WINDOW_NM, power)
    backward = fit_spectrum(WINDOW_NM[::-1], power[::-1])
    shuffle = np.random.default_rng(3).permutation(WINDOW_NM.size)
    shuffled = fit_spectrum(WINDOW_NM[shuffle], power[shuffle])
    for other in (backward, shuffled):
        assert other.peak_nm == pytest.approx(forward.peak_nm, abs=1e-9)
        assert other.fwhm_nm == pytest.approx(forward.fwhm_nm, rel=1e-9)
        assert other.quality == forward.quality == SpectrumQuality.OK


def test_non_finite_points_are_dropped_and_flagged() -> None:
    power = noisy_line(seed=4)
    wavelength = WINDOW_NM.copy()
    power[[10, 400, 401]] = [np.nan, np.inf, -np.inf]
    wavelength[600] = np.nan
    assert_line(fit_spectrum(wavelength, power), 455.3, 20.0, 1e-5, quality=SpectrumQuality.BAD_POINTS)
    hopeless = fit_spectrum(WINDOW_NM, np.full(WINDOW_NM.size, np.nan))
    assert hopeless.quality == SpectrumQuality.NO_SIGNAL | SpectrumQuality.BAD_POINTS
    assert math.isnan(hopeless.peak_nm) and math.isnan(hopeless.fwhm_nm)


@pytest.mark.parametrize(
    "power",
    [
        np.zeros(WINDOW_NM.size),
        np.full(WINDOW_NM.size, 4e-9),
        np.random.default_rng(5).standard_normal(WINDOW_NM.size) * 1e-11,  # noise, half of it negative
        np.where(np.arange(WINDOW_NM.size) == 400, 1e-6, np.random.default_rng(6).standard_normal(WINDOW_NM.size)),
    ],
    ids=["zeros", "constant", "noise", "noise-and-spike"],
)
def test_no_signal(power: np.ndarray) -> None:
    fit = fit_spectrum(WINDOW_NM, power)
    assert fit.quality == SpectrumQuality.NO_SIGNAL
    assert math.isnan(fit.peak_nm) and math.isnan(fit.fwhm_nm)
    assert abs(fit.integrated_w) <= fit.noise_w_per_nm * 80.0  # the mean level is within a noise σ of zero


def test_clipped_line_is_fitted_from_its_flanks() -> None:
    power = noisy_line(seed=7, snr=1000.0)
    power = np.minimum(power, 0.6 * power.max())  # a saturated detector
    assert_line(fit_spectrum(WINDOW_NM, power), 455.3, 20.0, 1e-5, quality=SpectrumQuality.CLIPPED)


@pytest.mark.parametrize("centre_nm", [497.0, 425.0, 510.0])
def test_line_at_the_window_edge(centre_nm: float) -> None:
    fit = fit_spectrum(WINDOW_NM, noisy_line(centre_nm=centre_nm, seed=8))
    assert SpectrumQuality.AT_EDGE in fit.quality
    assert 420.0 <= fit.peak_nm <= 500.0


def test_failed_fit_falls_back_to_half_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failed:
        status = 0
        x = np.full(4, np.nan)

    monkeypatch.setattr(spectra_analysis, "least_squares", lambda *args, **kwargs: Failed())
    power = noisy_line(seed=9, snr=1000.0)
    fit = fit_spectrum(WINDOW_NM, power)
    assert_line(fit, 455.3, 20.0, 1e-5 * 0.9999, quality=SpectrumQuality.FIT_FAILED)  # the window holds 99.99 %
    assert math.isnan(fit.residual_rms_w_per_nm)


def test_fit_that_finds_another_feature_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    class Elsewhere:  # a "converged" fit 30 nm off: not the line the half maximum sees
        status = 1
        x = np.array([1.0, 30.0 * FWHM_PER_SIGMA / 20.0, 1.0, 0.0])

    monkeypatch.setattr(spectra_analysis, "least_squares", lambda *args, **kwargs: Elsewhere())
    assert SpectrumQuality.FIT_FAILED in fit_spectrum(WINDOW_NM, noisy_line(seed=10)).quality


def test_narrow_line_is_flagged_unresolved() -> None:
    power = slit_convolved(lambda grid: gaussian(grid, 460.0, 0.2, 1e-7), WINDOW_NM, 1.0)
    fit = fit_spectrum(WINDOW_NM, power + 1e-12, resolution_nm=1.0)
    assert SpectrumQuality.UNRESOLVED in fit.quality
    assert fit.peak_nm == pytest.approx(460.0, abs=0.05)
    assert fit.fwhm_nm < 0.5


def test_deconvolution_in_quadrature() -> None:
    assert deconvolve_fwhm_nm(20.0, 0.5) == pytest.approx(math.sqrt(400 - 0.25))
    assert deconvolve_fwhm_nm(0.4, 0.5) == 0.0
    assert deconvolve_fwhm_nm(3.0, None) == 3.0


@pytest.mark.parametrize(
    ("arguments", "keywords", "message"),
    [
        ((WINDOW_NM, np.zeros(10)), {}, "power_w_per_nm has 10 points but wavelength_nm has 801"),
        ((WINDOW_NM.reshape(1, -1), np.zeros((1, 801))), {}, "wavelength_nm must be 1-D"),
        ((WINDOW_NM, np.zeros((801, 1))), {}, "power_w_per_nm must be 1-D"),
        ((WINDOW_NM, np.zeros(801)), {"resolution_nm": 0.0}, "resolution_nm must be"),
        ((WINDOW_NM, np.zeros(801)), {"resolution_nm": math.nan}, "resolution_nm must be"),
        ((WINDOW_NM, np.zeros(801)), {"min_snr": -1.0}, "min_snr must be"),
    ],
)
def test_bad_inputs(arguments: tuple, keywords: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_spectrum(*arguments, **keywords)


def test_fit_spectra_rows_in_order() -> None:
    spectra = [
        {"col": 3, "row": 4, "wavelength_nm": WINDOW_NM, "power_w_per_nm": noisy_line(seed=11), "reason": "grid"},
        {"col": 3, "row": 4, "wavelength_nm": WINDOW_NM, "power_w_per_nm": noisy_line(seed=12, centre_nm=460.0)},
        {"col": 9, "row": 1, "wavelength_nm": WINDOW_NM, "power_w_per_nm": np.zeros(WINDOW_NM.size)},
    ]
    table = fit_spectra(spectra)
    assert table.dtype == SPECTRUM_RESULT_DTYPE
    assert table["col"].tolist() == [3, 3, 9] and table["row"].tolist() == [4, 4, 1]
    assert table["peak_nm"][:2] == pytest.approx([455.3, 460.0], abs=0.05)
    assert table["quality"].tolist() == [0, 0, int(SpectrumQuality.NO_SIGNAL)]
    assert np.isnan(table["peak_nm"][2])
    assert fit_spectra([]).shape == (0,)


def test_fit_spectra_names_the_bad_spectrum() -> None:
    good = {"col": 0, "row": 0, "wavelength_nm": WINDOW_NM, "power_w_per_nm": noisy_line()}
    with pytest.raises(ValueError, match=r"spectra\[1\] has no power_w_per_nm"):
        fit_spectra([good, {"col": 1, "row": 2, "wavelength_nm": WINDOW_NM}])
    with pytest.raises(ValueError, match=r"spectra\[1\] \(chip 1, 2\): power_w_per_nm has 3 points"):
        fit_spectra([good, {"col": 1, "row": 2, "wavelength_nm": WINDOW_NM, "power_w_per_nm": [1.0, 2.0, 3.0]}])


# -- the virtual wafer through the virtual AQ6373 --------------------------------------------------------------------


class SpotBench:
    """The part of the virtual bench the AQ6373 twin reads: the world, a clock, the spot and the laser power."""

    def __init__(self, world: WaferWorld, power_w: float) -> None:
        self.world, self.power_w = world, power_w
        self.t_s, self.x_um, self.y_um = 0.0, 0.0, 0.0

    def now(self) -> float:
        return self.t_s

    def hold_busy_until(self, owner: str, t_s: float) -> None:
        pass

    def spot_wafer_um(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.x_um), np.array(self.y_um)

    def laser_power_w(self, t_s: float) -> np.ndarray:
        return np.array(self.power_w)


def osa_spectra(world: WaferWorld, recipe_path: str, cols: np.ndarray, rows: np.ndarray) -> list[dict]:
    """Spectra of chips as the scan takes them: the twin configured by the recipe's [spectra] settings, spot on
    the chip centre, the last (highest) pass power, trace A read in W/nm over its SCPI commands."""
    recipe = load_recipe(recipe_path)
    settings = recipe.spectra
    bench = SpotBench(world, recipe.excitation.powers_w[-1])
    twin = AQ6370Twin(bench)  # type: ignore[arg-type]
    session = twin.new_session()

    def send(command: str) -> str | None:
        reply = twin.handle(command, session)
        return None if reply is None else reply.decode("ascii").strip()

    for command in (
        'OPEN "anonymous"',
        "anything",
        f":SENS:WAV:STAR {settings.start_nm}NM",
        f":SENS:WAV:STOP {settings.stop_nm}NM",
        f":SENS:BAND:RES {settings.resolution_nm}NM",
        f":SENS:SWE:POIN {settings.points}",
        ":DISP:TRAC:Y1:UNIT W/NM",
    ):
        send(command)
    x_um, y_um = world.layout.chip_center_um(cols, rows)
    spectra = []
    for col, row, x, y in zip(cols, rows, x_um, y_um, strict=True):
        bench.x_um, bench.y_um = float(x), float(y)
        send(":INIT")
        bench.t_s += 10.0  # past the end of the sweep
        spectra.append(
            {
                "col": int(col),
                "row": int(row),
                "wavelength_nm": 1e9 * np.array(send(":TRAC:X? TRA").split(","), dtype=float),
                "power_w_per_nm": np.array(send(":TRAC:Y? TRA").split(","), dtype=float),
            }
        )
    assert send(":SYST:ERR?") == '0,"No error"'
    return spectra


def pick_chips(world: WaferWorld, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random present chips, plus up to three chips of each spectral or brightness defect."""
    cols, rows = world.layout.usable_chips()
    truth = world.chip_truth(cols, rows)
    rng = np.random.default_rng(20)
    chosen = [rng.choice(np.flatnonzero(truth.present & (truth.flags == 0)), count, replace=False)]
    for flag in (DefectFlag.WAVELENGTH_SHIFT, DefectFlag.BROADENED, DefectFlag.DEAD, DefectFlag.DIM):
        chosen.append(np.flatnonzero((truth.flags & np.uint16(flag)) != 0)[:3])
    index = np.concatenate(chosen)
    return cols[index], rows[index]


@pytest.mark.parametrize(
    ("profile_path", "recipe_path", "count"),
    [
        ("tests/data/coarse-profile.toml", "tests/data/coarse-recipe.toml", 15),
        ("resources/profiles/demo-2in.toml", "resources/recipes/demo-2in.toml", 10),
    ],
    ids=["coarse", "demo-2in"],
)
def test_virtual_wafer_spectra_match_the_truth(profile_path: str, recipe_path: str, count: int) -> None:
    world = WaferWorld(load_profile(profile_path))
    cols, rows = pick_chips(world, count)
    spectra = osa_spectra(world, recipe_path, cols, rows)
    recipe = load_recipe(recipe_path)
    resolution_nm, power_w = recipe.spectra.resolution_nm, recipe.excitation.powers_w[-1]
    table = fit_spectra(spectra, resolution_nm=resolution_nm)
    truth = world.chip_truth(cols, rows)
    flags = truth.flags
    dead = (flags & np.uint16(DefectFlag.DEAD)) != 0
    assert dead.any(), "the chip selection should hold a dead chip"
    for flag in (DefectFlag.WAVELENGTH_SHIFT, DefectFlag.BROADENED):
        assert ((flags & np.uint16(flag)) != 0).any(), f"the chip selection should hold a {flag.name} chip"

    assert (table["quality"][dead] == SpectrumQuality.NO_SIGNAL).all()
    lit = ~dead
    assert (table["quality"][lit] == SpectrumQuality.OK).all()
    # the brief's bound is the OSA resolution; the fit does far better (about 1e-4 nm on these spectra)
    peak_error = table["peak_nm"][lit] - truth.wavelength_nm[lit]
    fwhm_error = table["fwhm_nm"][lit] - truth.fwhm_nm[lit]
    assert np.abs(peak_error).max() < min(resolution_nm, 0.01)
    assert np.abs(fwhm_error).max() < min(resolution_nm, 0.01)
    # the line's power is everything the world emits into the spectrometer, tails beyond the window included
    wide_nm = np.linspace(300.0, 650.0, 35_001)
    for row, x, y in zip(np.flatnonzero(lit), truth.x_um[lit], truth.y_um[lit], strict=True):
        emitted_w = np.trapezoid(world.pl_spectrum_w_per_nm(x, y, power_w, wide_nm), wide_nm)
        assert table["integrated_w"][row] == pytest.approx(emitted_w, rel=0.01)


# -- maps ----------------------------------------------------------------------------------------------------------


def linear_field(col: np.ndarray, row: np.ndarray) -> np.ndarray:
    return 455.0 + 0.02 * col - 0.03 * row


def random_sites(count: int, seed: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(100, 400, count), rng.integers(100, 400, count)


def test_linear_field_is_exact_inside_the_hull_and_nearest_outside() -> None:
    cols, rows = random_sites(40)
    rng = np.random.default_rng(31)
    target_cols, target_rows = rng.integers(0, 500, 20_000), rng.integers(0, 500, 20_000)
    result = interpolate_chip_map(cols, rows, linear_field(cols, rows), target_cols, target_rows)
    sites = np.column_stack([cols, rows]).astype(float)
    inside = Delaunay(sites).find_simplex(np.column_stack([target_cols, target_rows]).astype(float)) >= 0
    assert inside.sum() > 1000 and (~inside).sum() > 1000
    np.testing.assert_allclose(result[inside], linear_field(target_cols, target_rows)[inside], rtol=0, atol=1e-9)
    distance = np.hypot(target_cols[~inside, None] - cols, target_rows[~inside, None] - rows)
    # ties (two sites at the same distance) may go either way; compare where the nearest site is unique
    ordered = np.sort(distance, axis=1)
    unique = ordered[:, 1] - ordered[:, 0] > 1e-9
    nearest = linear_field(cols, rows)[np.argmin(distance, axis=1)]
    np.testing.assert_array_equal(result[~inside][unique], nearest[unique])


def test_nan_sites_are_ignored_and_repeats_averaged() -> None:
    cols, rows = random_sites(30)
    values = linear_field(cols, rows)
    target_cols, target_rows = np.meshgrid(np.arange(0, 500, 7), np.arange(0, 500, 7))
    clean = interpolate_chip_map(cols, rows, values, target_cols, target_rows)
    assert clean.shape == target_cols.shape
    with_nan = interpolate_chip_map(
        np.append(cols, [250, 50]),
        np.append(rows, [250, 480]),
        np.append(values, [np.nan, np.nan]),
        target_cols,
        target_rows,
    )
    np.testing.assert_array_equal(with_nan, clean)
    repeated = interpolate_chip_map(
        np.append(cols, cols[0]), np.append(rows, rows[0]), np.append(values, values[0] + 2.0), [cols[0]], [rows[0]]
    )
    assert repeated[0] == pytest.approx(values[0] + 1.0)


def test_degenerate_sites() -> None:
    targets = (np.array([0.0, 5.0, 30.0]), np.array([0.0, 5.0, 0.0]))
    assert np.isnan(interpolate_chip_map([], [], [], *targets)).all()
    assert np.isnan(interpolate_chip_map([1, 2], [1, 2], [np.nan, np.nan], *targets)).all()
    np.testing.assert_array_equal(interpolate_chip_map([3], [3], [7.0], *targets), [7.0, 7.0, 7.0])
    # sites on one line cannot be triangulated: nearest values
    collinear = interpolate_chip_map([0, 10, 20], [0, 0, 0], [1.0, 2.0, 3.0], *targets)
    np.testing.assert_array_equal(collinear, [1.0, 1.0, 3.0])


def test_methods_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    cols, rows = random_sites(50)
    values = linear_field(cols, rows)
    target_cols, target_rows = np.meshgrid(np.arange(150, 350, 3), np.arange(150, 350, 3))
    whole = interpolate_chip_map(cols, rows, values, target_cols, target_rows)
    monkeypatch.setattr(spectra_analysis, "CHUNK_POINTS", 97)
    np.testing.assert_array_equal(interpolate_chip_map(cols, rows, values, target_cols, target_rows), whole)
    cubic = interpolate_chip_map(cols, rows, values, target_cols, target_rows, method="cubic")
    np.testing.assert_allclose(cubic, whole, atol=1e-6)  # the cubic surface of a plane is the plane
    nearest = interpolate_chip_map(cols, rows, values, cols, rows, method="nearest")
    np.testing.assert_array_equal(nearest, values)


def test_pitch_sets_the_distance_for_nearest() -> None:
    # (10, 0) is 10 columns away from site A and 4 rows from site B; with a 5× taller pitch row distances count more
    cols, rows, values = [0, 10], [0, 4], [1.0, 2.0]
    assert interpolate_chip_map(cols, rows, values, [10], [0], method="nearest")[0] == 2.0
    assert interpolate_chip_map(cols, rows, values, [10], [0], method="nearest", pitch_um=(1.0, 5.0))[0] == 1.0


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"method": "spline"}, "method must be"),
        ({"pitch_um": (0.0, 1.0)}, "pitch_um must be"),
    ],
)
def test_interpolation_bad_arguments(keywords: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        interpolate_chip_map([0, 1, 0], [0, 0, 1], [1.0, 2.0, 3.0], [0], [0], **keywords)
    with pytest.raises(ValueError, match="must have the same shape"):
        interpolate_chip_map([0, 1, 0], [0, 0, 1], [1.0, 2.0], [0], [0])


def test_million_targets() -> None:
    cols, rows = random_sites(200)
    rng = np.random.default_rng(32)
    targets = rng.uniform(0, 500, (2, 1_000_000))
    result = interpolate_chip_map(cols, rows, linear_field(cols, rows), *targets)
    assert result.shape == (1_000_000,) and np.isfinite(result).all()


def test_chip_map_over_the_layout() -> None:
    layout = load_recipe("resources/recipes/demo-2in.toml").layout()
    usable_cols, usable_rows = layout.usable_chips()
    pick = np.random.default_rng(33).choice(usable_cols.size, 60, replace=False)
    cols, rows = usable_cols[pick], usable_rows[pick]
    image = chip_map(layout, cols, rows, linear_field(cols, rows))
    assert image.dtype == np.float32 and image.shape == (layout.row_count, layout.column_count)
    np.testing.assert_array_equal(np.isfinite(image), layout.physical_mask())
    np.testing.assert_allclose(image[rows, cols], linear_field(cols, rows), rtol=1e-6)

    usable = chip_map(layout, cols, rows, linear_field(cols, rows), usable_only=True)
    np.testing.assert_array_equal(np.isfinite(usable), layout.usable_mask())

    small = chip_map(layout, cols, rows, linear_field(cols, rows), downsample=8)
    assert small.shape == (math.ceil(layout.row_count / 8), math.ceil(layout.column_count / 8))
    blocks = np.isfinite(small)
    mask = layout.physical_mask()
    for block_row, block_col in [(0, small.shape[1] // 2), (small.shape[0] // 2, 0), (30, 30), (5, 5)]:
        has_chip = mask[block_row * 8 : block_row * 8 + 8, block_col * 8 : block_col * 8 + 8].any()
        assert blocks[block_row, block_col] == has_chip
    # every block is valued at its centre chip position
    centre = 30 * 8 + 3.5
    assert small[30, 30] == pytest.approx(linear_field(centre, centre), rel=1e-6)

    assert np.isnan(chip_map(layout, cols, rows, np.full(cols.size, np.nan), downsample=4)).all()
    with pytest.raises(ValueError, match="downsample must be an integer >= 1"):
        chip_map(layout, cols, rows, linear_field(cols, rows), downsample=0)
