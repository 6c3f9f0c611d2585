"""The per-chip kernels (cext/chip_kernels.pyx) equal their NumPy references (tests/chip_reference.py).

Which samples go where (counts, maxima) must agree exactly; sums to rounding, as the kernel adds in another order.
:func:`check` runs ``accumulate_lines`` both ways, with its fast path (whole chunks of cells, AVX2) where the CPU
has it and with the sample-by-sample slow path alone: the test data mixes lines the fast path takes whole, lines it
never takes (saturated and non-finite samples everywhere) and lines it takes in part.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cext import chip_kernels as kernels
from tests import chip_reference as reference
from tests.chip_reference import accumulate_lines_reference, neighbour_median_reference

COUNT_FIELDS = ("N_FOOT", "N_CORE", "N_STREET", "N_SAT")
# each sum field, with the count of its terms and a bound on a term's size per unit of |value| (None: 1)
SUM_FIELDS = {
    "SUM_FOOT": ("N_FOOT", False),
    "SUM_CORE": ("N_CORE", False),
    "SUM_STREET": ("N_STREET", False),
    "SUM_U": ("N_FOOT", None),
    "SUM_V": ("N_FOOT", None),
    "SUM_UI": ("N_FOOT", True),
    "SUM_VI": ("N_FOOT", True),
}
HALF_W, HALF_H, CORE_W, CORE_H = 0.35, 0.3, 0.175, 0.12
SATURATION = 1.9


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


# -- helpers ----------------------------------------------------------------------------------------------------


def make_lines(rng: np.random.Generator, counts, col0, row0, dcol, drow, *, special: float = 0.02):  # noqa: PLR0917
    """Arguments of accumulate_lines for the given lines, with random samples in [0, SATURATION) and, in lines 1,
    4, 7 ..., a fraction ``special`` of NaN, ±inf, negative and saturated samples (>= SATURATION), in lines 2, 5, 8
    ... a fraction ``special`` / 50. Lines 0, 3, 6 ... are plain (below SATURATION): the kernel's fast path
    takes them whole, the others in part or not at all. Every sample that is summed is within ±2, the bound
    :func:`assert_matches` takes for a term (the negative ones were -5 before the fast path: the slow path gives
    the reference's terms exactly, so a sample beyond the bound went unnoticed; the fast path's offsets are
    exact, and differ from the reference's by its rounding of each position times the sample)."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    samples = (SATURATION * rng.random(int(counts.sum()))).astype(np.float32)
    fraction = np.repeat(np.array([0.0, special, special / 50])[np.arange(counts.size) % 3], counts)
    odd = rng.random(samples.size) < fraction
    samples[odd] = rng.choice(np.array([np.nan, np.inf, -np.inf, -1.5, 1e30, 1.95], dtype=np.float32), odd.sum())
    return [samples, offsets, counts] + [np.asarray(a, dtype=np.float64) for a in (col0, row0, dcol, drow)]


def run_kernel(lines, band_shape, first_col=0, first_row=0, *, geometry=(HALF_W, HALF_H, CORE_W, CORE_H),
               saturation=SATURATION, fast: bool = True) -> np.ndarray:  # fmt: skip
    """accumulate_lines on zeros (MAX_FOOT at -inf), with its fast path where the CPU has it or without."""
    acc = np.zeros((kernels.FIELD_COUNT, *band_shape))
    acc[kernels.MAX_FOOT] = -np.inf
    previous = kernels._set_fast_path(fast)
    try:
        kernels.accumulate_lines(*lines, *geometry, saturation, first_col, first_row, acc)
    finally:
        kernels._set_fast_path(previous)
    return acc


def run_reference(lines, band_shape, first_col=0, first_row=0, *, geometry=(HALF_W, HALF_H, CORE_W, CORE_H),
                  saturation=SATURATION) -> np.ndarray:  # fmt: skip
    return accumulate_lines_reference(*lines, *geometry, saturation, first_col, first_row, band_shape)


def assert_matches(fast: np.ndarray, slow: np.ndarray, max_value: float = 2.0) -> None:
    """Counts and maxima exact; each sum within 1e-12 of its count times its largest possible term."""
    for name in (*COUNT_FIELDS, "MAX_FOOT"):
        index = getattr(kernels, name)
        np.testing.assert_array_equal(fast[index], slow[index], err_msg=name)
    for name, (count_name, weighted) in SUM_FIELDS.items():
        index = getattr(kernels, name)
        term = 1.0 if weighted is None else max_value
        scale = slow[getattr(kernels, count_name)] * term
        error = np.abs(fast[index] - slow[index])
        assert np.all(error <= 1e-12 * scale), f"{name}: error {error.max():.3g}"


def check(lines, band_shape, first_col=0, first_row=0, **kwargs) -> np.ndarray:
    """The kernel, with its fast path and without, against the reference; returns the reference's sums."""
    reference = run_reference(lines, band_shape, first_col, first_row, **kwargs)
    for fast in (True, False):
        assert_matches(run_kernel(lines, band_shape, first_col, first_row, fast=fast, **kwargs), reference)
    return reference


def random_lines(rng: np.random.Generator, count: int, band_shape, angles_deg, *, steps=(0.03, 0.2),
                 margin: float = 4.0, max_samples: int = 3000):  # fmt: skip
    """Lines from random points in and around the band, in random directions among ``angles_deg`` ± 0."""
    rows, cols = band_shape
    angle = np.deg2rad(rng.choice(np.asarray(angles_deg, dtype=np.float64), count))
    step = rng.uniform(*steps, count)
    col0 = rng.uniform(-margin, cols + margin, count)
    row0 = rng.uniform(-margin, rows + margin, count)
    counts = rng.integers(0, max_samples, count)
    return make_lines(rng, counts, col0, row0, step * np.cos(angle), step * np.sin(angle))


# -- accumulate_lines: geometry ---------------------------------------------------------------------------------


def test_field_constants() -> None:
    names = ["N_FOOT", "SUM_FOOT", "MAX_FOOT", "N_CORE", "SUM_CORE", "SUM_U", "SUM_V", "SUM_UI", "SUM_VI",
             "N_STREET", "SUM_STREET", "N_SAT"]  # fmt: skip
    assert [getattr(kernels, name) for name in names] == list(range(12))
    assert [getattr(reference, name) for name in names] == list(range(12))
    assert kernels.FIELD_COUNT == reference.FIELD_COUNT == 12


def test_horizontal_lines(rng: np.random.Generator) -> None:
    # raster lines along chip rows, both directions, at random heights: some in the street, some through cores
    count = 60
    lines = make_lines(
        rng, rng.integers(500, 4000, count), rng.uniform(-3, 5, count), rng.uniform(-1, 21, count),
        rng.choice([0.08, -0.08, 0.0731, -0.113], count), np.zeros(count),
    )  # fmt: skip
    slow = check(lines, (20, 300), first_col=0, first_row=0)
    assert slow[kernels.N_CORE].sum() > 1000 and slow[kernels.N_SAT].sum() > 100


@pytest.mark.parametrize("max_angle", [0.01, 1.0])
def test_slightly_rotated_lines(rng: np.random.Generator, max_angle: float) -> None:
    count = 40
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle, count)) + np.pi * (rng.random(count) < 0.5)
    lines = make_lines(
        rng, rng.integers(2000, 20000, count), rng.uniform(-3, 5, count), rng.uniform(2, 18, count),
        0.08 * np.cos(angle), 0.08 * np.sin(angle),
    )  # fmt: skip
    slow = check(lines, (20, 1700), first_col=-2, first_row=1)
    assert slow[kernels.N_CORE].sum() > 1000


