"""The Cython kernels equal their NumPy references (cext/reference.py).

The line renderer tabulates the spot/chip overlaps and leaves out light that is provably negligible, so it is held
to the bound it documents: within 1e-9 of the line's peak signal (it typically gets 1e-11 to 3e-10).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import erf

from cext import pl_render, reference

# the renderer's documented accuracy, relative to the line's peak signal
PEAK_TOLERANCE = 1e-9
IDENTITY_FRAME = (0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0)  # grid units = wafer units


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


def assert_close_to_peak(fast: np.ndarray, slow: np.ndarray, tolerance: float = PEAK_TOLERANCE) -> None:
    peak = np.abs(slow).max()
    assert peak > 0
    np.testing.assert_allclose(fast, slow, rtol=0, atol=tolerance * peak)


# -- carrier density --------------------------------------------------------------------------------------------


def test_carrier_density_matches_reference(rng: np.random.Generator) -> None:
    count = 5000
    generation = np.concatenate([[0.0, 1e-9, 1e4], 10.0 ** rng.uniform(-6, 3, count - 3)])
    a_coeff = 10.0 ** rng.uniform(-3, 1, count)
    c_coeff = 10.0 ** rng.uniform(-4, -1, count)
    shunt = np.where(rng.random(count) < 0.5, 0.0, 10.0 ** rng.uniform(-1, 1, count))
    saturation = 10.0 ** rng.uniform(-2, 0, count)
    fast = pl_render.carrier_density(generation, a_coeff, c_coeff, shunt, saturation)
    slow = reference.carrier_density(generation, a_coeff, c_coeff, shunt, saturation)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-300)
    residual = a_coeff * fast + fast**2 + c_coeff * fast**3 + shunt * fast / (1 + fast / saturation) - generation
    np.testing.assert_allclose(residual, 0.0, atol=1e-9 * generation.max())


def test_carrier_density_known_answer() -> None:
    # A = 1, C = S = 0: n² + n = 2 has the root n = 1
    ones = np.ones(1)
    assert pl_render.carrier_density(2 * ones, ones, 0 * ones, 0 * ones, ones)[0] == pytest.approx(1.0, rel=1e-12)


def test_empty_input_gives_empty_output() -> None:
    empty = np.zeros(0)
    assert pl_render.carrier_density(empty, empty, empty, empty, empty).shape == (0,)


@pytest.mark.parametrize("shunt", [0.0, 0.5, 5.0])
@pytest.mark.parametrize(
    "generation",
    [
        # the spot moving onto a chip: smooth, over nine decades
        10.0 ** np.linspace(-6, 3, 20000),
        # and off it again, in steps of a few per cent
        10.0 ** np.linspace(3, -6, 800),
        # jumps (the laser power changing from sample to sample): the warm start must fall back to the cold solve
        10.0 ** np.random.default_rng(7).uniform(-6, 3, 3000),
        # zero and negative generation restart the chain
        np.array([1.0, 1.001, 0.0, 1.002, -1.0, 1.003, 1.004]),
    ],
    ids=["rising", "falling", "jumping", "restarts"],
)
def test_warm_started_carrier_density_matches_reference(generation: np.ndarray, shunt: float) -> None:
    """The renderer's solver path: each solve warm-started from the previous one of the same chip."""
    a_coeff, c_coeff, saturation = 0.3, 0.02, 0.3
    fast = pl_render.carrier_density_along(generation, a_coeff, c_coeff, shunt, saturation)
    ones = np.ones_like(generation)
    slow = reference.carrier_density(generation, a_coeff * ones, c_coeff * ones, shunt * ones, saturation * ones)
    # n to 1e-10 relative (the PL, ∝ n², to 2e-10): the warm solve's tolerance
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-300)


# -- overlaps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("half_size", "sigma"), [(0.3, 0.08), (0.35, 0.1), (0.05, 0.2), (2.0, 0.01), (0.5, 0.5)])
def test_tabulated_overlap_matches_erf(half_size: float, sigma: float) -> None:
    lit = reference.lit_distance(half_size, sigma)
    offset = np.concatenate([np.linspace(-lit, lit, 200001)[1:-1], [0.0, half_size, -half_size]])
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    exact = 0.5 * (erf((half_size - offset) * scale) + erf((half_size + offset) * scale))
    fast = pl_render.overlap_approx(offset, half_size, sigma)
    assert np.abs(fast - exact).max() < 5e-11  # the cubic Hermite bound, 4.3e-11
    # beyond the lit distance the exact overlap is below the 1e-12 cut-off
    beyond = 0.5 * (erf((half_size - lit) * scale) + erf((half_size + lit) * scale))
    assert beyond < 1e-12


# -- the band ---------------------------------------------------------------------------------------------------


