"""The scan plan: every stage line of a scan, its samples, data volume and duration, computed before any motion.

The scan engine shows :meth:`ScanPlan.summary` to the operator before the first move and then runs the plan's
lines once per excitation power (a *pass*). Each line is a straight path in the STAGE frame (where the spot is on
the chuck, µm; see drivers/virtual/bench.py) from ``start`` to ``stop``: the engine starts ``run_up_um`` before
``start`` so the stage is at constant velocity when its position trigger fires at ``start``, and the digitizer
then takes ``sample_count`` samples, sample ``i`` at ``start + i × sample_pitch_um`` along the line. Consecutive
lines run in opposite directions (serpentine), bottom to top, and every pass uses the same lines.

Two ways to lay lines over the wafer (``recipe.sampling.mode``)::

    RASTER: stage rows every line_pitch_um          GRID_LOCKED: one line per chip row, through the centres
      ---->  ---->  ---->  ---->                      --#----#----#----#-->
      <----  <----  <----  <----  (several lines        #    #    #    #      (slanted in the stage frame when
      ---->  ---->  ---->  ---->   per chip row)      <-#----#----#----#---     the wafer is placed rotated)

* RASTER lines have constant stage y, ``line_pitch_um`` apart (at most half a chip, so two lines cross every
  chip), and cover the placed wafer's usable area grown by one chip pitch, so edge chips and the street around
  them are fully sampled. Each line is clipped to where it crosses that area. The crossing is exact: the area is a
  disc cut by flats (half-planes) minus, on 200 mm, the notch wedge, so each line meets it in one interval minus at
  most one hole; the line runs from the first to the last point of it (it crosses the notch rather than being
  split in two). Cost O(lines): an 8" plan takes milliseconds.
* GRID_LOCKED lines follow the chip rows that hold usable chips, from half a pitch before the first usable chip
  centre of the row to half a pitch after the last, mapped to the stage frame with the placement. With a rotated
  placement (or grid) a line is slanted: the engine moves X and Y at proportional speeds so the path is straight
  and the sample pitch along it is ``velocity_um_s / sample_rate_hz``. One line per chip row instead of
  ``pitch / line_pitch`` of them: typically 3–4 times fewer lines and samples, and every sample row passes through
  the chip centres.

Every line is extended at its stop end to a whole number of samples: ``sample_count = ceil(length /
sample_pitch) + 1`` and ``stop = start + (sample_count − 1) × sample_pitch`` along the line.

Duration estimate (:func:`duration_parts_s`), per pass: each line is one trapezoidal move (stage acceleration,
scan velocity) over its length plus a run-up at each end, then ``line_settle_s`` (arming the trigger and the
digitizer, reading the line back); between lines the stage repositions at the travel velocity, each axis with its
own trapezoid; the laser settles once per pass and the stage returns to the first line between passes. Spectra
cost ``0.2 s + 0.2 ms × points`` each plus a move between sites; the alignment scans two lines per site plus the
moves around the site circle. Z moves (seconds) are not counted.

Examples
--------
>>> from inspection.wafer import Placement
>>> from inspection.recipe import load_recipe
>>> recipe = load_recipe("resources/recipes/demo-2in.toml")
>>> plan = plan_scan(recipe, Placement(offset_x_um=200.0), accel_um_s2=3e6)
>>> plan.mode, plan.line_count, plan.pass_count, plan.total_samples
(<ScanMode.RASTER: 'raster'>, 1830, 2, 68823196)
>>> first = plan.lines[0]
>>> float(first["y_start_um"]) == float(first["y_stop_um"]), int(first["sample_count"])
(True, 7637)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from inspection.recipe import Recipe, ScanMode, SpectrumPattern
from inspection.wafer import Placement

__all__ = [
    "LINE_DTYPE",
    "LINE_RECORD_BYTES",
    "LINE_SETTLE_S",
    "SAMPLE_BYTES",
    "SPECTRUM_BASE_S",
    "SPECTRUM_PER_POINT_S",
    "SPECTRUM_POINT_BYTES",
    "ScanPlan",
    "duration_parts_s",
    "plan_scan",
    "planned_spectra_count",
    "spectrum_grid_chips",
    "trapezoid_move_s",
]

LINE_DTYPE = np.dtype(
    [
        ("line_index", "i4"),
        ("x_start_um", "f8"),
        ("y_start_um", "f8"),
        ("x_stop_um", "f8"),
        ("y_stop_um", "f8"),
        ("sample_count", "i4"),
    ]
)
"""One scan line in the stage frame: the trigger fires at start, the last sample is taken at stop."""

SAMPLE_BYTES = 4
"""Bytes per stored PL sample (float32 volts)."""
LINE_RECORD_BYTES = 64
"""Bytes stored per line and pass besides its samples: the line (36 B), trigger time, laser power reading, status."""
SPECTRUM_POINT_BYTES = 8
"""Bytes per spectrum point (float32 wavelength and level)."""
LINE_SETTLE_S = 0.05
"""Time per line besides motion: arm the position trigger and the digitizer, read the line back."""
SPECTRUM_BASE_S = 0.2
"""Fixed time per spectrum (sweep start, trace transfer)."""
SPECTRUM_PER_POINT_S = 2e-4
"""Sweep time per spectrum point."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


