"""Readable NumPy versions of the Cython kernels in :mod:`cext.pl_render`.

They define what the kernels compute: the tests check the kernels against them, and ``bench/`` times the
kernels against them. Same arguments, same results (to floating-point rounding, or for the line renderer to the
documented 1e-9 of the line's peak: the kernel tabulates the overlaps and leaves out light that is provably
negligible), many times slower.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

# -- the spot path in grid units --------------------------------------------------------------------------------


def grid_units(frame: tuple[float, ...], x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wafer-frame positions → fractional (col, row) of the chip grid, chip centres at integers.

    ``frame`` is ``(origin_x_um, origin_y_um, cos, sin, pitch_x_um, pitch_y_um, anchor_col, anchor_row)``: the
    grid's origin (the anchor chip's centre) and rotation in the wafer frame, its pitches, and the anchor's index.
    """
    origin_x, origin_y, cos_rotation, sin_rotation, pitch_x, pitch_y, anchor_col, anchor_row = frame
    dx = np.asarray(x_um, dtype=np.float64) - origin_x
    dy = np.asarray(y_um, dtype=np.float64) - origin_y
    col_f = (cos_rotation * dx + sin_rotation * dy) * (1.0 / pitch_x) + anchor_col
    row_f = (-sin_rotation * dx + cos_rotation * dy) * (1.0 / pitch_y) + anchor_row
    return col_f, row_f


def lit_distance(half_size: float, sigma: float) -> float:
    """Centre distance (grid units) from which a chip's 1-D overlap is below the 1e-12 cut-off: 0.5·erfc(5) < 1e-12."""
    return half_size + 5.0 * math.sqrt(2.0) * sigma


def lit_chips(  # noqa: PLR0917 - the geometry arguments of the kernels, in their order
    col_f: np.ndarray,
    row_f: np.ndarray,
    half_width: float,
    half_height: float,
    sigma_col: float,
    sigma_row: float,
    reach: int,
) -> set[tuple[int, int]]:
    """Every chip ``(col, row)`` some sample lights: within ``reach`` of the nearest chip and nearer than the
    lit distance in both directions. :func:`cext.pl_render.line_band` must hold all of them."""
    chips: set[tuple[int, int]] = set()
    centre_col = np.floor(np.asarray(col_f) + 0.5).astype(np.int64)
    centre_row = np.floor(np.asarray(row_f) + 0.5).astype(np.int64)
    for dc in range(-reach, reach + 1):
        for dr in range(-reach, reach + 1):
            col, row = centre_col + dc, centre_row + dr
            lit = (np.abs(col_f - col) < lit_distance(half_width, sigma_col)) & (
                np.abs(row_f - row) < lit_distance(half_height, sigma_row)
            )
            chips.update(zip(col[lit].tolist(), row[lit].tolist(), strict=True))
    return chips


