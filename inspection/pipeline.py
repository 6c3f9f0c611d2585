"""The PL analysis pipeline: from a scan file's raw lines to per-chip measurements.

For every pass (one excitation power) of a scan:

1. **Where each sample was.** Sample ``k`` of a line was taken at ``start + k·sample_pitch`` along the planned
   stage line (the stage's position trigger starts the digitizer, see :mod:`inspection.scan`), moved along the
   direction of travel by the *bidirectional offset* (digitizer latency pushes forward and reverse lines apart by
   ``2·v·latency``), then mapped through the alignment's placement onto the chip grid. Positions are never stored
   per sample: the kernels get each line's start and step in chip units.
2. **Registration.** The chip comb seen in the data must sit at whole chip indices, along the lines (at several
   places across the wafer, which also catches a wrong pitch) and, for raster scans, across them. A grid that
   does not match is a :class:`RegistrationError` naming what was measured, never a silently shifted map.
3. **Laser power drift.** Each line's samples are scaled by ``(P_set / P_line)^k``: ``P_line`` is the mean of the
   power meter's readings before and after the line, ``P_set`` the pass's laser setpoint, ``k`` the PL's power exponent
   (:attr:`AnalysisSettings.drift_exponent`). This flattens the illumination variation the station measures;
   a focus drift would need a focus sensor (the station has none) and cannot be told apart from a real wafer
   trend, so nothing else is "flattened" away.
4. **Per chip**, in bands of chip rows whose memory is bounded by :attr:`AnalysisSettings.memory_mb` (not by the
   wafer), the Cython kernel :func:`cext.chip_kernels.accumulate_lines` sums the samples of each chip's
   footprint, core and street; then: intensity (mean of its core minus the pass's dark level: the chip's PL with
   the spot on it), peak, integrated intensity, the intensity centroid's offset from the chip centre, its street
   level, and quality flags (:class:`ChipFlag`). The dark level is the detector's reading with no chip under the
   spot, from the dimmest samples of the pass: a chip's own street is no background, since the spot's tails
   light it from the chips on either side (about 10 % of their PL with an 8 µm spot and a 40 µm street).
5. **Sampling phase.** Where the samples fall on a chip changes what its core mean sees: the raster line
   nearest its centre is 0 to half a line pitch away, and along the line the samples sit anywhere within one
   sample pitch of the centre; a spot further off the centre puts less light on the chip. The pipeline measures
   that loss from the data, as the median intensity of the chips in each phase bin over the wafer's median (the
   phases vary pseudo-randomly over a wafer, so no chip property correlates with them), and divides it out.
6. **Derived:** efficiency (intensity per watt), the low/high-power efficiency ratio (the leakage signature) and
   each chip's intensity relative to the median of its 8 neighbours (so process gradients do not pass for
   defects).
7. **Spectra:** every spectrum's peak wavelength, FWHM and integrated power by a robust line-shape fit
   (:mod:`inspection.spectra_analysis`), and wavelength/FWHM maps interpolated over the chip grid for display.

The results go into the scan file's ``/results`` group next to the raw data (format in docs/results.md), and
:class:`ChipResults` reads them back without recomputation.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import IntFlag
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np

from cext import chip_kernels as kernels
from inspection.alignment import phase_of, wrap
from inspection.recipe import Recipe, ScanMode, recipe_from_text
from inspection.scanfile import ScanFile, ScanFileError, open_hdf5
from inspection.spectra_analysis import SPECTRUM_RESULT_DTYPE, chip_map, fit_spectra
from inspection.wafer import ChipGrid, Placement, WaferLayout

__all__ = [
    "CHIP_DTYPE",
    "RESULTS_FORMAT_VERSION",
    "AnalysisSettings",
    "AnalysisSummary",
    "ChipFlag",
    "ChipResults",
    "RegistrationError",
    "analyze_scan",
    "chip_records",
    "create_results_datasets",
    "line_geometry",
    "results_attributes",
    "write_chip_band",
    "write_pass_bands",
]

RESULTS_FORMAT_VERSION = 1

CHIP_DTYPE = np.dtype(
    [
        ("intensity_v", "<f4"),  # core mean minus the dark level, line phase corrected: PL with the spot on it
        ("peak_v", "<f4"),  # brightest footprint sample minus the dark level
        ("integrated_v_um2", "<f4"),  # sum over the footprint of (sample - dark level) x area per sample
        ("street_v", "<f4"),  # mean of the chip's street samples (dark level plus its neighbours' spot tails)
        ("efficiency_v_per_w", "<f4"),  # intensity per watt of the pass's laser power
        ("neighbour_ratio", "<f4"),  # intensity / median intensity of the 8 neighbours
        ("offset_col_um", "<f2"),  # intensity centroid minus chip centre, along the grid's column axis
        ("offset_row_um", "<f2"),  # ... and along its row axis
        ("core_samples", "u1"),  # samples on the core (saturates at 255)
        ("flags", "u1"),  # ChipFlag
    ]
)
"""One chip's measurements in one pass, as stored in ``/results/pass_NNN/chips`` (rows x columns of the chip box;
row 0 at the bottom, like every chip map)."""


class ChipFlag(IntFlag):
    """Why a chip's measurement needs care (stored per chip and pass)."""

    OUTSIDE_USABLE = 1  # not fully inside the usable area (edge exclusion or off the wafer)
    NOT_MEASURED = 2  # no sample on its core
    FEW_SAMPLES = 4  # fewer core samples than AnalysisSettings.min_core_samples
    SATURATED = 8  # a sample in its cell was over range: intensity and peak are low bounds


class RegistrationError(RuntimeError):
    """The chip grid in the data does not match the recipe and the alignment: the map would be wrong."""