def test_lines_in_any_direction(rng: np.random.Generator) -> None:
    lines = random_lines(rng, 80, (25, 30), rng.uniform(0, 360, 200))
    check(lines, (25, 30), first_col=3, first_row=-2)


def test_vertical_and_diagonal_lines(rng: np.random.Generator) -> None:
    lines = random_lines(rng, 80, (30, 25), [90, 270, 45, 135, 225, 315])
    check(lines, (30, 25), first_col=1, first_row=2)


def test_long_steps_skip_cells(rng: np.random.Generator) -> None:
    # more than half a cell per sample (the cell index is looked up, not counted), and more than a whole cell
    lines = random_lines(rng, 60, (12, 15), rng.uniform(0, 360, 100), steps=(0.4, 2.7), max_samples=60)
    check(lines, (12, 15))


def test_tiny_and_zero_steps(rng: np.random.Generator) -> None:
    # steps too small for the crossing formula (found by bisection), a standing spot, a step of 1e-300
    count = 12
    lines = make_lines(
        rng, np.full(count, 500),
        [0.35 - 1e-12, 3.0, 2.2, 4.5 - 2e-13, 1.0, 0.1, 7.65, 0.0, 2.0, 2.5, 3.35, 1.0],
        [1.0, 2.0, 3.3, 2.0, 0.4999, 1.2, 3.0, 0.0, 2.0, 2.5, 1.5, 1.0],
        [1e-15, 0.0, 0.0, 1e-13, -3e-16, 0.0, 0.0, 0.0, 1e-300, -1e-300, 7e-16, 2e-13],
        [0.0, 1e-15, 0.0, 0.0, 2e-16, 1e-9, 0.0, 0.0, 0.0, 0.0, 0.0, -3e-13],
    )  # fmt: skip
    check(lines, (6, 9))