def band_chips(col0: int, band_row0: np.ndarray, band_start: np.ndarray) -> set[tuple[int, int]]:
    chips = set()
    for column, (row0, first, stop) in enumerate(zip(band_row0, band_start[:-1], band_start[1:], strict=True)):
        chips.update((col0 + column, int(row0) + k) for k in range(int(stop - first)))
    return chips


@pytest.mark.parametrize(
    "path",
    ["horizontal", "slanted", "vertical", "diagonal", "scattered", "with gaps"],
)
def test_band_holds_every_lit_chip(path: str, rng: np.random.Generator) -> None:
    count = 20000
    t = np.linspace(0.0, 1.0, count)
    x = {
        "horizontal": 3.0 + 40.0 * t,
        "slanted": 3.0 + 40.0 * t,
        "vertical": np.full(count, 7.3),
        "diagonal": 3.0 + 30.0 * t,
        "scattered": rng.uniform(0.0, 40.0, count),
        "with gaps": np.where(t < 0.5, 3.0 + 40.0 * t, 60.0 + 40.0 * t),
    }[path]
    y = {
        "horizontal": np.full(count, 5.37),
        "slanted": 5.2 + 0.6 * t,
        "vertical": 2.0 + 30.0 * t,
        "diagonal": 2.0 + 30.0 * t,
        "scattered": rng.uniform(0.0, 10.0, count),
        "with gaps": np.where(t < 0.5, 5.37, 9.6),
    }[path]
    x[7], y[11] = np.nan, np.inf  # positions that see nothing
    frame = (0.3, -0.2, math.cos(0.01), math.sin(0.01), 1.0, 1.0, 0.0, 0.0)
    geometry = (0.3, 0.3, 0.08, 0.08)
    col0, band_row0, band_start = pl_render.line_band(x, y, frame, *geometry, 1)
    col_f, row_f = reference.grid_units(frame, x, y)
    usable = np.isfinite(col_f) & np.isfinite(row_f)
    lit = reference.lit_chips(col_f[usable], row_f[usable], *geometry, 1)
    held = band_chips(col0, band_row0, band_start)
    assert lit <= held
    # ... and not many more along a line (each column holds its lowest to highest lit row)
    if path != "scattered":
        assert len(held) <= 2 * len(lit)


def test_band_of_nothing_is_empty() -> None:
    x = np.array([np.nan, np.inf])
    _, band_row0, band_start = pl_render.line_band(x, x, IDENTITY_FRAME, 0.3, 0.3, 0.08, 0.08, 1)
    assert band_row0.size == 0
    assert band_start.tolist() == [0]


# -- the line renderer -----------------------------------------------------------------------------------------


def chip_arrays(rng: np.random.Generator, slots: int, *, dead: float = 0.05, missing: float = 0.1) -> dict:
    """Per-chip arrays: dim, bright, leaky, dead (absorbs and scatters, no gain) and missing chips (nothing)."""
    kind = rng.random(slots)
    is_missing = kind < missing
    is_dead = (kind >= missing) & (kind < missing + dead)
    present = ~is_missing
    return {
        "a_coeff": 10.0 ** rng.uniform(-2, 0, slots),
        "c_coeff": np.full(slots, 0.02),
        "shunt": np.where(rng.random(slots) < 0.2, 2.0, 0.0),
        "shunt_saturation": np.full(slots, 0.3),
        "excitation": np.where(present, rng.uniform(0.1, 1.0, slots), 0.0),
        "pl_gain_v_per_w": np.where(present & ~is_dead, rng.uniform(50, 300, slots), 0.0),
        "scatter_v_per_w": np.where(present, 0.05, 0.0),
    }


def line_arguments(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, power: np.ndarray, *, reach: int = 1, **chips
) -> dict:
    """Render arguments for a path, with the band :func:`line_band` makes for it (16 µm spot, 60 µm chips)."""
    geometry = {"half_width": 0.3, "half_height": 0.3, "sigma_col": 0.08, "sigma_row": 0.08}
    col0, band_row0, band_start = pl_render.line_band(x, y, IDENTITY_FRAME, *geometry.values(), reach)
    return {
        "x_um": x,
        "y_um": y,
        "power_w": power,
        "frame": IDENTITY_FRAME,
        "col0": col0,
        "band_row0": band_row0,
        "band_start": band_start,
        **chip_arrays(rng, int(band_start[-1]), **chips),
        **geometry,
        "generation_per_w": 2.8e3,
        "reach": reach,
    }


