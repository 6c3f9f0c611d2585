"""PDF reports: one per wafer (:func:`write_wafer_report`) and one per lot (:func:`lot_report`, with a CSV summary).

Wafer report pages (A4 portrait):

1. **Summary**: lot, wafer, recipe, substrate and chip grid, classifier (rules or model with its id and hash), bin
   table, scan and classification dates, operator; yield (good over inspected chips) and chip counts; every bin
   with its count and share; a pareto of the failing bins.
2. **Bin map** with the bin legend, the wafer's spatial signature (label, the rule that chose it, the process steps
   it points to) and its largest wafer-scale structures.
3. **Measurement maps** (four per page): PL intensity per excitation power and the efficiency ratio, each with its
   statistics; then the peak-wavelength and FWHM maps when spectra were measured.
4. **EL agreement** when the file holds EL reference data: confusion matrix, agreement, recall, false alarms, per
   EL fail mode, and the ceiling set by failures without a PL signature (:func:`inspection.classify.evaluate_scan`).

Lot report: yield per wafer (table and trend in the order given), a stacked bar of each wafer's failing bins, the
lot's bin pareto, and the **stacked fail map**: for each chip position, the fraction of the lot's wafers on which
that chip fails (among wafers where it was inspected); large wafers in blocks, as the maps.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from inspection.bins import NO_CHIP, BinTable, DefectClass
from inspection.classify import evaluate_scan, read_classification
from inspection.evaluation import Evaluation
from inspection.export._source import (
    ExportError,
    WaferSource,
    atomic_output,
    classifier_text,
    open_wafer,
    to_grid_frame,
    utc_text,
)
from inspection.export.e142 import bin_quality
from inspection.export.maps import (
    MeasurementImage,
    bin_image,
    block_factor,
    block_note,
    chip_blocks,
    draw_bin_map,
    draw_measurement_map,
    draw_wafer_frame,
    map_extent_mm,
    measurement_images,
    power_text,
)
from inspection.spatial import SignatureLabel

__all__ = ["WaferSummary", "lot_report", "stack_fail_fraction", "wafer_summary", "write_wafer_report"]

A4_PORTRAIT_IN = (8.27, 11.69)
MAPS_PER_PAGE = 4
STRUCTURES_LISTED = 8

_TEXT = "0.1"
_MUTED = "0.35"


@dataclass(frozen=True)
class WaferSummary:
    """Chip counts and yield of one classified wafer (with the bin table the export uses).

    Attributes
    ----------
    on_substrate : int
        Chips fully on the substrate.
    inspected : int
        Chips inspected (on the substrate, usable, measured).
    failing : int
        Inspected chips in a failing bin.
    bin_counts : dict of int to int
        Chips per bin code (all chips on the substrate).
    """

    on_substrate: int
    inspected: int
    failing: int
    bin_counts: dict[int, int]

    @property
    def good(self) -> int:
        return self.inspected - self.failing

    @property
    def not_inspected(self) -> int:
        return self.on_substrate - self.inspected

    @property
    def yield_fraction(self) -> float:
        """Good over inspected chips (NaN when nothing was inspected)."""
        return self.good / self.inspected if self.inspected else math.nan


def wafer_summary(source: WaferSource) -> WaferSummary:
    """Counts and yield of ``source`` (one pass over its classification)."""
    counts = source.class_counts()
    fail_of = source.class_lookup("fail").astype(bool)
    inspected_classes = np.zeros(256, dtype=bool)
    inspected_classes[[member for member in DefectClass if member is not DefectClass.NOT_INSPECTED]] = True
    return WaferSummary(
        on_substrate=int(counts[:NO_CHIP].sum()),
        inspected=int(counts[inspected_classes].sum()),
        failing=int(counts[inspected_classes & fail_of].sum()),
        bin_counts=source.bin_counts(counts),
    )


def _percent(value: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(value) else f"{100.0 * value:.{digits}f} %"


# ---------------------------------------------------------------------------------------------------------------------
# Page furniture
# ---------------------------------------------------------------------------------------------------------------------


class _Pages:
    """A4 pages with a running header and footer, numbered at the end (``page i / n``)."""

    def __init__(self, heading: str, footer: str) -> None:
        self.heading = heading
        self.footer = footer
        self.figures: list[Figure] = []

    def new(self, title: str) -> Figure:
        fig = Figure(figsize=A4_PORTRAIT_IN)
        fig.text(0.06, 0.965, self.heading, fontsize=9, color=_MUTED)
        fig.text(0.06, 0.94, title, fontsize=15, weight="bold", color=_TEXT)
        fig.add_artist(mpl.lines.Line2D([0.06, 0.94], [0.932, 0.932], color="0.7", linewidth=0.6))
        self.figures.append(fig)
        return fig

    def save(self, path: Path, *, title: str) -> None:
        total = len(self.figures)
        for number, fig in enumerate(self.figures, start=1):
            fig.text(0.06, 0.02, self.footer, fontsize=7, color=_MUTED)
            fig.text(0.94, 0.02, f"page {number} / {total}", fontsize=7, color=_MUTED, ha="right")
        with atomic_output(path) as partial:
            metadata = {"Title": title, "Author": "plmapper", "Subject": "micro-LED PL inspection"}
            with PdfPages(partial, metadata=metadata) as pdf:
                for fig in self.figures:
                    pdf.savefig(fig)


def _key_values(fig: Figure, x: float, y: float, rows: Sequence[tuple[str, str]], *, size: float = 8.5) -> float:
    """Left-aligned ``key  value`` lines from (x, y) downwards; returns the y below the last line."""
    step = size * 1.55 / 72.0 / A4_PORTRAIT_IN[1]
    for key, value in rows:
        fig.text(x, y, key, fontsize=size, color=_MUTED, va="top")
        fig.text(x + 0.16, y, value, fontsize=size, color=_TEXT, va="top", wrap=True)
        y -= step
    return y


def _table(
    ax: Axes,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    widths: Sequence[float],
    size: float = 8.0,
    align: Sequence[str] | None = None,
    swatches: Sequence[str | None] | None = None,
) -> None:
    """A plain table filling ``ax`` (no axes frame): header row in bold over a rule, rows below."""
    ax.set_axis_off()
    count = len(rows) + 1
    height = 1.0 / count
    align = align or ["left"] * len(header)
    starts = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
    for column, (text, start) in enumerate(zip(header, starts, strict=True)):
        x = start + (widths[column] - 0.01 if align[column] == "right" else 0.0)
        ax.text(x, 1.0 - 0.5 * height, text, fontsize=size, weight="bold", ha=align[column], va="center")
    ax.plot([0.0, 1.0], [1.0 - height, 1.0 - height], color="0.6", linewidth=0.6, transform=ax.transAxes)
    for index, row in enumerate(rows, start=1):
        y = 1.0 - (index + 0.5) * height
        if index % 2 == 0:
            ax.add_patch(Rectangle((0.0, 1.0 - (index + 1) * height), 1.0, height, color="0.95", zorder=0))
        for column, (text, start) in enumerate(zip(row, starts, strict=True)):
            x = start + (widths[column] - 0.01 if align[column] == "right" else 0.0)
            if swatches is not None and column == 0 and swatches[index - 1]:
                ax.add_patch(
                    Rectangle(
                        (start, y - 0.3 * height), 0.025, 0.6 * height, facecolor=swatches[index - 1], edgecolor="0.3"
                    )
                )
                x += 0.035
            ax.text(x, y, text, fontsize=size, ha=align[column], va="center", color=_TEXT)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Wafer report
# ---------------------------------------------------------------------------------------------------------------------


def _header_rows(source: WaferSource) -> list[tuple[str, str]]:
    layout, grid = source.layout, source.layout.grid
    substrate = layout.substrate
    mark = "notch" if substrate.has_notch else "primary flat"
    inches = {50.8: '2"', 76.2: '3"', 100.0: '4"', 150.0: '6"', 200.0: '8"'}.get(substrate.diameter_mm, "")
    classification = source.classification
    rows = [
        ("Lot", source.lot_id or "–"),
        ("Wafer", source.wafer_id or "–"),
        ("Recipe", source.recipe.name or "–"),
        (
            "Substrate",
            f"{inches} {substrate.diameter_mm:g} mm, {mark} down, edge exclusion {substrate.edge_exclusion_mm:g} mm",
        ),
        (
            "Chip grid",
            f"pitch {grid.pitch_x_um:g} × {grid.pitch_y_um:g} µm, chips {grid.chip_width_um:g} × "
            f"{grid.chip_height_um:g} µm, box {layout.column_count:,} × {layout.row_count:,}",
        ),
        ("Excitation", ", ".join(power_text(power) for power in source.powers_w)),
        ("Classifier", classifier_text(classification.classifier)),
        ("Bin table", source.bin_table.name),
        ("Scanned", utc_text(source.scan_created_utc)),
        ("Classified", utc_text(classification.created_utc)),
        ("Operator", source.operator or "–"),
        ("Scan file", source.path.name),
    ]
    if source.synthetic:
        rows.append(("Note", "synthetic scan rendered from a virtual wafer, not a measurement"))
    return rows


def _summary_page(pages: _Pages, source: WaferSource, summary: WaferSummary) -> None:
    fig = pages.new("Summary")
    y = _key_values(fig, 0.06, 0.915, _header_rows(source))
    # yield box, top right
    fig.add_artist(
        Rectangle((0.68, 0.76), 0.26, 0.15, transform=fig.transFigure, facecolor="0.96", edgecolor="0.75", lw=0.6)
    )
    fig.text(0.81, 0.885, "Yield", fontsize=10, ha="center", color=_MUTED)
    fig.text(0.81, 0.84, _percent(summary.yield_fraction), fontsize=22, weight="bold", ha="center", color=_TEXT)
    fig.text(
        0.81,
        0.795,
        f"{summary.good:,} good of {summary.inspected:,} inspected\n{summary.failing:,} failing · "
        f"{summary.not_inspected:,} not inspected",
        fontsize=7.5,
        ha="center",
        va="center",
        color=_MUTED,
    )
    fig.text(0.81, 0.75, "yield = good / inspected chips", fontsize=6.5, ha="center", va="top", color=_MUTED)
    # bin table
    table = source.bin_table
    entries = sorted(table.bins, key=lambda entry: entry.code)
    counts = summary.bin_counts
    total = summary.on_substrate
    rows = []
    for entry in entries:
        share = counts[entry.code] / summary.inspected if summary.inspected else math.nan
        rows.append(
            [
                f"{entry.code}  {entry.name}",
                f"{counts[entry.code]:,}",
                _percent(counts[entry.code] / total if total else math.nan),
                _percent(share) if entry.fail else "",
                {"Fail": "fail", "Pass": "pass"}.get(bin_quality(entry), "–"),
                "yes" if entry.el_fail else "",
            ]
        )
    top = min(y, 0.74) - 0.02
    fig.text(0.06, top, "Bins", fontsize=11, weight="bold", color=_TEXT)
    height = min(0.021 * (len(rows) + 1), 0.4)
    ax = fig.add_axes((0.06, top - 0.015 - height, 0.88, height))
    _table(
        ax,
        ["bin", "chips", "% of wafer", "% of inspected", "quality", "predicts EL fail"],
        rows,
        widths=[0.34, 0.12, 0.13, 0.15, 0.11, 0.15],
        align=["left", "right", "right", "right", "left", "left"],
        swatches=[entry.colour for entry in entries],
    )
    # pareto of failing bins
    failing = sorted(
        (entry for entry in entries if entry.fail and counts[entry.code] > 0), key=lambda entry: -counts[entry.code]
    )
    top = top - 0.015 - height - 0.045
    fig.text(0.06, top, "Failing bins (pareto)", fontsize=11, weight="bold", color=_TEXT)
    if not failing:
        fig.text(0.06, top - 0.03, "no failing chips", fontsize=8.5, color=_MUTED)
        return
    bottom = max(0.07, top - 0.03 - 0.035 * len(failing))
    ax = fig.add_axes((0.22, bottom, 0.42, top - 0.02 - bottom))
    _pareto(
        ax,
        [entry.name for entry in failing],
        [counts[entry.code] for entry in failing],
        [entry.colour for entry in failing],
        summary.inspected,
    )


def _pareto(ax: Axes, names: list[str], values: list[int], colours: list[str], inspected: int) -> None:
    positions = np.arange(len(names))[::-1]
    ax.barh(positions, values, color=colours, edgecolor="0.3", linewidth=0.5)
    ax.set_yticks(positions, names, fontsize=8)
    ax.tick_params(axis="x", labelsize=7.5)
    ax.set_xlabel("chips", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    total = max(sum(values), 1)
    cumulative = 0
    peak = max(values, default=0) or 1
    for position, value in zip(positions, values, strict=True):
        cumulative += value
        share = f"{100 * value / inspected:.2f} % of inspected · " if inspected else ""
        ax.text(
            1.02,
            position,
            f"{value:,} ({share}cum. {100 * cumulative / total:.0f} % of fails)",
            va="center",
            fontsize=7,
            color=_MUTED,
            transform=ax.get_yaxis_transform(),
        )
    ax.set_xlim(0, peak * 1.15)
    ax.set_ylim(-0.6, len(names) - 0.4)


def _bin_map_page(pages: _Pages, source: WaferSource) -> None:
    fig = pages.new("Bin map")
    image = bin_image(source)
    ax = fig.add_axes((0.08, 0.45, 0.58, 0.47))
    draw_bin_map(ax, source, image, legend_size=7.0)
    classification = source.classification
    structures = sorted(classification.structures, key=lambda item: -int(item.get("chip_count", 0)))
    _mark_structures(ax, source, structures[:STRUCTURES_LISTED])
    note = block_note(image.factor, bins=True)
    if note:
        fig.text(0.08, 0.425, note, fontsize=7, color=_MUTED)
    try:
        hint = SignatureLabel(classification.signature).process_hint
    except ValueError:
        hint = ""
    fig.text(0.06, 0.395, "Wafer signature", fontsize=11, weight="bold", color=_TEXT)
    evidence = classification.signature_evidence
    rows = [
        ("Label", str(classification.signature)),
        ("Rule", str(evidence.get("rule", "–"))),
        ("Points to", hint or "–"),
        (
            "EL-fail share",
            f"{_percent(_number(evidence.get('fail_fraction')), 3)} of usable chips predicted to fail EL (centre "
            f"{_percent(_number(evidence.get('centre_fail_fraction')), 3)}, middle "
            f"{_percent(_number(evidence.get('middle_fail_fraction')), 3)}, edge "
            f"{_percent(_number(evidence.get('edge_fail_fraction')), 3)})",
        ),
    ]
    y = _wrapped_key_values(fig, 0.06, 0.37, rows) - 0.025
    title = f"Wafer-scale structures ({len(structures)})"
    fig.text(0.06, y, title + (", numbered on the map" if structures else ""), fontsize=11, weight="bold", color=_TEXT)
    if not structures:
        fig.text(0.06, y - 0.03, "none found", fontsize=8.5, color=_MUTED)
        return
    listed = structures[:STRUCTURES_LISTED]
    rows_text = [
        [
            str(item.get("label", "")),
            str(item.get("kind", "")),
            f"{int(item.get('chip_count', 0)):,}",
            f"({_number(item.get('centroid_x_um')) / 1000:.1f}, {_number(item.get('centroid_y_um')) / 1000:.1f})",
            f"{_number(item.get('length_um')):.0f} × {_number(item.get('width_um')):.0f}",
            f"{_number(item.get('angle_deg')):.0f}°",
        ]
        for item in listed
    ]
    top = y - 0.015
    height = min(0.022 * (len(rows_text) + 1), top - 0.06)
    ax = fig.add_axes((0.06, top - height, 0.88, height))
    _table(
        ax,
        ["id", "kind", "chips", "centre (mm)", "length × width (µm)", "angle"],
        rows_text,
        widths=[0.08, 0.17, 0.12, 0.22, 0.25, 0.16],
        align=["left", "left", "right", "left", "left", "left"],
    )
    if len(structures) > len(listed):
        fig.text(0.06, top - height - 0.015, f"… and {len(structures) - len(listed)} more", fontsize=7.5)


def _mark_structures(ax: Axes, source: WaferSource, structures: list[dict]) -> None:
    """Number the structures at their centroids on a map (grid frame, mm)."""
    for item in structures:
        x_um, y_um = _number(item.get("centroid_x_um")), _number(item.get("centroid_y_um"))
        if not (math.isfinite(x_um) and math.isfinite(y_um)):
            continue
        u_um, v_um = to_grid_frame(source.layout, np.array(x_um), np.array(y_um))
        ax.annotate(
            str(item.get("label", "")),
            (float(u_um) / 1000.0, float(v_um) / 1000.0),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=7.5,
            weight="bold",
            color="black",
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "0.3", "linewidth": 0.5},
            arrowprops={"arrowstyle": "-", "color": "0.2", "linewidth": 0.6},
        )


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _wrapped_key_values(fig: Figure, x: float, y: float, rows: list[tuple[str, str]], *, width: int = 95) -> float:
    lines: list[tuple[str, str]] = []
    for key, value in rows:
        for number, part in enumerate(textwrap.wrap(value, width) or [""]):
            lines.append((key if number == 0 else "", part))
    return _key_values(fig, x, y, lines)


def _measurement_pages(pages: _Pages, source: WaferSource, measurements: list[MeasurementImage]) -> None:
    chip_maps = [item for item in measurements if item.key not in ("wavelength", "fwhm")]
    spectral = [item for item in measurements if item.key in ("wavelength", "fwhm")]
    groups = [chip_maps[start : start + MAPS_PER_PAGE] for start in range(0, len(chip_maps), MAPS_PER_PAGE)]
    for number, group in enumerate(groups, start=1):
        suffix = f" ({number}/{len(groups)})" if len(groups) > 1 else ""
        _map_grid(pages.new(f"PL maps{suffix}"), source, group)
    if spectral:
        fig = pages.new("Spectra: peak wavelength and FWHM")
        _map_grid(fig, source, spectral)
        for (left, bottom), measurement in zip(_GRID_SLOTS[2:], spectral, strict=False):
            _histogram(fig.add_axes((left, bottom + 0.06, _MAP_WIDTH, 0.18)), measurement)
    else:
        fig = pages.new("Spectra: peak wavelength and FWHM")
        fig.text(0.06, 0.9, "No spectra were measured on this wafer (or none could be fitted).", fontsize=9)


_MAP_WIDTH = 0.34
_MAP_HEIGHT = _MAP_WIDTH * A4_PORTRAIT_IN[0] / A4_PORTRAIT_IN[1]  # square in inches: no gaps around the wafer
_GRID_SLOTS = ((0.08, 0.655), (0.56, 0.655), (0.08, 0.235), (0.56, 0.235))  # lower-left corner of each map


def _map_grid(fig: Figure, source: WaferSource, measurements: list[MeasurementImage]) -> None:
    for (left, bottom), measurement in zip(_GRID_SLOTS, measurements, strict=False):
        ax = fig.add_axes((left, bottom, _MAP_WIDTH, _MAP_HEIGHT))
        draw_measurement_map(fig, ax, source, measurement, bar_label=measurement.unit or "ratio")
        ax.set_title(measurement.label, fontsize=9.5, loc="left")
        ax.set_xlabel("x (mm)", fontsize=7.5)
        ax.set_ylabel("y (mm)", fontsize=7.5)
        stats = measurement.statistics
        unit = f" {measurement.unit}" if measurement.unit else ""
        lines = [
            f"chips {stats.count:,}" if measurement.key not in ("wavelength", "fwhm") else f"spectra {stats.count:,}",
            f"median {stats.median:.4g}{unit}   robust σ {stats.robust_std:.3g}{unit}",
            f"mean {stats.mean:.4g}{unit}   σ {stats.std:.3g}{unit}",
            f"P1 – P99 {stats.p1:.4g} – {stats.p99:.4g}{unit}{' (sampled)' if stats.sampled else ''}",
        ]
        if stats.count == 0:
            lines = ["no values"]
        note = measurement.note or block_note(measurement.factor, bins=False)
        if note:
            lines.append(note)
        fig.text(left, bottom - 0.045, "\n".join(lines), fontsize=7, va="top", color=_TEXT, linespacing=1.4)


def _histogram(ax: Axes, measurement: MeasurementImage) -> None:
    values = measurement.site_values
    if values is None or values.size == 0:
        ax.set_axis_off()
        return
    values = values[np.isfinite(values)]
    ax.hist(values, bins=min(60, max(10, values.size // 10)), color="0.45", edgecolor="white", linewidth=0.3)
    stats = measurement.statistics
    ax.axvline(stats.median, color="#d62728", linewidth=1.0, label=f"median {stats.median:.4g} {measurement.unit}")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{measurement.label} of the measured spectra", fontsize=9.5, loc="left")
    ax.set_xlabel(measurement.unit, fontsize=7.5)
    ax.set_ylabel("spectra", fontsize=7.5)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)


def _evaluation(source: WaferSource) -> Evaluation | str | None:
    """The wafer against its EL reference; None without one; the reason when it cannot be compared."""
    if not source.has_el_reference:
        return None
    classification = None
    if source.bin_table != source.classification.bin_table:
        stored = read_classification(source.path)
        classification = dataclasses.replace(stored, bin_table=source.bin_table) if stored else None
    try:
        return evaluate_scan(source.path, classification).evaluation
    except ValueError as error:  # an EL reference of another chip grid: the report says so instead of failing
        return str(error)


def _el_page(pages: _Pages, evaluation: Evaluation) -> None:
    fig = pages.new("Agreement with the EL reference test")
    fig.text(
        0.06,
        0.91,
        f"{evaluation.chips:,} chips both inspected and EL-probed; positive = fails EL. The prediction is the bin's "
        "'predicts EL fail'.",
        fontsize=8.5,
        va="top",
        color=_TEXT,
        wrap=True,
    )
    ax = fig.add_axes((0.06, 0.78, 0.55, 0.08))
    _table(
        ax,
        ["", "predicted fail", "predicted pass"],
        [
            ["EL fail", f"{evaluation.true_positives:,}", f"{evaluation.false_negatives:,}"],
            ["EL pass", f"{evaluation.false_positives:,}", f"{evaluation.true_negatives:,}"],
        ],
        widths=[0.3, 0.35, 0.35],
        align=["left", "right", "right"],
        size=9,
    )
    figures = [
        ("Agreement (accuracy)", _percent(evaluation.accuracy)),
        ("Recall of EL failures", _percent(evaluation.recall)),
        ("Recall, PL-visible failures", _percent(evaluation.recall_detectable)),
        ("Precision", _percent(evaluation.precision)),
        ("False-alarm rate", _percent(evaluation.false_alarm_rate, 3)),
        ("MCC", "–" if math.isnan(evaluation.mcc) else f"{evaluation.mcc:.4f}"),
        ("Ceiling (perfect PL tool)", _percent(evaluation.agreement_ceiling)),
        ("Agreement, PL-visible", _percent(evaluation.accuracy_detectable)),
    ]
    fig.text(0.06, 0.74, "Figures", fontsize=11, weight="bold", color=_TEXT)
    ax = fig.add_axes((0.06, 0.53, 0.55, 0.2))
    _table(ax, ["figure", "value"], [list(row) for row in figures], widths=[0.65, 0.35], align=["left", "right"])
    fig.text(0.06, 0.49, "Per EL fail mode", fontsize=11, weight="bold", color=_TEXT)
    modes = list(evaluation.per_mode.items())
    height = 0.022 * (len(modes) + 1)
    ax = fig.add_axes((0.06, 0.475 - height, 0.7, height))
    _table(
        ax,
        ["EL fail mode", "chips", "predicted fail", "recall", "PL signature"],
        [
            [
                name.lower().replace("_", " "),
                f"{figures_.chips:,}",
                f"{figures_.predicted_fail:,}",
                _percent(figures_.recall, 1),
                "yes" if figures_.pl_signature else "no",
            ]
            for name, figures_ in modes
        ],
        widths=[0.28, 0.14, 0.2, 0.16, 0.22],
        align=["left", "right", "right", "right", "right"],
    )
    fig.text(
        0.06,
        0.475 - height - 0.03,
        f"{evaluation.no_signature_failures:,} EL failures have no PL signature (open contacts, series resistance): "
        "no PL tool can see them,\nso even a perfect PL classifier agrees with EL on at most "
        f"{_percent(evaluation.agreement_ceiling)} of these chips.",
        fontsize=8,
        va="top",
        color=_TEXT,
    )


def write_wafer_report(
    scan_path: str | Path,
    out_path: str | Path,
    *,
    bin_table: BinTable | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the PDF report of one classified wafer (pages listed in the module docstring).

    Raises
    ------
    ExportError
        The scan file cannot be exported (see :func:`~inspection.export.open_wafer`).
    """
    report = progress or (lambda message: None)
    source = open_wafer(scan_path, bin_table=bin_table)
    out_path = Path(out_path)
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    pages = _Pages(
        f"plmapper wafer report · {source.title}",
        f"{source.path.name} · generated {generated}",
    )
    summary = wafer_summary(source)
    _summary_page(pages, source, summary)
    report("summary")
    _bin_map_page(pages, source)
    report("bin map")
    _measurement_pages(pages, source, measurement_images(source))
    report("measurement maps")
    evaluation = _evaluation(source)
    if isinstance(evaluation, Evaluation):
        _el_page(pages, evaluation)
        report("EL agreement")
    elif evaluation is not None:
        fig = pages.new("Agreement with the EL reference test")
        fig.text(0.06, 0.9, "The EL reference data could not be compared with this classification:", fontsize=9)
        fig.text(0.06, 0.87, "\n".join(textwrap.wrap(evaluation, 110)), fontsize=8, va="top", color=_MUTED)
    pages.save(out_path, title=f"PL inspection report, {source.title}")
    return out_path