def test_lines_across_band_and_box_edges(rng: np.random.Generator) -> None:
    # lines starting far outside the band (negative indices, beyond the box) and running through it
    count = 50
    angle = rng.uniform(0, 2 * np.pi, count)
    col0 = rng.choice([-40.0, 60.0, 10.0], count) + rng.uniform(-3, 3, count)
    row0 = rng.choice([-30.0, 40.0, 5.0], count) + rng.uniform(-3, 3, count)
    lines = make_lines(rng, rng.integers(100, 1500, count), col0, row0, 0.1 * np.cos(angle), 0.1 * np.sin(angle))
    check(lines, (10, 20), first_col=0, first_row=0)
    check(lines, (10, 20), first_col=-7, first_row=-4)
    check(lines, (1, 1), first_col=2, first_row=3)


def test_big_grid_coordinates(rng: np.random.Generator) -> None:
    # a 6-inch wafer at 20 µm pitch: chip indices near 7500, lines of 100,000 samples
    count = 6
    angle = np.deg2rad(rng.uniform(-0.5, 0.5, count)) + np.pi * (np.arange(count) % 2)
    lines = make_lines(
        rng, np.full(count, 100_000), np.where(np.arange(count) % 2, 7600.0, 100.0), rng.uniform(3500, 3502, count),
        0.1 * np.cos(angle), 0.1 * np.sin(angle),
    )  # fmt: skip
    check(lines, (30, 7600), first_col=80, first_row=3485)


def test_samples_exactly_on_boundaries() -> None:
    # dyadic positions and half sizes: samples fall exactly on the footprint, core and cell edges (u = ±0.5,
    # ±half, ±core half), which count as on the footprint / core and go to the + side's cell
    rng = np.random.default_rng(3)
    geometry = (0.375, 0.25, 0.125, 0.125)
    count = 24
    step = rng.choice([0.125, -0.125, 0.0625, -0.25], count)
    horizontal = np.arange(count) % 2 == 0
    dcol = np.where(horizontal, step, 0.0)
    drow = np.where(horizontal, 0.0, step)
    col0 = rng.integers(-2, 12, count) + rng.choice([0.0, 0.5, 0.375, -0.375, 0.125], count)
    row0 = rng.integers(-2, 10, count) + rng.choice([0.0, 0.5, 0.25, -0.25, -0.5, 0.125], count)
    lines = make_lines(rng, rng.integers(20, 200, count), col0, row0, dcol, drow, special=0.0)
    slow = check(lines, (9, 11), geometry=geometry)
    assert slow[kernels.N_CORE].sum() > 0 and slow[kernels.N_STREET].sum() > 0
    # diagonal lines through the corners too
    lines = make_lines(rng, np.full(8, 150), np.zeros(8) - 0.5, np.arange(8) - 0.5, np.full(8, 0.0625),
                       np.full(8, 0.0625), special=0.0)  # fmt: skip
    check(lines, (9, 11), geometry=geometry)


