# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Photoluminescence forward model kernels for the virtual station.

The chips' carrier density follows the ABC model with a saturating shunt (leakage) term, in units where B = 1:

    G = A·n + n² + C·n³ + S·n / (1 + n / n_sat)

with G the generation rate of carriers (proportional to the absorbed excitation power density). The emitted
PL power is IQE × absorbed power, IQE = n² / G. Carriers spread over a chip, so a chip's G is set by the part
of the Gaussian laser spot that falls on the chip (the spot/chip overlap).

:func:`render_line` computes the model of :func:`cext.reference.render_line` to within 1e-9 of the line's
peak signal (measured: 2e-11 to 3e-10). It is fast because it

* reads the 1-D spot/chip overlaps from a table of cubic pieces (|error| < 5e-11, :func:`overlap_approx`), and
  leaves out, unevaluated, every chip whose distance from the spot makes its 1-D overlap smaller than 1e-12
  (the reference's cut-off for the overlap, so the set of lit chips is the same);
* leaves out a chip row, or a chip's PL, when it is provably below 1e-11 of the signal seen so far on the line
  (so of the line's peak);
* reuses a sample's row (column) overlaps while the spot's row (column) coordinate does not change: lines along
  a chip row (column);
* solves for a chip's carrier density by Newton iteration from a second-order prediction off the same chip's
  solution at the previous sample, which settles after one step almost always; a guess that does not settle
  within a few steps falls back to the bracketed cold solve;
* renders fixed chunks of samples, each starting afresh, on two threads: the output depends only on the input,
  never on how the chunks were spread over the threads.

Positions come in the wafer frame with the chip grid as a ``frame`` tuple, so no array of grid coordinates is
ever allocated; :func:`line_band` lists the chips a line can light, so the caller looks up few chips' truth.
The renderer can add the detector noise as it goes, drawn by :func:`standard_normal` from a counter-based
generator: sample ``i``'s draw depends only on the line's key and ``i``, not on the threads.
"""

from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, cbrt, erf, exp, fabs, log, sqrt
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc

import numpy as np

# -- geometry ---------------------------------------------------------------------------------------------------

ctypedef struct _Frame:
    # the chip grid in the wafer frame: see _to_grid
    double origin_x
    double origin_y
    double cos_rotation
    double sin_rotation
    double inv_pitch_x
    double inv_pitch_y
    double anchor_col
    double anchor_row


cdef _Frame _frame_from(object frame) except *:
    """The ``frame`` tuple of the Python API as a struct."""
    cdef _Frame result
    if len(frame) != 8:
        raise ValueError("frame must be (origin_x_um, origin_y_um, cos, sin, pitch_x_um, pitch_y_um, anchor_col, "
                         "anchor_row)")
    origin_x, origin_y, cos_rotation, sin_rotation, pitch_x, pitch_y, anchor_col, anchor_row = [
        float(value) for value in frame
    ]
    result.origin_x, result.origin_y = origin_x, origin_y
    result.cos_rotation, result.sin_rotation = cos_rotation, sin_rotation
    result.inv_pitch_x, result.inv_pitch_y = 1.0 / pitch_x, 1.0 / pitch_y
    result.anchor_col, result.anchor_row = anchor_col, anchor_row
    return result


cdef inline void _to_grid(const _Frame *frame, double x, double y, double *col, double *row) noexcept nogil:
    """Wafer-frame position → fractional (col, row), chip centres at integers.

    The arithmetic, in the same order, of :func:`cext.reference.grid_units`, so the two agree to the last bit.
    """
    cdef double dx = x - frame.origin_x
    cdef double dy = y - frame.origin_y
    col[0] = (frame.cos_rotation * dx + frame.sin_rotation * dy) * frame.inv_pitch_x + frame.anchor_col
    row[0] = (-frame.sin_rotation * dx + frame.cos_rotation * dy) * frame.inv_pitch_y + frame.anchor_row


cdef inline int64_t _floor_to_int(double x) noexcept nogil:
    """floor(x) as an integer (|x| < 2⁶³); cheaper than libm floor without SSE4.1."""
    cdef int64_t truncated = <int64_t>x
    return truncated - (truncated > x)


cdef inline bint _usable(double x) noexcept nogil:
    """False for NaN, ±inf and coordinates too large to be a chip index: such samples see nothing."""
    return fabs(x) < 1e15


# -- 1-D overlaps -----------------------------------------------------------------------------------------------

# 0.5·erfc(5) = 7.7e-13: a chip further than this many √2·σ beyond its edge gets a 1-D overlap below the
# reference's 1e-12 cut-off, so its (product) overlap is below it too and it can be left out unevaluated
cdef double _NEGLIGIBLE_ERF_ARGUMENT = 5.0
# erf(x) rounds to exactly 1 in double precision for x >= 6 (erfc(6) = 2.2e-17 < 2⁻⁵⁴): a 1-D overlap is exactly 1
# while both segment ends are this many √2·σ or more from the spot centre
cdef double _SATURATED_ERF_ARGUMENT = 6.0
# table pieces per √2·σ: the cubic Hermite error bound h⁴/384·max|overlap⁗| = h⁴/384·4.405/(√2·σ)⁴ is 4.3e-11
cdef double _OVERLAP_STEPS = 128.0
# line_band widens the lit distance by this much (grid units): far more than rounding, so the band always
# holds every chip the renderer lights
cdef double _BAND_MARGIN = 1e-9


cdef inline double _lit_distance(double half_size, double sigma) noexcept nogil:
    """Centre distance (grid units) from which a chip's 1-D overlap is negligible."""
    return half_size + _NEGLIGIBLE_ERF_ARGUMENT * sqrt(2.0) * sigma


cdef inline double _exact_overlap(double offset, double half_size, double inv_scale) noexcept nogil:
    """Fraction of a 1-D Gaussian centred ``offset`` from a segment's centre that falls on the segment."""
    return 0.5 * (erf((half_size - offset) * inv_scale) + erf((half_size + offset) * inv_scale))


ctypedef struct _OverlapTable:
    # the 1-D overlap as a function of |offset|, in cubic pieces of width 1/scale from offset `start`; below
    # `start` it is exactly 1, the last piece is constant
    double start
    double scale
    double limit  # the number of pieces, as a double
    const double *pieces  # 4 coefficients per piece: c0 + t·(c1 + t·(c2 + t·c3)), t in [0, 1)


cdef inline double _overlap(const _OverlapTable *table, double offset) noexcept nogil:
    """The tabulated 1-D overlap at ``offset``: |error| < 5e-11 (see _OVERLAP_STEPS). Branch-free."""
    cdef double t = (fabs(offset) - table.start) * table.scale
    cdef const double *piece
    cdef int k
    t = t if t > 0.0 else 0.0
    t = t if t < table.limit else table.limit
    k = <int>t
    t = t - k
    piece = &table.pieces[4 * k]
    return piece[0] + t * (piece[1] + t * (piece[2] + t * piece[3]))


# built tables by (half_size, sigma): a world renders every line with the same two
_overlap_tables = {}


def _overlap_pieces(double half_size, double sigma):
    """The pieces of the overlap table of a chip half-size and spot σ (grid units), and its start and scale.

    The pieces interpolate the exact overlap and its exact derivative at their ends (cubic Hermite), over the
    offsets where the overlap is neither exactly 1 nor negligible.
    """
    key = (half_size, sigma)
    if key in _overlap_tables:
        return _overlap_tables[key]
    cdef double inv_scale = 1.0 / (sqrt(2.0) * sigma)
    cdef double start = half_size - _SATURATED_ERF_ARGUMENT * sqrt(2.0) * sigma
    start = start if start > 0.0 else 0.0
    cdef double step = sqrt(2.0) * sigma / _OVERLAP_STEPS
    cdef Py_ssize_t count = <Py_ssize_t>((_lit_distance(half_size, sigma) - start) / step) + 2, k
    array = np.empty(4 * (count + 1), dtype=np.float64)
    cdef double[:] pieces = array
    cdef double u0, u1, f0, f1, d0, d1
    cdef double slope = inv_scale / sqrt(3.141592653589793)
    with nogil:
        for k in range(count):
            u0 = start + k * step
            u1 = start + (k + 1) * step
            f0 = _exact_overlap(u0, half_size, inv_scale)
            f1 = _exact_overlap(u1, half_size, inv_scale)
            # d/du of the overlap, times the piece width
            d0 = step * slope * (exp(-((half_size + u0) * inv_scale) ** 2) - exp(-((half_size - u0) * inv_scale) ** 2))
            d1 = step * slope * (exp(-((half_size + u1) * inv_scale) ** 2) - exp(-((half_size - u1) * inv_scale) ** 2))
            pieces[4 * k] = f0
            pieces[4 * k + 1] = d0
            pieces[4 * k + 2] = 3.0 * (f1 - f0) - 2.0 * d0 - d1
            pieces[4 * k + 3] = 2.0 * (f0 - f1) + d0 + d1
        pieces[4 * count] = _exact_overlap(start + count * step, half_size, inv_scale)
        pieces[4 * count + 1] = pieces[4 * count + 2] = pieces[4 * count + 3] = 0.0
    if len(_overlap_tables) >= 16:
        _overlap_tables.clear()
    _overlap_tables[key] = (array, start, 1.0 / step)
    return _overlap_tables[key]


cdef _OverlapTable _overlap_table(tuple built) except *:
    """The table of what :func:`_overlap_pieces` built; it points into ``built``, which must outlive it."""
    cdef _OverlapTable table
    cdef const double[:] pieces = built[0]
    table.start = built[1]
    table.scale = built[2]
    table.limit = pieces.shape[0] // 4 - 1
    table.pieces = &pieces[0]
    return table


def overlap_approx(const double[:] offset, double half_size, double sigma):
    """The renderer's tabulated 1-D spot/chip overlap, for tests: within 5e-11 of the exact one.

    Parameters
    ----------
    offset
        Spot centre minus segment centre (grid units), each at most the lit distance
        ``half_size + 5·√2·sigma`` in size (beyond it the renderer never looks).
    half_size, sigma
        Half the segment (chip) size and the spot σ, grid units.

    Returns
    -------
    ndarray of float64
    """
    built = _overlap_pieces(half_size, sigma)
    cdef _OverlapTable table = _overlap_table(built)
    cdef Py_ssize_t i, count = offset.shape[0]
    out = np.empty(count, dtype=np.float64)
    cdef double[:] result = out
    with nogil:
        for i in range(count):
            result[i] = _overlap(&table, offset[i])
    return out


# -- carrier density --------------------------------------------------------------------------------------------

# Newton steps a warm start may take before the cold solve takes over (one is the norm, two in spot tails)
cdef int _WARM_STEPS = 4
# a warm solve stops when Newton's error estimate after the step, f''/(2f')·step², is below this times n; the
# PL goes as n², so this bounds a chip's PL error to ~2e-10 of its value
cdef double _WARM_TOLERANCE = 1e-10


cdef inline double _carrier_density(double G, double A, double C, double S, double n_sat, double guess) noexcept nogil:
    """Solve the ABC + shunt equation for n >= 0 by bracketed Newton iteration."""
    cdef double low = 0.0, high, n, value, slope, step, den, candidate
    cdef int iteration
    if G <= 0.0:
        return 0.0
    # every term is >= 0, so each alone bounds n from above
    high = sqrt(G)
    if A > 0.0 and G / A < high:
        high = G / A
    if C > 0.0 and cbrt(G / C) < high:
        high = cbrt(G / C)
    if guess <= 0.0:
        # root of A·n + n² = G: exact when SRH and radiative terms dominate, close otherwise
        guess = 2.0 * G / (A + sqrt(A * A + 4.0 * G))
    n = guess if guess < high else 0.5 * high
    for iteration in range(80):
        den = 1.0 + n / n_sat
        value = A * n + n * n + C * n * n * n + S * n / den - G
        if value == 0.0:
            return n
        if value > 0.0:
            high = n
        else:
            low = n
        slope = A + 2.0 * n + 3.0 * C * n * n + S / (den * den)
        candidate = n - value / slope
        if candidate < low or candidate > high:
            candidate = 0.5 * (low + high)
        step = fabs(candidate - n)
        n = candidate
        if step <= 1e-10 * n:
            break
    return n


def carrier_density(const double[:] generation, const double[:] a_coeff, const double[:] c_coeff, const double[:] shunt,
                    const double[:] shunt_saturation):
    """Carrier density n for each element (arrays of equal length; B = 1 units).

    Parameters
    ----------
    generation, a_coeff, c_coeff, shunt, shunt_saturation
        G, A, C, S and n_sat per element.

    Returns
    -------
    ndarray of float64
    """
    cdef Py_ssize_t i, count = generation.shape[0]
    out = np.empty(count, dtype=np.float64)
    cdef double[:] result = out
    with nogil:
        for i in range(count):
            result[i] = _carrier_density(generation[i], a_coeff[i], c_coeff[i], shunt[i], shunt_saturation[i], -1.0)
    return out


ctypedef struct _Solution:
    # one chip's last solution n(G), with the first two derivatives of n(G) to predict the next one from
    int64_t slot  # -1: empty
    double generation
    double density
    double dn_dg  # 1 / f'(n)
    double half_d2n_dg2  # -f''(n) / (2 f'(n)³)


cdef inline void _remember(_Solution *last, int64_t slot, double G, double n, double A, double C, double S,
                           double n_sat) noexcept nogil:
    """Store the solution n(G) of chip ``slot`` with its derivatives (implicit differentiation of f(n) = G)."""
    cdef double den, slope, curvature, inv_slope
    if S == 0.0:
        slope = A + n * (2.0 + 3.0 * C * n)
        curvature = 2.0 + 6.0 * C * n
    else:
        den = 1.0 + n / n_sat
        slope = A + 2.0 * n + 3.0 * C * n * n + S / (den * den)
        curvature = 2.0 + 6.0 * C * n - 2.0 * S / (n_sat * den * den * den)
    inv_slope = 1.0 / slope
    last.slot = slot
    last.generation = G
    last.density = n
    last.dn_dg = inv_slope
    last.half_d2n_dg2 = -0.5 * curvature * inv_slope * inv_slope * inv_slope


cdef inline double _predict(const _Solution *last, double G) noexcept nogil:
    """n at G from the second-order Taylor expansion of n(G) at ``last``."""
    cdef double change = G - last.generation
    return last.density + change * (last.dn_dg + change * last.half_d2n_dg2)


cdef inline double _carrier_density_warm(double G, double A, double C, double S, double n_sat, double n,
                                         int steps, _Solution *last) noexcept nogil:
    """Newton iteration from a close guess ``n``; -1 if it does not settle within ``steps`` steps.

    On success ``last`` is updated to the new solution (generation, density and derivatives; not the slot).
    Without a bracket Newton could wander off from a poor guess (a jump in power, say): the step limit and the
    positivity check hand such cases to the bracketed cold solve instead.
    """
    cdef double den, value, slope, curvature, bound, inv_slope
    cdef bint settled
    cdef int iteration
    for iteration in range(steps):
        if not n > 0.0:  # also catches NaN
            return -1.0
        if S == 0.0:
            # the common case (no leak): a plain cubic, no division for the shunt term
            value = n * (A + n * (1.0 + C * n)) - G
            slope = A + n * (2.0 + 3.0 * C * n)
            curvature = 2.0 + 6.0 * C * n
            bound = curvature
        else:
            den = 1.0 + n / n_sat
            value = A * n + n * n + C * n * n * n + S * n / den - G
            slope = A + 2.0 * n + 3.0 * C * n * n + S / (den * den)
            curvature = 2.0 + 6.0 * C * n - 2.0 * S / (n_sat * den * den * den)
            # |f''| <= 2 + 6Cn + 2S/n_sat: the bound keeps the error estimate from vanishing where the
            # polynomial's and the shunt term's curvatures cancel
            bound = 2.0 + 6.0 * C * n + 2.0 * S / n_sat
        # Newton's error after this step is about |f''|/(2f')·(f/f')²: tested multiplied out, so the branch need
        # not wait for the division
        settled = 0.5 * bound * value * value <= _WARM_TOLERANCE * n * slope * slope * slope
        inv_slope = 1.0 / slope
        n = n - value * inv_slope
        if settled:
            # n(G)' = 1/f', n(G)'' = -f''/f'³, taken at the last iterate: close enough to predict from
            last.generation = G
            last.density = n
            last.dn_dg = inv_slope
            last.half_d2n_dg2 = -0.5 * curvature * inv_slope * inv_slope * inv_slope
            return n
    return -1.0


cdef inline double _solve_chip(_Solution *last, int64_t slot, double G, double A, double C, double S,
                               double n_sat) noexcept nogil:
    """Carrier density of chip ``slot`` at G, warm-started from ``last`` when it holds the same chip."""
    cdef double n = -1.0, value, slope, curvature, inv_slope
    cdef int steps = _WARM_STEPS
    if last.slot == slot:
        n = _predict(last, G)
        if S == 0.0 and n > 0.0:
            # the first step of _carrier_density_warm for a chip without leak, unrolled: it is all that most
            # solves need, and this is the hottest path of the renderer
            value = n * (A + n * (1.0 + C * n)) - G
            slope = A + n * (2.0 + 3.0 * C * n)
            curvature = 2.0 + 6.0 * C * n
            inv_slope = 1.0 / slope
            if 0.5 * curvature * value * value <= _WARM_TOLERANCE * n * slope * slope * slope:
                n = n - value * inv_slope
                last.generation = G
                last.density = n
                last.dn_dg = inv_slope
                last.half_d2n_dg2 = -0.5 * curvature * inv_slope * inv_slope * inv_slope
                return n
            n = n - value * inv_slope
            steps = steps - 1
        n = _carrier_density_warm(G, A, C, S, n_sat, n, steps, last)
    if n < 0.0:
        n = _carrier_density(G, A, C, S, n_sat, -1.0)
        _remember(last, slot, G, n, A, C, S, n_sat)
    return n


def carrier_density_along(const double[:] generation, double a_coeff, double c_coeff, double shunt,
                          double shunt_saturation):
    """Carrier density of one chip at a sequence of generation rates, each solve warm-started from the last.

    This is the solver path :func:`render_line` takes for a chip the spot moves over; it exists so the tests
    can pin the warm start against :func:`cext.reference.carrier_density` (smooth and jumping sequences).

    Parameters
    ----------
    generation
        G at each step; the chain restarts cold after a step with G <= 0.
    a_coeff, c_coeff, shunt, shunt_saturation
        The chip's A, C, S and n_sat.

    Returns
    -------
    ndarray of float64
    """
    cdef Py_ssize_t i, count = generation.shape[0]
    cdef _Solution last
    last.slot = -1
    out = np.zeros(count, dtype=np.float64)
    cdef double[:] result = out
    with nogil:
        for i in range(count):
            if generation[i] > 0.0:
                result[i] = _solve_chip(&last, 0, generation[i], a_coeff, c_coeff, shunt, shunt_saturation)
            else:
                last.slot = -1
    return out


# -- the band of chips a line can light -------------------------------------------------------------------------

ctypedef struct _Run:
    # a rectangle of chips that consecutive samples around one centre chip can light
    int64_t first_col
    int64_t last_col
    int64_t first_row
    int64_t last_row


ctypedef struct _Runs:
    # a growing list of rectangles
    _Run *items
    Py_ssize_t count
    Py_ssize_t capacity


cdef inline bint _lit_between(double low, double high, int64_t centre, double lit_distance, int64_t reach,
                              int64_t *first, int64_t *last) noexcept nogil:
    """Chips within ``reach`` of ``centre`` and nearer than ``lit_distance`` to some position in [low, high]."""
    first[0] = _floor_to_int(low - lit_distance) + 1
    last[0] = -_floor_to_int(-(high + lit_distance)) - 1
    if first[0] < centre - reach:
        first[0] = centre - reach
    if last[0] > centre + reach:
        last[0] = centre + reach
    return first[0] <= last[0]


cdef bint _collect_runs(const _Frame *grid, const double *x_um, const double *y_um, Py_ssize_t start,
                        Py_ssize_t stop, double col_lit, double row_lit, int64_t reach, _Runs *runs) noexcept nogil:
    """Append the lit rectangle of each run of samples ``start .. stop - 1`` around one centre chip to ``runs``.

    Returns False when out of memory.
    """
    cdef Py_ssize_t i
    cdef double col_f = 0.0, row_f = 0.0, col_low = 0.0, col_high = 0.0, row_low = 0.0, row_high = 0.0
    cdef int64_t run_col = 0, run_row = 0
    cdef bint open_run = False
    cdef _Run lit
    cdef _Run *grown
    # i == stop closes the last run
    for i in range(start, stop + 1):
        if i < stop:
            _to_grid(grid, x_um[i], y_um[i], &col_f, &row_f)
            if not (_usable(col_f) and _usable(row_f)):
                continue
            # the same centre chip: run_col <= col_f + 0.5 < run_col + 1, the floor of _render_chunk's test
            if (open_run and run_col <= col_f + 0.5 < run_col + 1 and run_row <= row_f + 0.5 < run_row + 1):
                col_low = col_f if col_f < col_low else col_low
                col_high = col_f if col_f > col_high else col_high
                row_low = row_f if row_f < row_low else row_low
                row_high = row_f if row_f > row_high else row_high
                continue
        if open_run and _lit_between(col_low, col_high, run_col, col_lit, reach, &lit.first_col, &lit.last_col) \
                and _lit_between(row_low, row_high, run_row, row_lit, reach, &lit.first_row, &lit.last_row):
            if runs.count == runs.capacity:
                grown = <_Run *> realloc(runs.items, 2 * runs.capacity * sizeof(_Run))
                if grown == NULL:
                    return False
                runs.items = grown
                runs.capacity = 2 * runs.capacity
            runs.items[runs.count] = lit
            runs.count = runs.count + 1
        if i < stop:
            open_run = True
            run_col = _floor_to_int(col_f + 0.5)
            run_row = _floor_to_int(row_f + 0.5)
            col_low = col_high = col_f
            row_low = row_high = row_f
    return True


def line_band(const double[::1] x_um, const double[::1] y_um, frame, double half_width, double half_height,
              double sigma_col, double sigma_row, long reach):
    """The chips that a sequence of spot positions can light, as a band for :func:`render_line`.

    A sample lights a chip that lies within ``reach`` chips of the nearest one (in both directions) and close
    enough for both 1-D overlaps to reach the 1e-12 cut-off. Consecutive samples around the same nearest chip
    are taken together (the chips any position in their bounding box lights), so along a line the cost is a few
    comparisons per sample. Each column of the band holds the rows from its lowest to its highest lit chip:
    the band may hold a few chips that no sample lights, never misses one.

    Parameters
    ----------
    x_um, y_um, frame, half_width, half_height, sigma_col, sigma_row, reach
        As for :func:`render_line`.

    Returns
    -------
    col0 : int
        First column of the band.
    band_row0 : ndarray of int64
        First row stored for each column.
    band_start : ndarray of int64
        Slot of each column's first row; one more element than columns, the last one is the slot count.
    """
    cdef _Frame grid = _frame_from(frame)
    cdef Py_ssize_t count = x_um.shape[0], half = count // 2, part, run
    cdef double col_lit = _lit_distance(half_width, sigma_col) + _BAND_MARGIN
    cdef double row_lit = _lit_distance(half_height, sigma_row) + _BAND_MARGIN
    cdef int64_t low_col = 0, high_col = -1
    cdef bint found = False
    cdef bint collected[2]
    cdef _Runs runs[2]
    cdef const _Run *lit
    if y_um.shape[0] != count:
        raise ValueError("x_um and y_um must have the same length")
    if count == 0:
        return 0, np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    for part in range(2):
        runs[part].count = 0
        runs[part].capacity = 256
        runs[part].items = <_Run *> malloc(runs[part].capacity * sizeof(_Run))
    try:
        if runs[0].items == NULL or runs[1].items == NULL:
            raise MemoryError()
        # the two halves on two threads (a run cut in two at the middle only gives a rectangle twice)
        for part in prange(2, nogil=True, schedule="static", num_threads=2):
            collected[part] = _collect_runs(&grid, &x_um[0], &y_um[0], 0 if part == 0 else half,
                                            half if part == 0 else count, col_lit, row_lit, reach, &runs[part])
        if not (collected[0] and collected[1]):
            raise MemoryError()
        for part in range(2):
            for run in range(runs[part].count):
                lit = &runs[part].items[run]
                if not found or lit.first_col < low_col:
                    low_col = lit.first_col
                if not found or lit.last_col > high_col:
                    high_col = lit.last_col
                found = True
        lowest_array = np.full(high_col - low_col + 1, np.iinfo(np.int64).max, dtype=np.int64)
        highest_array = np.full(high_col - low_col + 1, np.iinfo(np.int64).min, dtype=np.int64)
        row0_array = np.zeros(high_col - low_col + 1, dtype=np.int64)
        start_array = np.zeros(high_col - low_col + 2, dtype=np.int64)
        _fill_band(runs, low_col, lowest_array, highest_array, row0_array, start_array)
    finally:
        free(runs[0].items)
        free(runs[1].items)
    return int(low_col), row0_array, start_array


cdef void _fill_band(const _Runs *runs, int64_t low_col, int64_t[:] lowest, int64_t[:] highest,
                     int64_t[:] band_row0, int64_t[:] band_start) noexcept:
    """Per column, the rows from the lowest to the highest lit chip, in the layout of :func:`render_line`."""
    cdef Py_ssize_t part, run, col
    cdef const _Run *lit
    with nogil:
        for part in range(2):
            for run in range(runs[part].count):
                lit = &runs[part].items[run]
                for col in range(lit.first_col - low_col, lit.last_col - low_col + 1):
                    if lit.first_row < lowest[col]:
                        lowest[col] = lit.first_row
                    if lit.last_row > highest[col]:
                        highest[col] = lit.last_row
        for col in range(band_row0.shape[0]):
            band_start[col + 1] = band_start[col]
            if highest[col] >= lowest[col]:
                band_row0[col] = lowest[col]
                band_start[col + 1] += highest[col] - lowest[col] + 1


# -- the spot's path ---------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _first_at_or_after(const double *t, Py_ssize_t count, double instant) noexcept nogil:
    """The first of the ascending instants ``t`` at or after ``instant`` (NumPy's searchsorted, side="left")."""
    cdef Py_ssize_t low = 0, high = count, middle
    while low < high:
        middle = (low + high) // 2
        if t[middle] < instant:
            low = middle + 1
        else:
            high = middle
    return low


cdef void _axis_path(const double *t, Py_ssize_t count, const double[:, ::1] phases, double *out) noexcept nogil:
    """Positions of one axis at ascending instants ``t``: phase ``k`` (rows ``t0, p0, v0, a``) covers the instants
    from its start to the next phase's start, the first phase also every earlier instant."""
    cdef Py_ssize_t k, i, begin, end, phase_count = phases.shape[0]
    cdef double t0, p0, v0, half_a, tau
    for k in range(phase_count):
        begin = 0 if k == 0 else _first_at_or_after(t, count, phases[k, 0])
        end = count if k + 1 == phase_count else _first_at_or_after(t, count, phases[k + 1, 0])
        t0, p0, v0, half_a = phases[k, 0], phases[k, 1], phases[k, 2], 0.5 * phases[k, 3]
        for i in range(begin, end):
            tau = t[i] - t0
            if tau < 0.0:  # as np.maximum(tau, 0.0): a NaN stays NaN, -0.0 stays -0.0
                tau = 0.0
            out[i] = (p0 + v0 * tau) + (half_a * tau) * tau


def spot_path_um(const double[::1] t_s, const double[:, ::1] x_phases, const double[:, ::1] y_phases,
                 double offset_x_um, double offset_y_um, double cos_rotation, double sin_rotation):
    """Where the laser spot is on the wafer at the ascending instants ``t_s``, from the stage axes' motion.

    Each axis moves in phases of constant acceleration, rows ``(t0_s, p0_um, v0_um_s, accel_um_s2)`` in time
    order: ``p(t) = p0 + v0·τ + a/2·τ²`` with ``τ = max(t - t0, 0)`` of the last phase started at ``t`` (the first
    phase before it). The stage position then goes to the wafer frame: ``(c·dx + s·dy, -s·dx + c·dy)`` with
    ``d = p - offset``. Every operation is the one, in the same order, of the NumPy code in
    :class:`drivers.virtual.bench.AxisModel` and :meth:`inspection.wafer.Placement.stage_to_wafer`, so the result
    is the same to the bit, in one pass instead of a dozen. That needs a build without fused multiply-adds (this
    module's flags select no FMA-capable target); ``tests/test_bench_model.py`` checks it.

    Returns
    -------
    x_um, y_um : ndarray of float64
        The spot in the wafer frame.

    Raises
    ------
    ValueError
        An axis has no phase or a phase row is not 4 numbers.
    """
    cdef Py_ssize_t i, count = t_s.shape[0]
    if x_phases.shape[0] == 0 or y_phases.shape[0] == 0 or x_phases.shape[1] != 4 or y_phases.shape[1] != 4:
        raise ValueError("each axis needs at least one phase of 4 numbers (t0_s, p0_um, v0_um_s, accel_um_s2)")
    x_out = np.empty(count, dtype=np.float64)
    y_out = np.empty(count, dtype=np.float64)
    if count == 0:
        return x_out, y_out
    cdef double[::1] x = x_out
    cdef double[::1] y = y_out
    cdef double dx, dy, minus_sin = -sin_rotation
    with nogil:
        _axis_path(&t_s[0], count, x_phases, &x[0])
        _axis_path(&t_s[0], count, y_phases, &y[0])
        for i in range(count):
            dx = x[i] - offset_x_um
            dy = y[i] - offset_y_um
            x[i] = cos_rotation * dx + sin_rotation * dy
            y[i] = minus_sin * dx + cos_rotation * dy
    return x_out, y_out


# -- detector noise ---------------------------------------------------------------------------------------------

cdef uint64_t _GOLDEN = 0x9E3779B97F4A7C15ULL


cdef inline uint64_t _mix64(uint64_t z) noexcept nogil:
    """SplitMix64 finaliser: a bijective scramble of 64-bit integers."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline double _unit(uint64_t bits) noexcept nogil:
    """Uniform in [0, 1) from the top 53 bits."""
    # through a signed integer: one instruction converts it, an unsigned one takes a branchy sequence
    return <int64_t>(bits >> 11) * (1.0 / 9007199254740992.0)


cdef enum:
    _ZIGGURAT_LAYERS = 128

# Doornik's ziggurat (ZIGNOR, 2005): 128 layers of equal area V under exp(-x²/2), the base one with the tail
# beyond R; _ziggurat_x[i] is the right edge of layer i, _ziggurat_ratio[i] = x[i + 1] / x[i]
cdef double _ZIGGURAT_R = 3.442619855899
cdef double _ZIGGURAT_V = 9.91256303526217e-3
cdef double _ziggurat_x[_ZIGGURAT_LAYERS + 1]
cdef double _ziggurat_ratio[_ZIGGURAT_LAYERS]


cdef void _build_ziggurat() noexcept nogil:
    """Fill the layers' edges (Doornik's recurrence) and their ratios."""
    cdef double f = exp(-0.5 * _ZIGGURAT_R * _ZIGGURAT_R)
    cdef int i
    _ziggurat_x[0] = _ZIGGURAT_V / f  # the base layer's rectangle, stretched to the area it has with its tail
    _ziggurat_x[1] = _ZIGGURAT_R
    _ziggurat_x[_ZIGGURAT_LAYERS] = 0.0
    for i in range(2, _ZIGGURAT_LAYERS):
        _ziggurat_x[i] = sqrt(-2.0 * log(_ZIGGURAT_V / _ziggurat_x[i - 1] + f))
        f = exp(-0.5 * _ziggurat_x[i] * _ziggurat_x[i])
    for i in range(_ZIGGURAT_LAYERS):
        _ziggurat_ratio[i] = _ziggurat_x[i + 1] / _ziggurat_x[i]


_build_ziggurat()


cdef inline double _standard_normal(uint64_t key, uint64_t index) noexcept nogil:
    """The N(0, 1) draw of sample ``index`` (counter-based: it depends only on (key, index)).

    Doornik's ziggurat, fed with output ``index`` of the SplitMix64 sequence seeded with ``key``: one hash per
    sample, and 99% of draws end here; the rest continue in :func:`_standard_normal_rest`.
    """
    cdef uint64_t bits = _mix64(key + (index + 1) * _GOLDEN)
    cdef double u = 2.0 * _unit(bits) - 1.0
    cdef int layer = bits & (_ZIGGURAT_LAYERS - 1)  # the low bits, disjoint from the 53 of u
    # inside the layer's rectangle that lies wholly under the curve
    if fabs(u) < _ziggurat_ratio[layer]:
        return u * _ziggurat_x[layer]
    return _standard_normal_rest(key, index, u, layer)


cdef double _standard_normal_rest(uint64_t key, uint64_t index, double u, int layer) noexcept nogil:
    """The ziggurat's tail and wedges, and its further tries, with random numbers from a stream of the sample's own."""
    cdef uint64_t stream = _mix64(_mix64(key ^ 0x5851F42D4C957F2DULL) ^ (index * _GOLDEN)), bits
    cdef double x, y, f0, f1
    while True:
        if layer == 0:
            # the tail beyond R (Marsaglia's method)
            while True:
                stream = stream + _GOLDEN
                x = log(1.0 - _unit(_mix64(stream))) / _ZIGGURAT_R
                stream = stream + _GOLDEN
                y = log(1.0 - _unit(_mix64(stream)))
                if -2.0 * y >= x * x:
                    return x - _ZIGGURAT_R if u < 0.0 else _ZIGGURAT_R - x
        # the wedge between the rectangle and the curve
        x = u * _ziggurat_x[layer]
        f0 = exp(-0.5 * (_ziggurat_x[layer] * _ziggurat_x[layer] - x * x))
        f1 = exp(-0.5 * (_ziggurat_x[layer + 1] * _ziggurat_x[layer + 1] - x * x))
        stream = stream + _GOLDEN
        if f1 + _unit(_mix64(stream)) * (f0 - f1) < 1.0:
            return x
        # rejected: try again
        stream = stream + _GOLDEN
        bits = _mix64(stream)
        u = 2.0 * _unit(bits) - 1.0
        layer = bits & (_ZIGGURAT_LAYERS - 1)
        if fabs(u) < _ziggurat_ratio[layer]:
            return u * _ziggurat_x[layer]


def standard_normal(uint64_t key, Py_ssize_t count):
    """The standard normal numbers :func:`render_line` adds its noise with, for ``count`` samples and ``key``.

    Sample ``i``'s number depends only on ``key`` and ``i`` (:func:`cext.reference.standard_normal` says how).

    Parameters
    ----------
    key
        64-bit seed.
    count
        How many.

    Returns
    -------
    ndarray of float64
    """
    out = np.empty(count, dtype=np.float64)
    cdef double[:] result = out
    cdef Py_ssize_t i
    for i in prange(count, nogil=True, schedule="static", num_threads=2):
        result[i] = _standard_normal(key, i)
    return out


# -- the line renderer ------------------------------------------------------------------------------------------

# samples per chunk: each chunk starts with cold solves (a few per chunk), and enough chunks keep both threads
# busy even when another process takes one core for a while
cdef Py_ssize_t _CHUNK = 1024
# a chip row, or a chip's PL, is left out when provably below this fraction of the largest signal seen so far in
# the chunk (so below it of the line's peak); with at most (2·reach + 1)·(2·reach + 2) such terms per sample the
# error stays far below 1e-9 of the peak
cdef double _NEGLIGIBLE = 1e-11
cdef enum:
    _PEAK_LAG = 32  # samples between updates of the skip level (a power of two)


ctypedef struct _Chip:
    # what the renderer needs of one chip (one slot of the band), side by side
    double scatter_v_per_w
    double generation_per_w  # G per watt of laser light on the chip: excitation · generation_per_w
    double pl_v  # detector volts per n²: pl_gain_v_per_w / generation_per_w (PL = IQE·absorbed = n²/generation_per_w)
    double a_coeff
    double c_coeff
    double shunt
    double shunt_saturation


ctypedef struct _Line:
    # the arguments of render_line, as read by the chunk renderer
    const double *x_um
    const double *y_um
    const double *power_w
    _Frame frame
    int64_t col0
    int64_t columns
    const int64_t *band_row0
    const int64_t *band_start
    const _Chip *chips
    _OverlapTable col_overlap
    _OverlapTable row_overlap
    double col_lit  # see _lit_distance
    double row_lit
    bint noisy  # add detector noise (see render_line)
    uint64_t noise_key
    double read_variance
    double shot_noise_v
    double background_v
    double most_scatter  # the largest scatter_v_per_w of the band
    double most_pl  # the largest PL bound per (watt on the chip)², pl_v·generation_per_w²/A² (see _Entry.dark_g2)
    int64_t reach
    int64_t cache_shift  # a chip's solution lives at ((col mod 2^shift) << shift) + (row mod 2^shift) of the cache


cdef size_t _SCRATCH_ALIGNMENT = 128


cdef inline size_t _padded(size_t size) noexcept nogil:
    """``size`` rounded up to a multiple of ``_SCRATCH_ALIGNMENT``."""
    return (size + _SCRATCH_ALIGNMENT - 1) // _SCRATCH_ALIGNMENT * _SCRATCH_ALIGNMENT


ctypedef struct _Entry:
    # a chip lit by the current samples: where its data and its last solution are, which overlaps light it
    const _Chip *chip
    _Solution *solution
    int64_t slot
    Py_ssize_t col  # index into the lit columns' overlaps
    Py_ssize_t row  # index into the lit rows' overlaps
    double dark_g2  # the PL is left out when G² is at most this (A·n <= G, so PL = pl_v·n² <= pl_v·G²/A²)


ctypedef struct _Scratch:
    # what one thread renders a chunk with; every chunk starts by resetting it
    int64_t *lit_cols  # the lit columns (2·reach + 1 at most) ...
    double *col_overlaps  # ... and their overlaps
    int64_t *lit_rows  # the lit rows (2·reach + 1 at most) ...
    double *row_overlaps  # ... and their overlaps
    _Entry *entries  # the lit chips ((2·reach + 1)² at most)
    _Solution *cache


cdef inline Py_ssize_t _lit(double position, double lit_distance, int64_t reach, const _OverlapTable *table,
                            double dark, double dark_factor, double light_factor, int64_t *indices,
                            double *overlaps, bint *changed) noexcept nogil:
    """The chips along one axis that the spot at ``position`` lights; returns how many.

    Lit: within ``reach`` of the nearest one, nearer than ``lit_distance`` and, with ``overlap`` their 1-D
    overlap, ``overlap·(dark_factor + overlap·light_factor) > dark`` (what makes a chip row dark). Writes their
    indices and overlaps, and sets ``changed`` when the indices differ from those already in ``indices``.
    """
    cdef int64_t centre = _floor_to_int(position + 0.5), index
    cdef Py_ssize_t count = 0
    cdef double offset, overlap
    for index in range(centre - reach, centre + reach + 1):
        offset = position - index
        if fabs(offset) < lit_distance:
            overlap = _overlap(table, offset)
            if overlap * (dark_factor + overlap * light_factor) > dark:
                if indices[count] != index:
                    indices[count] = index
                    changed[0] = True
                overlaps[count] = overlap
                count = count + 1
    return count


cdef Py_ssize_t _lit_chips(const _Line *line, const int64_t *lit_cols, Py_ssize_t col_count,
                           const int64_t *lit_rows, Py_ssize_t row_count, double negligible, _Solution *cache,
                           _Entry *entries) noexcept nogil:
    """List the chips of the band in the lit columns × lit rows; returns how many."""
    cdef int64_t mask = (1 << line.cache_shift) - 1, col, row, band_col, offset, slot
    cdef Py_ssize_t j, k, count = 0
    cdef const _Chip *chip
    for j in range(col_count):
        col = lit_cols[j]
        band_col = col - line.col0
        if band_col < 0 or band_col >= line.columns:
            continue
        for k in range(row_count):
            row = lit_rows[k]
            offset = row - line.band_row0[band_col]
            if offset < 0 or offset >= line.band_start[band_col + 1] - line.band_start[band_col]:
                continue
            slot = line.band_start[band_col] + offset
            chip = &line.chips[slot]
            entries[count].chip = chip
            entries[count].solution = &cache[((col & mask) << line.cache_shift) | (row & mask)]
            entries[count].slot = slot
            entries[count].col = j
            entries[count].row = k
            if chip.generation_per_w > 0.0 and chip.pl_v > 0.0:
                entries[count].dark_g2 = negligible * chip.a_coeff * chip.a_coeff / chip.pl_v
            else:
                entries[count].dark_g2 = INFINITY  # no absorption or no gain (a dead chip): no PL
            count = count + 1
    return count


cdef void _render_chunk(const _Line *line, Py_ssize_t start, Py_ssize_t stop, double *signal,
                        _Scratch *scratch) noexcept nogil:
    """Render samples ``start .. stop - 1`` into ``signal``.

    The lit chips are listed afresh only when the lit columns or rows change (along a line: every few hundred
    samples), so the work per sample is the overlaps of the lit columns (and rows, unless the spot moves along
    a row) and, per lit chip, its light. The cache of solutions is direct-mapped on (col, row) modulo a power of
    two >= 2·reach + 1: the chips around one sample never collide, and a chip the spot moves over keeps its
    entry from sample to sample.
    """
    # what is used per sample, as locals: the compiler cannot know that the stores to signal and scratch leave
    # *line alone, and would reload each field after them
    cdef const double *x_um = line.x_um
    cdef const double *y_um = line.y_um
    cdef const double *power_w = line.power_w
    cdef int64_t *lit_cols = scratch.lit_cols
    cdef double *col_overlaps = scratch.col_overlaps
    cdef int64_t *lit_rows = scratch.lit_rows
    cdef double *row_overlaps = scratch.row_overlaps
    cdef _Entry *entries = scratch.entries
    cdef const _Entry *entry
    cdef const _Chip *chip
    cdef _Frame frame = line.frame
    cdef int64_t reach = line.reach
    cdef double col_lit = line.col_lit, row_lit = line.row_lit
    cdef Py_ssize_t i, e, count, col_count = 0, row_count = 0, entry_count = 0
    cdef double col_f, row_f, power, overlap, on_chip_w, G, n, total
    cdef double peak = 0.0, negligible = 0.0, last_col_f = 0.0, last_row_f = 0.0, most_power = 0.0
    cdef double row_dark_factor, row_light_factor
    cdef bint rows_known = False, cols_known = False, changed = True
    for e in range(1 << (2 * line.cache_shift)):
        scratch.cache[e].slot = -1
    for e in range(2 * reach + 1):
        lit_cols[e] = lit_rows[e] = 0
    # a chip row is dark when even all 2·reach + 1 lit chips, the spot's whole width on each, at the chunk's
    # highest power, would give a negligible signal: fy·(2·reach + 1)·P·(scatter + P·fy·PL bound) <= negligible
    for i in range(start, stop):
        if fabs(power_w[i]) > most_power:
            most_power = fabs(power_w[i])
    row_dark_factor = (2 * reach + 1) * most_power * line.most_scatter
    row_light_factor = (2 * reach + 1) * most_power * most_power * line.most_pl
    for i in range(start, stop):
        _to_grid(&frame, x_um[i], y_um[i], &col_f, &row_f)
        power = power_w[i]
        if not (_usable(col_f) and _usable(row_f)):
            signal[i] = 0.0
            continue
        # along a chip row (column) the row (column) coordinate repeats: so do its lit chips and their overlaps
        if not rows_known or row_f != last_row_f:
            count = _lit(row_f, row_lit, reach, &line.row_overlap, negligible, row_dark_factor, row_light_factor,
                         lit_rows, row_overlaps, &changed)
            changed = changed or count != row_count
            row_count = count
            last_row_f = row_f
            rows_known = True
        if not cols_known or col_f != last_col_f:
            count = _lit(col_f, col_lit, reach, &line.col_overlap, -1.0, 0.0, 0.0, lit_cols, col_overlaps, &changed)
            changed = changed or count != col_count
            col_count = count
            last_col_f = col_f
            cols_known = True
        if changed:
            entry_count = _lit_chips(line, lit_cols, col_count, lit_rows, row_count, negligible, scratch.cache,
                                     entries)
            changed = False
        total = 0.0
        for e in range(entry_count):
            entry = &entries[e]
            overlap = col_overlaps[entry.col] * row_overlaps[entry.row]
            if overlap < 1e-12:
                continue
            chip = entry.chip
            on_chip_w = power * overlap
            total = total + chip.scatter_v_per_w * on_chip_w
            G = on_chip_w * chip.generation_per_w
            if G * G <= entry.dark_g2:
                continue
            n = _solve_chip(entry.solution, entry.slot, G, chip.a_coeff, chip.c_coeff, chip.shunt,
                            chip.shunt_saturation)
            total = total + chip.pl_v * n * n
        signal[i] = total
        if total > peak:
            peak = total
        if (i - start) & (_PEAK_LAG - 1) == _PEAK_LAG - 1 and _NEGLIGIBLE * peak != negligible:
            # the skip level follows the peak with a lag: were it to depend on the last sample, each sample
            # would wait for the previous one's solves instead of overlapping with them
            negligible = _NEGLIGIBLE * peak
            rows_known = False  # dark rows and PL: list the lit chips again
            changed = True
    if line.noisy:
        # read noise plus shot noise that grows with the light; in a loop of its own, while the chunk's signal is
        # in the cache: in the rendering loop it would lengthen the chain of work each sample waits on
        for i in range(start, stop):
            total = signal[i]
            signal[i] = total + line.background_v + sqrt(
                line.read_variance + line.shot_noise_v * (total if total > 0.0 else 0.0)
            ) * _standard_normal(line.noise_key, i)


def render_line(
    const double[::1] x_um,
    const double[::1] y_um,
    const double[::1] power_w,
    frame,
    long col0,
    const int64_t[::1] band_row0,
    const int64_t[::1] band_start,
    const double[:] a_coeff,
    const double[:] c_coeff,
    const double[:] shunt,
    const double[:] shunt_saturation,
    const double[:] excitation,
    const double[:] pl_gain_v_per_w,
    const double[:] scatter_v_per_w,
    double half_width,
    double half_height,
    double sigma_col,
    double sigma_row,
    double generation_per_w,
    long reach,
    noise_key=None,
    double read_noise_v=0.0,
    double shot_noise_v=0.0,
    double background_v=0.0,
):
    """Detector voltage for a sequence of spot positions: noiseless, or with detector noise.

    Chips are looked up in a *band*: column ``c`` (``col0 <= c < col0 + len(band_row0)``) holds the rows
    ``band_row0[c - col0]`` up to, not including, ``band_row0[c - col0] + band_start[c - col0 + 1] -
    band_start[c - col0]``, chip ``(c, r)`` at slot ``band_start[c - col0] + r - band_row0[c - col0]`` of the
    per-chip arrays. Chips outside the band contribute nothing (:func:`line_band` makes a band that holds
    every chip the line lights).

    The same arguments give bit-identical output whatever the threads do.

    Parameters
    ----------
    x_um, y_um
        Spot centre in the wafer frame.
    power_w
        Laser power at each sample.
    frame
        The chip grid in the wafer frame: ``(origin_x_um, origin_y_um, cos, sin, pitch_x_um, pitch_y_um,
        anchor_col, anchor_row)``; see :func:`cext.reference.grid_units`.
    col0, band_row0, band_start
        The band.
    a_coeff, c_coeff, shunt, shunt_saturation
        ABC-model parameters per slot.
    excitation
        Fraction of the laser power on the chip that is absorbed (particles shadow it); 0 for no chip.
    pl_gain_v_per_w
        Detector volts per watt of PL the chip emits (extraction, Stokes ratio, collection, amplifier).
    scatter_v_per_w
        Laser light the chip surface scatters through the emission filter, volts per watt on the chip.
    half_width, half_height
        Half the chip size in grid units.
    sigma_col, sigma_row
        Gaussian spot σ in grid units.
    generation_per_w
        G per watt absorbed by one chip.
    reach
        How many chips around the nearest one can receive light.
    noise_key
        None for the noiseless signal S. Otherwise the 64-bit seed of the detector noise: the result is then
        ``S + background_v + sqrt(read_noise_v² + shot_noise_v·max(S, 0))·z`` with ``z`` the standard normal
        numbers :func:`standard_normal` draws for ``noise_key`` (one per sample, by index: the same key gives the
        same noise).
    read_noise_v, shot_noise_v, background_v
        Read-noise σ (V), shot-noise variance per volt of signal (V), constant offset (V).

    Returns
    -------
    ndarray of float64, one voltage per sample
    """
    cdef Py_ssize_t count = x_um.shape[0]
    cdef Py_ssize_t chunks = (count + _CHUNK - 1) // _CHUNK
    cdef Py_ssize_t chunk, start, stop, slot
    cdef double bound
    cdef int thread
    if y_um.shape[0] != count or power_w.shape[0] != count:
        raise ValueError("x_um, y_um and power_w must have the same length")
    if band_start.shape[0] != band_row0.shape[0] + 1:
        raise ValueError("band_start must have one element more than band_row0")
    cdef Py_ssize_t slots = band_start[band_start.shape[0] - 1]
    if min(a_coeff.shape[0], c_coeff.shape[0], shunt.shape[0], shunt_saturation.shape[0], excitation.shape[0],
           pl_gain_v_per_w.shape[0], scatter_v_per_w.shape[0]) < slots:
        raise ValueError("the per-chip arrays must hold every slot of the band")
    # every sample is written (unusable positions get 0), so no need to zero the output first
    out = np.empty(count, dtype=np.float64)
    if count == 0:
        return out
    cdef double[:] signal = out
    cdef _Line line
    line.noisy = noise_key is not None
    line.noise_key = noise_key if line.noisy else 0
    line.read_variance = read_noise_v * read_noise_v
    line.shot_noise_v = shot_noise_v
    line.background_v = background_v
    line.x_um = &x_um[0]
    line.y_um = &y_um[0]
    line.power_w = &power_w[0]
    line.frame = _frame_from(frame)
    line.col0 = col0
    line.columns = band_row0.shape[0]
    line.band_row0 = &band_row0[0] if band_row0.shape[0] else NULL  # no columns: never read
    line.band_start = &band_start[0]
    # held here: the tables point into them
    col_pieces = _overlap_pieces(half_width, sigma_col)
    row_pieces = _overlap_pieces(half_height, sigma_row)
    line.col_overlap = _overlap_table(col_pieces)
    line.row_overlap = _overlap_table(row_pieces)
    line.col_lit = _lit_distance(half_width, sigma_col)
    line.row_lit = _lit_distance(half_height, sigma_row)
    line.reach = reach
    line.cache_shift = 0
    while (1 << line.cache_shift) < 2 * reach + 1:
        line.cache_shift += 1
    cdef _Chip *chips = <_Chip *> malloc((slots if slots else 1) * sizeof(_Chip))
    if chips == NULL:
        raise MemoryError()
    line.chips = chips
    line.most_scatter = 0.0
    line.most_pl = 0.0
    for slot in range(slots):
        chips[slot].scatter_v_per_w = scatter_v_per_w[slot]
        chips[slot].generation_per_w = excitation[slot] * generation_per_w
        chips[slot].pl_v = pl_gain_v_per_w[slot] / generation_per_w
        chips[slot].a_coeff = a_coeff[slot]
        chips[slot].c_coeff = c_coeff[slot]
        chips[slot].shunt = shunt[slot]
        chips[slot].shunt_saturation = shunt_saturation[slot]
        if scatter_v_per_w[slot] > line.most_scatter:
            line.most_scatter = scatter_v_per_w[slot]
        if chips[slot].generation_per_w > 0.0 and chips[slot].pl_v > 0.0:
            bound = chips[slot].pl_v * chips[slot].generation_per_w * chips[slot].generation_per_w
            bound = bound / (a_coeff[slot] * a_coeff[slot]) if a_coeff[slot] > 0.0 else INFINITY
            if bound > line.most_pl:
                line.most_pl = bound
    # scratch for each of the two threads, a whole number of 128-byte blocks apart: threads writing to one cache
    # line (or to a pair the prefetcher fetches together) would slow each other down severalfold
    cdef Py_ssize_t span = 2 * reach + 1, cached = 1 << (2 * line.cache_shift)
    cdef Py_ssize_t overlaps_bytes = _padded(span * sizeof(double))  # sizeof(int64_t) == sizeof(double)
    cdef Py_ssize_t entries_bytes = _padded(span * span * sizeof(_Entry))
    cdef Py_ssize_t stride = 4 * overlaps_bytes + entries_bytes + _padded(cached * sizeof(_Solution))
    cdef char *memory = <char *> malloc(2 * stride + _SCRATCH_ALIGNMENT)
    cdef char *block
    cdef _Scratch scratch[2]
    try:
        if memory == NULL:
            raise MemoryError()
        for thread in range(2):
            block = memory + _padded(<size_t> memory) - <size_t> memory + thread * stride
            scratch[thread].lit_cols = <int64_t *> block
            scratch[thread].col_overlaps = <double *> (block + overlaps_bytes)
            scratch[thread].lit_rows = <int64_t *> (block + 2 * overlaps_bytes)
            scratch[thread].row_overlaps = <double *> (block + 3 * overlaps_bytes)
            scratch[thread].entries = <_Entry *> (block + 4 * overlaps_bytes)
            scratch[thread].cache = <_Solution *> (block + 4 * overlaps_bytes + entries_bytes)
        for chunk in prange(chunks, nogil=True, schedule="dynamic", num_threads=2):
            start = chunk * _CHUNK
            stop = start + _CHUNK
            if stop > count:
                stop = count
            _render_chunk(&line, start, stop, &signal[0], &scratch[threadid()])
    finally:
        free(memory)
        free(chips)
    return out