def full_band(col_first: int, col_last: int, row_first: int, row_last: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The band of :func:`render_line` holding every chip of a rectangle: ``(col0, band_row0, band_start)``."""
    columns, height = col_last - col_first + 1, row_last - row_first + 1
    return col_first, np.full(columns, row_first, dtype=np.int64), np.arange(columns + 1, dtype=np.int64) * height


# -- carrier density ----------------------------------------------------------------------------------------------


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


# -- the line renderer --------------------------------------------------------------------------------------------


def render_line(  # noqa: PLR0917 - the same positional signature as the Cython kernel it defines
    x_um: np.ndarray,
    y_um: np.ndarray,
    power_w: np.ndarray,
    frame: tuple[float, ...],
    col0: int,
    band_row0: np.ndarray,
    band_start: np.ndarray,
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
    noise_key: int | None = None,
    read_noise_v: float = 0.0,
    shot_noise_v: float = 0.0,
    background_v: float = 0.0,
) -> np.ndarray:
    """Detector voltage per sample; see :func:`cext.pl_render.render_line` for the arguments."""
    col_f, row_f = grid_units(frame, x_um, y_um)
    power_w = np.asarray(power_w, dtype=np.float64)
    band_row0, band_start = np.asarray(band_row0), np.asarray(band_start)
    centre_col = np.floor(col_f + 0.5).astype(np.int64)
    centre_row = np.floor(row_f + 0.5).astype(np.int64)
    signal = np.zeros(col_f.shape)
    scale_x, scale_y = 1.0 / (np.sqrt(2.0) * sigma_col), 1.0 / (np.sqrt(2.0) * sigma_row)
    for dc in range(-reach, reach + 1 if band_start[-1] > 0 else -reach):  # no chips in the band: no light
        for dr in range(-reach, reach + 1):
            col, row = centre_col + dc, centre_row + dr
            band_col = col - col0
            inside = (band_col >= 0) & (band_col < band_row0.size)
            band_col = np.clip(band_col, 0, band_row0.size - 1)
            offset = row - band_row0[band_col]
            inside &= (offset >= 0) & (offset < band_start[band_col + 1] - band_start[band_col])
            slot = np.where(inside, band_start[band_col] + offset, 0)
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
            # emitted PL = IQE · absorbed = (n² / G) · absorbed = n² / generation_per_w
            signal += scatter_v_per_w[slot] * power_w * overlap + pl_gain_v_per_w[slot] * n * n / generation_per_w
    if noise_key is None:
        return signal
    # read noise plus shot noise that grows with the light
    sigma = np.sqrt(read_noise_v**2 + shot_noise_v * np.maximum(signal, 0.0))
    return signal + background_v + sigma * standard_normal(noise_key, signal.size)


# -- detector noise -----------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_REST_SALT = 0x5851F42D4C957F2D
# Doornik's ziggurat (ZIGNOR): 128 layers of area V under exp(-x²/2), the base one with the tail beyond R
_ZIGGURAT_R = 3.442619855899
_ZIGGURAT_V = 9.91256303526217e-3


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray]:
    """The layers' right edges x[0..128] and the ratios x[i + 1] / x[i] (x[0]: the base layer with its tail)."""
    edges = [0.0] * 129
    f = math.exp(-0.5 * _ZIGGURAT_R * _ZIGGURAT_R)
    edges[0] = _ZIGGURAT_V / f
    edges[1] = _ZIGGURAT_R
    for i in range(2, 128):
        edges[i] = math.sqrt(-2.0 * math.log(_ZIGGURAT_V / edges[i - 1] + f))
        f = math.exp(-0.5 * edges[i] * edges[i])
    x = np.array(edges)
    return x, x[1:] / x[:-1]


_LAYER_EDGE, _LAYER_RATIO = _ziggurat_tables()


def _mix64(z: np.ndarray | int) -> np.ndarray | int:
    """SplitMix64 finaliser (on NumPy uint64 arrays or Python ints)."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def standard_normal(key: int, count: int) -> np.ndarray:
    """The standard normal numbers the renderer adds its noise with: sample ``i``'s depends only on (key, i).

    Each draw runs Doornik's ziggurat: the first random number is output ``i`` of the SplitMix64 sequence
    seeded with ``key`` (53 bits for the uniform ``u`` in [-1, 1), the lowest 7 for the layer). The 1 % of
    draws that land outside their layer's rectangle go on with random numbers from a SplitMix64 stream of the
    sample's own.
    """
    x, ratio = _LAYER_EDGE, _LAYER_RATIO
    index = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _mix64(np.uint64(key) + (index + np.uint64(1)) * np.uint64(_GOLDEN))
    u = 2.0 * ((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53) - 1.0
    layer = (bits & np.uint64(127)).astype(np.int64)
    out = u * x[layer]
    for i in np.flatnonzero(np.abs(u) >= ratio[layer]):
        out[i] = _normal_rest(key, int(i), float(u[i]), int(layer[i]))
    return out


def _normal_rest(key: int, index: int, u: float, layer: int) -> float:
    """A ziggurat draw that missed its rectangle: the tail, a wedge, or another try."""
    x, ratio = _LAYER_EDGE, _LAYER_RATIO
    stream = _mix64(_mix64(key ^ _REST_SALT) ^ ((index * _GOLDEN) & _MASK64))

    def uniform() -> float:
        nonlocal stream
        stream = (stream + _GOLDEN) & _MASK64
        return (_mix64(stream) >> 11) * 2.0**-53

    while True:
        if layer == 0:  # the tail beyond R (Marsaglia's method)
            while True:
                tail = math.log(1.0 - uniform()) / _ZIGGURAT_R
                if -2.0 * math.log(1.0 - uniform()) >= tail * tail:
                    return tail - _ZIGGURAT_R if u < 0.0 else _ZIGGURAT_R - tail
        value = u * x[layer]
        f0 = math.exp(-0.5 * (x[layer] * x[layer] - value * value))
        f1 = math.exp(-0.5 * (x[layer + 1] * x[layer + 1] - value * value))
        if f1 + uniform() * (f0 - f1) < 1.0:
            return value
        stream = (stream + _GOLDEN) & _MASK64
        bits = _mix64(stream)
        u = 2.0 * ((bits >> 11) * 2.0**-53) - 1.0
        layer = bits & 127
        if abs(u) < ratio[layer]:
            return u * x[layer]