# ---------------------------------------------------------------------------------------------------------------------
# Lot report
# ---------------------------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "bin"


def stack_fail_fraction(sources: Sequence[WaferSource], factor: int) -> np.ndarray:
    """The stacked fail map of wafers of one chip grid: for each block of ``factor × factor`` chip positions, the
    mean over the wafers (where the block holds inspected chips) of the block's failing fraction; NaN where no wafer
    inspected a chip. With ``factor`` 1: the fraction of the wafers on which each chip fails."""
    rows, cols = sources[0].shape
    shape = (math.ceil(rows / factor), math.ceil(cols / factor))
    total = np.zeros(shape, dtype=np.float64)
    wafers = np.zeros(shape, dtype=np.int32)
    band_rows = factor * max(1, math.ceil(64 / factor))
    for source in sources:
        fail_of = source.class_lookup("fail").astype(bool)
        with source.reader() as reader:
            for band in source.bands(band_rows=band_rows):
                classes = reader.classes(band)
                inspected = (classes != NO_CHIP) & (classes != DefectClass.NOT_INSPECTED)
                failing = (inspected & fail_of[classes]).astype(np.float32)
                failing[~inspected] = np.nan
                blocks = chip_blocks(failing, factor)
                finite = np.isfinite(blocks)
                count = finite.sum(axis=2)
                fraction = np.where(finite, blocks, 0.0).sum(axis=2) / np.maximum(count, 1)
                first = band.start // factor
                target = slice(first, first + blocks.shape[0])
                total[target] += np.where(count > 0, fraction, 0.0)
                wafers[target] += count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(wafers > 0, total / np.maximum(wafers, 1), np.nan).astype(np.float32)