def test_chip_filling_its_cell_and_empty_core(rng: np.random.Generator) -> None:
    lines = random_lines(rng, 40, (8, 8), rng.uniform(0, 360, 50))
    check(lines, (8, 8), geometry=(0.5, 0.5, 0.0, 0.0))
    check(lines, (8, 8), geometry=(0.7, 0.6, 0.7, 0.2))
    check(lines, (8, 8), geometry=(0.0, 0.0, 0.0, 0.0))


def test_known_answer() -> None:
    # one line along row 0 through chips 0 and 1, at -0.5, -0.25, 0, 0.25 (chip 0) and 0.5, 0.75 (chip 1)
    samples = np.array([1, 2, 3, 4, 5, 100], dtype=np.float32)
    lines = [samples, np.array([0]), np.array([6]), np.array([-0.5]), np.array([0.0]), np.array([0.25]),
             np.array([0.0])]  # fmt: skip
    acc = run_kernel(lines, (1, 2), geometry=(0.25, 0.25, 0.0, 0.0), saturation=50.0)
    k = kernels
    assert acc[k.N_FOOT].tolist() == [[3, 0]]  # u = -0.25, 0, 0.25 on chip 0; u = -0.5 is street
    assert acc[k.SUM_FOOT].tolist() == [[9, 0]]
    assert acc[k.MAX_FOOT].tolist() == [[4, -np.inf]]
    assert acc[k.N_CORE].tolist() == [[1, 0]] and acc[k.SUM_CORE].tolist() == [[3, 0]]
    assert acc[k.N_STREET].tolist() == [[1, 1]] and acc[k.SUM_STREET].tolist() == [[1, 5]]
    assert acc[k.N_SAT].tolist() == [[0, 1]]  # 100 >= 50
    assert acc[k.SUM_U].tolist() == [[0, 0]] and acc[k.SUM_UI].tolist() == [[0.5, 0]]
    assert acc[k.SUM_V].tolist() == [[0, 0]] and acc[k.SUM_VI].tolist() == [[0, 0]]


def test_empty_inputs() -> None:
    empty_f, empty_i = np.zeros(0, np.float32), np.zeros(0, np.int64)
    acc = run_kernel([empty_f, empty_i, empty_i] + [np.zeros(0)] * 4, (3, 4))
    assert np.all(acc[kernels.MAX_FOOT] == -np.inf) and not acc[kernels.N_FOOT].any()
    lines = [np.ones(5, np.float32), np.array([0, 5, 2]), np.array([0, 0, 3]), np.zeros(3), np.zeros(3),
             np.full(3, 0.1), np.zeros(3)]  # fmt: skip
    check(lines, (2, 2))
    run_kernel(lines, (0, 5))  # an empty band: nothing to do


def test_non_finite_line_geometry_is_left_out(rng: np.random.Generator) -> None:
    lines = make_lines(rng, [50] * 5, [1, np.nan, 1, np.inf, 1], [1, 1, 1, 1, -np.inf], [0.1, 0.1, np.nan, 0.1, 0],
                       [0, 0, 0, np.inf, 0.1])  # fmt: skip
    slow = check(lines, (4, 8))
    assert slow[kernels.N_FOOT].sum() + slow[kernels.N_STREET].sum() + slow[kernels.N_SAT].sum() == 50


def test_huge_positions_and_steps(rng: np.random.Generator) -> None:
    lines = make_lines(rng, [40] * 4, [1e300, 2.0, -1e18, 3.0], [1.0, 1e19, 2.0, 2.0], [-1e299, 1e300, 3e16, 1.0],
                       [0.0, -1e300, 0.0, 1e300])  # fmt: skip
    check(lines, (4, 8))


def test_fast_path_takes_plain_lines(rng: np.random.Generator) -> None:
    # plain samples: the fast path takes (nearly) every chunk; a NaN saturation level or the switch turn it off
    if not kernels.fast_path():
        pytest.skip("no fast path on this CPU")
    count = 9
    forward = np.arange(count) % 2 == 0
    lines = make_lines(
        rng, np.full(count, 5000), np.where(forward, rng.uniform(-3, 1, count), rng.uniform(499, 503, count)),
        rng.uniform(0, 12, count), np.where(forward, 0.1, -0.1), np.zeros(count), special=0.0,
    )  # fmt: skip
    fast = run_kernel(lines, (12, 520))
    assert kernels._fast_chunks() >= count * 500 / 64
    assert_matches(fast, run_reference(lines, (12, 520)))
    run_kernel(lines, (12, 520), fast=False)
    assert kernels._fast_chunks() == 0
    run_kernel(lines, (12, 520), saturation=math.nan)
    assert kernels._fast_chunks() == 0
    assert kernels.fast_path()  # run_kernel puts the switch back