# ---------------------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScanPlan:
    """Every line of a scan and what it will cost, from :func:`plan_scan`.

    Attributes
    ----------
    lines : ndarray of LINE_DTYPE
        The lines of one pass (stage frame, bottom to top, alternating direction); read-only.
    powers_w : tuple of float
        One pass per power, in this order.
    mode : ScanMode
        Raster or grid-locked lines.
    sample_pitch_um, velocity_um_s, sample_rate_hz : float
        Along-line sampling.
    estimated_duration_s : float
        Whole scan: alignment, every pass, spectra (the sum of ``duration_parts_s``).
    data_bytes : int
        Stored data: samples (float32), per-line records, spectra.
    total_samples : int
        PL samples of all passes.
    chip_count : int
        Usable chips.
    spectra_count : int
        Spectra the estimate assumes.
    duration_parts_s : mapping of str to float
        ``lines`` (scan moves), ``moves`` (repositioning), ``settling`` (per line and per pass), ``spectra``,
        ``alignment``.
    """

    lines: NDArray[np.void]
    powers_w: tuple[float, ...]
    mode: ScanMode
    sample_pitch_um: float
    velocity_um_s: float
    sample_rate_hz: float
    estimated_duration_s: float
    data_bytes: int
    total_samples: int
    chip_count: int
    spectra_count: int = 0
    duration_parts_s: Mapping[str, float] = field(default_factory=dict)

    @property
    def line_count(self) -> int:
        """Lines per pass."""
        return len(self.lines)

    @property
    def pass_count(self) -> int:
        """Passes over the wafer, one per excitation power."""
        return len(self.powers_w)

    def summary(self) -> str:
        """What the scan will do and cost, for the operator to confirm before anything moves.

        Examples
        --------
        >>> from inspection.wafer import Placement
        >>> from inspection.recipe import load_recipe
        >>> plan = plan_scan(load_recipe("resources/recipes/demo-2in.toml"), Placement(), accel_um_s2=3e6)
        >>> print(plan.summary())  # doctest: +NORMALIZE_WHITESPACE
        Scan plan: raster lines every 25 µm, 169,949 usable chips
          passes: 2 (0.5 mW, 20 mW)
          lines per pass: 1,830 (serpentine, bottom to top)
          samples: 68,823,196 in all (34,411,598 per pass), 2 µm apart at 100 mm/s and 50 kHz
          spectra: 71
          data volume: 276.0 MB
          estimated duration: 0:29:36
            lines 0:25:35, moves 0:00:24, settling 0:03:03, spectra 0:00:31, alignment 0:00:02
        """
        if self.mode is ScanMode.GRID_LOCKED:
            how = "grid-locked lines, one per chip row"
        else:
            spacing_um = _line_spacing_um(self.lines)
            how = f"raster lines every {spacing_um:g} µm" if spacing_um else "raster lines"
        per_pass = self.total_samples // max(self.pass_count, 1)
        parts = ", ".join(f"{name} {_hms(seconds)}" for name, seconds in self.duration_parts_s.items())
        return "\n".join(
            [
                f"Scan plan: {how}, {self.chip_count:,} usable chips",
                f"  passes: {self.pass_count} ({', '.join(_power_text(power) for power in self.powers_w)})",
                f"  lines per pass: {self.line_count:,} (serpentine, bottom to top)",
                f"  samples: {self.total_samples:,} in all ({per_pass:,} per pass), {self.sample_pitch_um:g} µm apart "
                f"at {self.velocity_um_s / 1000:g} mm/s and {self.sample_rate_hz / 1000:g} kHz",
                f"  spectra: {self.spectra_count:,}",
                f"  data volume: {_bytes_text(self.data_bytes)}",
                f"  estimated duration: {_hms(self.estimated_duration_s)}",
                *([f"    {parts}"] if parts else []),
            ]
        )


