"""Readable NumPy versions of the Cython kernels in :mod:`cext.pl_render`.

They define what the kernels compute: the tests check the kernels against them, and ``bench/`` times the
kernels against them. Same arguments, same results (to floating-point rounding), many times slower.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def carrier_density(
    generation: np.ndarray,
    a_coeff: np.ndarray,
    c_coeff: np.ndarray,
    shunt: np.ndarray,
    shunt_saturation: np.ndarray,
    *,
    iterations: int = 200,
) -> np.ndarray:
    """Solve ``G = A·n + n² + C·n³ + S·n/(1 + n/n_sat)`` for ``n >= 0`` by bisection (B = 1 units).

    Examples
    --------
    >>> float(carrier_density(np.array([2.0]), np.array([1.0]), np.array([0.0]), np.array([0.0]), np.array([1.0]))[0])
    1.0
    """
    generation = np.asarray(generation, dtype=np.float64)
    low = np.zeros_like(generation)
    high = np.sqrt(np.maximum(generation, 0.0))  # n² alone already exceeds G beyond this
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        value = (
            a_coeff * middle
            + middle * middle
            + c_coeff * middle**3
            + shunt * middle / (1.0 + middle / shunt_saturation)
            - generation
        )
        high = np.where(value > 0, middle, high)
        low = np.where(value > 0, low, middle)
    return np.where(generation > 0, 0.5 * (low + high), 0.0)


def render_line(  # noqa: PLR0917 - the same positional signature as the Cython kernel it defines
    col_f: np.ndarray,
    row_f: np.ndarray,
    power_w: np.ndarray,
    col0: int,
    band_row0: np.ndarray,
    band_height: int,
    a_coeff: np.ndarray,
    c_coeff: np.ndarray,
    shunt: np.ndarray,
    shunt_saturation: np.ndarray,
    excitation: np.ndarray,
    pl_gain_v_per_w: np.ndarray,
    scatter_v_per_w: np.ndarray,
    half_width: float,
    half_height: float,
    sigma_col: float,
    sigma_row: float,
    generation_per_w: float,
    reach: int,
) -> np.ndarray:
    """Noiseless detector voltage per sample; see :func:`cext.pl_render.render_line` for the arguments."""
    col_f, row_f, power_w = (np.asarray(v, dtype=np.float64) for v in (col_f, row_f, power_w))
    centre_col = np.floor(col_f + 0.5).astype(np.int64)
    centre_row = np.floor(row_f + 0.5).astype(np.int64)
    signal = np.zeros(col_f.shape)
    scale_x, scale_y = 1.0 / (np.sqrt(2.0) * sigma_col), 1.0 / (np.sqrt(2.0) * sigma_row)
    for dc in range(-reach, reach + 1):
        for dr in range(-reach, reach + 1):
            col, row = centre_col + dc, centre_row + dr
            band_col = col - col0
            inside = (band_col >= 0) & (band_col < band_row0.size)
            offset = row - band_row0[np.clip(band_col, 0, band_row0.size - 1)]
            inside &= (offset >= 0) & (offset < band_height)
            slot = np.where(inside, band_col * band_height + offset, 0)
            du, dv = col_f - col, row_f - row
            overlap = (
                0.25
                * (erf((half_width - du) * scale_x) + erf((half_width + du) * scale_x))
                * (erf((half_height - dv) * scale_y) + erf((half_height + dv) * scale_y))
            )
            overlap = np.where(inside & (overlap >= 1e-12), overlap, 0.0)
            absorbed = power_w * overlap * excitation[slot]
            n = carrier_density(
                absorbed * generation_per_w, a_coeff[slot], c_coeff[slot], shunt[slot], shunt_saturation[slot]
            )
            signal += scatter_v_per_w[slot] * power_w * overlap + pl_gain_v_per_w[slot] * n * n / generation_per_w
    return signal