@pytest.mark.parametrize("step", [0.1, -0.1, 1 / 12, -1 / 12, 0.125, -0.125, 0.0834, 0.0999, 0.112])
def test_short_cells(rng: np.random.Generator, step: float) -> None:
    # 8 to 12 samples a cell: the fast path's straight code with range masks (footprint, core and cell extent
    # relative to each cell's first sample), lengths at both ends of its range, lines along rows and slightly slanted
    if not kernels.fast_path():
        pytest.skip("no fast path on this CPU")
    count = 12
    slant = np.where(np.arange(count) % 3 == 0, 0.0, rng.uniform(-1e-4, 1e-4, count))
    col0 = np.where(step > 0, rng.uniform(-2, 1, count), rng.uniform(399, 402, count))
    # through the footprints (|row offset| <= 0.2 all along), where the straight code runs (street lines have
    # their own)
    row0 = rng.integers(0, 14, count) + rng.uniform(-0.15, 0.15, count)
    lines = make_lines(rng, np.full(count, int(400 / abs(step))), col0, row0, np.full(count, step), slant * step,
                       special=0.0)  # fmt: skip
    for geometry in ((HALF_W, HALF_H, CORE_W, CORE_H), (0.375, 0.25, 0.125, 0.125), (0.5, 0.5, 0.5, 0.5)):
        check(lines, (15, 404), first_col=-1, geometry=geometry)
        run_kernel(lines, (15, 404), first_col=-1, geometry=geometry)
        assert kernels._short_chunks() >= 0.8 * count * 400 / 64
    # saturated and non-finite samples in a third of the lines, rarely in another third: the straight code tests
    # four cells at a time and leaves those with one to the slow path
    special = make_lines(rng, np.full(count, int(400 / abs(step))), col0, row0, np.full(count, step), slant * step)
    check(special, (15, 404), first_col=-1)
    run_kernel(special, (15, 404), first_col=-1)
    assert kernels._short_chunks() >= 0.3 * count * 400 / 64
    # and along the streets (|row offset| from 0.36 to 0.45: street only, for HALF_H = 0.3): the fast path's
    # street sums, in straight code with the cell's extent as a range mask
    street_row0 = rng.integers(0, 14, count) + rng.choice([-1.0, 1.0], count) * rng.uniform(0.36, 0.45, count)
    for special_fraction in (0.0, 0.02):
        streets = make_lines(rng, np.full(count, int(400 / abs(step))), col0, street_row0, np.full(count, step),
                             slant * step, special=special_fraction)  # fmt: skip
        check(streets, (15, 404), first_col=-1)
        run_kernel(streets, (15, 404), first_col=-1)
        share = 0.8 if special_fraction == 0.0 else 0.3
        assert kernels._fast_chunks() >= share * count * 400 / 64
        assert kernels._short_chunks() >= share * count * 400 / 64


def test_accumulators_layout(rng: np.random.Generator) -> None:
    acc = kernels.accumulators(7, 300)
    assert acc.shape == (kernels.FIELD_COUNT, 7, 300) and acc.dtype == np.float64
    assert acc.strides[1:] == (300 * 8, 8) and acc.strides[0] % 4096 == 320  # fields in distinct cache sets
    assert acc.ctypes.data % 64 == 0  # and on a cache line
    assert np.all(acc[kernels.MAX_FOOT] == -np.inf)
    assert not np.delete(acc, kernels.MAX_FOOT, axis=0).any()
    # the same sums as in a C-contiguous array, bit for bit
    lines = random_lines(rng, 60, (7, 300), rng.uniform(0, 360, 60), max_samples=8000)
    kernels.accumulate_lines(*lines, HALF_W, HALF_H, CORE_W, CORE_H, SATURATION, 0, 0, acc)
    assert acc.tobytes() == run_kernel(lines, (7, 300)).tobytes()
    assert kernels.accumulators(0, 5).shape == (kernels.FIELD_COUNT, 0, 5)
    with pytest.raises(ValueError, match="rows, cols >= 0"):
        kernels.accumulators(-1, 5)


