"""First-pass chip flags: which chips deserve a spectrum before the full analysis has run.

Right after the intensity passes, the engine takes spectra of the chips the recipe's pattern names and of chips
that already look wrong. This module finds the latter from the raw lines: each sample is assigned to the chip
on its area (through the alignment's placement), a chip's value per pass is the brightest such sample,
and a chip is flagged when it is dark at the highest power or its low/high-power efficiency ratio is far below the
wafer's (the leakage signature). It is deliberately simple; the analysis pipeline computes the real per-chip
measurements later.
"""

from __future__ import annotations

import numpy as np

from cext import chip_kernels as kernels
from inspection.pipeline import line_geometry
from inspection.recipe import Recipe
from inspection.scanfile import ScanFile
from inspection.wafer import Placement

DARK_FRACTION = 0.5
"""Flag a chip whose high-power peak is below this fraction of the wafer median."""

RATIO_FRACTION = 0.5
"""Flag a chip whose low/high efficiency ratio is below this fraction of the wafer median."""

PEAK_BAND_BYTES = 256 * 2**20
"""Accumulator memory per band of chip rows."""


def chip_peaks(scan: ScanFile, recipe: Recipe, placement: Placement, pass_index: int) -> np.ndarray:
    """Brightest sample on each chip's area in one pass: a ``(rows, cols)`` float32 array indexed ``[row, col]`` (row
    0 at the bottom, like every chip map), NaN where no sample fell. Computed by the pipeline's per-chip kernel in
    bands of about PEAK_BAND_BYTES of accumulators."""
    layout = recipe.layout()
    grid = layout.grid
    shape = (layout.row_count, layout.column_count)
    peaks = np.full(shape, np.nan, dtype=np.float32)
    records = scan.line_records(pass_index)
    if records.size == 0:
        return peaks
    geometry = line_geometry(scan.plan_lines[records["line_index"]], layout, placement, recipe.sampling.sample_pitch_um)
    offsets = records["sample_offset"].astype(np.int64)
    counts = records["sample_count"].astype(np.int64)
    half_width = 0.5 * grid.chip_width_um / grid.pitch_x_um
    half_height = 0.5 * grid.chip_height_um / grid.pitch_y_um
    band_rows = max(1, PEAK_BAND_BYTES // (kernels.FIELD_COUNT * 8 * shape[1]))
    for first_row in range(0, shape[0], band_rows):
        last_row = min(first_row + band_rows, shape[0])
        chosen = geometry.lines_in_rows(counts, first_row, last_row)
        if chosen.size == 0:
            continue
        start = int(offsets[chosen].min())
        samples = scan.samples_between(pass_index, start, int((offsets[chosen] + counts[chosen]).max()))
        acc = kernels.accumulators(last_row - first_row, shape[1])  # zeros, MAX_FOOT at -inf
        kernels.accumulate_lines(
            samples, offsets[chosen] - start, counts[chosen], geometry.col0[chosen], geometry.row0[chosen],
            geometry.dcol[chosen], geometry.drow[chosen], half_width, half_height, half_width, half_height,
            np.inf, 0, first_row, acc,
        )  # fmt: skip
        brightest = acc[kernels.MAX_FOOT]
        peaks[first_row:last_row] = np.where(np.isfinite(brightest), brightest, np.nan)
    return peaks


def flag_chips(
    scan: ScanFile, recipe: Recipe, placement: Placement, *, max_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(col, row) of up to ``max_count`` usable chips that look wrong after the intensity passes, worst first."""
    layout = recipe.layout()
    powers = recipe.excitation.powers_w
    empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # whole-wafer float32 maps, worked on in place: an 8" wafer has 100 M cells, so no index arrays over all chips
    high = chip_peaks(scan, recipe, placement, len(powers) - 1)
    low = chip_peaks(scan, recipe, placement, 0)
    measured = layout.usable_mask()
    measured &= np.isfinite(high)
    measured &= np.isfinite(low)
    if max_count == 0 or not measured.any():
        return empty
    high[~measured] = np.nan
    median_bright = float(np.nanmedian(high))
    ratio = low  # low/high efficiency ratio, in low's memory
    ratio *= np.float32(powers[-1] / powers[0])
    ratio /= np.maximum(high, np.float32(1e-30))
    median_ratio = float(np.nanmedian(ratio))
    # how far below the flag threshold a chip is; positive means flagged
    high /= np.float32(-DARK_FRACTION * median_bright)
    high += 1.0
    ratio /= np.float32(-RATIO_FRACTION * median_ratio)
    ratio += 1.0
    severity = np.fmax(high, ratio)
    severity[~measured] = np.nan
    del high, ratio, measured
    rows, cols = np.nonzero(severity > 0)
    if rows.size == 0:
        return empty
    values = severity[rows, cols].astype(np.float64)
    order = np.lexsort((cols, rows, -values))[:max_count]  # worst first; ties in index order
    return cols[order].astype(np.int64), rows[order].astype(np.int64)