def _check_same_grid(sources: list[WaferSource]) -> None:
    first = sources[0]
    for source in sources[1:]:
        if source.layout != first.layout:
            grid, other = first.layout.grid, source.layout.grid
            raise ExportError(
                f"{source.path}: its chip grid ({source.shape[1]} x {source.shape[0]} chips at "
                f"{other.pitch_x_um:g} µm) differs from {first.path.name}'s ({first.shape[1]} x {first.shape[0]} "
                f"at {grid.pitch_x_um:g} µm); a lot report stacks wafers of one chip grid"
            )


def lot_report(
    scan_paths: Sequence[str | Path],
    out_path: str | Path,
    *,
    bin_table: BinTable | None = None,
) -> Path:
    """Write a lot report: a PDF at ``out_path`` and its CSV summary next to it (same name, ``.csv``).

    The CSV has one row per wafer, in the order given: ``lot_id, wafer_id, scan_file, recipe, scanned_utc,
    classifier, chips_on_wafer, inspected, good, failing, yield, signature`` and ``bin_<code>_<name>`` chip counts.

    Parameters
    ----------
    scan_paths
        The lot's classified scan files, in the order the trend should show (e.g. slot order). All must share one
        chip grid (the stacked map adds them chip by chip).
    out_path
        The PDF to write (replaced if it exists; written under a temporary name first, like the CSV).
    bin_table
        Re-bin every wafer with this product table (default: the first wafer's stored table; wafers stored with
        another table are re-binned with it so the lot's bins add up).

    Returns
    -------
    Path
        ``out_path`` (the CSV is ``out_path.with_suffix(".csv")``).

    Raises
    ------
    ExportError
        No scan file given, a file that cannot be exported, or wafers of different chip grids.
    """
    if not scan_paths:
        raise ExportError("lot report: no scan files given")
    first = open_wafer(scan_paths[0], bin_table=bin_table)
    table = first.bin_table
    sources = [first] + [open_wafer(path, bin_table=table) for path in scan_paths[1:]]
    _check_same_grid(sources)
    out_path = Path(out_path)
    summaries = [wafer_summary(source) for source in sources]
    lots = sorted({source.lot_id for source in sources})
    names = [source.wafer_id or source.path.stem for source in sources]
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lot_text = ", ".join(lot or "?" for lot in lots)
    pages = _Pages(f"plmapper lot report · lot {lot_text}", f"{len(sources)} wafers · generated {generated}")
    _lot_summary_page(pages, sources, summaries, names, lot_text)
    _lot_map_page(pages, sources, summaries)
    csv_path = out_path.with_suffix(".csv")
    with atomic_output(csv_path) as partial, open(partial, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        bins = sorted(table.bins, key=lambda entry: entry.code)
        writer.writerow(
            [
                "lot_id", "wafer_id", "scan_file", "recipe", "scanned_utc", "classifier", "chips_on_wafer",
                "inspected", "good", "failing", "yield", "signature",
                *(f"bin_{entry.code}_{_slug(entry.name)}" for entry in bins),
            ]
        )  # fmt: skip
        for source, summary in zip(sources, summaries, strict=True):
            writer.writerow(
                [
                    source.lot_id, source.wafer_id, source.path.name, source.recipe.name, source.scan_created_utc,
                    classifier_text(source.classification.classifier), summary.on_substrate, summary.inspected,
                    summary.good, summary.failing,
                    f"{summary.yield_fraction:.6f}" if math.isfinite(summary.yield_fraction) else "",
                    source.classification.signature,
                    *(summary.bin_counts[entry.code] for entry in bins),
                ]
            )  # fmt: skip
    pages.save(out_path, title=f"PL inspection lot report, lot {lot_text}")
    return out_path


def _lot_summary_page(
    pages: _Pages, sources: list[WaferSource], summaries: list[WaferSummary], names: list[str], lot_text: str
) -> None:
    fig = pages.new(f"Lot {lot_text}: yield per wafer")
    inspected = sum(summary.inspected for summary in summaries)
    good = sum(summary.good for summary in summaries)
    recipes = sorted({source.recipe.name for source in sources})
    classifiers = sorted({classifier_text(source.classification.classifier) for source in sources})
    scanned = sorted(source.scan_created_utc for source in sources)
    y = _key_values(
        fig,
        0.06,
        0.915,
        [
            ("Wafers", f"{len(sources)}"),
            ("Recipe", ", ".join(recipes)),
            ("Classifier", "; ".join(classifiers)),
            ("Scanned", f"{utc_text(scanned[0])} – {utc_text(scanned[-1])}"),
            ("Lot yield", f"{_percent(good / inspected if inspected else math.nan)} ({good:,} of {inspected:,} chips)"),
        ],
    )
    # trend
    ax = fig.add_axes((0.1, y - 0.27, 0.84, 0.22))
    yields = np.array([100.0 * summary.yield_fraction for summary in summaries])
    positions = np.arange(len(sources))
    ax.plot(positions, yields, marker="o", color="#2e6fb0", linewidth=1.2)
    finite = yields[np.isfinite(yields)]
    if finite.size:
        ax.axhline(float(finite.mean()), color="0.5", linestyle="--", linewidth=0.8, label="mean of the wafers")
        ax.legend(fontsize=7, frameon=True, framealpha=0.9, edgecolor="0.85", loc="best")
        spread = max(float(finite.max() - finite.min()), 0.05)
        ax.set_ylim(float(finite.min()) - 0.15 * spread, float(finite.max()) + 0.15 * spread)
    ax.set_xlim(-0.3, len(sources) - 0.7)
    ax.set_xticks(
        positions, names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center", fontsize=7
    )
    ax.set_ylabel("yield (%)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7.5)
    ax.set_title("Yield trend (wafers in the order given)", fontsize=9.5, loc="left")
    ax.grid(axis="y", color="0.9")
    ax.spines[["top", "right"]].set_visible(False)
    # per-wafer table
    table_top = y - 0.33
    rows = []
    for source, summary, name in zip(sources, summaries, names, strict=True):
        failing = [entry for entry in source.bin_table.bins if entry.fail]
        worst = max(failing, key=lambda entry: summary.bin_counts[entry.code], default=None)
        rows.append(
            [
                name,
                _percent(summary.yield_fraction),
                f"{summary.inspected:,}",
                f"{summary.failing:,}",
                f"{worst.name} ({summary.bin_counts[worst.code]:,})" if worst and summary.failing else "–",
                str(source.classification.signature),
            ]
        )
    listed = rows[:24]
    height = min(0.022 * (len(listed) + 1), table_top - 0.07)
    ax = fig.add_axes((0.06, table_top - height, 0.88, height))
    _table(
        ax,
        ["wafer", "yield", "inspected", "failing", "top failing bin", "signature"],
        listed,
        widths=[0.22, 0.12, 0.14, 0.11, 0.24, 0.17],
        align=["left", "right", "right", "right", "left", "left"],
        size=7.5,
    )
    if len(rows) > len(listed):
        fig.text(0.06, table_top - height - 0.015, f"… {len(rows) - len(listed)} more wafers in the CSV", fontsize=7.5)


def _lot_map_page(pages: _Pages, sources: list[WaferSource], summaries: list[WaferSummary]) -> None:
    fig = pages.new("Stacked fail map and failing bins")
    first = sources[0]
    factor = block_factor(first.shape)
    stacked = stack_fail_fraction(sources, factor)
    ax = fig.add_axes((0.1, 0.5, 0.6, 0.4))
    colormap = mpl.colormaps["inferno_r"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    shown = ax.imshow(
        np.ma.masked_invalid(stacked),
        origin="lower",
        extent=map_extent_mm(first, factor, stacked.shape),
        interpolation="nearest",
        cmap=colormap,
        vmin=0.0,
        vmax=1.0,
    )
    draw_wafer_frame(ax, first)
    ax.set_title(f"Fraction of the {len(sources)} wafers failing at each chip", fontsize=9.5, loc="left")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("fraction of wafers failing", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    note = block_note(factor, bins=False)
    if note:
        fig.text(0.1, 0.475, note.replace("mean", "mean fail fraction"), fontsize=7, color=_MUTED)
    # stacked bars of failing bins per wafer
    table = first.bin_table
    failing = [entry for entry in sorted(table.bins, key=lambda entry: entry.code) if entry.fail]
    ax = fig.add_axes((0.1, 0.1, 0.58, 0.3))
    positions = np.arange(len(sources))
    bottom = np.zeros(len(sources))
    for entry in failing:
        shares = np.array(
            [
                100.0 * summary.bin_counts[entry.code] / summary.inspected if summary.inspected else 0.0
                for summary in summaries
            ]
        )
        if not shares.any():
            continue
        ax.bar(positions, shares, bottom=bottom, color=entry.colour, edgecolor="0.3", linewidth=0.4, label=entry.name)
        bottom += shares
    ax.set_ylim(0.0, max(float(bottom.max()), 1e-3) * 1.1)
    names = [source.wafer_id or source.path.stem for source in sources]
    ax.set_xticks(
        positions, names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center", fontsize=7
    )
    ax.set_ylabel("% of inspected chips", fontsize=8)
    ax.tick_params(axis="y", labelsize=7.5)
    ax.set_title("Failing bins per wafer", fontsize=9.5, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
