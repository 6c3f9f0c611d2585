"""Per-chip classification features from a scan's analysis results.

The rules and the learned model see the same few numbers per chip, all *relative*, so a wafer that is brighter
overall, or has a slow centre-to-edge gradient, does not look defective:

- ``log_rel_intensity_high`` / ``_low``: log10 of the chip's intensity at the highest / lowest excitation power
  over the wafer *trend* at its place. The trend is the median intensity of the chips in blocks of
  :attr:`FeatureSettings.trend_block_um` (2 mm), interpolated between block centres: it follows process gradients
  but not a particle's shadow or a dead chip, which are far smaller than a block (at least 8 chips across on
  coarse grids).
- ``log_rel_ratio``: log10 of the low/high efficiency ratio (the leakage signature) over its trend.
- ``neighbour_ratio_high`` / ``_low``: intensity over the median of the 8 neighbours (from the pipeline).
- ``peak_to_intensity``: the brightest sample over the core mean at high power: a chip lit only on one side, or
  a spot of light on a dead chip, has a high peak for its mean.
- ``rel_street``: the chip's street level over the wafer median (a missing or dead neighbourhood is darker).
- ``offset_col`` / ``offset_row``: the intensity centroid's offset from the chip centre in chip sizes (a
  half-covered chip's light sits to one side).

Log intensities are clipped at :data:`LOG_FLOOR` (1e-5 of the trend) so dark chips and missing chips stay
finite; features of chips that were not measured are NaN.

Large wafers are processed in bands of rows (:func:`band_features`) after one pass over the wafer for the trends
(:func:`wafer_trends`), so memory does not grow with the wafer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inspection.pipeline import ChipFlag, ChipResults
from inspection.settings import setting

__all__ = [
    "FEATURE_NAMES",
    "LOG_FLOOR",
    "FeatureSettings",
    "WaferTrends",
    "band_features",
    "inspected_mask",
    "wafer_trends",
]

FEATURE_NAMES = (
    "log_rel_intensity_high",
    "log_rel_intensity_low",
    "log_rel_ratio",
    "neighbour_ratio_high",
    "neighbour_ratio_low",
    "peak_to_intensity",
    "rel_street",
    "offset_col",
    "offset_row",
)
"""Feature columns, in the order of :func:`band_features`' array."""

LOG_FLOOR = 1e-5
"""Relative intensities and ratios are clipped to at least this before the log."""

NOT_INSPECTED_FLAGS = ChipFlag.OUTSIDE_USABLE | ChipFlag.NOT_MEASURED


@dataclass(frozen=True)
class FeatureSettings:
    """How the wafer trends are measured."""

    trend_block_um: float = setting(
        2000.0, minimum=200.0, maximum=50000.0, unit="µm", doc="block side of the trend's medians"
    )
    min_block_side_chips: int = setting(
        8, minimum=1, maximum=10000, doc="blocks are at least this many chips across (coarse grids)"
    )
    min_block_chips: int = setting(25, minimum=1, maximum=100000, doc="fewer inspected chips: block has no median")
    band_rows: int = setting(512, minimum=16, maximum=100000, doc="chip rows processed at once")


@dataclass(frozen=True)
class WaferTrends:
    """Block medians of the trended quantities, and wafer-wide medians."""

    block_chips: tuple[int, int]  # block size in (rows, cols) of chips
    intensity_high: np.ndarray  # (block rows, block cols) median intensity, NaN-free after filling
    intensity_low: np.ndarray
    ratio: np.ndarray
    street_median_v: float
    pass_high: int
    pass_low: int


def inspected_mask(chips: np.ndarray) -> np.ndarray:
    """True where a chip was measured inside the usable area (``CHIP_DTYPE`` records in)."""
    return (chips["flags"] & np.uint8(NOT_INSPECTED_FLAGS)) == 0