def random_band(rng: np.random.Generator, samples: int, reach: int) -> dict:
    """Random positions in a strip of chips, each sample at a random power: every solve is a jump."""
    columns, height = 60, 2 * reach + 4
    x = np.sort(rng.uniform(reach, columns - reach - 1, samples))
    y = 2.0 + reach + rng.uniform(-0.5, 0.5, samples)
    col0, band_row0, band_start = reference.full_band(0, columns - 1, 0, height - 1)
    return {
        "x_um": x,
        "y_um": y,
        "power_w": rng.uniform(1e-4, 2e-2, samples),
        "frame": IDENTITY_FRAME,
        "col0": col0,
        "band_row0": band_row0,
        "band_start": band_start,
        **chip_arrays(rng, int(band_start[-1])),
        "half_width": 0.3,
        "half_height": 0.3,
        "sigma_col": 0.08,
        "sigma_row": 0.08,
        "generation_per_w": 2.8e3,
        "reach": reach,
    }


@pytest.mark.parametrize("reach", [1, 2])
def test_render_line_matches_reference(rng: np.random.Generator, reach: int) -> None:
    arguments = random_band(rng, 4000, reach)
    fast = pl_render.render_line(**arguments)
    slow = reference.render_line(**arguments)
    assert_close_to_peak(fast, slow)
    assert fast.max() > 0.1  # the samples did hit chips


LINES = {
    # along a chip row, the spot near the chips' edge: the row overlaps are reused, the next row is dark
    "along a row": lambda t: (2.0 + 30.0 * t, np.full(t.shape, 5.27)),
    # along a row through the chips' centres
    "through centres": lambda t: (2.0 + 30.0 * t, np.full(t.shape, 5.0)),
    # across rows, as on a rotated wafer
    "slanted": lambda t: (2.0 + 30.0 * t, 4.6 + 0.9 * t),
    "vertical": lambda t: (np.full(t.shape, 7.3), 2.0 + 30.0 * t),
    "diagonal": lambda t: (2.0 + 25.0 * t, 3.0 + 25.0 * t),
    # back and forth over the same chips
    "back and forth": lambda t: (10.0 + 3.0 * np.sin(20.0 * t), 5.0 + 0.4 * np.cos(7.0 * t)),
}


@pytest.mark.parametrize("line", LINES)
def test_line_matches_reference(rng: np.random.Generator, line: str) -> None:
    """Smooth lines (fine steps: the warm start and the reused overlaps at work) over dim, dead and missing chips."""
    t = np.linspace(0.0, 1.0, 30000)
    x, y = LINES[line](t)
    arguments = line_arguments(rng, x, y, np.full(t.shape, 0.01), dead=0.1, missing=0.1)
    fast = pl_render.render_line(**arguments)
    assert_close_to_peak(fast, reference.render_line(**arguments))
    # the band the kernel made holds everything: a full rectangle of chips gives the same signal
    col_f, row_f = reference.grid_units(IDENTITY_FRAME, x, y)
    lit = reference.lit_chips(col_f, row_f, 0.3, 0.3, 0.08, 0.08, 1)
    assert lit <= band_chips(arguments["col0"], arguments["band_row0"], arguments["band_start"])


def test_line_at_varying_power_and_with_reach_two(rng: np.random.Generator) -> None:
    t = np.linspace(0.0, 1.0, 20000)
    x, y = 2.0 + 30.0 * t, 4.8 + 0.5 * t
    power = 0.01 * (1.0 + 0.5 * np.sin(40.0 * t)) + 1e-3 * rng.standard_normal(t.size) ** 2
    arguments = line_arguments(rng, x, y, power, reach=2)
    assert_close_to_peak(pl_render.render_line(**arguments), reference.render_line(**arguments))


def test_line_leaving_the_band(rng: np.random.Generator) -> None:
    """A band that holds only part of the line (as at the edge of the wafer's chip box): no light from outside."""
    t = np.linspace(0.0, 1.0, 20000)
    x, y = -5.0 + 30.0 * t, 4.8 + 0.5 * t
    arguments = line_arguments(rng, x, y, np.full(t.shape, 0.01))
    col0, band_row0, band_start = reference.full_band(3, 14, 4, 6)  # columns 3..14, rows 4..6
    arguments |= {"col0": col0, "band_row0": band_row0, "band_start": band_start}
    arguments |= chip_arrays(rng, int(band_start[-1]))
    fast = pl_render.render_line(**arguments)
    assert_close_to_peak(fast, reference.render_line(**arguments))
    col_f = x
    assert not fast[(col_f < 1.0) | (col_f > 17.0)].any()


def test_line_over_dead_and_missing_chips(rng: np.random.Generator) -> None:
    t = np.linspace(0.0, 1.0, 20000)
    x, y = 2.0 + 20.0 * t, np.full(t.shape, 5.0)
    arguments = line_arguments(rng, x, y, np.full(t.shape, 0.01))
    slots = int(arguments["band_start"][-1])
    # every chip dead: only the scattered laser light is left ...
    arguments["pl_gain_v_per_w"] = np.zeros(slots)
    dead = pl_render.render_line(**arguments)
    assert_close_to_peak(dead, reference.render_line(**arguments))
    assert dead.max() <= 0.05 * 0.01 * (1 + 1e-12)
    # ... every chip missing: nothing
    arguments["excitation"] = np.zeros(slots)
    arguments["scatter_v_per_w"] = np.zeros(slots)
    assert not pl_render.render_line(**arguments).any()


