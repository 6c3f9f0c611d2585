# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Photoluminescence forward model kernels for the virtual station.

The chips' carrier density follows the ABC model with a saturating shunt (leakage) term, in units where B = 1:

    G = A·n + n² + C·n³ + S·n / (1 + n / n_sat)

with G the generation rate of carriers (proportional to the absorbed excitation power density). The emitted
PL power is IQE × absorbed power, IQE = n² / G. Carriers spread over a chip, so a chip's G is set by the part
of the Gaussian laser spot that falls on the chip (the spot/chip overlap).
"""

from cython.parallel cimport prange, threadid
from libc.math cimport erf, sqrt, fabs, cbrt, floor

import numpy as np


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


def render_line(
    const double[:] col_f,
    const double[:] row_f,
    const double[:] power_w,
    long col0,
    const long[:] band_row0,
    long band_height,
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
):
    """Noiseless detector voltage for a sequence of spot positions.

    Chips are looked up in a *band*: for column ``c`` (``col0 <= c < col0 + len(band_row0)``) the rows
    ``band_row0[c - col0] .. + band_height - 1`` are stored at slot ``(c - col0) * band_height + (r - band_row0)``
    of the per-chip arrays. Chips outside the band contribute nothing (the caller makes the band wide enough).

    Parameters
    ----------
    col_f, row_f
        Spot centre in grid units (chip centres at integers).
    power_w
        Laser power at each sample.
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

    Returns
    -------
    ndarray of float64, one voltage per sample
    """
    cdef Py_ssize_t count = col_f.shape[0]
    cdef Py_ssize_t band_columns = band_row0.shape[0]
    cdef long span = 2 * reach + 1
    out = np.zeros(count, dtype=np.float64)
    cdef double[:] signal = out
    # the row overlaps of a sample do not depend on the column: one scratch row per thread
    scratch_array = np.empty((64, span), dtype=np.float64)
    cdef double[:, :] row_overlap = scratch_array
    cdef Py_ssize_t i, slot, band_col
    cdef int thread
    cdef long centre_col, centre_row, col, row, dc, dr, offset
    cdef double inv_x = 1.0 / (sqrt(2.0) * sigma_col)
    cdef double inv_y = 1.0 / (sqrt(2.0) * sigma_row)
    cdef double du, dv, fx, overlap, absorbed, n, total
    for i in prange(count, nogil=True, schedule="static", num_threads=2):
        thread = threadid()
        centre_col = <long>floor(col_f[i] + 0.5)
        centre_row = <long>floor(row_f[i] + 0.5)
        for dr in range(-reach, reach + 1):
            dv = row_f[i] - (centre_row + dr)
            row_overlap[thread, dr + reach] = 0.5 * (erf((half_height - dv) * inv_y) + erf((half_height + dv) * inv_y))
        total = 0.0
        for dc in range(-reach, reach + 1):
            col = centre_col + dc
            band_col = col - col0
            if band_col < 0 or band_col >= band_columns:
                continue
            du = col_f[i] - col
            fx = 0.5 * (erf((half_width - du) * inv_x) + erf((half_width + du) * inv_x))
            if fx < 1e-12:
                continue
            for dr in range(-reach, reach + 1):
                row = centre_row + dr
                offset = row - band_row0[band_col]
                if offset < 0 or offset >= band_height:
                    continue
                slot = band_col * band_height + offset
                if excitation[slot] <= 0.0 and scatter_v_per_w[slot] <= 0.0:
                    continue
                overlap = fx * row_overlap[thread, dr + reach]
                if overlap < 1e-12:
                    continue
                total = total + scatter_v_per_w[slot] * power_w[i] * overlap
                absorbed = power_w[i] * overlap * excitation[slot]
                if absorbed <= 0.0:
                    continue
                n = _carrier_density(absorbed * generation_per_w, a_coeff[slot], c_coeff[slot], shunt[slot],
                                     shunt_saturation[slot], -1.0)
                # emitted PL = IQE · absorbed = (n² / G) · absorbed = n² / generation_per_w
                total = total + pl_gain_v_per_w[slot] * n * n / generation_per_w
        signal[i] = total
    return out
