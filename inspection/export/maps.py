"""Wafer map images: the bin map and the measurement maps, drawn with matplotlib (Agg) for PNG files and reports.

Figures are plain :class:`matplotlib.figure.Figure` objects rendered by the Agg (PNG) and PDF backends: no pyplot,
no global backend switch, so the exports run in worker threads and next to the Qt GUI.

Every map is drawn in the chip grid's frame, in mm from the wafer centre, with the flat (or notch) where the
substrate has it (down by default), the substrate outline (solid) and the edge-exclusion boundary (dashed).

**Large wafers** are reduced to at most :data:`IMAGE_CHIPS` chips across: each pixel is a block of ``d × d`` chips,
``d = ceil(max(rows, cols) / IMAGE_CHIPS)`` (1 for wafers up to 1,000 chips across; 10 for an 8" wafer at 20 µm).
The reduction is computed band by band from the scan file, so a whole 8" map is never in memory.

* Bin map: a block is drawn in its **most frequent failing bin when at least half of its chips fail**, otherwise in
  its most frequent passing bin (so a cluster of fails stays visible and a good area with scattered fails stays
  good). The legend's counts are exact chip counts, not block counts. Figures say when blocks are shown.
* Measurement maps: a block shows the mean of its inspected chips' values. The colour scale spans the median ± 4
  robust σ (interquartile range / 1.349), kept within the 1st–99th percentiles, so a few dead or saturated chips do
  not wash out the wafer's variation (the colour bar's arrows mark values beyond).

The statistics (:class:`MapStatistics`) are those of the chips at full resolution: count, mean and standard
deviation exactly; percentiles from every chip, or from a systematic sample of at most
:data:`PERCENTILE_SAMPLE` chips on larger wafers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from inspection.bins import NO_CHIP, BinTable, DefectClass
from inspection.export._source import (
    WaferSource,
    atomic_output,
    grid_origin_um,
    open_wafer,
    to_grid_frame,
)
from inspection.scanfile import open_hdf5

__all__ = [
    "IMAGE_CHIPS",
    "PERCENTILE_SAMPLE",
    "BinImage",
    "MapStatistics",
    "MeasurementImage",
    "bin_image",
    "block_bins",
    "block_factor",
    "chip_blocks",
    "draw_bin_map",
    "draw_measurement_map",
    "draw_wafer_frame",
    "map_extent_mm",
    "measurement_images",
    "power_text",
    "statistics_of",
    "write_map_pngs",
]

IMAGE_CHIPS = 1000
"""Largest number of chips (pixels) across a map image; beyond it chips are shown in blocks."""

PERCENTILE_SAMPLE = 2_000_000
"""Percentiles of larger wafers come from a systematic sample of about this many chips."""

NO_CHIP_RGBA = (0, 0, 0, 0)


def block_factor(shape: tuple[int, int], *, max_pixels: int = IMAGE_CHIPS) -> int:
    """Chips per image pixel along each axis: ``ceil(max(shape) / max_pixels)``, at least 1.

    Examples
    --------
    >>> block_factor((494, 504)), block_factor((9999, 9999)), block_factor((1000, 1001))
    (1, 10, 2)
    """
    return max(1, math.ceil(max(shape) / max_pixels))


def _band_rows(factor: int) -> int:
    return factor * max(1, math.ceil(64 / factor))


def chip_blocks(values: np.ndarray, factor: int, fill: float | int = math.nan) -> np.ndarray:
    """(rows, cols) → (rows/f, cols/f, f·f), the edges padded with ``fill``."""
    rows, cols = values.shape
    out_rows, out_cols = math.ceil(rows / factor), math.ceil(cols / factor)
    if (out_rows * factor, out_cols * factor) != values.shape:
        padded = np.full((out_rows * factor, out_cols * factor), fill, dtype=values.dtype)
        padded[:rows, :cols] = values
        values = padded
    blocks = values.reshape(out_rows, factor, out_cols, factor).transpose(0, 2, 1, 3)
    return blocks.reshape(out_rows, out_cols, factor * factor)


def block_bins(bin_index: np.ndarray, factor: int, fail: np.ndarray) -> np.ndarray:
    """Reduce a map of bin indices to ``factor × factor`` blocks: a block takes its most frequent failing bin when at
    least half of its chips fail, else its most frequent passing bin; ties go to the lower index.

    Parameters
    ----------
    bin_index : ndarray of int, (rows, cols)
        Index of each chip's bin; ``len(fail)`` where there is no chip.
    factor : int
        Chips per block along each axis.
    fail : ndarray of bool, (bins,)
        Which bins fail.

    Returns
    -------
    ndarray of intp, (ceil(rows / factor), ceil(cols / factor))
        The bin index shown for each block; ``len(fail)`` for blocks without a chip.

    Examples
    --------
    >>> fail = np.array([False, True, True])  # bin 0 passes, 1 and 2 fail, 3 = no chip
    >>> chips = np.array([[0, 1, 0, 3],
    ...                   [0, 2, 0, 3]])
    >>> block_bins(chips, 2, fail).tolist()  # left: 2 of 4 chips fail (bins 1 and 2, a tie); right: none fails
    [[1, 0]]
    """
    nbins = fail.size
    blocks = chip_blocks(np.asarray(bin_index, dtype=np.int64), factor, fill=nbins)
    block_rows, block_cols = blocks.shape[:2]
    keys = np.arange(block_rows * block_cols, dtype=np.int64).reshape(block_rows, block_cols, 1) * (nbins + 1)
    counts = np.bincount((keys + blocks).ravel(), minlength=block_rows * block_cols * (nbins + 1))
    counts = counts.reshape(block_rows, block_cols, nbins + 1)
    fail_bins = np.append(fail.astype(bool), False)
    chips = counts[..., :nbins].sum(axis=2)
    failing = counts[..., fail_bins].sum(axis=2)
    fail_choice = np.argmax(np.where(fail_bins, counts, -1), axis=2)
    passing = ~fail_bins
    passing[nbins] = False
    pass_choice = np.argmax(np.where(passing, counts, -1), axis=2)
    choice = np.where((failing > 0) & (2 * failing >= chips), fail_choice, pass_choice)
    choice[chips == 0] = nbins
    return choice


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinImage:
    """The bin map as an RGBA image, row 0 at the bottom.

    Attributes
    ----------
    rgba : ndarray of uint8, shape (rows/d, cols/d, 4)
        Transparent where the block holds no chip.
    factor : int
        ``d``: chips per pixel along each axis.
    counts : dict of int to int
        Exact chips per bin code.
    """

    rgba: np.ndarray
    factor: int
    counts: dict[int, int]


def bin_image(source: WaferSource, *, factor: int | None = None) -> BinImage:
    """The bin map of ``source`` reduced to ``factor × factor`` chip blocks (see the module docstring for the rule).

    Examples
    --------
    ``bin_image(open_wafer(path)).rgba`` is ready for ``imshow(..., origin="lower")``.
    """
    factor = factor or block_factor(source.shape)
    bins = source.bin_table.bins
    index_of = source.class_lookup("index")  # len(bins) = no chip
    fail_bins = np.array([entry.fail for entry in bins])
    colours = np.array([(*entry.rgb, 255) for entry in bins] + [NO_CHIP_RGBA], dtype=np.uint8)
    rows, cols = source.shape
    out = np.zeros((math.ceil(rows / factor), math.ceil(cols / factor), 4), dtype=np.uint8)
    class_counts = np.zeros(256, dtype=np.int64)
    with source.reader() as reader:
        for band in source.bands(band_rows=_band_rows(factor)):
            classes = reader.classes(band)
            class_counts += np.bincount(classes.ravel(), minlength=256)
            indices = index_of[classes]
            first = band.start // factor
            if factor == 1:
                out[first : first + indices.shape[0]] = colours[indices]
                continue
            choice = block_bins(indices, factor, fail_bins)
            out[first : first + choice.shape[0]] = colours[choice]
    counts = {entry.code: 0 for entry in bins}
    for member in DefectClass:
        counts[source.bin_table.bin_for(member).code] += int(class_counts[member])
    return BinImage(out, factor, counts)


@dataclass
class MapStatistics:
    """Statistics of one measurement over the chips (or spectra) it was measured on."""

    count: int = 0
    mean: float = math.nan
    std: float = math.nan
    p1: float = math.nan
    median: float = math.nan
    p99: float = math.nan
    robust_std: float = math.nan  # interquartile range / 1.349: the σ of the bulk, blind to a few outliers
    minimum: float = math.nan
    maximum: float = math.nan
    sampled: bool = False  # percentiles from a systematic sample

    def line(self, unit: str, digits: int = 3) -> str:
        """``n 18,556 · median 2.93 V · robust σ 0.21 V · mean 2.91 V · P1–P99 2.41–3.30 V``."""
        if self.count == 0:
            return "no values"

        def number(value: float) -> str:
            return f"{value:.{digits}g}"

        suffix = f" {unit}" if unit else ""
        sample = " (sampled)" if self.sampled else ""
        return (
            f"n {self.count:,} · median {number(self.median)}{suffix} · robust σ {number(self.robust_std)}{suffix} · "
            f"mean {number(self.mean)}{suffix} · P1–P99{sample} {number(self.p1)}–{number(self.p99)}{suffix}"
        )


class _StatisticsAccumulator:
    def __init__(self, stride: int) -> None:
        self.stride = max(1, stride)
        self.count = 0
        self.total = 0.0
        self.total_squares = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.samples: list[np.ndarray] = []
        self._offset = 0

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)].astype(np.float64)
        if values.size == 0:
            return
        self.count += values.size
        self.total += float(values.sum())
        self.total_squares += float(np.square(values).sum())
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        self.samples.append(values[self._offset :: self.stride].copy())  # a copy: a view would keep the band alive
        self._offset = (self._offset - values.size) % self.stride

    def result(self) -> MapStatistics:
        if self.count == 0:
            return MapStatistics()
        mean = self.total / self.count
        variance = max(self.total_squares / self.count - mean * mean, 0.0)
        sample = np.concatenate(self.samples)
        p1, q1, median, q3, p99 = (float(value) for value in np.percentile(sample, [1.0, 25.0, 50.0, 75.0, 99.0]))
        return MapStatistics(
            count=self.count,
            mean=mean,
            std=math.sqrt(variance),
            p1=p1,
            median=median,
            p99=p99,
            robust_std=(q3 - q1) / 1.349,
            minimum=self.minimum,
            maximum=self.maximum,
            sampled=self.stride > 1,
        )


def statistics_of(values: np.ndarray) -> MapStatistics:
    """Statistics of the finite values of an array (all of them; no sampling).

    Examples
    --------
    >>> stats = statistics_of(np.array([1.0, 2.0, 3.0, np.nan]))
    >>> stats.count, stats.median, stats.mean
    (3, 2.0, 2.0)
    """
    accumulator = _StatisticsAccumulator(1)
    accumulator.add(np.asarray(values, dtype=np.float64).ravel())
    return accumulator.result()


@dataclass
class MeasurementImage:
    """One measurement map: block means (row 0 at the bottom), what it shows, and the chips' statistics."""

    key: str  # file-name part: intensity_pass0, efficiency_ratio, wavelength, fwhm
    label: str  # "PL intensity at 0.5 mW"
    unit: str
    image: np.ndarray  # float32, NaN where nothing to show
    factor: int  # chips per pixel along each axis
    statistics: MapStatistics
    colormap: str = "viridis"
    note: str = ""
    limits: tuple[float, float] = field(default=(math.nan, math.nan))
    site_values: np.ndarray | None = None  # the measured values an interpolated map was made from
    sites_mm: tuple[np.ndarray, np.ndarray] | None = None  # where they were measured (grid frame, mm)

    def colour_limits(self) -> tuple[float, float]:
        """The given limits, else median ± 4 robust σ within the chips' P1–P99, else the image's range."""
        if all(math.isfinite(value) for value in self.limits):
            return self.limits
        stats = self.statistics
        low, high = stats.p1, stats.p99
        if math.isfinite(stats.median) and math.isfinite(stats.robust_std) and stats.robust_std > 0:
            low = max(low, stats.median - 4.0 * stats.robust_std)
            high = min(high, stats.median + 4.0 * stats.robust_std)
        if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
            finite = self.image[np.isfinite(self.image)]
            if finite.size == 0:
                return 0.0, 1.0
            low, high = float(finite.min()), float(finite.max())
        if high <= low:
            high = low + (abs(low) * 1e-3 or 1.0)
        return low, high