def test_render_line_no_chips_is_zero(rng: np.random.Generator) -> None:
    arguments = random_band(rng, 100, 1)
    arguments["excitation"][:] = 0.0
    arguments["scatter_v_per_w"][:] = 0.0
    assert not pl_render.render_line(**arguments).any()


def test_render_line_is_deterministic(rng: np.random.Generator) -> None:
    """Bit-identical output call after call, whatever the threads do (chunks start afresh)."""
    t = np.linspace(0.0, 1.0, 50000)
    arguments = line_arguments(rng, *LINES["slanted"](t), np.full(t.shape, 0.01))
    first = pl_render.render_line(**arguments)
    for _ in range(20):
        np.testing.assert_array_equal(pl_render.render_line(**arguments), first)
    # a line is the same, sample for sample, however it is cut into calls of whole chunks (1024 samples)
    half = 25 * 1024
    parts = [
        pl_render.render_line(**(arguments | {"x_um": arguments["x_um"][s], "y_um": arguments["y_um"][s],
                                              "power_w": arguments["power_w"][s]}))
        for s in (slice(0, half), slice(half, None))
    ]  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(parts), first)


def test_unusable_positions_see_nothing(rng: np.random.Generator) -> None:
    t = np.linspace(0.0, 1.0, 3000)
    x, y = 2.0 + 10.0 * t, np.full(t.shape, 5.0)
    arguments = line_arguments(rng, x, y, np.full(t.shape, 0.01))
    x, y = x.copy(), y.copy()
    x[100], y[200], x[300] = np.nan, np.inf, 1e300
    fast = pl_render.render_line(**(arguments | {"x_um": x, "y_um": y}))
    assert fast[[100, 200, 300]].tolist() == [0.0, 0.0, 0.0]
    assert np.isfinite(fast).all()


def test_render_line_checks_its_arguments(rng: np.random.Generator) -> None:
    arguments = random_band(rng, 10, 1)
    with pytest.raises(ValueError, match="same length"):
        pl_render.render_line(**(arguments | {"power_w": arguments["power_w"][:5]}))
    with pytest.raises(ValueError, match="every slot"):
        pl_render.render_line(**(arguments | {"a_coeff": arguments["a_coeff"][:5]}))
    empty = {"x_um": np.zeros(0), "y_um": np.zeros(0), "power_w": np.zeros(0)}
    assert pl_render.render_line(**(arguments | empty)).shape == (0,)


# -- detector noise ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [0, 1, 12345, 2**64 - 1])
def test_standard_normal_matches_reference(key: int) -> None:
    np.testing.assert_array_equal(pl_render.standard_normal(key, 100000), reference.standard_normal(key, 100000))


def test_standard_normal_is_standard_normal() -> None:
    draws = pl_render.standard_normal(2026, 2_000_000)
    assert abs(draws.mean()) < 5 / math.sqrt(draws.size)
    assert abs(draws.std() - 1.0) < 5 / math.sqrt(2 * draws.size)
    assert stats.kstest(draws, "norm").pvalue > 1e-3
    for beyond in (2.0, 3.0, 4.0):  # the tails, the ziggurat's rarest paths
        expected = 2 * stats.norm.sf(beyond) * draws.size
        assert abs(np.count_nonzero(np.abs(draws) > beyond) - expected) < 5 * math.sqrt(expected)
    assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 5 / math.sqrt(draws.size)
    # other keys give other numbers; a longer draw starts with the shorter one
    assert not np.array_equal(pl_render.standard_normal(2027, 100), draws[:100])
    np.testing.assert_array_equal(pl_render.standard_normal(2026, 100), draws[:100])


def test_noisy_line_is_the_clean_one_plus_the_noise(rng: np.random.Generator) -> None:
    t = np.linspace(0.0, 1.0, 20000)
    arguments = line_arguments(rng, *LINES["slanted"](t), np.full(t.shape, 0.01))
    clean = pl_render.render_line(**arguments)
    noise = {"noise_key": 99, "read_noise_v": 1e-4, "shot_noise_v": 2e-4, "background_v": 0.003}
    noisy = pl_render.render_line(**arguments, **noise)
    sigma = np.sqrt(1e-4**2 + 2e-4 * np.maximum(clean, 0.0))
    np.testing.assert_allclose(noisy, clean + 0.003 + sigma * reference.standard_normal(99, t.size), rtol=0, atol=1e-15)
    assert_close_to_peak(noisy, reference.render_line(**arguments, **noise))