def test_lines_to_the_end_of_the_samples(rng: np.random.Generator) -> None:
    # the fast path reads a few samples past a cell; at the end of the caller's array the slow path sums instead
    for count in (1, 7, 500):
        for step in (0.1, -0.1, 0.37, 0.05):
            samples = (SATURATION * rng.random(count)).astype(np.float32)
            lines = [samples, np.array([0]), np.array([count]), np.array([0.3 if step > 0 else count * -step]),
                     np.array([0.1]), np.array([step]), np.array([0.0])]  # fmt: skip
            check(lines, (2, int(count * abs(step)) + 3))
            # and a line in the middle of a bigger array: its last cells can be read past
            bigger = np.concatenate([samples, np.ones(16, np.float32)])
            check([bigger, *lines[1:]], (2, int(count * abs(step)) + 3))


# -- accumulate_lines: saturation, merging, determinism ---------------------------------------------------------


def test_saturated_samples_only_counted(rng: np.random.Generator) -> None:
    lines = random_lines(rng, 30, (10, 10), [0, 180, 33])
    lines[0][::7] = np.float32(SATURATION)  # exactly the level: saturated
    lines[0][3::11] = np.nan
    lines[0][5::13] = -np.inf
    slow = check(lines, (10, 10))
    total = slow[kernels.N_FOOT] + slow[kernels.N_STREET] + slow[kernels.N_SAT]
    assert slow[kernels.N_SAT].sum() > 0.1 * total.sum()
    # NaN saturation: every sample is saturated
    nan_level = run_kernel(lines, (10, 10), saturation=math.nan)
    assert nan_level[kernels.N_FOOT].sum() == 0 and nan_level[kernels.N_SAT].sum() == total.sum()


def test_many_lines_on_the_same_chips(rng: np.random.Generator) -> None:
    # hundreds of lines over a few chips: every task meets every line
    count = 400
    angle = rng.uniform(0, 2 * np.pi, count)
    lines = make_lines(rng, rng.integers(10, 300, count), rng.uniform(0, 3, count), rng.uniform(0, 3, count),
                       0.05 * np.cos(angle), 0.05 * np.sin(angle))  # fmt: skip
    slow = check(lines, (3, 3))
    assert slow[kernels.N_FOOT].min() > 100


def test_blocks_of_the_tasks_cover_the_band(rng: np.random.Generator) -> None:
    # a band wider and taller than several blocks (1,024 columns × 32 rows), lines in all directions across it
    lines = random_lines(rng, 40, (100, 2200), rng.uniform(0, 360, 100), steps=(0.3, 0.5), max_samples=6000)
    check(lines, (100, 2200), first_col=-5, first_row=-3)


def test_deterministic(rng: np.random.Generator) -> None:
    lines = random_lines(rng, 200, (40, 600), rng.uniform(0, 360, 100), max_samples=20000)
    first = run_kernel(lines, (40, 600))
    for _ in range(3):
        assert run_kernel(lines, (40, 600)).tobytes() == first.tobytes()


def test_adds_into_acc(rng: np.random.Generator) -> None:
    # two calls equal one call with both sets of lines (bit for bit: each chip adds its runs in line order)
    lines = random_lines(rng, 100, (20, 40), rng.uniform(0, 360, 100))
    half = 60
    first, second = [], []
    for part, chosen in ((first, slice(0, half)), (second, slice(half, None))):
        offsets, counts = lines[1][chosen], lines[2][chosen]
        part.extend([lines[0], offsets, counts] + [a[chosen] for a in lines[3:]])
    acc = run_kernel(first, (20, 40))
    kernels.accumulate_lines(*second, HALF_W, HALF_H, CORE_W, CORE_H, SATURATION, 0, 0, acc)
    assert acc.tobytes() == run_kernel(lines, (20, 40)).tobytes()


def test_strided_inputs(rng: np.random.Generator) -> None:
    lines = random_lines(rng, 30, (6, 9), rng.uniform(0, 360, 30))
    strided = [np.repeat(a, 2)[::2] for a in lines]
    assert not strided[0].flags.contiguous
    assert run_kernel(strided, (6, 9)).tobytes() == run_kernel(lines, (6, 9)).tobytes()


