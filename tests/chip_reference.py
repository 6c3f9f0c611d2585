"""Readable NumPy versions of the per-chip kernels in :mod:`cext.chip_kernels`.

They define what the kernels compute: the tests check the kernels against them. Same arguments (except that
:func:`accumulate_lines_reference` returns a new accumulator array instead of adding to one), same results to
floating-point rounding of the sums (the kernel sums in another order; counts, maxima and which sample goes where
are the same), many times slower and with several arrays the size of the samples.
"""

from __future__ import annotations

import numpy as np

# the fields of the accumulator array, as in cext.chip_kernels
N_FOOT, SUM_FOOT, MAX_FOOT, N_CORE, SUM_CORE, SUM_U, SUM_V, SUM_UI, SUM_VI, N_STREET, SUM_STREET, N_SAT = range(12)
FIELD_COUNT = 12


def sample_positions(
    line_count: np.ndarray, col0: np.ndarray, row0: np.ndarray, dcol: np.ndarray, drow: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Grid (col, row) of every sample of the lines, in line order: ``col0 + k·dcol``, ``row0 + k·drow``."""
    line_count = np.asarray(line_count, dtype=np.int64)
    line = np.repeat(np.arange(line_count.size), line_count)
    starts = np.cumsum(line_count) - line_count
    k = (np.arange(line.size) - np.repeat(starts, line_count)).astype(np.float64)
    col = np.asarray(col0, dtype=np.float64)[line] + k * np.asarray(dcol, dtype=np.float64)[line]
    row = np.asarray(row0, dtype=np.float64)[line] + k * np.asarray(drow, dtype=np.float64)[line]
    return col, row


def accumulate_lines_reference(  # noqa: PLR0917 - the kernel's arguments, in its order
    samples_v: np.ndarray,
    line_offset: np.ndarray,
    line_count: np.ndarray,
    col0: np.ndarray,
    row0: np.ndarray,
    dcol: np.ndarray,
    drow: np.ndarray,
    half_width: float,
    half_height: float,
    core_half_width: float,
    core_half_height: float,
    saturation_v: float,
    first_col: int,
    first_row: int,
    band_shape: tuple[int, int],
) -> np.ndarray:
    """Per-chip sums of the lines' samples over a band of ``band_shape`` (rows, cols) chips.

    Returns a new (FIELD_COUNT, rows, cols) float64 array: what :func:`cext.chip_kernels.accumulate_lines`
    adds to an array of zeros with ``MAX_FOOT`` at -inf.
    """
    rows, cols = band_shape
    acc = np.zeros((FIELD_COUNT, rows, cols))
    acc[MAX_FOOT] = -np.inf
    line_offset = np.asarray(line_offset, dtype=np.int64)
    line_count = np.asarray(line_count, dtype=np.int64)
    index = np.zeros(0, dtype=np.int64)
    if line_offset.size:
        index = np.concatenate([np.arange(o, o + n) for o, n in zip(line_offset, line_count, strict=True)])
    value = np.asarray(samples_v, dtype=np.float32)[index].astype(np.float64)
    # NaN and infinite positions and samples are expected: they are masked out, not errors
    with np.errstate(invalid="ignore", over="ignore"):
        col, row = sample_positions(line_count, col0, row0, dcol, drow)
        # nearest chip centre, ties to the + side; NaN and infinite positions have no chip
        c = np.floor(col + 0.5)
        r = np.floor(row + 0.5)
        in_band = (c >= first_col) & (c < first_col + cols) & (r >= first_row) & (r < first_row + rows)
        value, col, row, c, r = value[in_band], col[in_band], row[in_band], c[in_band], r[in_band]
        u = col - c
        v = row - r
        saturated = ~((value < saturation_v) & (value > -np.inf))  # also every NaN
        foot = (np.abs(u) <= half_width) & (np.abs(v) <= half_height) & ~saturated
        core = foot & (np.abs(u) <= core_half_width) & (np.abs(v) <= core_half_height)
        street = ~foot & ~saturated
        u_value, v_value = u * value, v * value
    band_row = (r - first_row).astype(np.int64)
    band_col = (c - first_col).astype(np.int64)

    def add(field: int, mask: np.ndarray, weight: np.ndarray | float = 1.0) -> None:
        weights = np.broadcast_to(weight, mask.shape)[mask]
        np.add.at(acc[field], (band_row[mask], band_col[mask]), weights)

    add(N_FOOT, foot)
    add(SUM_FOOT, foot, value)
    np.maximum.at(acc[MAX_FOOT], (band_row[foot], band_col[foot]), value[foot])
    add(N_CORE, core)
    add(SUM_CORE, core, value)
    add(SUM_U, foot, u)
    add(SUM_V, foot, v)
    add(SUM_UI, foot, u_value)
    add(SUM_VI, foot, v_value)
    add(N_STREET, street)
    add(SUM_STREET, street, value)
    add(N_SAT, saturated)
    return acc


def neighbour_median_reference(values: np.ndarray) -> np.ndarray:
    """Median of each element's up to 8 neighbours' finite values (NaN when there is none), float32.

    An even count gives the mean of the two middle values, computed in float64 and rounded once. Neighbours
    beyond the array's edges are missing.
    """
    values = np.asarray(values, dtype=np.float64)
    rows, cols = values.shape
    padded = np.full((rows + 2, cols + 2), np.nan)
    padded[1:-1, 1:-1] = np.where(np.isfinite(values), values, np.nan)
    neighbours = np.stack(
        [
            padded[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
            if (dr, dc) != (0, 0)
        ]
    )
    ordered = np.sort(neighbours, axis=0)  # NaN last
    count = np.isfinite(neighbours).sum(axis=0)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[None], axis=0)[0]
    high = np.take_along_axis(ordered, (count // 2)[None], axis=0)[0]
    median = np.where(count % 2 == 1, low, 0.5 * (low + high))
    return np.where(count > 0, median, np.nan).astype(np.float32)