def _pass_order(results: ChipResults) -> tuple[int, int]:
    powers = results.powers_w
    if len(powers) < 2:
        raise ValueError(
            f"{results.path}: classification needs two excitation powers (the leakage signature), "
            f"the scan has {len(powers)}"
        )
    return int(np.argmax(powers)), int(np.argmin(powers))


def _block_medians(values: np.ndarray, valid: np.ndarray, block: tuple[int, int], min_chips: int) -> np.ndarray:
    """Median of ``values`` where ``valid`` in each block of ``block`` chips; NaN with fewer than ``min_chips``."""
    rows, cols = values.shape
    block_rows, block_cols = -(-rows // block[0]), -(-cols // block[1])
    out = np.full((block_rows, block_cols), np.nan)
    for i in range(block_rows):
        strip = values[i * block[0] : (i + 1) * block[0]]
        strip_valid = valid[i * block[0] : (i + 1) * block[0]]
        for j in range(block_cols):
            cell = strip[:, j * block[1] : (j + 1) * block[1]]
            keep = strip_valid[:, j * block[1] : (j + 1) * block[1]]
            if int(keep.sum()) >= min_chips:
                out[i, j] = np.median(cell[keep])
    return out


def _fill_blocks(blocks: np.ndarray) -> np.ndarray:
    """Blocks without a median take the nearest block's (edge blocks have few chips on the wafer)."""
    missing = ~np.isfinite(blocks)
    if missing.all():
        return np.ones_like(blocks)
    if not missing.any():
        return blocks
    index = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    return blocks[tuple(index)]


def wafer_trends(
    results: ChipResults,
    layout_shape: tuple[int, int],
    pitch_um: tuple[float, float],
    settings: FeatureSettings | None = None,
) -> WaferTrends:
    """Measure the trends (block medians) of a wafer, reading its results in bands of block rows.

    Parameters
    ----------
    results
        The scan's analysis results.
    layout_shape
        (rows, cols) of the chip box.
    pitch_um
        (row pitch, column pitch) of the chip grid, µm.
    """
    settings = settings or FeatureSettings()
    high, low = _pass_order(results)
    # a block must hold enough chips for its median to mean something, whatever the pitch
    block = (
        max(settings.min_block_side_chips, round(settings.trend_block_um / pitch_um[0])),
        max(settings.min_block_side_chips, round(settings.trend_block_um / pitch_um[1])),
    )
    rows = layout_shape[0]
    band = max(block[0], settings.band_rows // block[0] * block[0])

    def band_trends(first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        sl = slice(first, min(first + band, rows))
        chips_high, chips_low = results.chips(high, rows=sl), results.chips(low, rows=sl)
        ratio = results.efficiency_ratio(rows=sl)
        valid = inspected_mask(chips_high) & inspected_mask(chips_low)
        intensity_high = chips_high["intensity_v"]
        intensity_low = chips_low["intensity_v"]
        lit = valid & (intensity_high > 0) & (intensity_low > 0)
        return (
            _block_medians(intensity_high, valid, block, settings.min_block_chips),
            _block_medians(intensity_low, valid, block, settings.min_block_chips),
            _block_medians(ratio, lit & np.isfinite(ratio), block, settings.min_block_chips),
            chips_high["street_v"][valid][::7],
        )

    # two bands in flight: one's medians (NumPy's partition, without the GIL) overlap the other's reading; the
    # results come back in band order, so the trends are those of one band after another
    with ThreadPoolExecutor(max_workers=2) as pool:
        bands = list(pool.map(band_trends, range(0, rows, band)))
    parts = {name: [band_result[index] for band_result in bands] for index, name in enumerate(("high", "low", "ratio"))}
    streets = [band_result[3] for band_result in bands]
    street = np.concatenate(streets) if streets else np.zeros(0)
    return WaferTrends(
        block_chips=block,
        intensity_high=_fill_blocks(np.vstack(parts["high"])),
        intensity_low=_fill_blocks(np.vstack(parts["low"])),
        ratio=_fill_blocks(np.vstack(parts["ratio"])),
        street_median_v=float(np.median(street)) if street.size else float("nan"),
        pass_high=high,
        pass_low=low,
    )


def _band_coordinates(block: tuple[int, int], rows: slice, cols: int) -> list[np.ndarray]:
    """Every chip of a band in block-grid coordinates (block centres at integers), for :func:`_trend_at`."""
    row_index = np.arange(rows.start, rows.stop, dtype=np.float64)
    col_index = np.arange(cols, dtype=np.float64)
    block_row = (row_index + 0.5) / block[0] - 0.5
    block_col = (col_index + 0.5) / block[1] - 0.5
    return list(np.meshgrid(block_row, block_col, indexing="ij"))


def _trend_at(blocks: np.ndarray, coordinates: list[np.ndarray]) -> np.ndarray:
    """The block-median grid interpolated (bilinear between block centres) at a band's chips."""
    return ndimage.map_coordinates(blocks, coordinates, order=1, mode="nearest")


def _log_relative(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = values / reference
    return np.log10(np.clip(relative, LOG_FLOOR, None))


def band_features(
    results: ChipResults, trends: WaferTrends, rows: slice, chip_size_um: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every chip in a band of rows.

    Returns
    -------
    features
        (band rows, cols, len(FEATURE_NAMES)) float32, NaN where the chip was not inspected.
    inspected
        (band rows, cols) bool: measured inside the usable area at both powers.
    """
    chips_high = results.chips(trends.pass_high, rows=rows)
    chips_low = results.chips(trends.pass_low, rows=rows)
    ratio = results.efficiency_ratio(rows=rows)
    band_rows, cols = chips_high.shape
    band = slice(rows.start, rows.start + band_rows)
    inspected = inspected_mask(chips_high) & inspected_mask(chips_low)
    intensity_high = chips_high["intensity_v"].astype(np.float64)
    # the three trends share their coordinates; SciPy interpolates without the GIL, so they run side by side
    coordinates = _band_coordinates(trends.block_chips, band, cols)
    grids = (trends.intensity_high, trends.intensity_low, trends.ratio)
    with ThreadPoolExecutor(max_workers=len(grids)) as pool:
        trend_high, trend_low, trend_ratio = pool.map(lambda blocks: _trend_at(blocks, coordinates), grids)
    columns = (
        lambda: _log_relative(intensity_high, trend_high),
        lambda: _log_relative(chips_low["intensity_v"], trend_low),
        lambda: _log_relative(ratio, trend_ratio),
        lambda: np.clip(chips_high["neighbour_ratio"], 0.0, 10.0),
        lambda: np.clip(chips_low["neighbour_ratio"], 0.0, 10.0),
        lambda: np.clip(
            np.divide(chips_high["peak_v"], np.maximum(intensity_high, LOG_FLOOR * trends.intensity_high.max())),
            0.0,
            1e3,
        ),
        lambda: chips_high["street_v"] / trends.street_median_v,
        lambda: chips_high["offset_col_um"].astype(np.float64) / chip_size_um[1],
        lambda: chips_high["offset_row_um"].astype(np.float64) / chip_size_um[0],
    )
    # each column cast straight into the float32 table (what stacking them in float64 and casting gave, without
    # the float64 table: a float32 column goes through float64 unchanged, a float64 one rounds once either way)
    features = np.empty((band_rows, cols, len(FEATURE_NAMES)), dtype=np.float32)
    for index, column in enumerate(columns):
        features[..., index] = column()
    features[~inspected] = np.nan
    # np.nan_to_num(features, nan=np.nan, posinf=1e3, neginf=-1e3), without its slower isposinf/isneginf passes
    np.copyto(features, np.float32(1e3), where=features == np.inf)
    np.copyto(features, np.float32(-1e3), where=features == -np.inf)
    return features, inspected