@dataclass(frozen=True)
class AnalysisSettings:
    """How the pipeline works; every field has a sensible default.

    Attributes
    ----------
    memory_mb
        Working memory for one band of chip rows (accumulators and the band's samples); the wafer size does not
        change it.
    core_fraction
        The chip's core, where the whole spot is on the chip, as a fraction of its size (centred).
    min_core_samples
        Fewer core samples than this flag the chip FEW_SAMPLES.
    drift_exponent
        ``k`` in PL ∝ P^k for the laser drift correction (1 = linear; the ABC model gives 1..2).
    saturation_v
        Samples at or above this are over range (the digitizer's 120 % of a 10 V range by default).
    registration_tolerance
        Largest allowed offset of the chip comb in the data from whole indices, in pitches.
    """

    memory_mb: float = 512.0
    core_fraction: float = 0.5
    min_core_samples: int = 3
    drift_exponent: float = 1.0
    saturation_v: float = 12.0
    registration_tolerance: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if not 16.0 <= self.memory_mb <= 1e6:
            problems.append(f"memory_mb: {self.memory_mb!r} is outside 16..1e6")
        if not 0.0 < self.core_fraction <= 1.0:
            problems.append(f"core_fraction: {self.core_fraction!r} is outside (0, 1]")
        if not 1 <= self.min_core_samples <= 255:
            problems.append(f"min_core_samples: {self.min_core_samples!r} is outside 1..255")
        if not 0.0 <= self.drift_exponent <= 3.0:
            problems.append(f"drift_exponent: {self.drift_exponent!r} is outside 0..3")
        if not self.saturation_v > 0:
            problems.append(f"saturation_v: {self.saturation_v!r} must be > 0")
        if not 0.0 < self.registration_tolerance <= 0.5:
            problems.append(f"registration_tolerance: {self.registration_tolerance!r} is outside (0, 0.5]")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class PassSummary:
    """What the pipeline measured about one pass as a whole."""

    power_w: float
    lines: int
    bidirectional_offset_um: float  # forward lines sit this far ahead of where they were planned (reverse: behind)
    registration_col: float  # the chip comb's offset from whole indices along the lines, pitches
    registration_row: float  # ... across the lines (NaN when lines run through the chip centres)
    dark_v: float  # the detector's reading with no chip under the spot
    power_spread: float  # (max - min) / median of the lines' laser power
    chips_measured: int
    line_phase_loss: list[float]  # intensity per band of line offset over the median (raster scans; empty else)


@dataclass(frozen=True)
class AnalysisSummary:
    path: Path
    passes: tuple[PassSummary, ...]
    spectra: int
    seconds: float


