"""First-pass chip flags: which chips deserve a spectrum before the full analysis has run.

Right after the intensity passes, the engine takes spectra of the chips the recipe's pattern names and of chips
that already look wrong. This module finds the latter from the raw lines: each sample is assigned to the chip
nearest the spot (through the alignment's placement), a chip's value per pass is the brightest sample on it,
and a chip is flagged when it is dark at the highest power or its low/high-power efficiency ratio is far below the
wafer's (the leakage signature). It is deliberately simple; the analysis pipeline computes the real per-chip
measurements later.
"""

from __future__ import annotations

import numpy as np

from inspection.recipe import Recipe
from inspection.scanfile import ScanFile
from inspection.wafer import Placement

DARK_FRACTION = 0.5
"""Flag a chip whose high-power peak is below this fraction of the wafer median."""

RATIO_FRACTION = 0.5
"""Flag a chip whose low/high efficiency ratio is below this fraction of the wafer median."""


def chip_peaks(scan: ScanFile, recipe: Recipe, placement: Placement, pass_index: int) -> np.ndarray:
    """Brightest sample on each chip in one pass: a ``(rows, cols)`` float32 array indexed ``[row, col]`` (row 0
    at the bottom, like every chip map), NaN where no sample fell."""
    layout = recipe.layout()
    peaks = np.full((layout.row_count, layout.column_count), np.nan, dtype=np.float32)
    pitch = recipe.sampling.sample_pitch_um
    records = scan.line_records(pass_index)
    lines = scan.plan_lines
    for record in records:
        line = lines[int(record["line_index"])]
        samples = scan.line_samples(pass_index, int(record["line_index"]))
        start = np.array([line["x_start_um"], line["y_start_um"]])
        stop = np.array([line["x_stop_um"], line["y_stop_um"]])
        direction = (stop - start) / max(float(np.hypot(*(stop - start))), 1e-9)
        along = np.arange(samples.size) * pitch
        x_wafer, y_wafer = placement.stage_to_wafer(start[0] + direction[0] * along, start[1] + direction[1] * along)
        col, row = layout.nearest_chip(np.asarray(x_wafer), np.asarray(y_wafer))
        inside = layout.in_box(col, row)
        col, row, values = col[inside], row[inside], samples[inside]
        np.fmax.at(peaks, (row, col), values)
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