def plan_scan(
    recipe: Recipe,
    placement: Placement,
    *,
    accel_um_s2: float,
    spectra_count: int | None = None,
    travel_velocity_um_s: float | None = None,
    line_settle_s: float = LINE_SETTLE_S,
) -> ScanPlan:
    """Plan a scan of ``recipe`` for a wafer lying on the chuck as ``placement``.

    Parameters
    ----------
    recipe : Recipe
        What to scan and how.
    placement : Placement
        How the wafer lies on the chuck (``stage = R(rotation)·wafer + offset``): nominal, or measured by the
        alignment.
    accel_um_s2 : float
        Stage acceleration (and deceleration) for the duration estimate, µm/s².
    spectra_count : int, optional
        Spectra to budget for; by default :func:`planned_spectra_count` (flagged chips counted at their maximum).
    travel_velocity_um_s : float, optional
        Stage speed for repositioning moves; by default the scan velocity.
    line_settle_s : float
        Time per line besides motion (trigger and digitizer arming, read-back).

    Returns
    -------
    ScanPlan

    Raises
    ------
    ValueError
        A non-positive or non-finite acceleration or travel velocity, a negative spectra count or settle time.

    Examples
    --------
    >>> import dataclasses
    >>> from inspection.wafer import Placement
    >>> from inspection.recipe import load_recipe
    >>> recipe = load_recipe("resources/recipes/demo-2in.toml")
    >>> locked = dataclasses.replace(recipe, sampling=dataclasses.replace(recipe.sampling, mode=ScanMode.GRID_LOCKED))
    >>> plan = plan_scan(locked, Placement(400.0, -300.0, 0.5), accel_um_s2=3e6, spectra_count=0)
    >>> plan.line_count, plan.spectra_count
    (454, 0)
    """
    _check_positive("accel_um_s2", accel_um_s2)
    if travel_velocity_um_s is not None:
        _check_positive("travel_velocity_um_s", travel_velocity_um_s)
    if not (math.isfinite(line_settle_s) and line_settle_s >= 0.0):
        raise ValueError(f"line_settle_s: {line_settle_s!r} must be a finite time >= 0 s")
    if spectra_count is None:
        spectra_count = planned_spectra_count(recipe)
    elif isinstance(spectra_count, bool) or not isinstance(spectra_count, int | np.integer) or spectra_count < 0:
        raise ValueError(f"spectra_count: {spectra_count!r} must be an integer >= 0")

    sampling = recipe.sampling
    if sampling.mode is ScanMode.GRID_LOCKED:
        x0, y0, x1, y1 = _grid_locked_lines(recipe, placement)
    else:
        x0, y0, x1, y1 = _raster_lines(recipe, placement)
    lines = _serpentine(x0, y0, x1, y1, sampling.sample_pitch_um)

    parts = duration_parts_s(
        lines,
        recipe,
        accel_um_s2=accel_um_s2,
        spectra_count=int(spectra_count),
        travel_velocity_um_s=travel_velocity_um_s,
        line_settle_s=line_settle_s,
    )
    passes = len(recipe.excitation.powers_w)
    total_samples = int(lines["sample_count"].sum(dtype=np.int64)) * passes
    data_bytes = (
        total_samples * SAMPLE_BYTES
        + len(lines) * passes * LINE_RECORD_BYTES
        + int(spectra_count) * recipe.spectra.points * SPECTRUM_POINT_BYTES
    )
    return ScanPlan(
        lines=lines,
        powers_w=recipe.excitation.powers_w,
        mode=sampling.mode,
        sample_pitch_um=sampling.sample_pitch_um,
        velocity_um_s=sampling.velocity_um_s,
        sample_rate_hz=sampling.sample_rate_hz,
        estimated_duration_s=math.fsum(parts.values()),
        data_bytes=data_bytes,
        total_samples=total_samples,
        chip_count=recipe.layout().chip_count,
        spectra_count=int(spectra_count),
        duration_parts_s=parts,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Lines
# ---------------------------------------------------------------------------------------------------------------------


def _raster_lines(recipe: Recipe, placement: Placement) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Left-to-right stage rows over the usable area grown by one chip pitch, bottom to top, empty rows dropped."""
    substrate = recipe.substrate.substrate()
    grid = recipe.grid
    # Growing the usable area by a pitch = shrinking the exclusion by it (negative: past the physical edge, by at
    # most a pitch). Chips on the exclusion boundary then get their street sampled on both sides.
    inset_um = substrate.edge_exclusion_um - max(grid.pitch_x_um, grid.pitch_y_um)
    centre_y = float(placement.wafer_to_stage(0.0, 0.0)[1])
    radius_um = substrate.radius_um - inset_um
    pitch_um = recipe.sampling.line_pitch_um
    count = math.ceil(2.0 * radius_um / pitch_um) + 1
    # Centred on the wafer centre, so the rows span [centre − radius, centre + radius] with less than a line pitch
    # to spare: every point of the area lies within half a line pitch of a row.
    y = centre_y + (np.arange(count) - (count - 1) / 2.0) * pitch_um
    # A stage row (x, y) for x ∈ ℝ is the wafer-frame line a + x·d.
    ax, ay = placement.stage_to_wafer(np.zeros_like(y), y)
    bx, by = placement.stage_to_wafer(np.ones_like(y), y)
    dx, dy = float(bx[0] - ax[0]), float(by[0] - ay[0])
    lo, hi = substrate.line_extent(ax, ay, (dx, dy), inset_um=inset_um)
    keep = lo <= hi
    y = y[keep]
    return lo[keep], y, hi[keep], y.copy()


def _grid_locked_lines(recipe: Recipe, placement: Placement) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per chip row with usable chips: half a pitch before the first usable centre to half a pitch after the last."""
    layout = recipe.layout()
    rows = np.arange(layout.row_count, dtype=np.int64)
    first, last = layout.row_extent(rows)
    keep = first >= 0
    rows, first, last = rows[keep], first[keep], last[keep]
    x_first, y_first = layout.chip_center_um(first, rows)
    x_last, y_last = layout.chip_center_um(last, rows)
    (ex, ey), _ = layout.grid.axes
    half_pitch_um = layout.grid.pitch_x_um / 2.0
    x0, y0 = placement.wafer_to_stage(x_first - half_pitch_um * ex, y_first - half_pitch_um * ey)
    x1, y1 = placement.wafer_to_stage(x_last + half_pitch_um * ex, y_last + half_pitch_um * ey)
    return (
        np.asarray(x0, dtype=float),
        np.asarray(y0, dtype=float),
        np.asarray(x1, dtype=float),
        np.asarray(y1, dtype=float),
    )


def _serpentine(x0: FloatArray, y0: FloatArray, x1: FloatArray, y1: FloatArray, sample_pitch_um: float) -> NDArray:
    """LINE_DTYPE lines from left-to-right segments: odd lines reversed, each stop moved to a whole sample."""
    count = len(x0)
    odd = np.arange(count) % 2 == 1
    start_x, start_y = np.where(odd, x1, x0), np.where(odd, y1, y0)
    end_x, end_y = np.where(odd, x0, x1), np.where(odd, y0, y1)
    length_um = np.hypot(end_x - start_x, end_y - start_y)
    # A length that is a whole number of pitches must not gain a sample from rounding.
    samples = np.ceil(length_um / sample_pitch_um * (1.0 - 1e-12)).astype(np.int64) + 1
    unit_x, unit_y = _directions(start_x, start_y, end_x, end_y)
    reach_um = (samples - 1) * sample_pitch_um
    lines = np.empty(count, dtype=LINE_DTYPE)
    lines["line_index"] = np.arange(count)
    lines["x_start_um"], lines["y_start_um"] = start_x, start_y
    lines["x_stop_um"] = start_x + reach_um * unit_x
    lines["y_stop_um"] = start_y + reach_um * unit_y
    lines["sample_count"] = samples
    lines.flags.writeable = False  # the plan is frozen and shared with the engine and the GUI
    return lines


def _directions(
    start_x: ArrayLike, start_y: ArrayLike, end_x: ArrayLike, end_y: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Unit vectors start → end; a zero-length line points +x on even lines and −x on odd ones (serpentine)."""
    dx = np.asarray(end_x, dtype=float) - start_x
    dy = np.asarray(end_y, dtype=float) - start_y
    length = np.hypot(dx, dy)
    zero = length == 0.0
    fallback = np.where(np.arange(dx.size) % 2 == 1, -1.0, 1.0).reshape(dx.shape)
    safe = np.where(zero, 1.0, length)
    return np.where(zero, fallback, dx / safe), np.where(zero, 0.0, dy / safe)


def _line_spacing_um(lines: NDArray) -> float:
    """Median distance between consecutive raster rows (0 for fewer than two lines), for the summary."""
    if len(lines) < 2:
        return 0.0
    return float(np.round(np.median(np.diff(lines["y_start_um"])), 6))


# ---------------------------------------------------------------------------------------------------------------------
# Spectra
# ---------------------------------------------------------------------------------------------------------------------


def spectrum_grid_chips(recipe: Recipe) -> tuple[IntArray, IntArray]:
    """(col, row) of the usable chips nearest an n × n lattice over the usable area (``grid_sites`` = n).

    The lattice is centred on the wafer centre with spacing ``usable diameter / n``; sites whose nearest chip is
    not usable (outside the exclusion, in the flat or notch) are skipped, and a chip is listed once. Order: row
    by row from the bottom, left to right.

    Examples
    --------
    >>> from inspection.recipe import load_recipe
    >>> col, row = spectrum_grid_chips(load_recipe("resources/recipes/demo-2in.toml"))
    >>> len(col)  # 5 × 5 lattice: the four corner sites fall off the round wafer
    21
    """
    layout = recipe.layout()
    substrate = recipe.substrate
    usable_radius_um = (substrate.diameter_mm - 2.0 * substrate.edge_exclusion_mm) * 500.0
    count = recipe.spectra.grid_sites
    positions = -usable_radius_um + (np.arange(count) + 0.5) * (2.0 * usable_radius_um / count)
    site_x, site_y = np.meshgrid(positions, positions)  # rows of the lattice from the bottom
    col, row = layout.nearest_chip(site_x.ravel(), site_y.ravel())
    usable = layout.chip_usable(col, row)
    col, row = col[usable], row[usable]
    keys = row * layout.column_count + col
    _, first_seen = np.unique(keys, return_index=True)
    order = np.sort(first_seen)
    return col[order], row[order]


def spectrum_sites(recipe: Recipe) -> tuple[IntArray, IntArray]:
    """(col, row) of the chips whose spectra the recipe's pattern asks for, in a fixed order (a resumed scan
    continues where it stopped). Flagged chips come on top, once the intensity passes have found them.

    Examples
    --------
    >>> from inspection.recipe import load_recipe
    >>> col, row = spectrum_sites(load_recipe("resources/recipes/demo-2in.toml"))
    >>> len(col)
    21
    """
    spectra = recipe.spectra
    if spectra.pattern is SpectrumPattern.GRID:
        return spectrum_grid_chips(recipe)
    if spectra.pattern is SpectrumPattern.EVERY_NTH:
        col, row = recipe.layout().usable_chips()
        return col[:: spectra.every_nth], row[:: spectra.every_nth]
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def planned_spectra_count(recipe: Recipe) -> int:
    """Spectra a recipe asks for: its pattern's sites plus, with ``include_flagged``, ``max_flagged`` chips.

    Flagged chips are known only after the intensity passes, so the budget assumes the maximum.

    Examples
    --------
    >>> from inspection.recipe import load_recipe
    >>> planned_spectra_count(load_recipe("resources/recipes/demo-2in.toml"))  # 21 grid sites + 50 flagged
    71
    """
    spectra = recipe.spectra
    if spectra.pattern is SpectrumPattern.EVERY_NTH:
        regular = math.ceil(recipe.layout().chip_count / spectra.every_nth)
    elif spectra.pattern is SpectrumPattern.GRID:
        regular = len(spectrum_grid_chips(recipe)[0])
    else:
        regular = 0
    return regular + (spectra.max_flagged if spectra.include_flagged else 0)


# ---------------------------------------------------------------------------------------------------------------------
# Duration
# ---------------------------------------------------------------------------------------------------------------------


def trapezoid_move_s(distance_um: ArrayLike, velocity_um_s: float, accel_um_s2: float) -> np.float64 | FloatArray:
    """Duration of point-to-point moves from rest to rest with a trapezoidal velocity profile.

    A move longer than ``v²/a`` accelerates to ``v``, cruises and brakes: ``d/v + v/a``; a shorter one never
    reaches ``v`` (a triangle): ``2·sqrt(d/a)``. Vectorised over ``distance_um`` (sign ignored).

    Examples
    --------
    >>> float(trapezoid_move_s(1000.0, 100.0, 1000.0))  # 10 µm to reach 100 µm/s and 10 µm to stop again
    10.1
    >>> float(trapezoid_move_s(10.0, 100.0, 1000.0))  # a triangle: 2·sqrt(10/1000)
    0.2
    """
    distance = np.abs(np.asarray(distance_um, dtype=np.float64))
    ramp_um = velocity_um_s * velocity_um_s / accel_um_s2
    cruising = distance / velocity_um_s + velocity_um_s / accel_um_s2
    triangle = 2.0 * np.sqrt(distance / accel_um_s2)
    return np.where(distance >= ramp_um, cruising, triangle)[()]


def duration_parts_s(
    lines: NDArray,
    recipe: Recipe,
    *,
    accel_um_s2: float,
    spectra_count: int,
    travel_velocity_um_s: float | None = None,
    line_settle_s: float = LINE_SETTLE_S,
) -> dict[str, float]:
    """Estimated time of each part of a scan of ``lines`` (one pass, repeated per power), in seconds.

    Returns ``{"lines", "moves", "settling", "spectra", "alignment"}``; the scan takes their sum. See the module
    docstring for the model.

    Examples
    --------
    >>> import dataclasses
    >>> from inspection.recipe import load_recipe
    >>> recipe = load_recipe("resources/recipes/demo-2in.toml")
    >>> recipe = dataclasses.replace(recipe, alignment=dataclasses.replace(recipe.alignment, enabled=False))
    >>> lines = np.zeros(1, dtype=LINE_DTYPE)
    >>> lines["x_stop_um"] = 99_000.0  # 99 mm + 2 × 0.5 mm run-up at 100 mm/s: 1 s + v/a = 1.1 s per pass
    >>> parts = duration_parts_s(lines, recipe, accel_um_s2=1e6, spectra_count=0)
    >>> {name: round(seconds, 3) for name, seconds in parts.items()}  # moves: 100 mm back for the second pass
    {'lines': 2.2, 'moves': 1.1, 'settling': 0.5, 'spectra': 0.0, 'alignment': 0.0}
    """
    sampling, excitation = recipe.sampling, recipe.excitation
    velocity, run_up_um = sampling.velocity_um_s, sampling.run_up_um
    travel = velocity if travel_velocity_um_s is None else travel_velocity_um_s
    passes = len(excitation.powers_w)

    start_x, start_y = lines["x_start_um"].astype(float), lines["y_start_um"].astype(float)
    stop_x, stop_y = lines["x_stop_um"].astype(float), lines["y_stop_um"].astype(float)
    length_um = np.hypot(stop_x - start_x, stop_y - start_y)
    scan_s = float(trapezoid_move_s(length_um + 2.0 * run_up_um, velocity, accel_um_s2).sum())

    # Each line is run from run-up before its start to run-up past its stop; the next begins at its own run-up.
    unit_x, unit_y = _directions(start_x, start_y, stop_x, stop_y)
    begin_x, begin_y = start_x - run_up_um * unit_x, start_y - run_up_um * unit_y
    end_x, end_y = stop_x + run_up_um * unit_x, stop_y + run_up_um * unit_y

    def reposition_s(from_x: FloatArray, from_y: FloatArray, to_x: FloatArray, to_y: FloatArray) -> float:
        # The axes move at once, each with its own trapezoid: the slower one decides.
        along_x = trapezoid_move_s(to_x - from_x, travel, accel_um_s2)
        along_y = trapezoid_move_s(to_y - from_y, travel, accel_um_s2)
        return float(np.maximum(along_x, along_y).sum())

    between_s = reposition_s(end_x[:-1], end_y[:-1], begin_x[1:], begin_y[1:]) if len(lines) > 1 else 0.0
    return_s = reposition_s(end_x[-1:], end_y[-1:], begin_x[:1], begin_y[:1]) if len(lines) else 0.0

    usable_radius_um = (recipe.substrate.diameter_mm - 2.0 * recipe.substrate.edge_exclusion_mm) * 500.0
    spectra_s = 0.0
    if spectra_count > 0:
        # Sites spread over the usable area: about one lattice spacing between consecutive sites.
        hop_um = math.sqrt(math.pi * usable_radius_um**2 / spectra_count)
        per_spectrum_s = SPECTRUM_BASE_S + SPECTRUM_PER_POINT_S * recipe.spectra.points
        spectra_s = spectra_count * (per_spectrum_s + float(trapezoid_move_s(hop_um, travel, accel_um_s2)))

    alignment = recipe.alignment
    alignment_s = 0.0
    if alignment.enabled:
        # Out from the centre to the site circle, around it, back; two crossing scans per site.
        radius_um = alignment.site_radius_fraction * usable_radius_um
        chord_um = 2.0 * radius_um * math.sin(math.pi / alignment.sites)
        hops = trapezoid_move_s([radius_um, radius_um, *[chord_um] * (alignment.sites - 1)], travel, accel_um_s2)
        scan_one_s = float(trapezoid_move_s(alignment.scan_length_um + 2.0 * run_up_um, velocity, accel_um_s2))
        alignment_s = float(np.sum(hops)) + alignment.sites * 2.0 * (scan_one_s + line_settle_s)

    return {
        "lines": passes * scan_s,
        "moves": passes * between_s + (passes - 1) * return_s,
        "settling": passes * (len(lines) * line_settle_s + excitation.settle_s),
        "spectra": spectra_s,
        "alignment": alignment_s,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def _check_positive(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.number)
        or not (math.isfinite(value) and value > 0.0)
    ):
        raise ValueError(f"{name}: {value!r} must be a finite number > 0")


def _hms(seconds: float) -> str:
    """h:mm:ss, hours unbounded (an 8" scan can take more than a day)."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _power_text(power_w: float) -> str:
    return f"{power_w * 1000:g} mW" if power_w < 1.0 else f"{power_w:g} W"


def _bytes_text(count: int) -> str:
    """Decimal units, as disks and network links are sold."""
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"