def power_text(power_w: float) -> str:
    """``0.5 mW``, ``20 mW``, ``1.5 W``.

    Examples
    --------
    >>> power_text(0.0005), power_text(0.02), power_text(1.5), power_text(2e-5)
    ('0.5 mW', '20 mW', '1.5 W', '20 µW')
    """
    if power_w >= 1.0:
        return f"{power_w:.3g} W"
    if power_w >= 1e-4:
        return f"{power_w * 1e3:.3g} mW"
    return f"{power_w * 1e6:.3g} µW"


def measurement_images(source: WaferSource, *, factor: int | None = None) -> list[MeasurementImage]:
    """The measurement maps of ``source``: PL intensity per pass, the efficiency ratio (2+ passes), and the peak
    wavelength and FWHM maps when spectra were measured. One pass over the file's bands."""
    factor = factor or block_factor(source.shape)
    stride = max(1, math.ceil(source.layout.chip_count / PERCENTILE_SAMPLE))
    passes = len(source.powers_w)
    rows, cols = source.shape
    shape = (math.ceil(rows / factor), math.ceil(cols / factor))
    keys = [f"intensity_pass{index}" for index in range(passes)]
    with source.reader() as reader:
        has_ratio = reader.results.efficiency_ratio(slice(0, 0)) is not None
        if has_ratio:
            keys.append("efficiency_ratio")
        images = {key: np.full(shape, np.nan, dtype=np.float32) for key in keys}
        accumulators = {key: _StatisticsAccumulator(stride) for key in keys}
        for band in source.bands(band_rows=_band_rows(factor)):
            classes = reader.classes(band)
            inspected = (classes != NO_CHIP) & (classes != DefectClass.NOT_INSPECTED)
            values: dict[str, np.ndarray] = {}
            for index in range(passes):
                values[f"intensity_pass{index}"] = reader.results.chips(index, band)["intensity_v"]
            if has_ratio:
                values["efficiency_ratio"] = reader.results.efficiency_ratio(band)
            first = band.start // factor
            for key, raw in values.items():
                band_values = np.where(inspected, raw, np.nan).astype(np.float32)
                accumulators[key].add(band_values[inspected])
                if factor == 1:
                    images[key][first : first + band_values.shape[0]] = band_values
                    continue
                blocks = chip_blocks(band_values, factor)
                finite = np.isfinite(blocks)
                count = finite.sum(axis=2)
                total = np.where(finite, blocks, 0.0).sum(axis=2, dtype=np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
                images[key][first : first + blocks.shape[0]] = mean
        spectra = reader.results.spectra()
    result = [
        MeasurementImage(
            key=f"intensity_pass{index}",
            label=f"PL intensity at {power_text(power)}",
            unit="V",
            image=images[f"intensity_pass{index}"],
            factor=factor,
            statistics=accumulators[f"intensity_pass{index}"].result(),
        )
        for index, power in enumerate(source.powers_w)
    ]
    if has_ratio:
        result.append(
            MeasurementImage(
                key="efficiency_ratio",
                label=f"Efficiency ratio {power_text(min(source.powers_w))} / {power_text(max(source.powers_w))}",
                unit="",
                image=images["efficiency_ratio"],
                factor=factor,
                statistics=accumulators["efficiency_ratio"].result(),
                colormap="plasma",
            )
        )
    good = spectra[spectra["quality"] == 0] if spectra.size else spectra
    sites_x_um, sites_y_um = source.layout.chip_center_um(good["col"].astype(np.int64), good["row"].astype(np.int64))
    sites_u_um, sites_v_um = to_grid_frame(source.layout, np.asarray(sites_x_um), np.asarray(sites_y_um))
    with open_hdf5(source.path) as file:
        for key, dataset, field_name, label, colormap in (
            ("wavelength", "results/wavelength_map_nm", "peak_nm", "Peak wavelength", "turbo"),
            ("fwhm", "results/fwhm_map_nm", "fwhm_nm", "FWHM", "magma"),
        ):
            if dataset not in file:
                continue
            image = file[dataset][()].astype(np.float32)
            map_factor = int(file[dataset].attrs.get("downsample", 1))
            result.append(
                MeasurementImage(
                    key=key,
                    label=label,
                    unit="nm",
                    image=image,
                    factor=map_factor,
                    statistics=statistics_of(good[field_name]) if good.size else MapStatistics(),
                    colormap=colormap,
                    note=f"interpolated between {good.size:,} measured spectra (dots);\nstatistics of those spectra",
                    site_values=good[field_name].astype(np.float64),
                    sites_mm=(sites_u_um / 1000.0, sites_v_um / 1000.0),
                )
            )
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------------


def map_extent_mm(source: WaferSource, factor: int, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """``imshow`` extent (left, right, bottom, top; mm, grid frame) of an image of ``shape`` pixels of
    ``factor × factor`` chips whose pixel (0, 0) starts at chip (0, 0)."""
    grid = source.layout.grid
    origin_x_um, origin_y_um = grid_origin_um(source.layout)
    left = origin_x_um - grid.pitch_x_um / 2.0
    bottom = origin_y_um - grid.pitch_y_um / 2.0
    right = left + shape[1] * factor * grid.pitch_x_um
    top = bottom + shape[0] * factor * grid.pitch_y_um
    return left / 1000.0, right / 1000.0, bottom / 1000.0, top / 1000.0


def draw_wafer_frame(ax: Axes, source: WaferSource) -> None:
    """Substrate outline (solid), edge-exclusion boundary (dashed), equal axes in mm."""
    substrate = source.layout.substrate
    for (x_um, y_um), style in (
        (substrate.outline_um(points_per_arc=360), {"color": "0.15", "linewidth": 1.0}),
        (substrate.usable_outline_um(points_per_arc=360), {"color": "0.35", "linewidth": 0.8, "linestyle": "--"}),
    ):
        if np.size(x_um) == 0:
            continue
        u_um, v_um = to_grid_frame(source.layout, np.asarray(x_um), np.asarray(y_um))
        ax.plot(u_um / 1000.0, v_um / 1000.0, **style)
    radius_mm = substrate.radius_um / 1000.0 * 1.03
    ax.set_xlim(-radius_mm, radius_mm)
    ax.set_ylim(-radius_mm, radius_mm)
    ax.set_aspect("equal")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.tick_params(labelsize=8)


def bin_legend_handles(source: WaferSource, counts: dict[int, int], *, skip_empty: bool = False) -> list[Patch]:
    """Legend patches: ``code name — chips (share of chips on the substrate)``."""
    total = sum(counts.values())
    handles = []
    for entry in sorted(source.bin_table.bins, key=lambda entry: (not entry.fail, -counts[entry.code])):
        count = counts[entry.code]
        if skip_empty and count == 0:
            continue
        share = f"{100.0 * count / total:.2f} %" if total else "–"
        handles.append(
            Patch(
                facecolor=entry.colour,
                edgecolor="0.3",
                linewidth=0.5,
                label=f"{entry.code:>2} {entry.name}: {count:,} ({share})",
            )
        )
    return handles


def block_note(factor: int, *, bins: bool) -> str:
    """The caption that says how blocks are drawn ("" at full resolution)."""
    if factor == 1:
        return ""
    if bins:
        return (
            f"each pixel = {factor}×{factor} chips: its most frequent failing bin where ≥ half its chips fail, "
            "else its most frequent passing bin"
        )
    return f"each pixel = mean of {factor}×{factor} chips"


def draw_bin_map(ax: Axes, source: WaferSource, image: BinImage, *, legend: bool = True, legend_size: float = 7.5):
    """The bin map on ``ax`` with the wafer outline and (optionally) a legend of bins with chip counts."""
    ax.imshow(
        image.rgba,
        origin="lower",
        extent=map_extent_mm(source, image.factor, image.rgba.shape[:2]),
        interpolation="nearest",
    )
    draw_wafer_frame(ax, source)
    if legend:
        ax.legend(
            handles=bin_legend_handles(source, image.counts),
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=legend_size,
            frameon=False,
            title="bin: chips (% of chips on the wafer)",
            title_fontsize=legend_size,
            alignment="left",
        )


def draw_measurement_map(
    fig: Figure, ax: Axes, source: WaferSource, measurement: MeasurementImage, *, bar_label: str | None = None
) -> None:
    """A measurement map on ``ax`` with the wafer outline and a colour bar (robust limits), labelled ``bar_label``
    (default: the measurement's label and unit)."""
    low, high = measurement.colour_limits()
    colormap = mpl.colormaps[measurement.colormap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    shown = ax.imshow(
        np.ma.masked_invalid(measurement.image),
        origin="lower",
        extent=map_extent_mm(source, measurement.factor, measurement.image.shape),
        interpolation="nearest",
        cmap=colormap,
        vmin=low,
        vmax=high,
    )
    if measurement.sites_mm is not None and measurement.sites_mm[0].size:
        ax.scatter(*measurement.sites_mm, s=3, c="black", edgecolors="white", linewidths=0.3, zorder=3)
    draw_wafer_frame(ax, source)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, extend="both")
    if bar_label is None:
        bar_label = f"{measurement.label} ({measurement.unit})" if measurement.unit else measurement.label
    bar.set_label(bar_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _png_figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(9.0, 7.0), dpi=150)
    ax = fig.add_axes((0.08, 0.1, 0.6, 0.78))
    return fig, ax


def _save_png(fig: Figure, path: Path) -> Path:
    with atomic_output(path) as partial:
        fig.savefig(partial, format="png", dpi=150)
    return path


def write_map_pngs(
    scan_path: str | Path,
    out_dir: str | Path,
    *,
    bin_table: BinTable | None = None,
    stem: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the bin map and every measurement map of a classified wafer as PNG files.

    Files: ``<stem>.bins.png``, ``<stem>.intensity_pass<i>.png`` per pass, ``<stem>.efficiency_ratio.png`` (2+
    passes), ``<stem>.wavelength.png`` and ``<stem>.fwhm.png`` (when spectra were measured); ``stem`` defaults to
    the scan file's name without its extension.

    Raises
    ------
    ExportError
        The scan file cannot be exported (see :func:`~inspection.export.open_wafer`).
    """
    source = open_wafer(scan_path, bin_table=bin_table)
    out_dir = Path(out_dir)
    stem = stem or source.path.stem
    written = []
    image = bin_image(source)
    fig, ax = _png_figure()
    draw_bin_map(ax, source, image)
    ax.set_title(f"{source.title} — bin map", fontsize=11, loc="left")
    fig.text(0.08, 0.02, _caption(source, block_note(image.factor, bins=True)), fontsize=7, color="0.3")
    written.append(_save_png(fig, out_dir / f"{stem}.bins.png"))
    if progress:
        progress(written[-1].name)
    for measurement in measurement_images(source):
        fig, ax = _png_figure()
        draw_measurement_map(fig, ax, source, measurement)
        ax.set_title(f"{source.title} — {measurement.label}", fontsize=11, loc="left")
        unit = measurement.unit
        notes = [measurement.statistics.line(unit), measurement.note, block_note(measurement.factor, bins=False)]
        fig.text(0.08, 0.02, _caption(source, " · ".join(note for note in notes if note)), fontsize=7, color="0.3")
        written.append(_save_png(fig, out_dir / f"{stem}.{measurement.key}.png"))
        if progress:
            progress(written[-1].name)
    return written


def _caption(source: WaferSource, note: str) -> str:
    recipe = source.recipe.name
    parts = [f"recipe {recipe}", source.path.name]
    if note:
        parts.append(note)
    return " · ".join(parts)