# ---------------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineGeometry:
    """Each line's sample positions in chip units: sample ``k`` of line ``j`` is at
    ``(col0[j] + k·dcol[j], row0[j] + k·drow[j])`` (box indices; chip centres at integers)."""

    col0: np.ndarray
    row0: np.ndarray
    dcol: np.ndarray
    drow: np.ndarray
    forward: np.ndarray  # True where the line runs towards +col

    def rows_spanned(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lowest and highest row coordinate each line's ``counts`` samples reach."""
        last = self.row0 + self.drow * (counts - 1)
        return np.minimum(self.row0, last), np.maximum(self.row0, last)

    def lines_in_rows(self, counts: np.ndarray, first_row: int, last_row: int) -> np.ndarray:
        """Indices of the lines with samples in chip rows ``first_row .. last_row - 1``."""
        low, high = self.rows_spanned(counts)
        return np.flatnonzero((high >= first_row - 0.5) & (low < last_row - 0.5))


def line_geometry(
    plan_lines: np.ndarray,
    layout: WaferLayout,
    placement: Placement,
    sample_pitch_um: float,
    *,
    bidirectional_offset_um: float = 0.0,
) -> LineGeometry:
    """Where the samples of ``plan_lines`` (stage frame) fall on the chip grid.

    Parameters
    ----------
    plan_lines
        ``LINE_DTYPE`` records (start, stop, sample count) in the stage frame.
    layout, placement
        The recipe's chip grid and where the alignment found the wafer.
    sample_pitch_um
        Distance between samples along a line.
    bidirectional_offset_um
        How far each sample really was ahead of its planned place in the direction of travel.
    """
    start = np.stack([plan_lines["x_start_um"], plan_lines["y_start_um"]]).astype(np.float64)
    stop = np.stack([plan_lines["x_stop_um"], plan_lines["y_stop_um"]]).astype(np.float64)
    length = np.maximum(np.hypot(*(stop - start)), 1e-9)
    direction = (stop - start) / length
    first = start + direction * bidirectional_offset_um
    second = first + direction * sample_pitch_um
    col0, row0 = layout.grid_position(*placement.stage_to_wafer(first[0], first[1]))
    col1, row1 = layout.grid_position(*placement.stage_to_wafer(second[0], second[1]))
    dcol, drow = col1 - col0, row1 - row0
    return LineGeometry(col0, row0, dcol, drow, forward=dcol >= 0)


@dataclass(frozen=True)
class _PassLines:
    """A pass's lines as the band loop needs them."""

    pass_index: int
    geometry: LineGeometry
    offsets: np.ndarray
    counts: np.ndarray
    gains: np.ndarray
    plan: np.ndarray  # the lines' LINE_DTYPE records (stage frame)
    bidirectional_offset_um: float


@dataclass(frozen=True)
class _PassPlan:
    """What a pass's bands need besides their samples, measured on the pass as a whole before any band (module
    docstring, steps 1-3 and 5). Small (a few arrays per line), so bands can be done elsewhere
    (:mod:`inspection.distributed`) with the same numbers."""

    lines: _PassLines
    power_w: float
    dark_v: float
    loss: np.ndarray | None  # the sampling-phase divisor per phase bin; None when too few chips to measure it
    registration_col: float
    registration_row: float
    power_spread: float

    def summary(self, chips_measured: int) -> PassSummary:
        return PassSummary(
            power_w=self.power_w,
            lines=int(self.lines.counts.size),
            bidirectional_offset_um=self.lines.bidirectional_offset_um,
            registration_col=self.registration_col,
            registration_row=self.registration_row,
            power_spread=self.power_spread,
            chips_measured=chips_measured,
            dark_v=self.dark_v,
            line_phase_loss=[] if self.loss is None else [float(value) for value in self.loss],
        )


def _comb_component(
    samples: np.ndarray, offsets: np.ndarray, counts: np.ndarray, origin: np.ndarray, step: np.ndarray
) -> complex:
    """Sum over lines of the Fourier component at one cycle per chip of the samples against their position."""
    total = 0j
    for offset, count, position0, position_step in zip(offsets, counts, origin, step, strict=True):
        values = samples[offset : offset + count].astype(np.float64)
        finite = np.isfinite(values)
        if finite.sum() < 8:
            continue
        position = position0 + position_step * np.arange(count)
        values, position = values[finite], position[finite]
        total += complex(np.sum((values - values.mean()) * np.exp(-2j * np.pi * position)))
    return total


def _drift_gains(records: np.ndarray, exponent: float) -> tuple[np.ndarray, float]:
    """Per line ``(P_set / P_line)^k`` (the laser setpoint over the power meter's mean reading around the line), and
    the lines' power spread ((max - min) / median). Lines without a valid reading keep gain 1."""
    readings = np.stack([records["power_before_w"], records["power_after_w"]]).astype(np.float64)
    readings[~(np.isfinite(readings) & (readings > 0))] = np.nan
    valid = np.isfinite(readings)
    count = valid.sum(axis=0)
    line_power = np.where(count > 0, np.where(valid, readings, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    setpoint = records["laser_setpoint_w"].astype(np.float64)
    measured = np.isfinite(line_power) & np.isfinite(setpoint) & (setpoint > 0)
    if not measured.any():
        return np.ones(records.size), 0.0
    gains = np.ones(records.size)
    gains[measured] = (setpoint[measured] / line_power[measured]) ** exponent
    spread = float((line_power[measured].max() - line_power[measured].min()) / np.median(line_power[measured]))
    return gains, spread


# ---------------------------------------------------------------------------------------------------------------------
# Writing results (also used by inspection.pl_import, so imported maps are stored exactly like analysed scans)
# ---------------------------------------------------------------------------------------------------------------------


def chip_records(
    acc: np.ndarray,
    usable: np.ndarray,
    *,
    grid: ChipGrid,
    power_w: float,
    dark_v: float,
    sample_area_um2: float,
    min_core_samples: int,
) -> np.ndarray:
    """A band's ``CHIP_DTYPE`` records from the kernel's per-chip sums (module docstring, step 4).

    Parameters
    ----------
    acc
        (FIELD_COUNT, rows, cols) sums of :func:`cext.chip_kernels.accumulate_lines` over the band.
    usable
        (rows, cols) the layout's usable mask for the band's rows.
    grid
        The chip grid (pitches turn the centroid into µm).
    power_w, dark_v
        The pass's laser power and dark level.
    sample_area_um2
        Wafer area one sample stands for (sample pitch x line spacing), for ``integrated_v_um2``.
    min_core_samples
        Fewer core samples flag the chip FEW_SAMPLES.

    Returns
    -------
    ndarray
        (rows, cols) ``CHIP_DTYPE``; ``neighbour_ratio`` NaN (:func:`write_chip_band` fills it in).
    """
    k = kernels
    rows, cols = acc.shape[1], acc.shape[2]
    chips = np.zeros((rows, cols), dtype=CHIP_DTYPE)
    core, footprint, street = acc[k.N_CORE], acc[k.N_FOOT], acc[k.N_STREET]
    with np.errstate(invalid="ignore", divide="ignore"):
        intensity = np.where(core > 0, acc[k.SUM_CORE] / core - dark_v, np.nan)
        peak = np.where(footprint > 0, acc[k.MAX_FOOT] - dark_v, np.nan)
        excess = acc[k.SUM_FOOT] - footprint * dark_v
        integrated = np.where(footprint > 0, excess * sample_area_um2, np.nan)
        # centroid of (sample - dark) over the footprint, in chip units from the centre
        weight = np.where(np.abs(excess) > 1e-12, excess, np.nan)
        centroid_col = (acc[k.SUM_UI] - dark_v * acc[k.SUM_U]) / weight
        centroid_row = (acc[k.SUM_VI] - dark_v * acc[k.SUM_V]) / weight
        chips["street_v"] = np.where(street > 0, acc[k.SUM_STREET] / street, np.nan)
    flags = np.zeros((rows, cols), dtype=np.uint8)
    for flag, where in (
        (ChipFlag.OUTSIDE_USABLE, ~usable),
        (ChipFlag.NOT_MEASURED, core == 0),
        (ChipFlag.FEW_SAMPLES, (core > 0) & (core < min_core_samples)),
        (ChipFlag.SATURATED, acc[k.N_SAT] > 0),
    ):
        flags[where] |= np.uint8(flag)
    chips["intensity_v"] = intensity
    chips["peak_v"] = peak
    chips["integrated_v_um2"] = integrated
    chips["efficiency_v_per_w"] = intensity / power_w
    chips["neighbour_ratio"] = np.nan
    chips["offset_col_um"] = np.clip(centroid_col, -0.5, 0.5) * grid.pitch_x_um
    chips["offset_row_um"] = np.clip(centroid_row, -0.5, 0.5) * grid.pitch_y_um
    chips["core_samples"] = np.minimum(core, 255)
    chips["flags"] = flags
    return chips


def write_chip_band(
    dataset: h5py.Dataset,
    first_row: int,
    chips: np.ndarray,
    *,
    row_above: np.ndarray | None,
    row_below: np.ndarray | None,
    ratio: h5py.Dataset | None = None,
    low_pass: h5py.Dataset | None = None,
) -> np.ndarray:
    """Fill in a band's neighbour ratios, write it to ``dataset`` at ``first_row`` and, given ``ratio`` and the
    lowest-power pass ``low_pass``, its efficiency ratio (module docstring, step 7).

    ``row_above`` / ``row_below`` are the intensity rows just below and above the band (None at the map's ends):
    the neighbour medians then equal those of the whole map. Returns the band's last intensity row (the next
    band's ``row_above``).
    """
    intensity = chips["intensity_v"]
    values = np.concatenate([part for part in (row_above, intensity, row_below) if part is not None])
    median = np.empty_like(intensity)
    kernels.neighbour_median(np.ascontiguousarray(values), median, 0 if row_above is None else 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        chips["neighbour_ratio"] = intensity / median
    last_row = first_row + intensity.shape[0]
    dataset[first_row:last_row] = chips
    if low_pass is not None and ratio is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            low = low_pass.fields("efficiency_v_per_w")[first_row:last_row]
            ratio[first_row:last_row] = low / chips["efficiency_v_per_w"]
    return intensity[-1:].copy()


def create_results_datasets(
    group: h5py.Group, shape: tuple[int, int], passes: Sequence[int], powers_w: Sequence[float]
) -> tuple[dict[int, h5py.Dataset], h5py.Dataset | None]:
    """Create the chip record datasets of ``passes`` in ``group`` and, with two passes or more, the efficiency
    ratio (lowest over highest pass); returns them (docs/results.md, Layout)."""
    chunks = (min(64, shape[0]), min(1024, shape[1]))
    datasets = {}
    for index in passes:
        dataset = group.create_dataset(f"pass_{index:03d}/chips", shape=shape, dtype=CHIP_DTYPE, chunks=chunks)
        dataset.attrs["power_w"] = float(powers_w[index])
        datasets[index] = dataset
    ratio = None
    if len(passes) > 1:
        ratio = group.create_dataset("efficiency_ratio", shape=shape, dtype="<f4", chunks=chunks)
        ratio.attrs["passes"] = [passes[0], passes[-1]]
    return datasets, ratio


def write_pass_bands(
    dataset: h5py.Dataset,
    bands: Iterable[tuple[int, np.ndarray]],
    *,
    ratio: h5py.Dataset | None = None,
    low_pass: h5py.Dataset | None = None,
) -> int:
    """Write a pass's bands of chip records (``(first_row, records)``, consecutive from row 0 to the last row) with
    :func:`write_chip_band`, one band held back until the next arrives for its neighbour medians, and return how
    many chips were measured. Given ``ratio`` and ``low_pass``, the efficiency ratio is written too."""
    measured = 0
    held: tuple[int, np.ndarray] | None = None
    row_above: np.ndarray | None = None
    next_row = 0
    for first_row, chips in bands:
        if first_row != next_row:
            raise ValueError(f"bands must be consecutive: expected one from row {next_row}, got {first_row}")
        next_row = first_row + chips.shape[0]
        measured += int(np.count_nonzero(chips["core_samples"]))
        if held is not None:
            row_above = write_chip_band(
                dataset, *held, row_above=row_above, row_below=chips["intensity_v"][:1], ratio=ratio, low_pass=low_pass
            )
        held = (first_row, chips)
    if held is not None:
        write_chip_band(dataset, *held, row_above=row_above, row_below=None, ratio=ratio, low_pass=low_pass)
    if next_row != dataset.shape[0]:
        raise ValueError(f"bands end at row {next_row}; the map has {dataset.shape[0]} rows")
    return measured


def results_attributes(
    settings: AnalysisSettings, placement: Placement, passes: Sequence[PassSummary], powers_w: Sequence[float]
) -> dict[str, object]:
    """The ``/results`` group's attributes (docs/results.md, Layout)."""
    return {
        "format_name": "plmapper-results",
        "format_version": RESULTS_FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings_json": json.dumps(asdict(settings)),
        "placement_json": json.dumps(asdict(placement)),
        "passes_json": json.dumps([asdict(summary) for summary in passes]),
        "powers_w": np.asarray(powers_w, dtype=np.float64),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------------

ProgressCallback = Callable[[float, str], None]

ESTIMATION_LINES = 48
"""Lines per direction used to measure the bidirectional offset and the registration (from the wafer's middle)."""
ROW_CHECK_LINES = 400
"""Lines (spread over the pass) whose levels place the chip rows across the lines."""
REGISTRATION_SEGMENTS = 6
"""Places along the lines at which the chip comb's position is checked (a wrong pitch moves it between them)."""
DARK_LINES = 200
"""Lines sampled for a pass's dark level."""
LINE_BINS = 8
"""Bins of line offset (0 .. half a line pitch) in which the sampling-phase loss is measured (raster scans)."""
SAMPLE_BINS = 8
"""Bins of sample phase along the line (one sample pitch) in which it is measured."""
MIN_PHASE_CHIPS = 400
"""Fewest chips in a phase bin for its loss to be measured."""
PHASE_BANDS = 8
"""Sample bands, spread over the wafer, on which the line-phase loss is measured before a pass is processed."""
PHASE_BAND_ROWS = 64
"""Chip rows per sample band."""
MAP_SIZE = 2048
"""Wavelength and FWHM display maps hold at most this many values across (larger wafers: blocks of chips)."""
MIN_COMB_STRENGTH = 0.05
"""The chip comb's Fourier amplitude relative to the samples' mean absolute deviation below which no grid at the
recipe's pitch is seen in the data."""


def analyze_scan(
    path: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> AnalysisSummary:
    """Analyse a scan file and store the per-chip results in its ``/results`` group (replacing earlier ones).

    The scan must not be running. Results are written under a temporary name and renamed at the end, so an
    interrupted analysis leaves the previous results (or none), never half of new ones.

    Raises
    ------
    RegistrationError
        The chip grid in the data does not match the recipe and alignment.
    ScanFileError, ValueError
        The file is not a usable scan (no recipe, no complete line, still being written).
    """
    settings = settings or AnalysisSettings()
    path = Path(path)
    report = progress or (lambda fraction, message: None)
    started = time.perf_counter()
    with ScanFile(path, for_update=True) as scan:
        if not scan.recipe_toml:
            raise ValueError(f"{path}: the file holds no recipe; the chip grid is unknown")
        recipe = recipe_from_text(scan.recipe_toml, source=f"{path}:/settings/recipe_toml")
        alignment = scan.alignment()
        placement = (
            Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
            if alignment is not None
            else Placement()
        )
        if not any(scan.lines_complete(index) for index in range(scan.pass_count)):
            # checked before anything is written: an imported map has results but no raw lines to redo them from
            raise ScanFileError(
                f"{path}: no complete raw line to analyse"
                + (
                    "; it is an imported map whose results are stored already: classify it"
                    if "results" in scan.h5file
                    else ""
                )
            )
        spectra = scan.spectra()
        file = scan.h5file
        if "results_partial" in file:
            del file["results_partial"]
        group = file.create_group("results_partial")
        analysis = _Analysis(scan, recipe, placement, settings, group=group, report=report)
        summaries = analysis.run()
        analysis.write_spectra(spectra)
        publish_results(file, settings, placement, summaries, scan.powers_w)
    report(1.0, "analysis complete")
    return AnalysisSummary(path, tuple(summaries), len(spectra), time.perf_counter() - started)


def publish_results(
    file: h5py.File,
    settings: AnalysisSettings,
    placement: Placement,
    summaries: Sequence[PassSummary],
    powers_w: Sequence[float],
) -> None:
    """Finish the complete ``/results_partial`` group (its attributes) and put it in place of ``/results``: a reader
    sees the earlier results or the new ones, never a half-written group."""
    group = file["results_partial"]
    group.attrs.update(results_attributes(settings, placement, summaries, powers_w[: len(summaries)]))
    if "results" in file:
        del file["results"]
    file.move("results_partial", "results")
    file.flush()


T = TypeVar("T")

BANDS_IN_FLIGHT = 2
"""Bands of chip rows computed at once on worker threads (the kernel, the records and the sampling phase spend
their time in compiled code that releases the GIL) while the band before is written: the analysis otherwise kept
one of the two cores idle. The memory bound (:attr:`AnalysisSettings.memory_mb`) is shared among them."""


def computed_ahead(tasks: Iterable[Callable[[], T]], ahead: int) -> Iterator[T]:
    """The results of ``tasks`` in order, up to ``ahead`` of them running at once on worker threads.

    The caller works on one result while the next ones are computed. Leaving the loop early (an exception, a
    cancel) cancels the tasks not yet started and waits for the running ones.
    """
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="band")
    pending: deque[Future[T]] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(task))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Analysis:
    def __init__(
        self,
        scan: ScanFile,
        recipe: Recipe,
        placement: Placement,
        settings: AnalysisSettings,
        *,
        group: h5py.Group | None,
        report: ProgressCallback,
    ) -> None:
        """``group`` receives the results (None: measure passes and bands without writing, as a worker of
        :mod:`inspection.distributed` does)."""
        self.scan, self.recipe, self.placement, self.settings = scan, recipe, placement, settings
        self.group, self.report = group, report
        self.layout = recipe.layout()
        grid = self.layout.grid
        self.shape = (self.layout.row_count, self.layout.column_count)
        self.half_width = 0.5 * grid.chip_width_um / grid.pitch_x_um
        self.half_height = 0.5 * grid.chip_height_um / grid.pitch_y_um
        sampling = recipe.sampling
        self.sample_pitch_um = sampling.sample_pitch_um
        line_spacing_um = sampling.line_pitch_um if sampling.mode is ScanMode.RASTER else grid.pitch_y_um
        self.sample_area_um2 = self.sample_pitch_um * line_spacing_um
        self.usable = self.layout.usable_mask()
        # memory per chip row: the accumulators and the finished records (the kernel keeps no copies); the bands
        # in flight share the bound
        per_row = self.shape[1] * (kernels.FIELD_COUNT * 8 + CHIP_DTYPE.itemsize + 16) * BANDS_IN_FLIGHT
        self.band_rows = int(max(1, min(self.shape[0], settings.memory_mb * 2**20 * 0.6 // per_row)))
        self.sample_budget = int(settings.memory_mb * 2**20 * 0.4 // (4 * BANDS_IN_FLIGHT))

    # -- passes ------------------------------------------------------------------------------------------------------
    def run(self) -> list[PassSummary]:
        passes = [index for index in range(self.scan.pass_count) if self.scan.lines_complete(index) > 0]
        if not passes:
            raise ValueError(f"{self.scan.path}: no complete line to analyse")
        if self.group is None:
            raise ValueError("no results group to write to")
        datasets, ratio = create_results_datasets(self.group, self.shape, passes, self.scan.powers_w)
        summaries = []
        for done, index in enumerate(passes):
            plan = self.prepare_pass(index)

            def bands(plan: _PassPlan = plan, done: int = done) -> Iterable[tuple[int, np.ndarray]]:
                starts = range(0, self.shape[0], self.band_rows)
                tasks = (self._band_task(plan, first_row) for first_row in starts)
                for first_row, chips in computed_ahead(tasks, BANDS_IN_FLIGHT):
                    self.report(
                        0.95 * (done + first_row / self.shape[0]) / len(passes),
                        f"pass {plan.lines.pass_index}: chip rows {first_row}..{first_row + chips.shape[0] - 1}",
                    )
                    yield first_row, chips

            last = ratio is not None and index == passes[-1]  # the efficiency ratio is written with the last pass
            measured = write_pass_bands(
                datasets[index],
                bands(),
                ratio=ratio if last else None,
                low_pass=datasets[passes[0]] if last else None,
            )
            summaries.append(plan.summary(measured))
        return summaries

    def prepare_pass(self, pass_index: int) -> _PassPlan:
        """Measure what the pass's bands need: bidirectional offset, registration (raises RegistrationError), laser
        drift gains, dark level and sampling-phase loss."""
        scan, settings = self.scan, self.settings
        records = scan.line_records(pass_index)
        plan = scan.plan_lines[records["line_index"]]
        offsets = records["sample_offset"].astype(np.int64)
        counts = records["sample_count"].astype(np.int64)
        power_w = float(scan.powers_w[pass_index])

        offset_um = self._bidirectional_offset(pass_index, plan, offsets, counts)
        geometry = line_geometry(
            plan, self.layout, self.placement, self.sample_pitch_um, bidirectional_offset_um=offset_um
        )
        registration_col, registration_row = self._check_registration(pass_index, geometry, offsets, counts)
        gains, spread = _drift_gains(records, settings.drift_exponent)
        dark_v = self._dark_level(pass_index, offsets, counts)
        lines = _PassLines(pass_index, geometry, offsets, counts, gains, plan, offset_um)
        loss = self._line_phase_loss(lines, power_w, dark_v)
        return _PassPlan(lines, power_w, dark_v, loss, registration_col, registration_row, spread)

    def _band_task(self, plan: _PassPlan, first_row: int) -> Callable[[], tuple[int, np.ndarray]]:
        last_row = min(first_row + self.band_rows, self.shape[0])
        return lambda: (first_row, self.band_chips(plan, first_row, last_row))

    def band_chips(self, plan: _PassPlan, first_row: int, last_row: int) -> np.ndarray:
        """``CHIP_DTYPE`` records of chip rows ``first_row .. last_row - 1``, sampling phase divided out, neighbour
        ratio not yet filled in (:func:`write_pass_bands` does that)."""
        lines = plan.lines
        chips = self._finish_band(self._accumulate(lines, first_row, last_row), first_row, plan.power_w, plan.dark_v)
        if plan.loss is not None:
            divisor = plan.loss[self._phase_bins(lines, first_row, last_row)]
            chips["intensity_v"] /= divisor
            chips["efficiency_v_per_w"] /= divisor
        return chips

    def _accumulate(self, lines: _PassLines, first_row: int, last_row: int) -> np.ndarray:
        """The kernel's per-chip sums over chip rows ``first_row .. last_row - 1``."""
        settings, geometry = self.settings, lines.geometry
        offsets, counts, gains = lines.offsets, lines.counts, lines.gains
        chosen = geometry.lines_in_rows(counts, first_row, last_row)
        acc = kernels.accumulators(last_row - first_row, self.shape[1])  # zeros, MAX_FOOT at -inf
        for batch in self._sample_batches(chosen, offsets, counts):
            start, stop = int(offsets[batch[0]]), int(offsets[batch[-1]] + counts[batch[-1]])
            samples = self.scan.samples_between(lines.pass_index, start, stop)
            for line in batch[gains[batch] != 1.0]:  # laser drift: one gain per line
                samples[offsets[line] - start : offsets[line] - start + counts[line]] *= np.float32(gains[line])
            kernels.accumulate_lines(
                samples,
                offsets[batch] - start,
                counts[batch],
                geometry.col0[batch],
                geometry.row0[batch],
                geometry.dcol[batch],
                geometry.drow[batch],
                self.half_width,
                self.half_height,
                self.half_width * settings.core_fraction,
                self.half_height * settings.core_fraction,
                settings.saturation_v,
                0,
                first_row,
                acc,
            )
        return acc

    def _sample_batches(self, lines: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """Split a band's lines into runs whose samples fit the sample budget (one read each)."""
        batches: list[np.ndarray] = []
        begin = 0
        total = 0
        for position, line in enumerate(lines):
            if position > begin and (total + counts[line] > self.sample_budget or line != lines[position - 1] + 1):
                batches.append(lines[begin:position])
                begin, total = position, 0
            total += int(counts[line])
        if begin < lines.size:
            batches.append(lines[begin:])
        return batches

    def _finish_band(self, acc: np.ndarray, first_row: int, power_w: float, dark_v: float) -> np.ndarray:
        return chip_records(
            acc,
            self.usable[first_row : first_row + acc.shape[1]],
            grid=self.layout.grid,
            power_w=power_w,
            dark_v=dark_v,
            sample_area_um2=self.sample_area_um2,
            min_core_samples=self.settings.min_core_samples,
        )

    def _dark_level(self, pass_index: int, offsets: np.ndarray, counts: np.ndarray) -> float:
        """The detector's reading with no chip under the spot: the median of the dimmest 0.2 % of samples of up to
        DARK_LINES lines spread over the pass (line ends beyond the last chips, streets next to dead chips)."""
        lines = np.unique(np.linspace(0, counts.size - 1, min(DARK_LINES, counts.size)).astype(np.int64))
        samples, _ = self._read_lines(pass_index, lines, offsets, counts)
        samples = samples[np.isfinite(samples)]
        if samples.size == 0:
            return 0.0
        dimmest = np.partition(samples, max(1, samples.size // 500))[: max(1, samples.size // 500)]
        return float(np.median(dimmest))

    def _phase_bins(self, lines: _PassLines, first_row: int, last_row: int) -> np.ndarray:
        """Each chip's sampling phase as one bin index: how far the line that samples its core passes from its
        centre (raster scans: LINE_BINS bins over 0 .. half a line pitch) times where along that line the samples
        fall relative to its centre (SAMPLE_BINS bins over one sample pitch)."""
        rows, cols = np.mgrid[first_row:last_row, 0 : self.shape[1]]
        stage_x, stage_y = self.placement.wafer_to_stage(*self.layout.chip_center_um(cols, rows))
        plan = lines.plan
        if self.recipe.sampling.mode is ScanMode.RASTER:
            position = (stage_y - float(plan["y_start_um"][0])) / self.recipe.sampling.line_pitch_um
            line = np.clip(np.round(position).astype(np.int64), 0, plan.size - 1)
            line_bin = np.minimum((np.abs(wrap(position, 1.0)) * 2 * LINE_BINS).astype(np.int64), LINE_BINS - 1)
        else:  # one line per chip row, through the centres
            geometry = lines.geometry
            row_of_line = np.round(geometry.row0 + geometry.drow * (lines.counts - 1) / 2).astype(np.int64)
            line_of_row = np.zeros(self.shape[0], dtype=np.int64)
            inside = (row_of_line >= 0) & (row_of_line < self.shape[0])
            line_of_row[row_of_line[inside]] = np.flatnonzero(inside)
            line = line_of_row[rows]
            line_bin = np.zeros(rows.shape, dtype=np.int64)
        start_x, start_y = plan["x_start_um"][line], plan["y_start_um"][line]
        step_x, step_y = plan["x_stop_um"][line] - start_x, plan["y_stop_um"][line] - start_y
        length = np.maximum(np.hypot(step_x, step_y), 1e-9)
        along_um = ((stage_x - start_x) * step_x + (stage_y - start_y) * step_y) / length
        sample = (along_um - lines.bidirectional_offset_um) / self.sample_pitch_um
        sample_bin = np.minimum(((sample - np.floor(sample)) * SAMPLE_BINS).astype(np.int64), SAMPLE_BINS - 1)
        return line_bin * SAMPLE_BINS + sample_bin

    def _line_phase_loss(self, lines: _PassLines, power_w: float, dark_v: float) -> np.ndarray | None:
        """The intensity lost to the sampling phase (module docstring, step 5) per phase bin (:meth:`_phase_bins`),
        measured on PHASE_BANDS sample bands spread over the rows the lines cover; None with too few chips."""
        row_low, row_high = lines.geometry.rows_spanned(lines.counts)
        covered_low = int(np.clip(np.floor(row_low.min()), 0, self.shape[0] - 1))
        covered_high = int(np.clip(np.ceil(row_high.max()) + 1, covered_low + 1, self.shape[0]))
        rows = min(PHASE_BAND_ROWS, covered_high - covered_low)
        starts = np.unique(np.linspace(covered_low, covered_high - rows, PHASE_BANDS).astype(np.int64))
        values, bins = [], []
        for start in starts.tolist():
            # the same chips whatever the memory setting: a sample band larger than a band is done in pieces
            for first_row in range(start, start + rows, self.band_rows):
                last_row = min(first_row + self.band_rows, start + rows)
                acc = self._accumulate(lines, first_row, last_row)
                chips = self._finish_band(acc, first_row, power_w, dark_v)
                good = (chips["flags"] == 0) & np.isfinite(chips["intensity_v"])
                values.append(chips["intensity_v"][good])
                bins.append(self._phase_bins(lines, first_row, last_row)[good])
        value, phase_bin = np.concatenate(values), np.concatenate(bins)
        if value.size < LINE_BINS * MIN_PHASE_CHIPS:
            return None  # too few chips to measure the loss: the intensities stay as measured
        if value.size < LINE_BINS * SAMPLE_BINS * MIN_PHASE_CHIPS:
            phase_bin = phase_bin // SAMPLE_BINS * SAMPLE_BINS  # too few for both: line offset only
        overall = float(np.median(value))
        filled = np.bincount(phase_bin, minlength=LINE_BINS * SAMPLE_BINS)
        loss = np.array(
            [
                np.median(value[phase_bin == b]) / overall if filled[b] >= MIN_PHASE_CHIPS else math.nan
                for b in range(LINE_BINS * SAMPLE_BINS)
            ]
        )
        merged = loss[np.arange(loss.size) // SAMPLE_BINS * SAMPLE_BINS]  # the line-offset-only value
        return np.where(np.isfinite(loss), loss, np.where(np.isfinite(merged), merged, 1.0))

    def _estimation_lines(self, counts: np.ndarray, forward: np.ndarray | None = None) -> np.ndarray:
        """Up to ESTIMATION_LINES of the longest lines (the wafer's middle), optionally of one direction."""
        candidates = np.flatnonzero(counts > 16) if forward is None else np.flatnonzero((counts > 16) & forward)
        longest = candidates[np.argsort(-counts[candidates], kind="stable")][:ESTIMATION_LINES]
        return np.sort(longest)

    def _read_lines(self, pass_index: int, lines: np.ndarray, offsets: np.ndarray, counts: np.ndarray):
        blocks = [self.scan.samples_between(pass_index, int(offsets[j]), int(offsets[j] + counts[j])) for j in lines]
        local = np.concatenate([[0], np.cumsum([block.size for block in blocks])[:-1]]).astype(np.int64)
        return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), local

    def _bidirectional_offset(
        self, pass_index: int, plan: np.ndarray, offsets: np.ndarray, counts: np.ndarray
    ) -> float:
        """Half the difference of the chip comb's position on forward and reverse lines, µm along travel."""
        geometry = line_geometry(plan, self.layout, self.placement, self.sample_pitch_um)
        phases = []
        for forward in (True, False):
            lines = self._estimation_lines(counts, geometry.forward == forward)
            if lines.size == 0:
                return 0.0
            samples, local = self._read_lines(pass_index, lines, offsets, counts)
            component = _comb_component(samples, local, counts[lines], geometry.col0[lines], geometry.dcol[lines])
            if component == 0:
                return 0.0
            phases.append(wrap(phase_of(component, 1.0), 1.0))
        # a sample late by τ lies v·τ further along: forward lines see the comb shifted back, reverse lines forward
        shift_cols = wrap(phases[1] - phases[0], 1.0) / 2
        return shift_cols * self.layout.grid.pitch_x_um

    def _check_registration(
        self, pass_index: int, geometry: LineGeometry, offsets: np.ndarray, counts: np.ndarray
    ) -> tuple[float, float]:
        lines = self._estimation_lines(counts)
        samples, local = self._read_lines(pass_index, lines, offsets, counts)
        tolerance = self.settings.registration_tolerance
        # along the lines, in segments across the wafer: all must sit at whole chip indices
        spread = float(np.mean(np.abs(samples[np.isfinite(samples)] - np.nanmean(samples)))) if samples.size else 0.0
        segment_phases = []
        for segment in range(REGISTRATION_SEGMENTS):
            total = 0j
            weight = 0
            for j, line in enumerate(lines):
                count = int(counts[line])
                begin, end = count * segment // REGISTRATION_SEGMENTS, count * (segment + 1) // REGISTRATION_SEGMENTS
                if end - begin < 16:
                    continue
                total += _comb_component(
                    samples[local[j] + begin : local[j] + end],
                    np.array([0]),
                    np.array([end - begin]),
                    np.array([geometry.col0[line] + begin * geometry.dcol[line]]),
                    geometry.dcol[line : line + 1],
                )
                weight += end - begin
            if weight and abs(total) / weight > MIN_COMB_STRENGTH * spread / 2:
                segment_phases.append(wrap(phase_of(total, 1.0), 1.0))
        if not segment_phases:
            raise RegistrationError(
                f"no chip grid at the recipe's pitch ({self.layout.grid.pitch_x_um:g} µm) is seen along the lines: "
                "is this the right recipe for this wafer?"
            )
        worst = max(segment_phases, key=abs)
        if abs(worst) > tolerance:
            raise RegistrationError(
                f"the chips in the data sit {worst * self.layout.grid.pitch_x_um:+.1f} µm off their indices along "
                f"the lines (tolerance {tolerance * self.layout.grid.pitch_x_um:.1f} µm; across the wafer: "
                + ", ".join(f"{phase * self.layout.grid.pitch_x_um:+.1f}" for phase in segment_phases)
                + " µm): the alignment or the recipe's pitch does not fit this wafer; re-align and rescan"
            )
        col_phase = float(np.mean(segment_phases))
        # across the lines: only raster lines sample the rows at several offsets
        row_phase = math.nan
        if self.recipe.sampling.mode is ScanMode.RASTER and counts.size >= 8:
            chosen = np.flatnonzero(counts > 16)
            # a fixed random subset: evenly strided lines could all sit at the same phase of the chip rows
            chosen = np.sort(np.random.default_rng(0).permutation(chosen)[:ROW_CHECK_LINES])
            rows = geometry.row0[chosen] + geometry.drow[chosen] * (counts[chosen] - 1) / 2
            levels = np.zeros(chosen.size)
            for position, line in enumerate(chosen):
                middle = int(offsets[line] + counts[line] // 2)
                # short enough that a rotated line stays within a tenth of a row
                half = int(min(counts[line] // 4, 2000, 0.05 / max(abs(geometry.drow[line]), 1e-12)))
                block = self.scan.samples_between(pass_index, middle - half, middle + half)
                levels[position] = float(np.nanmean(block[np.isfinite(block)])) if block.size else 0.0
            if chosen.size >= 8:
                component = complex(np.sum((levels - levels.mean()) * np.exp(-2j * np.pi * rows)))
                if component != 0:
                    row_phase = wrap(phase_of(component, 1.0), 1.0)
                    if abs(row_phase) > tolerance:
                        raise RegistrationError(
                            f"the chip rows in the data sit {row_phase * self.layout.grid.pitch_y_um:+.1f} µm off "
                            f"their indices across the lines (tolerance "
                            f"{tolerance * self.layout.grid.pitch_y_um:.1f} µm): re-align and rescan"
                        )
        return col_phase, row_phase

    # -- spectra ---------------------------------------------------------------------------------------------------
    def write_spectra(self, spectra: list[dict]) -> None:
        resolution = self.recipe.spectra.resolution_nm
        table = fit_spectra(spectra, resolution_nm=resolution) if spectra else np.zeros(0, SPECTRUM_RESULT_DTYPE)
        self.group.create_dataset("spectra", data=table)
        if table.size == 0:
            return
        good = table["quality"] == 0
        if not good.any():
            return
        # a display map: one value per chip up to MAP_SIZE chips across, a value per block of chips beyond
        downsample = max(1, math.ceil(max(self.shape) / MAP_SIZE))
        for name, field in (("wavelength_map_nm", "peak_nm"), ("fwhm_map_nm", "fwhm_nm")):
            image = chip_map(
                self.layout, table["col"][good], table["row"][good], table[field][good], downsample=downsample
            )
            dataset = self.group.create_dataset(name, data=image, chunks=True)
            dataset.attrs["downsample"] = downsample


# ---------------------------------------------------------------------------------------------------------------------
# Reading results
# ---------------------------------------------------------------------------------------------------------------------


class ChipResults:
    """The stored results of :func:`analyze_scan`, read without recomputation.

    Examples
    --------
    ``with ChipResults(path) as results: intensity = results.chips(1)["intensity_v"]`` gives the rows x columns
    intensity map of pass 1 (NaN where no chip was measured).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open_hdf5(self.path)
        group = self._file.get("results")
        if group is None:
            self._file.close()
            raise ValueError(f"{self.path}: no analysis results; run the analysis first")
        version = int(group.attrs.get("format_version", 0))
        if version > RESULTS_FORMAT_VERSION:
            self._file.close()
            raise ValueError(
                f"{self.path}: results format {version} is newer than this software reads ({RESULTS_FORMAT_VERSION})"
            )
        self._group = group
        self.powers_w = tuple(float(power) for power in group.attrs["powers_w"])
        self.settings = json.loads(group.attrs["settings_json"])
        self.passes = json.loads(group.attrs["passes_json"])
        self.placement = Placement(**json.loads(group.attrs["placement_json"]))

    def chips(self, pass_index: int, rows: slice | None = None) -> np.ndarray:
        """``CHIP_DTYPE`` records of one pass, rows x columns (or a slice of rows)."""
        dataset = self._group[f"pass_{pass_index:03d}/chips"]
        return dataset[rows if rows is not None else slice(None)]

    def efficiency_ratio(self, rows: slice | None = None) -> np.ndarray | None:
        """Low/high-power efficiency ratio per chip, or None with fewer than two passes."""
        dataset = self._group.get("efficiency_ratio")
        return None if dataset is None else dataset[rows if rows is not None else slice(None)]

    def spectra(self) -> np.ndarray:
        """One ``SPECTRUM_RESULT_DTYPE`` record per measured spectrum."""
        return self._group["spectra"][()]

    def map(self, name: str) -> np.ndarray | None:
        """``wavelength_map_nm`` or ``fwhm_map_nm`` interpolated between the spectra, or None: rows x columns, or
        one value per block of ``downsample`` x ``downsample`` chips on large wafers (the dataset's attribute)."""
        dataset = self._group.get(name)
        return None if dataset is None else dataset[()]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ChipResults:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