def test_argument_checks() -> None:
    one_f, one_i, one_d = np.ones(4, np.float32), np.array([0]), np.array([0.0])
    acc = np.zeros((kernels.FIELD_COUNT, 2, 2))
    good = (one_f, one_i, np.array([4]), one_d, one_d, one_d, one_d, 0.3, 0.3, 0.1, 0.1, 1.0, 0, 0)
    kernels.accumulate_lines(*good, acc)
    with pytest.raises(ValueError, match="one element per line"):
        kernels.accumulate_lines(*good[:3], np.zeros(2), *good[4:], acc)
    with pytest.raises(ValueError, match="not in samples_v"):
        kernels.accumulate_lines(one_f, one_i, np.array([5]), *good[3:], acc)
    with pytest.raises(ValueError, match="not in samples_v"):
        kernels.accumulate_lines(one_f, np.array([-1]), np.array([2]), *good[3:], acc)
    with pytest.raises(ValueError, match="core half size"):
        kernels.accumulate_lines(*good[:9], 0.4, *good[10:], acc)
    with pytest.raises(ValueError, match="core half size"):
        kernels.accumulate_lines(*good[:7], math.nan, *good[8:], acc)
    with pytest.raises(ValueError, match="FIELD_COUNT"):
        kernels.accumulate_lines(*good, np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="columns must be contiguous"):
        kernels.accumulate_lines(*good, np.zeros((kernels.FIELD_COUNT, 2, 4))[:, :, ::2])


# -- neighbour_median -------------------------------------------------------------------------------------------


def random_map(rng: np.random.Generator, shape, missing: float = 0.3) -> np.ndarray:
    values = rng.normal(1.0, 0.2, shape).astype(np.float32)
    values[rng.random(shape) < missing] = np.nan
    values[rng.random(shape) < 0.02] = np.inf
    # repeated values, so that ties and even counts with equal middles happen
    values[rng.random(shape) < 0.2] = np.float32(1.0)
    return values


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (2, 2), (37, 53)])
@pytest.mark.parametrize("missing", [0.0, 0.3, 0.9, 1.0])
def test_neighbour_median_matches_reference(rng: np.random.Generator, shape, missing: float) -> None:
    values = random_map(rng, shape, missing)
    out = np.empty_like(values)
    kernels.neighbour_median(values, out)
    np.testing.assert_array_equal(out, neighbour_median_reference(values))


def test_neighbour_median_known_answers() -> None:
    values = np.array([[1, 2, 3], [4, 100, 6], [7, 8, np.nan]], dtype=np.float32)
    out = np.empty_like(values)
    kernels.neighbour_median(values, out)
    assert out[1, 1] == 4.0  # 1 2 3 4 6 7 8, the NaN left out
    assert out[0, 0] == 4.0  # 2 4 100
    assert out[1, 2] == 5.5  # 2 3 8 100: the mean of the middle two
    assert out[2, 2] == 8.0  # 6 8 100
    none = np.empty((2, 2), np.float32)
    kernels.neighbour_median(np.full((2, 2), np.nan, np.float32), none)
    assert np.isnan(none).all()


def test_neighbour_median_streams_over_bands(rng: np.random.Generator) -> None:
    values = random_map(rng, (50, 31))
    whole = neighbour_median_reference(values)
    rows = values.shape[0]
    for band in (1, 2, 7, 50):
        result = np.full_like(values, -1.0)
        for r0 in range(0, rows, band):
            r1 = min(r0 + band, rows)
            low, high = max(r0 - 1, 0), min(r1 + 1, rows)
            kernels.neighbour_median(values[low:high], result[r0:r1], r0 - low)
        np.testing.assert_array_equal(result, whole)


def test_neighbour_median_argument_checks() -> None:
    values = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="columns"):
        kernels.neighbour_median(values, np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="rows"):
        kernels.neighbour_median(values, np.empty((2, 3), np.float32), 3)
    with pytest.raises(ValueError, match="rows"):
        kernels.neighbour_median(values, np.empty((2, 3), np.float32), -1)
