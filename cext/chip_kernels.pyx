# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Per-chip kernels of the PL analysis: the samples of each chip, and each chip's neighbourhood.

:func:`accumulate_lines` sums the PL samples of straight scan lines per chip of a band of the chip grid: counts,
sums, maximum and first moments over each chip's footprint, its core and its street, and the saturated samples
(the fields are the module's ``N_FOOT`` ... ``N_SAT``). :func:`neighbour_median` gives each chip the median of its
eight neighbours' values, a band of rows at a time. :mod:`tests.chip_reference` holds readable NumPy versions of
both, which define what they compute.

Why :func:`accumulate_lines` is fast. Sample ``k`` of a line sits at ``col0 + k·dcol`` (and the same for rows),
so the chip and the zone (street, footprint, core) a sample falls in change only where the line crosses a zone
edge. For each chip the line crosses, the kernel works out the sample indices of those crossings from a closed
formula (for 64 chips at a time, side by side: no chip's crossings wait for the chip before), then sums each
chip's runs of samples: no floor(), no chip lookup and no position test per sample. A crossing that rounding
could put on the wrong sample (the formula's value is within a bound on its rounding error of an integer) is
settled by the exact test on that sample, so every sample is classified exactly as the reference does: the same
floating-point operations decide, bit for bit. Lines along chip rows are the fast case; any direction works
(lines that move more than half a cell per sample, or too little for the formula to decide, go cell by cell with
exact tests and bisection).

Two ways to sum a chunk of 64 chips. The fast path (C with AVX2 and FMA, below; taken when the CPU has both, see
:func:`fast_path`) does whole chunks whose samples are all below the saturation level and whose crossings the
formula decides, which is nearly all of them: four chips' crossings per instruction, each chip's street, footprint
(sum, maximum, Σ j·x) and core in four lanes of doubles from float32 loads, with the zones as lane masks, and the
twelve fields of four chips made and added to ``acc`` together, once per chip and line. A chunk whose cells all have
8 to 12 samples (10 samples a pitch, as on the 8" example wafer) goes through straight code: three vectors of
samples per cell, its zones as range masks loaded from a table (no compares), four cells' lanes added straight into
their fields (no lanes stored in between), the street as the cell less the footprint, saturation tested on the
cells' maxima and sums rather than by a pass over the samples first (four cells with a saturated sample go the slow
way). The samples are asked for ahead of time (prefetch), spread over the chunk before. The offset sums come from
the offset u0 of the sample the moments count from (Σ u = n·u0 + d·Σ j, Σ u·x = u0·Σ x + d·Σ j·x), with u0 computed
to a few units of roundoff (a compensated sum: the rounding of its position would be counted n times): they differ
from the reference's only by the reference's own rounding of each sample's position (half an ulp: at most 9e-13
pitch below chip column 16,384), inside the sums' stated accuracy. The sums stay in float64: in float32 (eight lanes
an instruction instead of four) a chip's sum of 10 samples would be off by ~1e-7 of itself, not the ~1e-15 the tests
and the reference's definition hold it to. Every other chunk (a saturated or non-finite sample, a crossing for the
exact test, the last few samples of the caller's array, a CPU without AVX2 or FMA) takes the slow path: one chip at
a time, sample by sample, each sample tested for saturation.

Threads. The band is cut into blocks of 32 rows × 1,024 columns of chips, and the blocks into 12 classes (block row
+ block column, modulo 12); each class is a task, and a task walks every line but sums only the chips of its blocks, in
line order, straight into the caller's array. A chip is only ever written by one task, always in the same order: the
result is bit-identical from run to run and for any number of threads, and needs no scratch copy of the band and no
merge. Make ``acc`` with :func:`accumulators`: its fields do not share cache sets, and start on a cache line. (The
fast and the slow path add in different orders: without AVX2 the counts and maxima are the same, the sums equal to
rounding.) On a machine shared with other busy processes, run with ``OMP_WAIT_POLICY=passive``: by default a thread
out of work spins, and takes CPU from the one still working.
"""

from cython.parallel cimport parallel, prange
from openmp cimport omp_get_thread_num
from libc.math cimport INFINITY, NAN, fabs, floor, isfinite, nextafterf
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc

import numpy as np

# -- the fields -------------------------------------------------------------------------------------------------

cdef enum:
    _N_FOOT = 0  # samples on the chip's footprint
    _SUM_FOOT = 1  # their sum (V)
    _MAX_FOOT = 2  # their maximum (V); the caller initialises this field to -inf
    _N_CORE = 3  # samples in the chip's core
    _SUM_CORE = 4  # their sum (V)
    _SUM_U = 5  # sum over footprint samples of col - c (pitch units)
    _SUM_V = 6  # sum over footprint samples of row - r
    _SUM_UI = 7  # sum over footprint samples of (col - c)·value
    _SUM_VI = 8  # sum over footprint samples of (row - r)·value
    _N_STREET = 9  # samples in the chip's cell but off its footprint
    _SUM_STREET = 10  # their sum (V)
    _N_SAT = 11  # saturated samples in the cell (footprint or street); counted nowhere else
    _FIELD_COUNT = 12

N_FOOT = _N_FOOT
SUM_FOOT = _SUM_FOOT
MAX_FOOT = _MAX_FOOT
N_CORE = _N_CORE
SUM_CORE = _SUM_CORE
SUM_U = _SUM_U
SUM_V = _SUM_V
SUM_UI = _SUM_UI
SUM_VI = _SUM_VI
N_STREET = _N_STREET
SUM_STREET = _SUM_STREET
N_SAT = _N_SAT
FIELD_COUNT = _FIELD_COUNT

# -- geometry along one axis ------------------------------------------------------------------------------------

cdef enum:
    # blocks of 32 rows × 1,024 columns of chips: a raster line stays in a block for thousands of samples (each
    # stretch of a line in a block costs its set-up and a start the hardware prefetcher has not seen coming: 512
    # columns measured 7 % faster than 256, and 1,024 another 4-6 % faster than 512 in CPU time; the block's part
    # of acc stays in cache for the next lines) ...
    _COL_BLOCK_SHIFT = 10
    _ROW_BLOCK_SHIFT = 5
    # ... in 12 classes: more tasks than threads, so a thread slowed by another process is made up for, and on the
    # benchmark's bands (16 × 10,000 chips: 10 blocks) each task one block, so that the two threads end together
    # (with 8 classes, tasks of one and two blocks: 1,024 columns were then no faster than 512 in wall time)
    _CLASSES = 12
    # pauses (~0.25 ms here) the calling thread spins for the other thread's last task before it sleeps at the
    # region's end (see accumulate_lines)
    _AWAIT_SPINS = 4000
    _CHUNK_CELLS = 64  # cells whose crossings are worked out together (see _sum_cells)

# a crossing index from the formula is trusted when it is further than the rounding bound from an integer; the
# bound (in samples) must stay well below 1/2 for that to decide, beyond this the crossings are found by bisection
cdef double _MARGIN_LIMIT = 0.25
# 2⁻⁴⁸: 32 units of roundoff, twice what the error analysis in _axis_from needs
cdef double _ROUNDING = 3.552713678800501e-15
# 1.5·2⁵²: x + this - this is x rounded to an integer, for |x| < 2⁵¹
cdef double _ROUND_TO_INTEGER = 6755399441055744.0


ctypedef struct _Axis:
    # one axis (col or row) of a line: position of sample k = p0 + k·d, in pitch units
    double p0
    double d
    double inv_d  # 1/d: sample index where the position is a chip centre c is (c - p0)·inv_d
    double sign  # direction of travel along the axis (+1 for d = 0); u' = sign·(position - c) grows along the line
    double half  # chip half size along the axis
    double core_half  # core half size
    double half_k  # half / |d|: samples from the centre to a footprint edge, and so on
    double core_k
    double cell_k  # 0.5 / |d|
    double margin  # bound on the rounding error of a crossing index from the formula (samples)
    bint constant  # d == 0: the sample's cell and zone are the same all along the line
    bint bisect  # the formula cannot decide (margin too large): find crossings by bisection
    int64_t first  # the band's first cell index on this axis
    int64_t block_shift  # blocks are 2^block_shift cells long on this axis


cdef enum:
    # what a crossing is: the line leaves a cell, or enters/leaves a zone |u'| <= X (see _crossed)
    _LEAVE_CELL = 0
    _REACH = 1  # u' >= X
    _PASS = 2  # u' > X


cdef inline int64_t _floor_to_int(double x) noexcept nogil:
    """floor(x) as an integer (|x| < 2⁶³); cheaper than libm floor without SSE4.1."""
    cdef int64_t truncated = <int64_t>x
    return truncated - (truncated > x)


cdef inline double _position(const _Axis *axis, int64_t k) noexcept nogil:
    """Position of sample k: the multiply form, so the reference gets the same double."""
    return axis.p0 + <double>k * axis.d


cdef inline int64_t _cell_at(const _Axis *axis, int64_t k) noexcept nogil:
    """Index of the nearest chip centre to sample k: floor(position + 0.5), ties to the + side."""
    return _floor_to_int(_position(axis, k) + 0.5)


cdef inline bint _crossed(const _Axis *axis, int kind, double c, double X, int64_t k) noexcept nogil:
    """Whether sample k is past a crossing; each kind is monotone in k (false, then true) along the line.

    ``_LEAVE_CELL``: the sample's cell index is beyond ``c`` in the direction of travel. ``_REACH`` and ``_PASS``:
    ``u' = sign·(position - c)`` is ``>= X`` and ``> X``: with ``X = -half`` and ``+half`` the line enters and leaves
    the footprint of chip ``c``, whichever way it runs (|u| <= half is symmetric, so the same tests serve both).
    The operations are the reference's: position, then + 0.5 and floor, or - c (exact).
    """
    cdef double position = _position(axis, k)
    if kind == _LEAVE_CELL:
        if axis.d > 0.0:
            return position + 0.5 >= c + 1.0
        if axis.d < 0.0:
            return position + 0.5 < c
        return False
    if kind == _REACH:
        return axis.sign * (position - c) >= X
    return axis.sign * (position - c) > X


cdef int64_t _bisect(const _Axis *axis, int kind, double c, double X, int64_t lo, int64_t hi) noexcept nogil:
    """First k in [lo, hi) past the crossing, or hi: bisection on the exact test."""
    cdef int64_t middle
    while lo < hi:
        middle = lo + (hi - lo) // 2
        if _crossed(axis, kind, c, X, middle):
            hi = middle
        else:
            lo = middle + 1
    return lo


cdef inline int64_t _past_estimate(const _Axis *axis, int kind, double c, double X, double estimate) noexcept nogil:
    """First sample past the crossing whose real-valued sample index the formula puts at ``estimate``.

    The crossing is at ``estimate`` to within ``axis.margin`` (rounding of the formula and of the positions), so
    when ``estimate`` is further than that from an integer the first sample past it is ceil(estimate); otherwise
    it is the nearest integer or the next one, and the exact test at the nearest integer decides. Either way the
    answer is the exact test's: the classification is the reference's, bit for bit. Only for an axis in formula
    mode (not constant, not bisect) and an estimate within the line (or near it: |estimate| < 2⁵¹).
    """
    # the nearest integer by adding and taking away 1.5·2⁵²: two additions where floor() would be a call or
    # three conversions (the default rounding, to nearest, is assumed; a tie is within the margin anyway)
    cdef double nearest = (estimate + _ROUND_TO_INTEGER) - _ROUND_TO_INTEGER
    cdef double difference = estimate - nearest
    cdef int64_t whole = <int64_t>nearest
    if fabs(difference) > axis.margin:
        return whole + (difference > 0.0)
    return whole if _crossed(axis, kind, c, X, whole) else whole + 1


cdef inline int64_t _first_past(const _Axis *axis, int kind, double c, double X, double estimate, int64_t lo,
                                int64_t hi) noexcept nogil:
    """First k in [lo, hi) past the crossing, or hi; ``estimate`` as for :func:`_past_estimate`."""
    cdef int64_t first
    if axis.constant:
        return lo if _crossed(axis, kind, c, X, lo) else hi
    if axis.bisect:
        return _bisect(axis, kind, c, X, lo, hi)
    if estimate <= <double>lo - 1.0:
        return lo
    if estimate >= <double>hi + 1.0:
        return hi
    first = _past_estimate(axis, kind, c, X, estimate)
    return lo if first < lo else (hi if first > hi else first)


cdef inline int64_t _leave_cell(const _Axis *axis, int64_t c, int64_t lo, int64_t hi) noexcept nogil:
    """First k in [lo, hi) whose cell is beyond cell ``c`` in the direction of travel, or hi."""
    cdef double centre = <double>c
    return _first_past(axis, _LEAVE_CELL, centre, 0.0, (centre - axis.p0) * axis.inv_d + axis.cell_k, lo, hi)


cdef inline void _cell_crossings(const _Axis *axis, int64_t c, int64_t lo, int64_t hi, int level,
                                 int64_t *crossing) noexcept nogil:
    """Where the line, from sample ``lo`` in cell ``c``, enters and leaves the zones of that cell.

    ``crossing[0..4]``: first sample on the footprint, in the core, past the core, past the footprint, past the
    cell; within [lo, hi] and in that order, so [lo, c0) is street, [c0, c1) footprint, [c1, c2) core, [c2, c3)
    footprint, [c3, c4) street. ``level`` 0 finds only the cell's end (the zones are all street), 1 the footprint
    (the core is left empty), 2 everything.
    """
    cdef double centre = <double>c
    cdef double at_centre = (centre - axis.p0) * axis.inv_d  # sample index where the position is the centre
    crossing[4] = _leave_cell(axis, c, lo, hi)
    if level == 0:
        crossing[0] = crossing[1] = crossing[2] = crossing[3] = crossing[4]
        return
    # the crossings are ordered, so each one is looked for after the previous one
    crossing[0] = _first_past(axis, _REACH, centre, -axis.half, at_centre - axis.half_k, lo, crossing[4])
    if level == 1:
        crossing[3] = _first_past(axis, _PASS, centre, axis.half, at_centre + axis.half_k, crossing[0], crossing[4])
        crossing[1] = crossing[2] = crossing[3]
        return
    crossing[1] = _first_past(axis, _REACH, centre, -axis.core_half, at_centre - axis.core_k, crossing[0],
                              crossing[4])
    crossing[2] = _first_past(axis, _PASS, centre, axis.core_half, at_centre + axis.core_k, crossing[1], crossing[4])
    crossing[3] = _first_past(axis, _PASS, centre, axis.half, at_centre + axis.half_k, crossing[2], crossing[4])


cdef void _axis_from(_Axis *axis, double p0, double d, int64_t count, double half, double core_half,
                     int64_t first, int64_t block_shift) noexcept nogil:
    """Set up one axis of a line of ``count`` samples.

    Margin: with u the unit roundoff (2⁻⁵³), the formula's crossing index (c - p0)·inv_d ± X/|d| is off by at most
    4.2u·(|c| + |p0| + |X|)/|d| samples, and a sample's position (and position + 0.5) by 3.2u·(|p0| + |k·d| + 1),
    that is by that over |d| in samples. The formula only decides crossings within a sample of the line, whose
    cell index is within |p0| + count·|d| + 2 of 0, so 16u·(|p0| + count·|d| + 2 + max(X))/|d| bounds both
    errors together; the margin is twice that, with room to spare (256 for 2).
    """
    cdef double a = fabs(d)
    axis.p0 = p0
    axis.d = d
    axis.half = half
    axis.core_half = core_half
    axis.first = first
    axis.block_shift = block_shift
    axis.constant = d == 0.0
    axis.sign = -1.0 if d < 0.0 else 1.0
    if axis.constant:
        axis.inv_d = axis.half_k = axis.core_k = axis.cell_k = 0.0
        axis.margin = 0.0
        axis.bisect = False
        return
    axis.inv_d = 1.0 / d
    axis.half_k = half / a
    axis.core_k = core_half / a
    axis.cell_k = 0.5 / a
    axis.margin = _ROUNDING * (fabs(p0) + <double>count * a + 256.0 + (half if half > 0.5 else 0.5)) / a
    # also true for an infinite or NaN margin (a subnormal step, an infinite half size)
    axis.bisect = not (axis.margin < _MARGIN_LIMIT)


cdef void _band_range(const _Axis *axis, int64_t cells, int64_t count, int64_t *start, int64_t *stop) noexcept nogil:
    """Narrow [start, stop) to the samples whose cell on this axis is in [first, first + cells): an interval,
    as the cell index is monotone along the line."""
    cdef int64_t entry, leave
    cdef double cell
    if axis.constant:
        # compared as doubles: the position may be far beyond any int64
        cell = floor(axis.p0 + 0.5)
        if not (cell >= <double>axis.first and cell < <double>(axis.first + cells)):
            stop[0] = start[0]
        return
    if axis.d > 0.0:
        entry = _bisect(axis, _LEAVE_CELL, <double>(axis.first - 1), 0.0, 0, count)
        leave = _bisect(axis, _LEAVE_CELL, <double>(axis.first + cells - 1), 0.0, 0, count)
    else:
        entry = _bisect(axis, _LEAVE_CELL, <double>(axis.first + cells), 0.0, 0, count)
        leave = _bisect(axis, _LEAVE_CELL, <double>axis.first, 0.0, 0, count)
    if entry > start[0]:
        start[0] = entry
    if leave < stop[0]:
        stop[0] = leave


# -- sums over runs of samples ----------------------------------------------------------------------------------

# a sample's weight in the core sums, by whether it is in the core: a table lookup is a mask without a branch
cdef double _IN_CORE[2]
_IN_CORE[0] = 0.0
_IN_CORE[1] = 1.0


ctypedef struct _Sums:
    # one chip's sums over one run of the line through its cell
    int64_t n  # footprint
    double total
    double most
    double inner  # offset from the centre along the line's inner axis (see _Line) ...
    double inner_v  # ... times the value
    double outer  # the same along the outer axis
    double outer_v
    int64_t core_n
    double core_total
    int64_t street_n
    double street_total
    int64_t saturated


cdef inline void _clear(_Sums *sums) noexcept nogil:
    sums.n = sums.core_n = sums.street_n = sums.saturated = 0
    sums.total = sums.inner = sums.inner_v = sums.outer = sums.outer_v = sums.core_total = sums.street_total = 0.0
    sums.most = -INFINITY


cdef inline void _sum_street(const float *values, int64_t start, int64_t stop, double saturation,
                             _Sums *sums) noexcept nogil:
    """Add samples [start, stop) to the street sums. Saturated: not below ``saturation``, or not finite (NaN
    fails both tests); rare, so the branch costs nothing."""
    cdef int64_t k, n = sums.street_n, saturated = sums.saturated
    cdef double total = sums.street_total, value
    for k in range(start, stop):
        value = values[k]
        if value < saturation and value > -INFINITY:
            n += 1
            total += value
        else:
            saturated += 1
    sums.street_n, sums.street_total, sums.saturated = n, total, saturated


cdef inline void _sum_foot(const float *values, int64_t start, int64_t stop, double saturation, const _Axis *inner,
                           double centre, int64_t core_start, int64_t core_stop, _Sums *sums) noexcept nogil:
    """Add samples [start, stop), all on the footprint, to the footprint sums, and those of [core_start,
    core_stop) also to the core's.

    All samples at the same outer offset: the outer sums are made from the count and the total afterwards. The
    core is a mask (integer compare, table lookup), not a branch or a loop of its own: where it begins and ends
    inside the run is more than a branch predictor can learn. The offsets are the reference's: position - centre.
    """
    cdef int64_t k, n = sums.n, core_n = sums.core_n, saturated = sums.saturated, in_core
    cdef uint64_t core_length = <uint64_t>(core_stop - core_start)
    cdef double total = sums.total, most = sums.most, offset_sum = sums.inner, moment = sums.inner_v
    cdef double core_total = sums.core_total, p0 = inner.p0, d = inner.d, value, offset
    cdef double index = <double>start  # k as a double, counted: exact, and cheaper than converting k
    for k in range(start, stop):
        value = values[k]
        if value < saturation and value > -INFINITY:
            offset = (p0 + index * d) - centre
            n += 1
            total += value
            most = value if value > most else most
            offset_sum += offset
            moment += offset * value
            in_core = <uint64_t>(k - core_start) < core_length
            core_n += in_core
            core_total += value * _IN_CORE[in_core]
        else:
            saturated += 1
        index += 1.0
    sums.n, sums.total, sums.most, sums.inner, sums.inner_v = n, total, most, offset_sum, moment
    sums.core_n, sums.core_total, sums.saturated = core_n, core_total, saturated


cdef inline void _sum_foot_slanted(const float *values, int64_t start, int64_t stop, double saturation,
                                   const _Axis *inner, double centre, int64_t core_start, int64_t core_stop,
                                   const _Axis *outer, double outer_centre, _Sums *sums) noexcept nogil:
    """:func:`_sum_foot` for a line whose outer offset changes from sample to sample."""
    cdef int64_t k, n = sums.n, core_n = sums.core_n, saturated = sums.saturated, in_core
    cdef uint64_t core_length = <uint64_t>(core_stop - core_start)
    cdef double total = sums.total, most = sums.most, offset_sum = sums.inner, moment = sums.inner_v
    cdef double outer_sum = sums.outer, outer_moment = sums.outer_v, core_total = sums.core_total
    cdef double p0 = inner.p0, d = inner.d, q0 = outer.p0, e = outer.d, value, offset, outer_offset
    cdef double index = <double>start
    for k in range(start, stop):
        value = values[k]
        if value < saturation and value > -INFINITY:
            offset = (p0 + index * d) - centre
            outer_offset = (q0 + index * e) - outer_centre
            n += 1
            total += value
            most = value if value > most else most
            offset_sum += offset
            moment += offset * value
            outer_sum += outer_offset
            outer_moment += outer_offset * value
            in_core = <uint64_t>(k - core_start) < core_length
            core_n += in_core
            core_total += value * _IN_CORE[in_core]
        else:
            saturated += 1
        index += 1.0
    sums.n, sums.total, sums.most, sums.inner, sums.inner_v = n, total, most, offset_sum, moment
    sums.outer, sums.outer_v = outer_sum, outer_moment
    sums.core_n, sums.core_total, sums.saturated = core_n, core_total, saturated


# -- the fast path: whole chunks of cells, in C -----------------------------------------------------------------

cdef extern from *:
    """
    /* The fast path of accumulate_lines: whole chunks of cells of a line, AVX2 and FMA (compiled for them whatever
       the build's flags, run only on a CPU that has them: plm_can_be_fast). Everything the slow path decides sample
       by sample is decided here for 64 cells at once from the crossing formula, and a chunk it cannot take exactly
       (a crossing too near a sample for the formula, a saturated sample, the end of the caller's array) is left to
       the slow path whole. */
    #include <string.h>

    #define PLM_CHUNK 64 /* cells per chunk at most */

    typedef struct {
        const float *values; /* the line's samples */
        long long readable;  /* samples that may be read from values on (to the end of the caller's array) */
        float below;         /* a sample is plain (not saturated) when below this and above -inf */
        int level;           /* the outer zone of the run: 0 street, 1 footprint, 2 core */
        /* the inner axis (see _Axis): position of sample k is p0 + k*d */
        double p0, d, inv_d, sign, half_k, core_k, cell_k, margin;
        /* the outer axis: its offset from the outer cell's centre, constant or p0 + k*d - centre */
        int outer_constant;
        double outer_p0, outer_d, outer_centre, outer_offset;
        /* inner cell c's chip is at acc + (c - first)*inner_stride, its fields field_stride apart */
        double *acc;
        long long first, inner_stride, field_stride;
        int inner_sum, inner_moment, outer_sum, outer_moment; /* SUM_U, SUM_UI, SUM_V, SUM_VI in that role */
    } plm_run;

    enum { PLM_N_FOOT, PLM_SUM_FOOT, PLM_MAX_FOOT, PLM_N_CORE, PLM_SUM_CORE, PLM_SUM_U, PLM_SUM_V, PLM_SUM_UI,
           PLM_SUM_VI, PLM_N_STREET, PLM_SUM_STREET, PLM_N_SAT };

    static int plm_fast = 0; /* whether accumulate_lines takes the fast path */

    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    #define PLM_AVX2 __attribute__((target("avx2,fma"), always_inline)) static inline

    /* The first sample past each crossing whose real sample index the formula puts at `est`: ceil(est), which is the
       exact answer when est is further than the margin from an integer (see _past_estimate). *near collects
       |ceil(est) - est - 1/2|: 1/2 - margin or more when an estimate is too near an integer to decide. */
    PLM_AVX2 __m256d plm_past(__m256d est, __m256d *near) {
        __m256d up = _mm256_round_pd(est, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
        __m256d gap = _mm256_sub_pd(_mm256_sub_pd(up, est), _mm256_set1_pd(0.5));
        *near = _mm256_max_pd(*near, _mm256_andnot_pd(_mm256_set1_pd(-0.0), gap));
        return up;
    }

    PLM_AVX2 __m256d plm_clamp(__m256d v, __m256d lo, __m256d hi) {
        return _mm256_min_pd(_mm256_max_pd(v, lo), hi);
    }

    /* whether every sample of x[0, count) is plain, eight at a time */
    PLM_AVX2 int plm_all_plain(const float *x, long long count, float below) {
        const __m256 limit = _mm256_set1_ps(below), low = _mm256_set1_ps(-__builtin_inff());
        __m256 good = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        long long j = 0;
        for (; j + 8 <= count; j += 8) {
            __m256 value = _mm256_loadu_ps(x + j);
            good = _mm256_and_ps(good, _mm256_and_ps(_mm256_cmp_ps(value, limit, _CMP_LT_OQ),
                                                     _mm256_cmp_ps(value, low, _CMP_GT_OQ)));
        }
        int all = _mm256_movemask_ps(good) == 0xff;
        for (; j < count; j++)
            all &= (x[j] < below) & (x[j] > -__builtin_inff());
        return all;
    }

    /* samples x[0, 4) as doubles, those whose lane index is not below `end` as 0 */
    PLM_AVX2 __m256d plm_load_below(const float *x, __m256d index, __m256d end) {
        return _mm256_and_pd(_mm256_cmp_pd(index, end, _CMP_LT_OQ), _mm256_cvtps_pd(_mm_loadu_ps(x)));
    }

    /* x[0, length) summed in four lanes of doubles (lane l: x[l] + x[l + 4] + ..., in that order), ready for
       plm_sum4, and the lanes' maxima over those samples (and 0) taken into *high, for the saturation test (see
       plm_has_odd). Reads up to 3 samples past the end (masked out, whatever they hold). */
    PLM_AVX2 __m256d plm_run_sum(const float *x, double length, __m256d *high) {
        const __m256d end = _mm256_set1_pd(length), four = _mm256_set1_pd(4.0);
        const __m256d index0 = _mm256_set_pd(3.0, 2.0, 1.0, 0.0), index1 = _mm256_set_pd(7.0, 6.0, 5.0, 4.0);
        const __m256d index2 = _mm256_set_pd(11.0, 10.0, 9.0, 8.0);
        /* up to 12 samples in straight code (a cell crossed along its street, a street run); the same sums */
        if (length <= 4.0) {
            const __m256d x0 = plm_load_below(x, index0, end);
            *high = _mm256_max_pd(*high, x0);
            return x0;
        }
        if (length <= 8.0) {
            const __m256d x0 = _mm256_cvtps_pd(_mm_loadu_ps(x)), x1 = plm_load_below(x + 4, index1, end);
            *high = _mm256_max_pd(*high, _mm256_max_pd(x0, x1));
            return _mm256_add_pd(x0, x1);
        }
        if (length <= 12.0) {
            const __m256d x0 = _mm256_cvtps_pd(_mm_loadu_ps(x)), x1 = _mm256_cvtps_pd(_mm_loadu_ps(x + 4));
            const __m256d x2 = plm_load_below(x + 8, index2, end);
            *high = _mm256_max_pd(*high, _mm256_max_pd(_mm256_max_pd(x0, x1), x2));
            return _mm256_add_pd(_mm256_add_pd(x0, x1), x2);
        }
        __m256d total = _mm256_setzero_pd(), index = index0;
        for (long long j = 0; j < (long long)length; j += 4) {
            __m256d value = plm_load_below(x + j, index, end);
            total = _mm256_add_pd(total, value);
            *high = _mm256_max_pd(*high, value);
            index = _mm256_add_pd(index, four);
        }
        return total;
    }

    /* four cells' lane sums a, b, c, d as one vector: (lane 0 + lane 1) + (lane 2 + lane 3) each */
    PLM_AVX2 __m256d plm_sum4(__m256d a, __m256d b, __m256d c, __m256d d) {
        __m256d ab = _mm256_hadd_pd(a, b), cd = _mm256_hadd_pd(c, d); /* a01 b01 a23 b23, c01 d01 c23 d23 */
        return _mm256_add_pd(_mm256_permute2f128_pd(ab, cd, 0x20), _mm256_permute2f128_pd(ab, cd, 0x31));
    }

    PLM_AVX2 __m256d plm_max4(__m256d a, __m256d b, __m256d c, __m256d d) {
        __m256d ab = _mm256_max_pd(_mm256_unpacklo_pd(a, b), _mm256_unpackhi_pd(a, b));
        __m256d cd = _mm256_max_pd(_mm256_unpacklo_pd(c, d), _mm256_unpackhi_pd(c, d));
        return _mm256_max_pd(_mm256_permute2f128_pd(ab, cd, 0x20), _mm256_permute2f128_pd(ab, cd, 0x31));
    }

    PLM_AVX2 __m256d plm_reverse(__m256d v) { return _mm256_permute4x64_pd(v, 0x1b); }

    PLM_AVX2 void plm_add4(double *acc, __m256d v) { _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), v)); }

    /* p0 + k*d - centre for sample indices k < 2^26, to a few units of roundoff of the result: the offset of a sample
       from its cell's centre, without the rounding of the position (an ulp of p0 + k*d: 1e-12 pitch at 5,000), which
       the closed-form sums would multiply by the run's length. d = d_hi + d_lo (d_hi 26 bits, so k*d_hi is exact),
       the sum p0 + k*d_hi with its rounding error (Knuth's two-sum), then - centre, exact so near the centre. */
    PLM_AVX2 __m256d plm_offset(__m256d p0, __m256d k, __m256d d_hi, __m256d d_lo, __m256d centre) {
        __m256d high = _mm256_mul_pd(k, d_hi), low = _mm256_mul_pd(k, d_lo);
        __m256d sum = _mm256_add_pd(p0, high), back = _mm256_sub_pd(sum, p0);
        __m256d error = _mm256_add_pd(_mm256_sub_pd(p0, _mm256_sub_pd(sum, back)), _mm256_sub_pd(high, back));
        return _mm256_add_pd(_mm256_sub_pd(sum, centre), _mm256_add_pd(error, low));
    }

    /* d = hi + lo, hi with 26 significant bits (Veltkamp's split) */
    static inline void plm_split(double d, double *hi, double *lo) {
        double scaled = 134217729.0 * d; /* 2^27 + 1 */
        *hi = scaled - (scaled - d);
        *lo = d - *hi;
    }

    /* Range masks for cells of up to PLM_SHORT samples: plm_masks[(lo * (PLM_SHORT + 1) + hi) * PLM_SHORT + j] has
       every bit set when lo <= j < hi, none otherwise. A cell's footprint, core and extent are three such masks over
       its samples (lane j: sample j from the cell's first): loaded with the samples, where compares against the
       crossings would take two instructions a mask and vector. Only the entries the data uses are ever read. */
    #define PLM_SHORT 12
    #define PLM_MASK_ROW ((PLM_SHORT + 1) * PLM_SHORT)
    static double plm_masks[(PLM_SHORT + 1) * PLM_MASK_ROW] __attribute__((aligned(32)));

    static void plm_make_masks(void) {
        const unsigned long long bits[2] = {0ULL, ~0ULL};
        for (int lo = 0; lo <= PLM_SHORT; lo++)
            for (int hi = 0; hi <= PLM_SHORT; hi++)
                for (int j = 0; j < PLM_SHORT; j++)
                    memcpy(&plm_masks[lo * PLM_MASK_ROW + hi * PLM_SHORT + j], &bits[lo <= j && j < hi],
                           sizeof(double));
    }

    /* One short cell's sums in four lanes (lane l: its samples l, l + 4, l + 8 from the cell's first, `x`): the
       whole cell (its street is the cell less the footprint: one subtraction for four cells, after the lanes are
       added, where masking the street out would take six instructions a cell), footprint (sum, Σ j·x over its
       samples j, maximum) and core, with the range masks. The cell has 8 to 12 samples: only the last four lanes need
       its extent. `high`: the lanes' maxima over the cell's samples (and 0), for the saturation test (see
       plm_has_odd). Reads 12 samples. The products j·x are exact (x a float, j < 16), so a fused multiply-add
       gives the same double as the multiply and add it replaces. */
    PLM_AVX2 void plm_short_cell(const float *x, const double *foot_mask, const double *core_mask,
                                 const double *cell_mask, __m256d *cell, __m256d *foot, __m256d *core,
                                 __m256d *moment, __m256d *top, __m256d *high) {
        const __m256d index0 = _mm256_set_pd(3.0, 2.0, 1.0, 0.0), index1 = _mm256_set_pd(7.0, 6.0, 5.0, 4.0);
        const __m256d index2 = _mm256_set_pd(11.0, 10.0, 9.0, 8.0), neg = _mm256_set1_pd(-__builtin_inf());
        const __m256d x0 = _mm256_cvtps_pd(_mm_loadu_ps(x)), x1 = _mm256_cvtps_pd(_mm_loadu_ps(x + 4));
        const __m256d x2 = _mm256_cvtps_pd(_mm_loadu_ps(x + 8));
        const __m256d on0 = _mm256_load_pd(foot_mask), on1 = _mm256_load_pd(foot_mask + 4);
        const __m256d on2 = _mm256_load_pd(foot_mask + 8);
        const __m256d v0 = _mm256_and_pd(on0, x0), v1 = _mm256_and_pd(on1, x1), v2 = _mm256_and_pd(on2, x2);
        *foot = _mm256_add_pd(_mm256_add_pd(v0, v1), v2);
        *core = _mm256_add_pd(_mm256_add_pd(_mm256_and_pd(_mm256_load_pd(core_mask), x0),
                                            _mm256_and_pd(_mm256_load_pd(core_mask + 4), x1)),
                              _mm256_and_pd(_mm256_load_pd(core_mask + 8), x2));
        const __m256d last = _mm256_and_pd(_mm256_load_pd(cell_mask + 8), x2); /* (0 past the cell) */
        *cell = _mm256_add_pd(_mm256_add_pd(x0, x1), last);
        *high = _mm256_max_pd(_mm256_max_pd(x0, x1), last);
        *moment = _mm256_fmadd_pd(v2, index2, _mm256_fmadd_pd(v1, index1, _mm256_mul_pd(v0, index0)));
        *top = _mm256_max_pd(_mm256_max_pd(_mm256_blendv_pd(neg, x0, on0), _mm256_blendv_pd(neg, x1, on1)),
                             _mm256_blendv_pd(neg, x2, on2));
    }

    /* The lanes of cells i .. i + 3 that are real: below `cells` (not the empty cells that fill the last four) */
    PLM_AVX2 __m256d plm_real(long long i, long long cells) {
        return _mm256_cmp_pd(_mm256_add_pd(_mm256_set_pd(3.0, 2.0, 1.0, 0.0), _mm256_set1_pd((double)i)),
                             _mm256_set1_pd((double)cells), _CMP_LT_OQ);
    }

    /* Whether real cells among i .. i + 3 (of `cells`) have a sample that is not plain, from their sums `total` and
       their lanes' maxima `high`: a sample at or above the level makes `high` reach `below`, a NaN or infinite one
       its cell's sum not finite (x - x is then not 0). Saturation tested so, on what the sums make anyway, rather
       than by a pass over the chunk's samples first. */
    PLM_AVX2 int plm_has_odd(__m256d total, __m256d high, __m256d below, long long i, long long cells) {
        const __m256d odd = _mm256_and_pd(plm_real(i, cells), _mm256_cmp_pd(_mm256_sub_pd(total, total),
                                                                           _mm256_setzero_pd(), _CMP_NEQ_UQ));
        return _mm256_movemask_pd(_mm256_or_pd(odd, _mm256_cmp_pd(high, below, _CMP_GE_OQ)));
    }

    /* Cells i .. i + 3 of a chunk (samples [s, e) each) as short cells: each one's first sample, from k, into
       first[i ..], and the offset in plm_masks of its extent's range mask (lo = 0, hi = its length) into cell_at[i ..]
       (for cells that are not short meaningless and not used). Returns the lanes of cells that are real (below
       `cells`) and not short: fewer than PLM_SHORT - 4 samples or more than PLM_SHORT. */
    PLM_AVX2 __m256d plm_short_extent(__m256d s, __m256d e, long long i, long long cells, long long k, int *first,
                                      int *cell_at) {
        const __m256d longest = _mm256_set1_pd((double)PLM_SHORT), shortest = _mm256_set1_pd((double)(PLM_SHORT - 4));
        const __m256d length = _mm256_sub_pd(e, s);
        const __m256d outside = _mm256_or_pd(_mm256_cmp_pd(length, longest, _CMP_GT_OQ),
                                             _mm256_cmp_pd(length, shortest, _CMP_LT_OQ));
        _mm_store_si128((__m128i *)(first + i), _mm256_cvttpd_epi32(_mm256_sub_pd(s, _mm256_set1_pd((double)k))));
        _mm_store_si128((__m128i *)(cell_at + i),
                        _mm256_cvttpd_epi32(_mm256_mul_pd(_mm256_min_pd(length, longest), longest)));
        return _mm256_and_pd(plm_real(i, cells), outside);
    }

    /* Samples [from, to) + ahead asked for ahead of time, into the L1 cache, a line (16 samples) at a time. Each
       group of four cells asks for the samples `ahead` past its own: with `ahead` between one and two chunks' worth
       of samples, every sample of a chunk has been asked for by the chunks before it when the chunk's first step
       reads them (a chunk's own requests would come too late for that step), and the requests are spread out,
       a few per group: as many at once filled the cache's queue of misses and was slower. Without them each
       chunk's first step waited for memory (the hardware prefetcher did not keep up): 15-20 % of the time. None when
       `to` is past `limit` (the chunk's, see plm_sum_chunk): they would reach past the end of the caller's array. */
    PLM_AVX2 void plm_prefetch(const float *values, long long limit, long long from, long long to, long long ahead) {
        if (to > limit)
            return;
        for (long long at = from + ahead; at < to + ahead; at += 16)
            _mm_prefetch((const char *)(values + at), _MM_HINT_T0);
    }

    /* Four cells' fields from their sums (each field four cells in one vector: see plm_sum_chunk, step 3), added to
       acc. `anchor`: the sample the moments count from; Σ j over the footprint's samples j from it is `index_sum`. */
    typedef struct {
        double *n_foot, *sum_foot, *max_foot, *n_core, *sum_core, *n_street, *sum_street;
        double *inner_sum, *inner_moment, *outer_sum, *outer_moment;
        long long stride; /* between neighbouring cells' fields (negative for a line that runs backwards) */
        int contiguous;   /* four cells' fields are four neighbouring doubles */
    } plm_fields;

    /* A run's constants for plm_add_fields, made once a chunk: d and outer_d split as plm_offset needs them. Made for
       every four cells (the run's fields read again after each store to acc, which might alias them), the splits
       and plm_offset together had 7 % of the kernel's samples in a profile. */
    typedef struct {
        __m256d p0, d, d_hi, d_lo, outer_p0, outer_d, outer_hi, outer_lo, outer_centre, outer_offset;
    } plm_axes;

    PLM_AVX2 void plm_make_axes(const plm_run *run, plm_axes *axes) {
        double hi, lo;
        axes->p0 = _mm256_set1_pd(run->p0);
        axes->d = _mm256_set1_pd(run->d);
        plm_split(run->d, &hi, &lo);
        axes->d_hi = _mm256_set1_pd(hi), axes->d_lo = _mm256_set1_pd(lo);
        axes->outer_p0 = _mm256_set1_pd(run->outer_p0);
        axes->outer_d = _mm256_set1_pd(run->outer_d);
        plm_split(run->outer_d, &hi, &lo);
        axes->outer_hi = _mm256_set1_pd(hi), axes->outer_lo = _mm256_set1_pd(lo);
        axes->outer_centre = _mm256_set1_pd(run->outer_centre);
        axes->outer_offset = _mm256_set1_pd(run->outer_offset);
    }

    PLM_AVX2 void plm_add_fields(const plm_run *run, const plm_axes *axes, const plm_fields *f, long long i,
                                 long long m, __m256d centre,
                                 __m256d street, __m256d foot, __m256d core, __m256d moment, __m256d top,
                                 __m256d s, __m256d e, __m256d a, __m256d b, __m256d ca, __m256d cb,
                                 __m256d anchor) {
        const __m256d d = axes->d;
        const __m256d half = _mm256_set1_pd(0.5), one = _mm256_set1_pd(1.0);
        __m256d n = _mm256_sub_pd(b, a);
        /* Σ (j - anchor) over the footprint's samples j: n·(a - anchor) + n(n-1)/2 */
        __m256d index_sum = _mm256_add_pd(_mm256_mul_pd(n, _mm256_sub_pd(a, anchor)),
                                          _mm256_mul_pd(_mm256_mul_pd(half, n), _mm256_sub_pd(n, one)));
        /* the anchor sample's offset from the centre */
        __m256d u0 = plm_offset(axes->p0, anchor, axes->d_hi, axes->d_lo, centre);
        __m256d cores = _mm256_sub_pd(cb, ca);
        __m256d streets = _mm256_sub_pd(_mm256_sub_pd(e, s), n);
        __m256d isum = _mm256_add_pd(_mm256_mul_pd(n, u0), _mm256_mul_pd(d, index_sum));
        __m256d imoment = _mm256_add_pd(_mm256_mul_pd(u0, foot), _mm256_mul_pd(d, moment));
        __m256d osum, omoment;
        if (run->outer_constant) {
            osum = _mm256_mul_pd(axes->outer_offset, n);
            omoment = _mm256_mul_pd(axes->outer_offset, foot);
        } else {
            __m256d v0 = plm_offset(axes->outer_p0, anchor, axes->outer_hi, axes->outer_lo, axes->outer_centre);
            osum = _mm256_add_pd(_mm256_mul_pd(n, v0), _mm256_mul_pd(axes->outer_d, index_sum));
            omoment = _mm256_add_pd(_mm256_mul_pd(v0, foot), _mm256_mul_pd(axes->outer_d, moment));
        }
        if (f->contiguous && i + 4 <= m) {
            long long at = i;
            if (run->sign < 0) { /* cells i .. i + 3 at chip0 - i .. chip0 - i - 3 */
                at = -i - 3;
                n = plm_reverse(n), foot = plm_reverse(foot), top = plm_reverse(top);
                cores = plm_reverse(cores), core = plm_reverse(core), streets = plm_reverse(streets);
                street = plm_reverse(street), isum = plm_reverse(isum), imoment = plm_reverse(imoment);
                osum = plm_reverse(osum), omoment = plm_reverse(omoment);
            }
            plm_add4(f->n_foot + at, n);
            plm_add4(f->sum_foot + at, foot);
            _mm256_storeu_pd(f->max_foot + at, _mm256_max_pd(top, _mm256_loadu_pd(f->max_foot + at)));
            plm_add4(f->n_core + at, cores);
            plm_add4(f->sum_core + at, core);
            plm_add4(f->n_street + at, streets);
            plm_add4(f->sum_street + at, street);
            plm_add4(f->inner_sum + at, isum);
            plm_add4(f->inner_moment + at, imoment);
            plm_add4(f->outer_sum + at, osum);
            plm_add4(f->outer_moment + at, omoment);
            return;
        }
        double out[11][4] __attribute__((aligned(32)));
        _mm256_store_pd(out[0], n);
        _mm256_store_pd(out[1], foot);
        _mm256_store_pd(out[2], top);
        _mm256_store_pd(out[3], cores);
        _mm256_store_pd(out[4], core);
        _mm256_store_pd(out[5], streets);
        _mm256_store_pd(out[6], street);
        _mm256_store_pd(out[7], isum);
        _mm256_store_pd(out[8], imoment);
        _mm256_store_pd(out[9], osum);
        _mm256_store_pd(out[10], omoment);
        for (long long l = 0; l < 4 && i + l < m; l++) {
            long long at = (i + l) * f->stride;
            f->n_foot[at] += out[0][l];
            f->sum_foot[at] += out[1][l];
            f->max_foot[at] = out[2][l] > f->max_foot[at] ? out[2][l] : f->max_foot[at];
            f->n_core[at] += out[3][l];
            f->sum_core[at] += out[4][l];
            f->n_street[at] += out[5][l];
            f->sum_street[at] += out[6][l];
            f->inner_sum[at] += out[7][l];
            f->inner_moment[at] += out[8][l];
            f->outer_sum[at] += out[9][l];
            f->outer_moment[at] += out[10][l];
        }
    }

    /* Sum up to `cells` cells (1 to PLM_CHUNK) of the run from cell `c`, which holds sample `k`, up to sample `stop`,
       and add them to acc. Returns the number of cells done and sets *next to the sample after them, or returns 0
       (nothing done) when the fast path cannot take them exactly: the caller then sums them the slow way.

       1. Where the line leaves each cell, then where it enters and leaves its footprint and core, four cells at a
          time from each cell's own index (no cell waits for the one before), clamped into the cell as the slow path
          clamps them.
       2. Each cell's sums in four lanes of doubles: its street, its footprint (sum, Σ j·x, maximum) and its core.
          Short cells (up to PLM_SHORT samples, as at 10 samples a pitch) in straight code with the range masks, four
          cells at a time straight into step 3; longer ones with loops, the street runs before and after the
          footprint on their own, the core as a mask made by compares.
       3. Four cells at a time: their lanes added (plm_sum4), the fields made (counts from the crossings, the offset
          sums from the offset u0 of the sample the moments count from: Σ u = n·u0 + d·Σ j and Σ u·x = u0·Σ x +
          d·Σ j·x), and added to four chips' fields at once.
       Every chip gets its sums from one chunk per run, each added in a fixed order: the same result every time. */
    __attribute__((target("avx2,fma"))) static long long plm_sum_chunk(const plm_run *run, long long c, long long k,
                                                                       long long stop, long long cells,
                                                                       long long *next, int *short_cells) {
        /* cell i: samples [bound[i], bound[i + 1]), footprint [f0[i], f1[i]), core [c0[i], c1[i]) */
        double bound[PLM_CHUNK + 8] __attribute__((aligned(32)));
        double f0[PLM_CHUNK + 4] __attribute__((aligned(32))), f1[PLM_CHUNK + 4] __attribute__((aligned(32)));
        double c0[PLM_CHUNK + 4] __attribute__((aligned(32))), c1[PLM_CHUNK + 4] __attribute__((aligned(32)));
        /* short cells: first sample (from k) and the offsets of the three range masks in plm_masks */
        int first[PLM_CHUNK + 4] __attribute__((aligned(16))), foot_at[PLM_CHUNK + 4] __attribute__((aligned(16)));
        int core_at[PLM_CHUNK + 4] __attribute__((aligned(16))), cell_at[PLM_CHUNK + 4] __attribute__((aligned(16)));
        const int level = run->level;
        const double sign = run->sign;
        const __m256d p0 = _mm256_set1_pd(run->p0), inv_d = _mm256_set1_pd(run->inv_d);
        const __m256d vstop = _mm256_set1_pd((double)stop), sure = _mm256_set1_pd(0.5 - run->margin);
        const __m256d step4 = _mm256_set1_pd(4.0 * sign), zero = _mm256_setzero_pd();
        const __m256d neg = _mm256_set1_pd(-__builtin_inf()), four = _mm256_set1_pd(4.0);
        const __m256d lanes = _mm256_set_pd(3.0, 2.0, 1.0, 0.0);
        const __m256d first_centre = _mm256_add_pd(_mm256_set1_pd((double)c),
                                                   _mm256_mul_pd(_mm256_set1_pd(sign), lanes));
        __m256d near = zero, centre = first_centre;
        long long i, m = cells;
        /* 1. where the line leaves each cell; the first cell that reaches stop is the last */
        for (i = 0; i < cells; i += 4) {
            __m256d at = _mm256_mul_pd(_mm256_sub_pd(centre, p0), inv_d);
            __m256d leave = plm_past(_mm256_add_pd(at, _mm256_set1_pd(run->cell_k)), &near);
            _mm256_storeu_pd(bound + 1 + i, _mm256_min_pd(leave, vstop));
            centre = _mm256_add_pd(centre, step4);
            int reached = _mm256_movemask_pd(_mm256_cmp_pd(leave, vstop, _CMP_GE_OQ));
            if (reached) {
                m = i + __builtin_ctz(reached) + 1;
                m = m < cells ? m : cells;
                break;
            }
        }
        bound[0] = (double)k;
        const long long last = (long long)bound[m];
        /* samples are asked for one and a half chunks ahead (see plm_prefetch) */
        const long long ahead = (last - k) * 3 / 2;
        const long long limit = run->readable - ahead - 16; /* samples asked for end before the array's end */
        for (i = m + 1; i <= m + 4; i++)
            bound[i] = bound[m];
        /* (short cells are read 12 samples from their first, the empty cells that fill the last four included;
           plm_offset needs indices below 2^26) */
        if (last + PLM_SHORT > run->readable || last >= (1LL << 26))
            return 0;
        const float *values = run->values;
        const long long fs = run->field_stride, stride = (long long)sign * run->inner_stride;
        double *const chip0 = run->acc + (c - run->first) * run->inner_stride;
        const int contiguous = run->inner_stride == 1; /* four cells' fields are four neighbouring doubles */
        if (level == 0) {
            /* a line along a street: street sums only */
            if (_mm256_movemask_pd(_mm256_cmp_pd(near, sure, _CMP_GE_OQ)))
                return 0;
            double *const n_street = chip0 + PLM_N_STREET * fs, *const sum_street = chip0 + PLM_SUM_STREET * fs;
            const __m256d below = _mm256_set1_pd((double)run->below);
            /* cells of 8 to 12 samples (all of them, the usual case) go the straight way, as short cells below */
            __m256d not_short = zero;
            for (i = 0; i < m; i += 4)
                not_short = _mm256_or_pd(not_short, plm_short_extent(_mm256_load_pd(bound + i),
                                                                     _mm256_loadu_pd(bound + i + 1), i, m, k, first,
                                                                     cell_at));
            const int straight = !_mm256_movemask_pd(not_short);
            for (i = 0; i < m; i += 4) {
                plm_prefetch(values, limit, (long long)bound[i], (long long)bound[i + 4], ahead);
                /* (cells past the last are empty: bound is bound[m] from there) */
                __m256d high = zero, street;
                if (straight) {
                    /* the same sums as plm_run_sum's, in straight code: the last four lanes masked to the cell */
                    __m256d cell[4];
                    for (int l = 0; l < 4; l++) {
                        const float *x = values + k + first[i + l];
                        const __m256d x0 = _mm256_cvtps_pd(_mm_loadu_ps(x));
                        const __m256d x1 = _mm256_cvtps_pd(_mm_loadu_ps(x + 4));
                        const __m256d x2 = _mm256_and_pd(_mm256_load_pd(plm_masks + cell_at[i + l] + 8),
                                                         _mm256_cvtps_pd(_mm_loadu_ps(x + 8)));
                        cell[l] = _mm256_add_pd(_mm256_add_pd(x0, x1), x2);
                        /* (the empty cells that fill the last four read samples past the chunk: not tested) */
                        if (i + l < m)
                            high = _mm256_max_pd(high, _mm256_max_pd(_mm256_max_pd(x0, x1), x2));
                    }
                    street = plm_sum4(cell[0], cell[1], cell[2], cell[3]);
                } else {
                    street = plm_sum4(
                        plm_run_sum(values + (long long)bound[i], bound[i + 1] - bound[i], &high),
                        plm_run_sum(values + (long long)bound[i + 1], bound[i + 2] - bound[i + 1], &high),
                        plm_run_sum(values + (long long)bound[i + 2], bound[i + 3] - bound[i + 2], &high),
                        plm_run_sum(values + (long long)bound[i + 3], bound[i + 4] - bound[i + 3], &high));
                }
                /* four cells with a saturated sample go the slow way, with the rest of the chunk */
                if (plm_has_odd(street, high, below, i, m)) {
                    if (i == 0)
                        return 0;
                    *next = (long long)bound[i];
                    *short_cells = straight;
                    return i;
                }
                __m256d count = _mm256_sub_pd(_mm256_loadu_pd(bound + i + 1), _mm256_load_pd(bound + i));
                if (contiguous && i + 4 <= m) {
                    long long at = i;
                    if (sign < 0) { /* cells i .. i + 3 at chip0 - i .. chip0 - i - 3 */
                        at = -i - 3;
                        street = plm_reverse(street), count = plm_reverse(count);
                    }
                    plm_add4(n_street + at, count);
                    plm_add4(sum_street + at, street);
                    continue;
                }
                double out[2][4] __attribute__((aligned(32)));
                _mm256_store_pd(out[0], count);
                _mm256_store_pd(out[1], street);
                for (long long l = 0; l < 4 && i + l < m; l++) {
                    n_street[(i + l) * stride] += out[0][l];
                    sum_street[(i + l) * stride] += out[1][l];
                }
            }
            *next = last;
            *short_cells = straight;
            return m;
        }
        /* 1 (cont.). where it enters and leaves each cell's footprint and core; for short cells, the masks */
        const __m256d half_k = _mm256_set1_pd(run->half_k), core_k = _mm256_set1_pd(run->core_k);
        const __m256d row = _mm256_set1_pd((double)PLM_MASK_ROW), width = _mm256_set1_pd((double)PLM_SHORT);
        __m256d not_short = zero; /* a cell of the chunk is shorter than 8 samples or longer than 12 */
        centre = first_centre;
        for (i = 0; i < m; i += 4) {
            __m256d at = _mm256_mul_pd(_mm256_sub_pd(centre, p0), inv_d);
            __m256d s = _mm256_load_pd(bound + i), e = _mm256_loadu_pd(bound + i + 1);
            __m256d a = plm_clamp(plm_past(_mm256_sub_pd(at, half_k), &near), s, e);
            __m256d b = plm_clamp(plm_past(_mm256_add_pd(at, half_k), &near), a, e);
            __m256d ca = b, cb = b;
            if (level == 2) {
                ca = plm_clamp(plm_past(_mm256_sub_pd(at, core_k), &near), a, b);
                cb = plm_clamp(plm_past(_mm256_add_pd(at, core_k), &near), ca, b);
            }
            _mm256_store_pd(f0 + i, a);
            _mm256_store_pd(f1 + i, b);
            _mm256_store_pd(c0 + i, ca);
            _mm256_store_pd(c1 + i, cb);
            /* short cells (8 to 12 samples): the masks' offsets, (lo·13 + hi)·12 with lo and hi from the cell's first
               sample (exact in doubles; for longer cells meaningless and not used) */
            not_short = _mm256_or_pd(not_short, plm_short_extent(s, e, i, m, k, first, cell_at));
            __m256d foot = _mm256_add_pd(_mm256_mul_pd(_mm256_sub_pd(a, s), row),
                                         _mm256_mul_pd(_mm256_sub_pd(b, s), width));
            __m256d core = _mm256_add_pd(_mm256_mul_pd(_mm256_sub_pd(ca, s), row),
                                         _mm256_mul_pd(_mm256_sub_pd(cb, s), width));
            _mm_store_si128((__m128i *)(foot_at + i), _mm256_cvttpd_epi32(foot));
            _mm_store_si128((__m128i *)(core_at + i), _mm256_cvttpd_epi32(core));
            centre = _mm256_add_pd(centre, step4);
        }
        /* (lanes of cells past the last count too: rarely, a chunk goes the slow way for nothing) */
        if (_mm256_movemask_pd(_mm256_cmp_pd(near, sure, _CMP_GE_OQ)))
            return 0;
        plm_axes axes;
        plm_make_axes(run, &axes);
        plm_fields fields = {
            chip0 + PLM_N_FOOT * fs, chip0 + PLM_SUM_FOOT * fs, chip0 + PLM_MAX_FOOT * fs, chip0 + PLM_N_CORE * fs,
            chip0 + PLM_SUM_CORE * fs, chip0 + PLM_N_STREET * fs, chip0 + PLM_SUM_STREET * fs,
            chip0 + run->inner_sum * fs, chip0 + run->inner_moment * fs, chip0 + run->outer_sum * fs,
            chip0 + run->outer_moment * fs, stride, contiguous};
        if (!_mm256_movemask_pd(not_short)) {
            /* 2 and 3. short cells (all of them: the usual case at up to 12 samples a pitch), four at a time; the
               moments count from each cell's first sample */
            const float *from = values + k;
            const __m256d below = _mm256_set1_pd((double)run->below);
            centre = first_centre;
            for (i = 0; i < m; i += 4) {
                /* two cells, their lanes added pairwise (as plm_sum4 and plm_max4 do), then the next two: fewer
                   vectors live at once than four cells' lanes */
                __m256d pair[2][5], high = neg;
                plm_prefetch(values, limit, (long long)bound[i], (long long)bound[i + 4], ahead);
                for (int h = 0; h < 2; h++) {
                    __m256d a[5], b[5];
                    long long l = i + 2 * h;
                    __m256d high_a, high_b;
                    plm_short_cell(from + first[l], plm_masks + foot_at[l], plm_masks + core_at[l],
                                   plm_masks + cell_at[l], &a[0], &a[1], &a[2], &a[3], &a[4], &high_a);
                    plm_short_cell(from + first[l + 1], plm_masks + foot_at[l + 1], plm_masks + core_at[l + 1],
                                   plm_masks + cell_at[l + 1], &b[0], &b[1], &b[2], &b[3], &b[4], &high_b);
                    /* (the empty cells that fill the last four read samples past the chunk: not tested) */
                    if (l < m)
                        high = _mm256_max_pd(high, high_a);
                    if (l + 1 < m)
                        high = _mm256_max_pd(high, high_b);
                    for (int q = 0; q < 4; q++)
                        pair[h][q] = _mm256_hadd_pd(a[q], b[q]);
                    pair[h][4] = _mm256_max_pd(_mm256_unpacklo_pd(a[4], b[4]), _mm256_unpackhi_pd(a[4], b[4]));
                }
                __m256d sum[5];
                for (int q = 0; q < 4; q++)
                    sum[q] = _mm256_add_pd(_mm256_permute2f128_pd(pair[0][q], pair[1][q], 0x20),
                                           _mm256_permute2f128_pd(pair[0][q], pair[1][q], 0x31));
                sum[4] = _mm256_max_pd(_mm256_permute2f128_pd(pair[0][4], pair[1][4], 0x20),
                                       _mm256_permute2f128_pd(pair[0][4], pair[1][4], 0x31));
                /* four cells with a saturated sample go the slow way, with the rest of the chunk: nothing of them
                   has been added yet */
                if (plm_has_odd(sum[0], high, below, i, m)) {
                    if (i == 0)
                        return 0;
                    *next = (long long)bound[i];
                    *short_cells = 1;
                    return i;
                }
                __m256d s = _mm256_load_pd(bound + i);
                plm_add_fields(run, &axes, &fields, i, m, centre, _mm256_sub_pd(sum[0], sum[1]), sum[1], sum[2],
                               sum[3], sum[4], s,
                               _mm256_loadu_pd(bound + i + 1), _mm256_load_pd(f0 + i), _mm256_load_pd(f1 + i),
                               _mm256_load_pd(c0 + i), _mm256_load_pd(c1 + i), s);
                centre = _mm256_add_pd(centre, step4);
            }
            *next = last;
            *short_cells = 1;
            return m;
        }
        if (!plm_all_plain(run->values + k, last - k, run->below))
            return 0;
        /* 2. longer cells: each cell's sums, in lanes; the moments count from the first footprint sample */
        __m256d lane_street[PLM_CHUNK + 4], lane_foot[PLM_CHUNK + 4], lane_core[PLM_CHUNK + 4];
        __m256d lane_moment[PLM_CHUNK + 4], lane_top[PLM_CHUNK + 4];
        for (i = 0; i < m; i++) {
            const double s = bound[i], e = bound[i + 1], a = f0[i], b = f1[i], n = b - a;
            plm_prefetch(values, limit, (long long)s, (long long)e, ahead);
            const float *x = values + (long long)a;
            const __m256d count = _mm256_set1_pd(n), core_from = _mm256_set1_pd(c0[i] - a);
            const __m256d core_to = _mm256_set1_pd(c1[i] - a);
            __m256d foot = zero, core = zero, moment = zero, top = neg;
            __m256d unused = zero; /* (the chunk's samples were tested above) */
            __m256d street = _mm256_add_pd(plm_run_sum(values + (long long)s, a - s, &unused),
                                           plm_run_sum(values + (long long)b, e - b, &unused));
            __m256d index = lanes;
            for (long long j = 0; j < (long long)n; j += 4) {
                __m256d value = _mm256_cvtps_pd(_mm_loadu_ps(x + j));
                __m256d on = _mm256_cmp_pd(index, count, _CMP_LT_OQ);
                __m256d in = _mm256_and_pd(_mm256_cmp_pd(index, core_from, _CMP_GE_OQ),
                                           _mm256_cmp_pd(index, core_to, _CMP_LT_OQ));
                __m256d on_value = _mm256_and_pd(on, value);
                foot = _mm256_add_pd(foot, on_value);
                core = _mm256_add_pd(core, _mm256_and_pd(in, value));
                moment = _mm256_fmadd_pd(on_value, index, moment);
                top = _mm256_max_pd(_mm256_blendv_pd(neg, value, on), top);
                index = _mm256_add_pd(index, four);
            }
            lane_street[i] = street, lane_foot[i] = foot, lane_core[i] = core, lane_moment[i] = moment;
            lane_top[i] = top;
        }
        for (; i % 4; i++) { /* empty cells to fill the last four */
            lane_street[i] = lane_foot[i] = lane_core[i] = lane_moment[i] = zero;
            lane_top[i] = neg;
        }
        /* 3. four cells at a time: their fields, added to acc */
        centre = first_centre;
        for (i = 0; i < m; i += 4) {
            __m256d a = _mm256_load_pd(f0 + i);
            plm_add_fields(run, &axes, &fields, i, m, centre,
                           plm_sum4(lane_street[i], lane_street[i + 1], lane_street[i + 2], lane_street[i + 3]),
                           plm_sum4(lane_foot[i], lane_foot[i + 1], lane_foot[i + 2], lane_foot[i + 3]),
                           plm_sum4(lane_core[i], lane_core[i + 1], lane_core[i + 2], lane_core[i + 3]),
                           plm_sum4(lane_moment[i], lane_moment[i + 1], lane_moment[i + 2], lane_moment[i + 3]),
                           plm_max4(lane_top[i], lane_top[i + 1], lane_top[i + 2], lane_top[i + 3]),
                           _mm256_load_pd(bound + i), _mm256_loadu_pd(bound + i + 1), a, _mm256_load_pd(f1 + i),
                           _mm256_load_pd(c0 + i), _mm256_load_pd(c1 + i), a);
            centre = _mm256_add_pd(centre, step4);
        }
        *next = last;
        return m;
    }

    /* whether this CPU can take the fast path */
    static int plm_can_be_fast(void) {
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
            return 0;
        plm_make_masks();
        return 1;
    }
    #else
    static long long plm_sum_chunk(const plm_run *run, long long c, long long k, long long stop, long long cells,
                                   long long *next, int *short_cells) {
        (void)run, (void)c, (void)k, (void)stop, (void)cells, (void)next, (void)short_cells;
        return 0;
    }
    static int plm_can_be_fast(void) { return 0; }
    #endif
    """
    ctypedef struct plm_run:
        const float *values
        long long readable
        float below
        int level
        double p0, d, inv_d, sign, half_k, core_k, cell_k, margin
        int outer_constant
        double outer_p0, outer_d, outer_centre, outer_offset
        double *acc
        long long first, inner_stride, field_stride
        int inner_sum, inner_moment, outer_sum, outer_moment
    int plm_fast
    long long plm_sum_chunk(const plm_run *run, long long c, long long k, long long stop, long long cells,
                            long long *next, int *short_cells) noexcept nogil
    bint plm_can_be_fast() noexcept nogil


# the task queue of accumulate_lines: the next task to take, the tasks finished, and a bounded wait for them
cdef extern from *:
    """
    static int plm_take(int *next) { return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED); }
    static void plm_finished(int *done) { __atomic_fetch_add(done, 1, __ATOMIC_RELEASE); }
    static void plm_await(int *done, int total, long spins) {
        while (spins-- > 0 && __atomic_load_n(done, __ATOMIC_ACQUIRE) < total) {
    #if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
    #endif
        }
    }
    """
    int plm_take(int *next) noexcept nogil
    void plm_finished(int *done) noexcept nogil
    void plm_await(int *done, int total, long spins) noexcept nogil


# -- the line walker --------------------------------------------------------------------------------------------

ctypedef struct _Job:
    # the arguments of accumulate_lines, as the tasks read them
    const float *samples
    int64_t samples_total  # samples in the caller's array
    const int64_t *line_offset
    const int64_t *line_count
    const double *col0
    const double *row0
    const double *dcol
    const double *drow
    const int64_t *in_band  # per line, [start, stop) of the samples in the band (computed first)
    int64_t lines
    double half_width
    double half_height
    double core_half_width
    double core_half_height
    double saturation
    bint fast  # the fast path may run: the CPU has it and the saturation level is not NaN
    float below  # x < saturation is x < below for every float x (below: the smallest float >= saturation)
    int64_t first_col
    int64_t first_row
    int64_t band_rows
    int64_t band_cols
    double *acc
    int64_t field_stride  # elements between fields, rows and columns of acc
    int64_t row_stride
    int64_t *fast_chunks  # per task: chunks summed by the fast path
    int64_t *short_chunks  # per task: of those, chunks of short cells (straight code)


ctypedef struct _Line:
    # one line as a task walks it: the axis whose cell changes more often is the inner one (cols for raster
    # lines): a run of constant outer cell and zone holds many inner cells
    _Axis inner
    _Axis outer
    bint inner_is_col
    const float *values  # the line's samples
    int64_t readable  # samples that may be read from values on (to the end of the caller's array)
    # the task's counts of chunks summed by the fast path and, of those, of short cells: on the task's own stack
    # until it ends (counted in the job's arrays, whose cache line the two threads share, every count moved that
    # line between the cores)
    int64_t *chunks


cdef inline void _axes(const _Job *job, int64_t j, _Line *line) noexcept nogil:
    cdef int64_t count = job.line_count[j]
    line.inner_is_col = fabs(job.dcol[j]) >= fabs(job.drow[j])
    if line.inner_is_col:
        _axis_from(&line.inner, job.col0[j], job.dcol[j], count, job.half_width, job.core_half_width,
                   job.first_col, _COL_BLOCK_SHIFT)
        _axis_from(&line.outer, job.row0[j], job.drow[j], count, job.half_height, job.core_half_height,
                   job.first_row, _ROW_BLOCK_SHIFT)
    else:
        _axis_from(&line.inner, job.row0[j], job.drow[j], count, job.half_height, job.core_half_height,
                   job.first_row, _ROW_BLOCK_SHIFT)
        _axis_from(&line.outer, job.col0[j], job.dcol[j], count, job.half_width, job.core_half_width,
                   job.first_col, _COL_BLOCK_SHIFT)
    line.values = job.samples + job.line_offset[j]
    line.readable = job.samples_total - job.line_offset[j]


cdef void _find_band(const _Job *job, int64_t j, int64_t *in_band) noexcept nogil:
    """[start, stop) of line j's samples whose chip is in the band; empty for a line with a non-finite start
    or step (the reference's positions are then NaN or infinite: no chip)."""
    cdef int64_t count = job.line_count[j]
    cdef _Axis col, row
    in_band[0] = 0
    in_band[1] = count
    if not (isfinite(job.col0[j]) and isfinite(job.row0[j]) and isfinite(job.dcol[j]) and isfinite(job.drow[j])):
        in_band[1] = 0
        return
    _axis_from(&col, job.col0[j], job.dcol[j], count, job.half_width, job.core_half_width, job.first_col,
               _COL_BLOCK_SHIFT)
    _axis_from(&row, job.row0[j], job.drow[j], count, job.half_height, job.core_half_height, job.first_row,
               _ROW_BLOCK_SHIFT)
    _band_range(&col, job.band_cols, count, &in_band[0], &in_band[1])
    _band_range(&row, job.band_rows, count, &in_band[0], &in_band[1])


cdef inline void _store(const _Job *job, const _Line *line, int64_t outer_cell, int64_t inner_cell,
                        const _Sums *sums) noexcept nogil:
    """Add one chip's sums (from one run of the line through its cell) to acc."""
    cdef int64_t row, col
    cdef double *chip
    cdef int64_t f = job.field_stride
    if line.inner_is_col:
        row, col = outer_cell - job.first_row, inner_cell - job.first_col
    else:
        row, col = inner_cell - job.first_row, outer_cell - job.first_col
    chip = job.acc + row * job.row_stride + col
    chip[_N_STREET * f] += sums.street_n
    chip[_SUM_STREET * f] += sums.street_total
    chip[_N_SAT * f] += sums.saturated
    if sums.n == 0:
        return
    chip[_N_FOOT * f] += sums.n
    chip[_SUM_FOOT * f] += sums.total
    if sums.most > chip[_MAX_FOOT * f]:
        chip[_MAX_FOOT * f] = sums.most
    chip[_N_CORE * f] += sums.core_n
    chip[_SUM_CORE * f] += sums.core_total
    if line.inner_is_col:
        chip[_SUM_U * f] += sums.inner
        chip[_SUM_UI * f] += sums.inner_v
        chip[_SUM_V * f] += sums.outer
        chip[_SUM_VI * f] += sums.outer_v
    else:
        chip[_SUM_V * f] += sums.inner
        chip[_SUM_VI * f] += sums.inner_v
        chip[_SUM_U * f] += sums.outer
        chip[_SUM_UI * f] += sums.outer_v


cdef inline void _sum_cell(const _Job *job, const _Line *line, int64_t outer_cell, int64_t c, int64_t start,
                           const int64_t *crossing, double outer_offset) noexcept nogil:
    """Sum one cell's samples [start, crossing[4]) (see :func:`_cell_crossings`) and add them to acc."""
    cdef const float *values = line.values
    cdef double saturation = job.saturation, centre = <double>c
    cdef _Sums sums
    _clear(&sums)
    _sum_street(values, start, crossing[0], saturation, &sums)
    if crossing[3] > crossing[0]:
        if line.outer.constant:
            _sum_foot(values, crossing[0], crossing[3], saturation, &line.inner, centre, crossing[1], crossing[2],
                      &sums)
            sums.outer = outer_offset * sums.n
            sums.outer_v = outer_offset * sums.total
        else:
            _sum_foot_slanted(values, crossing[0], crossing[3], saturation, &line.inner, centre, crossing[1],
                              crossing[2], &line.outer, <double>outer_cell, &sums)
    _sum_street(values, crossing[3], crossing[4], saturation, &sums)
    _store(job, line, outer_cell, c, &sums)


cdef inline int64_t _clamp(int64_t value, int64_t low, int64_t high) noexcept nogil:
    return low if value < low else (high if value > high else value)


cdef void _run_from(const _Job *job, const _Line *line, int64_t outer_cell, int level, double outer_offset,
                    plm_run *run) noexcept nogil:
    """What the fast path needs of a run of samples in one outer cell and zone."""
    cdef const _Axis *inner = &line.inner
    run.values = line.values
    run.readable = line.readable
    run.below = job.below
    run.level = level
    run.p0, run.d, run.inv_d, run.sign = inner.p0, inner.d, inner.inv_d, inner.sign
    run.half_k, run.core_k, run.cell_k, run.margin = inner.half_k, inner.core_k, inner.cell_k, inner.margin
    run.outer_constant = line.outer.constant
    run.outer_p0, run.outer_d = line.outer.p0, line.outer.d
    run.outer_centre, run.outer_offset = <double>outer_cell, outer_offset
    run.field_stride = job.field_stride
    run.first = inner.first
    if line.inner_is_col:
        run.acc = job.acc + (outer_cell - job.first_row) * job.row_stride
        run.inner_stride = 1
        run.inner_sum, run.inner_moment, run.outer_sum, run.outer_moment = _SUM_U, _SUM_UI, _SUM_V, _SUM_VI
    else:
        run.acc = job.acc + (outer_cell - job.first_col)
        run.inner_stride = job.row_stride
        run.inner_sum, run.inner_moment, run.outer_sum, run.outer_moment = _SUM_V, _SUM_VI, _SUM_U, _SUM_UI


cdef void _sum_cells(const _Job *job, const _Line *line, int64_t outer_cell, int level, int64_t start,
                     int64_t stop) noexcept nogil:
    """Sum samples [start, stop), all in one outer cell and outer zone (``level``: 0 street, 1 footprint but not
    core, 2 core), chip by chip along the inner axis."""
    cdef const _Axis *inner = &line.inner
    cdef int64_t crossing[5]
    cdef int64_t leave[_CHUNK_CELLS]
    cdef int64_t reach_foot[_CHUNK_CELLS]
    cdef int64_t pass_foot[_CHUNK_CELLS]
    cdef int64_t reach_core[_CHUNK_CELLS]
    cdef int64_t pass_core[_CHUNK_CELLS]
    cdef int64_t k = start, c = _cell_at(inner, start), i, cells
    cdef long long done, after
    cdef int short_cells
    cdef plm_run run
    cdef int64_t step = -1 if inner.d < 0.0 else 1
    cdef double centre, at_centre
    # along a chip row every sample has the same offset across the line
    cdef double outer_offset = _position(&line.outer, start) - <double>outer_cell
    # a line that moves at most half a cell per sample goes from each cell to the next one
    cdef bint chunked = not inner.constant and not inner.bisect and fabs(inner.d) <= 0.5
    cdef bint fast = chunked and job.fast
    if fast:
        _run_from(job, line, outer_cell, level, outer_offset, &run)
    while k < stop:
        if not chunked:
            _cell_crossings(inner, c, k, stop, level, crossing)
            _sum_cell(job, line, outer_cell, c, k, crossing, outer_offset)
            k = crossing[4]
            if k < stop:
                c = _cell_at(inner, k)
            continue
        cells = <int64_t>(<double>(stop - k) * fabs(inner.d)) + 2
        cells = cells if cells < _CHUNK_CELLS else _CHUNK_CELLS
        if fast:
            short_cells = 0
            done = plm_sum_chunk(&run, c, k, stop, cells, &after, &short_cells)
            if done:
                line.chunks[0] += 1
                line.chunks[1] += short_cells
                k = after
                c += step * done
                continue
        # the slow way: the crossings of the next cells first, each from its own cell index (computed side by
        # side, where one cell at a time each would wait for the cell before it), then each cell sample by sample
        centre = <double>c
        for i in range(cells):
            at_centre = (centre - inner.p0) * inner.inv_d
            leave[i] = _past_estimate(inner, _LEAVE_CELL, centre, 0.0, at_centre + inner.cell_k)
            if level:
                reach_foot[i] = _past_estimate(inner, _REACH, centre, -inner.half, at_centre - inner.half_k)
                pass_foot[i] = _past_estimate(inner, _PASS, centre, inner.half, at_centre + inner.half_k)
            if level == 2:
                reach_core[i] = _past_estimate(inner, _REACH, centre, -inner.core_half, at_centre - inner.core_k)
                pass_core[i] = _past_estimate(inner, _PASS, centre, inner.core_half, at_centre + inner.core_k)
            centre += inner.sign
        for i in range(cells):
            crossing[4] = leave[i] if leave[i] < stop else stop
            if level:
                crossing[0] = _clamp(reach_foot[i], k, crossing[4])
                crossing[3] = _clamp(pass_foot[i], crossing[0], crossing[4])
            else:
                crossing[0] = crossing[3] = crossing[4]
            if level == 2:
                crossing[1] = _clamp(reach_core[i], crossing[0], crossing[3])
                crossing[2] = _clamp(pass_core[i], crossing[1], crossing[3])
            else:
                crossing[1] = crossing[2] = crossing[3]
            _sum_cell(job, line, outer_cell, c, k, crossing, outer_offset)
            k = crossing[4]
            c += step
            if k >= stop:
                break


cdef void _sum_blocks(const _Job *job, const _Line *line, int64_t outer_cell, int level, int64_t start,
                      int64_t stop, int64_t task) noexcept nogil:
    """Sum the samples of [start, stop) (one outer cell and zone) that fall in blocks of class ``task``."""
    cdef const _Axis *inner = &line.inner
    cdef int64_t outer_block = (outer_cell - line.outer.first) >> line.outer.block_shift
    cdef int64_t k = start, block, owner, ahead, edge, block_stop, size = 1 << inner.block_shift
    cdef bint forward = inner.d >= 0.0
    while k < stop:
        block = (_cell_at(inner, k) - inner.first) >> inner.block_shift
        owner = (block + outer_block) % _CLASSES
        if owner != task:
            if inner.constant:
                return
            # the class goes up by one per block along +inner: jump straight to the next block of this task
            ahead = (task - owner + _CLASSES) % _CLASSES if forward else (owner - task + _CLASSES) % _CLASSES
            if forward:
                edge = inner.first + (block + ahead) * size - 1  # the last cell before that block
            else:
                edge = inner.first + (block - ahead + 1) * size  # the first cell after it
            k = _leave_cell(inner, edge, k, stop)
            continue
        edge = inner.first + (block + 1) * size - 1 if forward else inner.first + block * size
        block_stop = _leave_cell(inner, edge, k, stop)
        _sum_cells(job, line, outer_cell, level, k, block_stop)
        k = block_stop


cdef void _walk(const _Job *job, int64_t task) noexcept nogil:
    """Sum, line after line, the samples that fall in the blocks of class ``task``."""
    cdef _Line line
    cdef int64_t j, k, stop, r, run_start, run_stop, z
    cdef int64_t crossing[5]
    # the outer zone of each run between crossings: street, footprint, core, footprint, street
    cdef int level[5]
    level[0] = level[4] = 0
    level[1] = level[3] = 1
    level[2] = 2
    cdef int64_t chunks[2]
    chunks[0] = chunks[1] = 0
    line.chunks = chunks
    for j in range(job.lines):
        k = job.in_band[2 * j]
        stop = job.in_band[2 * j + 1]
        if k >= stop:
            continue
        _axes(job, j, &line)
        while k < stop:
            r = _cell_at(&line.outer, k)
            _cell_crossings(&line.outer, r, k, stop, 2, crossing)
            run_start = k
            for z in range(5):
                run_stop = crossing[z]
                if run_stop > run_start:
                    _sum_blocks(job, &line, r, level[z], run_start, run_stop, task)
                    run_start = run_stop
            k = crossing[4]
    job.fast_chunks[task] = chunks[0]
    job.short_chunks[task] = chunks[1]


def accumulate_lines(
    const float[:] samples_v,
    const int64_t[:] line_offset,
    const int64_t[:] line_count,
    const double[:] col0,
    const double[:] row0,
    const double[:] dcol,
    const double[:] drow,
    double half_width,
    double half_height,
    double core_half_width,
    double core_half_height,
    double saturation_v,
    int64_t first_col,
    int64_t first_row,
    double[:, :, :] acc,
):
    """Add the samples of straight scan lines to per-chip sums over a band of the chip grid.

    Sample ``k`` of line ``j`` is at grid position (col, row) = (col0[j] + k·dcol[j], row0[j] + k·drow[j]), in
    chip pitches with chip (c, r) centred at integer (c, r). Its chip is the nearest centre, (floor(col + 0.5),
    floor(row + 0.5)); with u = col - c and v = row - r it is on the chip's footprint when |u| <= half_width and
    |v| <= half_height, in its core when also |u| <= core_half_width and |v| <= core_half_height, and on its street
    otherwise. A sample ``>= saturation_v``, or not finite, is saturated: it counts in ``N_SAT`` only. Samples
    whose chip is outside the band are left out. :func:`tests.chip_reference.accumulate_lines_reference` is the
    definition; this classifies every sample exactly as it does and gets the sums to rounding (the order of
    summation differs).

    The result does not depend on the threads: bit-identical from run to run, whatever the thread count. It
    needs no memory beyond 16 bytes per line (each chip is summed by one task, straight into ``acc``).

    Parameters
    ----------
    samples_v
        The lines' samples, concatenated (a strided array is copied first).
    line_offset, line_count
        First sample of line j in ``samples_v``, and its number of samples.
    col0, row0, dcol, drow
        Grid position of sample 0 of line j, and the step per sample. A line with a non-finite one is left out.
    half_width, half_height
        Chip half size, pitch units (>= 0; at 0.5 or more the footprint fills the cell).
    core_half_width, core_half_height
        Half size of the chip's core (0 <= core <= chip).
    saturation_v
        Saturation level: samples at or above it are saturated (NaN: every sample is).
    first_col, first_row
        The band: ``acc[:, i, k]`` is chip (first_col + k, first_row + i).
    acc
        (FIELD_COUNT, band rows, band cols) float64, added to (not cleared): ``acc[N_FOOT]`` ... ``acc[N_SAT]``.
        ``acc[MAX_FOOT]`` is a running maximum: start it at -inf. Any strides with contiguous columns;
        :func:`accumulators` makes one, initialised, in the layout the kernel is fastest with.
    """
    cdef int64_t lines = line_offset.shape[0], j, total = samples_v.shape[0], task
    cdef float below
    if not (line_count.shape[0] == col0.shape[0] == row0.shape[0] == dcol.shape[0] == drow.shape[0] == lines):
        raise ValueError("line_offset, line_count, col0, row0, dcol and drow must have one element per line")
    if acc.shape[0] != _FIELD_COUNT:
        raise ValueError(f"acc must have FIELD_COUNT ({_FIELD_COUNT}) fields, not {acc.shape[0]}")
    if not (0.0 <= core_half_width <= half_width and 0.0 <= core_half_height <= half_height):
        raise ValueError("need 0 <= core half size <= chip half size, in both directions")
    if acc.strides[0] % sizeof(double) or acc.strides[1] % sizeof(double):
        raise ValueError("acc's strides must be whole elements")
    if acc.shape[2] > 1 and acc.strides[2] != sizeof(double):
        raise ValueError("acc's columns must be contiguous (acc[f, r] a contiguous row): see accumulators()")
    # the per-line arrays are small; copies make them contiguous for the tasks
    offsets = np.ascontiguousarray(line_offset, dtype=np.int64)
    counts = np.ascontiguousarray(line_count, dtype=np.int64)
    cdef const int64_t[::1] offset_c = offsets
    cdef const int64_t[::1] count_c = counts
    for j in range(lines):
        if count_c[j] < 0 or offset_c[j] < 0 or offset_c[j] > total - count_c[j]:
            raise ValueError(f"line {j}: samples [{offset_c[j]}, {offset_c[j] + count_c[j]}) are not in samples_v")
    if lines == 0 or acc.shape[1] == 0 or acc.shape[2] == 0:
        return
    cdef const float[::1] values = np.ascontiguousarray(samples_v) if total else np.zeros(1, dtype=np.float32)
    cdef const double[::1] col0_c = np.ascontiguousarray(col0)
    cdef const double[::1] row0_c = np.ascontiguousarray(row0)
    cdef const double[::1] dcol_c = np.ascontiguousarray(dcol)
    cdef const double[::1] drow_c = np.ascontiguousarray(drow)
    cdef _Job job
    job.samples = &values[0]
    job.samples_total = values.shape[0]
    job.line_offset = &offset_c[0]
    job.line_count = &count_c[0]
    job.col0, job.row0, job.dcol, job.drow = &col0_c[0], &row0_c[0], &dcol_c[0], &drow_c[0]
    job.lines = lines
    job.half_width, job.half_height = half_width, half_height
    job.core_half_width, job.core_half_height = core_half_width, core_half_height
    job.saturation = saturation_v
    below = <float>saturation_v
    if <double>below < saturation_v:
        below = nextafterf(below, INFINITY)
    job.below = below
    job.fast = plm_fast and below == below
    job.first_col, job.first_row = first_col, first_row
    job.band_rows, job.band_cols = acc.shape[1], acc.shape[2]
    job.acc = &acc[0, 0, 0]
    job.field_stride = acc.strides[0] // sizeof(double)
    job.row_stride = acc.strides[1] // sizeof(double)
    cdef int64_t *in_band = <int64_t *> malloc(2 * lines * sizeof(int64_t))
    if in_band == NULL:
        raise MemoryError()
    job.in_band = in_band
    cdef int64_t fast_chunks[_CLASSES]
    cdef int64_t short_chunks[_CLASSES]
    for task in range(_CLASSES):
        fast_chunks[task] = short_chunks[task] = 0
    job.fast_chunks = fast_chunks
    job.short_chunks = short_chunks
    cdef int counters[2]  # the next task, the tasks finished
    counters[0] = counters[1] = 0
    try:
        with nogil:
            # serially: a few float operations a line, where a parallel region of its own costs a sleeping
            # thread's wake-up (OMP_WAIT_POLICY=passive) at every call
            for j in range(lines):
                _find_band(&job, j, &in_band[2 * j])
            # the tasks taken in turn (as schedule="dynamic" would), then the calling thread, once out of tasks,
            # spins a little for the other's last one: at the region's end it would otherwise sleep
            # (OMP_WAIT_POLICY=passive) and wait for a wake-up, measured ~6 % of the kernel's wall time at 63 calls
            # a pass. Only the caller spins, only while the other thread still works on this call, and for
            # _AWAIT_SPINS at most: no CPU time measurably lost with another process on the cores (GOMP_SPINCOUNT,
            # which makes every waiting thread spin, cost 4 % there). One loop in the parallel block, no prange
            # inside it: no barrier for Cython to leave out.
            with parallel(num_threads=2):
                task = plm_take(&counters[0])
                while task < _CLASSES:
                    _walk(&job, task)
                    plm_finished(&counters[1])
                    task = plm_take(&counters[0])
                if omp_get_thread_num() == 0:
                    plm_await(&counters[1], _CLASSES, _AWAIT_SPINS)
    finally:
        free(in_band)
    global _last_fast_chunks, _last_short_chunks
    _last_fast_chunks = _last_short_chunks = 0
    for task in range(_CLASSES):
        _last_fast_chunks += fast_chunks[task]
        _last_short_chunks += short_chunks[task]


# accumulators: a field is this many doubles past a multiple of 4 KiB from the one before (see accumulators())
_FIELD_PAD = 40
# ... and the first field starts on a cache line (64 bytes: this many doubles)
_LINE_DOUBLES = 8


def accumulators(int64_t rows, int64_t cols) -> np.ndarray:
    """New accumulators for :func:`accumulate_lines` over a band of ``rows`` × ``cols`` chips.

    Zeros, with ``MAX_FOOT`` at -inf: what the kernel adds to. The fields are views of one buffer, each starting 320
    bytes past a multiple of 4 KiB from the one before, so that the fields of a chip fall in distinct sets of the
    L1 cache (whose sets repeat every 4 KiB) and a load from one field is never taken for a reload of a store to
    another (the processor compares the low 12 address bits first). The kernel updates the fields of four chips
    side by side; with fields 4 KiB apart it measured 28 % slower on the benchmark's band (16 × 10,000 chips),
    and with this layout 5 % faster than with the plain C-contiguous array. The first field starts on a cache line
    (NumPy's large buffers start 16 bytes past a page: every other 32-byte load and store of four chips' fields
    then straddled two cache lines): 3 % faster on the benchmark (0.094 → 0.091 s; its rows of 10,000 chips are
    whole lines, so every row starts on one too). Any (FIELD_COUNT, rows, cols) array with contiguous columns
    works too.

    Parameters
    ----------
    rows, cols
        The band's chip rows and columns (>= 0).

    Returns
    -------
    numpy.ndarray
        (FIELD_COUNT, rows, cols) float64, columns contiguous, fields ``strides[0]`` bytes apart.
    """
    if rows < 0 or cols < 0:
        raise ValueError(f"a band has rows, cols >= 0, not {rows} x {cols}")
    cdef int64_t chips = rows * cols
    # the field stride: a whole number of 4 KiB pages (512 doubles) plus the pad
    cdef int64_t field = (chips + 511) // 512 * 512 + _FIELD_PAD
    buffer = np.zeros(_FIELD_COUNT * field + _LINE_DOUBLES)
    # the first double on a cache line: NumPy aligns a buffer to 16 bytes only (all non-negative: C's % here)
    cdef int64_t line = _LINE_DOUBLES * sizeof(double), address = buffer.ctypes.data
    cdef int64_t start = (line - address % line) % line // sizeof(double)
    fields = buffer[start : start + _FIELD_COUNT * field].reshape(_FIELD_COUNT, field)
    acc = fields[:, :chips].reshape(_FIELD_COUNT, rows, cols)
    acc[_MAX_FOOT] = -np.inf
    return acc


plm_fast = plm_can_be_fast()


_last_fast_chunks = 0
_last_short_chunks = 0


def _fast_chunks() -> int:
    """How many chunks of cells the last call of :func:`accumulate_lines` summed by its fast path (for tests)."""
    return _last_fast_chunks


def _short_chunks() -> int:
    """How many of those chunks were of short cells (8 to 12 samples, the straight code with range masks)."""
    return _last_short_chunks


def fast_path() -> bool:
    """Whether :func:`accumulate_lines` takes its fast path (AVX2 and FMA, on a CPU that has them) where it can."""
    return bool(plm_fast)


def _set_fast_path(bint enabled) -> bool:
    """Let :func:`accumulate_lines` take its fast path (if the CPU has it) or not; returns whether it did. For tests
    and benchmarks: the slow path alone must give the same results."""
    global plm_fast
    previous = bool(plm_fast)
    plm_fast = enabled and plm_can_be_fast()
    return previous


# -- neighbour median -------------------------------------------------------------------------------------------

cdef inline void _order(float *a, float *b) noexcept nogil:
    """Put a, b in order: min and max instructions, no branch (on locals, once inlined: registers)."""
    cdef float x = a[0], y = b[0]
    # written as minss and maxss compute them (no NaN comes here), so that the compiler uses them
    a[0] = x if x < y else y
    b[0] = x if x > y else y


cdef inline float _finite_or_inf(float value, int *count) noexcept nogil:
    """The value when finite (counted), else +inf: it sorts after every finite value."""
    if value - value == 0.0:  # false for NaN and ±inf
        count[0] += 1
        return value
    return INFINITY


cdef void _median_row(const float *above, const float *row, const float *below, float *out,
                      int64_t cols) noexcept nogil:
    """Neighbour medians of one row (``above``/``below`` NULL where the map has no such row)."""
    cdef float v0, v1, v2, v3, v4, v5, v6, v7
    cdef float ordered[8]
    cdef int count
    cdef int64_t col
    cdef double middle
    for col in range(cols):
        # the 8 neighbours, missing or not finite ones as +inf (they sort last, uncounted) ...
        count = 0
        v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = INFINITY
        if col > 0:
            v0 = _finite_or_inf(row[col - 1], &count)
            if above != NULL:
                v1 = _finite_or_inf(above[col - 1], &count)
            if below != NULL:
                v2 = _finite_or_inf(below[col - 1], &count)
        if col + 1 < cols:
            v3 = _finite_or_inf(row[col + 1], &count)
            if above != NULL:
                v4 = _finite_or_inf(above[col + 1], &count)
            if below != NULL:
                v5 = _finite_or_inf(below[col + 1], &count)
        if above != NULL:
            v6 = _finite_or_inf(above[col], &count)
        if below != NULL:
            v7 = _finite_or_inf(below[col], &count)
        # ... in order by the 19-comparator sorting network for 8 values: in registers and without a branch, where
        # an insertion sort would branch on every comparison
        _order(&v0, &v2)
        _order(&v1, &v3)
        _order(&v4, &v6)
        _order(&v5, &v7)
        _order(&v0, &v4)
        _order(&v1, &v5)
        _order(&v2, &v6)
        _order(&v3, &v7)
        _order(&v0, &v1)
        _order(&v2, &v3)
        _order(&v4, &v5)
        _order(&v6, &v7)
        _order(&v2, &v4)
        _order(&v3, &v5)
        _order(&v1, &v4)
        _order(&v3, &v6)
        _order(&v1, &v2)
        _order(&v3, &v4)
        _order(&v5, &v6)
        ordered[0], ordered[1], ordered[2], ordered[3] = v0, v1, v2, v3
        ordered[4], ordered[5], ordered[6], ordered[7] = v4, v5, v6, v7
        if count == 0:
            out[col] = NAN
        elif count % 2:
            out[col] = ordered[count // 2]
        else:
            # in double, then rounded once: the two floats' sum is exact there
            middle = 0.5 * (<double>ordered[count // 2 - 1] + <double>ordered[count // 2])
            out[col] = <float>middle


def neighbour_median(const float[:, ::1] values, float[:, ::1] out, int64_t first_row_out=0):
    """Median of each chip's up to 8 neighbours' finite values, for a band of rows.

    ``out[i]`` is for row ``first_row_out + i`` of ``values``. A neighbour that is not finite, or not in
    ``values`` at all, is missing; no neighbour gives NaN; an even count gives the mean of the two middle values
    (in double precision, rounded once to float32). The chip's own value is not used, so a chip with a NaN value
    still gets its neighbours' median.

    Streaming over row bands: for the rows [r0, r1) of a map with R rows, pass ``values = map[max(r0 - 1, 0) :
    min(r1 + 1, R)]`` (one halo row each side where the map has one), ``first_row_out = r0 - max(r0 - 1, 0)``
    and an ``out`` of r1 - r0 rows: the result equals that of the whole map. (With ``out`` the shape of ``values``
    and ``first_row_out = 0`` every row of ``values`` is done, the halo rows as if the map ended there.)

    Parameters
    ----------
    values
        Per-chip values, (rows, cols) float32; NaN for no chip or not measured.
    out
        (rows of the band, cols) float32, written.
    first_row_out
        The row of ``values`` that ``out[0]`` is for.
    """
    cdef int64_t rows = out.shape[0], i
    if out.shape[1] != values.shape[1]:
        raise ValueError("out must have as many columns as values")
    if first_row_out < 0 or first_row_out + rows > values.shape[0]:
        raise ValueError("out's rows must be rows of values: 0 <= first_row_out <= len(values) - len(out)")
    if rows == 0 or values.shape[1] == 0:
        return
    cdef int64_t total = values.shape[0], cols = values.shape[1], row
    cdef const float *first = &values[0, 0]
    cdef float *result = &out[0, 0]
    for i in prange(rows, nogil=True, schedule="static", num_threads=2):
        row = first_row_out + i
        _median_row(first + (row - 1) * cols if row > 0 else NULL, first + row * cols,
                    first + (row + 1) * cols if row + 1 < total else NULL, result + i * cols, cols)
