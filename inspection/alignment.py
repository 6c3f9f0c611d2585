"""Wafer alignment: where the wafer really lies on the chuck, and which chip is which.

A wafer is loaded with a small offset (up to ~1 mm) and rotation (up to ~1°). Before mapping, a few
position-triggered PL lines find the *placement* (``stage = R(φ)·wafer + offset``) so that every chip gets its
right index. The method uses only the recipe's grid and substrate and the PL signal:

1. **Grid phase.** Along a line, the PL signal is periodic with the chip pitch. Its Fourier component at the
   pitch (complex demodulation, :func:`grid_phase`) gives where the chip centres lie, modulo one pitch, to a
   small fraction of a micrometre, even with defective chips on the line. Two parallel lines half a pitch apart
   are combined, so a line that runs along a street between chips still sees the grid.
2. **Rotation, by bootstrapping.** The row phase measured on vertical lines at ``x = ±d`` differs by
   ``2d·tan ψ`` (ψ: grid rotation in the stage frame), known only modulo a pitch. Starting with a short ``d``
   where no wrap is possible and growing it fourfold each step, each estimate unwraps the next, so ψ ends up
   known to ~(phase error)/(2d) at the largest ``d``. Horizontal lines give the same for the column phase.
3. **Absolute index.** The phases fix the grid modulo whole pitches; the integer part comes from the wafer's
   edges: four full-diameter lines along the grid (a row, a column, both diagonals) show which chip positions
   emit PL, and the whole-pitch offset whose predicted chip presence (from the recipe's substrate: circle,
   flats, notch) matches best is chosen. Eight edge crossings at different angles make it robust to a damaged
   stretch of edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from inspection.recipe import Recipe
from inspection.wafer import Placement

SITE_DTYPE = np.dtype([("kind", "U12"), ("x_um", "f8"), ("y_um", "f8"), ("phase_um", "f8"), ("amplitude", "f8")])
"""One alignment measurement: a line through (x_um, y_um) in the stage frame and the grid phase it found."""

LineAcquirer = Callable[[tuple[float, float], tuple[float, float], int], np.ndarray]
"""Acquires a line from start to stop (stage frame, µm) with the given sample count; returns the samples."""


FloatOrArray = TypeVar("FloatOrArray", float, np.ndarray)


class AlignmentError(RuntimeError):
    """The wafer could not be aligned (no chip grid seen, an inconsistent fit, or a load beyond the recipe's
    limits); mapping it would give chips the wrong labels."""


@dataclass(frozen=True)
class AlignmentResult:
    """Where the wafer lies: ``placement`` maps wafer to stage coordinates."""

    placement: Placement
    residual_um: float
    sites: np.ndarray  # SITE_DTYPE


def grid_phase(positions_um: np.ndarray, signal: np.ndarray, period_um: float) -> tuple[float, complex]:
    """Where a comb of peaks with spacing ``period_um`` sits along a line.

    Returns the phase in µm, in ``[0, period_um)`` (peaks at ``phase + k·period``), and the complex Fourier
    component it came from (its magnitude tells how clearly the comb was seen; components of several lines can
    be added before taking the phase).

    Examples
    --------
    >>> x = np.arange(0.0, 1000.0, 1.0)
    >>> signal = np.exp(-0.5 * ((((x - 30.0) + 50.0) % 100.0 - 50.0) / 10.0) ** 2)  # peaks at 30 + k·100
    >>> round(grid_phase(x, signal, 100.0)[0], 6)
    30.0
    """
    positions_um = np.asarray(positions_um, dtype=np.float64)
    signal = np.asarray(signal, dtype=np.float64)
    if positions_um.size == 0:
        return 0.0, 0j
    component = complex(np.sum((signal - signal.mean()) * np.exp(-2j * np.pi * positions_um / period_um)))
    return phase_of(component, period_um), component


def phase_of(component: complex, period_um: float) -> float:
    """The phase (µm in ``[0, period)``) of a comb whose Fourier component is ``component``."""
    return (-math.atan2(component.imag, component.real) * period_um / (2 * math.pi)) % period_um


def wrap(value_um: FloatOrArray, period_um: float) -> FloatOrArray:
    """``value`` (a number or an array) folded into ``[-period/2, period/2)``."""
    return (value_um + period_um / 2) % period_um - period_um / 2


class _Aligner:
    def __init__(self, recipe: Recipe, acquire: LineAcquirer, nominal: Placement) -> None:
        self.recipe = recipe
        self.layout = recipe.layout()
        self.grid = self.layout.grid
        self.acquire = acquire
        self.nominal = nominal
        self.sample_pitch_um = recipe.sampling.sample_pitch_um
        self.sites: list[tuple[str, float, float, float, float]] = []
        centre = nominal.wafer_to_stage(0.0, 0.0)
        self.centre = (float(centre[0]), float(centre[1]))

    def _line(self, start: tuple[float, float], stop: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        length = math.hypot(stop[0] - start[0], stop[1] - start[1])
        count = int(length / self.sample_pitch_um) + 1
        samples = self.acquire(start, stop, count)
        return np.arange(count) * self.sample_pitch_um, samples

    def column_phase(self, y_um: float, x_centre_um: float, half_length_um: float) -> tuple[float, float]:
        """Phase of the columns (x, stage frame) on horizontal lines at ``y_um`` and half a pitch above."""
        total = 0j
        period = self.grid.pitch_x_um
        for dy in (0.0, self.grid.pitch_y_um / 2):
            start = (x_centre_um - half_length_um, y_um + dy)
            positions, samples = self._line(start, (x_centre_um + half_length_um, y_um + dy))
            total += grid_phase(positions + start[0], samples, period)[1]
        phase = phase_of(total, period)
        self.sites.append(("columns", x_centre_um, y_um, phase, abs(total)))
        return phase, abs(total)

    def row_phase(self, x_um: float, y_centre_um: float, half_length_um: float) -> tuple[float, float]:
        """Phase of the rows (y, stage frame) on vertical lines at ``x_um`` and half a pitch to the right."""
        total = 0j
        period = self.grid.pitch_y_um
        for dx in (0.0, self.grid.pitch_x_um / 2):
            start = (x_um + dx, y_centre_um - half_length_um)
            positions, samples = self._line(start, (x_um + dx, y_centre_um + half_length_um))
            total += grid_phase(positions + start[1], samples, period)[1]
        phase = phase_of(total, period)
        self.sites.append(("rows", x_um, y_centre_um, phase, abs(total)))
        return phase, abs(total)

    def rotation(self) -> float:
        """Grid rotation ψ in the stage frame (radians), bootstrapped from short to long baselines."""
        alignment = self.recipe.alignment
        px, py = self.grid.pitch_x_um, self.grid.pitch_y_um
        max_tan = math.tan(math.radians(alignment.max_rotation_deg + abs(self.grid.rotation_deg)))
        cx, cy = self.centre
        short = 8 * max(px, py)  # short lines: 16 pitches, enough to see the comb
        reach = 0.6 * (self.layout.substrate.radius_um - self.layout.substrate.edge_exclusion_um)
        reach = min(reach, alignment.site_radius_fraction * self.layout.substrate.radius_um)
        # first baseline: the largest 2d at which the rotation cannot move the phase by half a pitch
        distance = max(min(px, py) / (4 * max(max_tan, 1e-6)), 2 * short)
        distance = min(distance, reach)
        tan_psi = 0.0
        while True:
            right = self.row_phase(cx + distance, cy, short)[0]
            left = self.row_phase(cx - distance, cy, short)[0]
            delta_rows = self._unwrap(right - left, tan_psi * 2 * distance, py)
            top = self.column_phase(cy + distance, cx, short)[0]
            bottom = self.column_phase(cy - distance, cx, short)[0]
            delta_columns = self._unwrap(top - bottom, -tan_psi * 2 * distance, px)
            tan_psi = 0.5 * (delta_rows - delta_columns) / (2 * distance)
            if distance >= reach:
                return math.atan(tan_psi)
            distance = min(4 * distance, reach)

    @staticmethod
    def _unwrap(measured: float, expected: float, period: float) -> float:
        return measured + period * round((expected - measured) / period)

    def origin_candidates(self, psi: float) -> tuple[float, float, float, float]:
        """The anchor chip's stage position modulo whole pitches: returns (x0, y0, step_x, step_y)."""
        cx, cy = self.centre
        short = 8 * max(self.grid.pitch_x_um, self.grid.pitch_y_um)
        phase_x = self.column_phase(cy, cx, short)[0]
        phase_y = self.row_phase(cx, cy, short)[0]
        return phase_x, phase_y, self.grid.pitch_x_um / math.cos(psi), self.grid.pitch_y_um / math.cos(psi)

    def placement_for(self, psi: float, anchor_stage: tuple[float, float]) -> Placement:
        """The placement that puts the anchor chip at ``anchor_stage`` with grid rotation ``psi``."""
        phi = psi - math.radians(self.grid.rotation_deg)
        c, s = math.cos(phi), math.sin(phi)
        origin_x, origin_y = self.grid.origin_x_um, self.grid.origin_y_um
        return Placement(
            offset_x_um=anchor_stage[0] - (c * origin_x - s * origin_y),
            offset_y_um=anchor_stage[1] - (s * origin_x + c * origin_y),
            rotation_deg=math.degrees(phi),
        )


def align_wafer(recipe: Recipe, acquire: LineAcquirer, *, nominal: Placement | None = None) -> AlignmentResult:
    """Find the wafer's placement with PL lines acquired by ``acquire`` (laser on, detector ready).

    Parameters
    ----------
    recipe
        The recipe: grid, substrate and ``alignment`` settings (maximum offset and rotation to search).
    acquire
        Acquires one line (see :data:`LineAcquirer`); the scan engine passes a closure over its station.
    nominal
        Where the wafer is expected (default: centred, not rotated).
    """
    aligner = _Aligner(recipe, acquire, nominal or Placement())
    grid = aligner.grid
    psi = aligner.rotation()
    tan_psi = math.tan(psi)
    phase_x, phase_y, step_x, step_y = aligner.origin_candidates(psi)
    cx, cy = aligner.centre
    # the anchor chip's position o satisfies, for whole numbers kx, ky (lines through the centre at cx, cy):
    #   o_x - tanψ·(cy - o_y) ≡ phase_x (mod step_x)   and   o_y + tanψ·(cx - o_x) ≡ phase_y (mod step_y)
    nominal_anchor = aligner.nominal.wafer_to_stage(grid.origin_x_um, grid.origin_y_um)

    def anchor(kx: int, ky: int) -> tuple[float, float]:
        bx = phase_x + kx * step_x + tan_psi * cy
        by = phase_y + ky * step_y - tan_psi * cx
        determinant = 1 + tan_psi * tan_psi
        return ((bx - tan_psi * by) / determinant, (by + tan_psi * bx) / determinant)

    # start from the whole-pitch offsets nearest the nominal anchor
    kx0 = round((float(nominal_anchor[0]) - anchor(0, 0)[0]) / step_x)
    ky0 = round((float(nominal_anchor[1]) - anchor(0, 0)[1]) / step_y)
    search_x = math.ceil(recipe.alignment.max_offset_um / grid.pitch_x_um) + 1
    search_y = math.ceil(recipe.alignment.max_offset_um / grid.pitch_y_um) + 1
    radius = (
        aligner.layout.substrate.radius_um + recipe.alignment.max_offset_um + 2 * max(grid.pitch_x_um, grid.pitch_y_um)
    )
    # four full-diameter lines along the measured grid: a row, a column and the two diagonals, each through the
    # chip nearest the centre, so they cross chips, not streets, and meet the edge at eight places: a damaged
    # stretch of edge (dead chips) cannot outvote the others
    centre_x = phase_x + step_x * round((cx - phase_x) / step_x)
    centre_y = phase_y + step_y * round((cy - phase_y) / step_y)
    lines = []
    for grid_dx, grid_dy in ((1, 0), (0, 1), (1, 1), (1, -1)):
        along_x = grid_dx * grid.pitch_x_um
        along_y = grid_dy * grid.pitch_y_um
        period = math.hypot(along_x, along_y)
        ux = (along_x * math.cos(psi) - along_y * math.sin(psi)) / period
        uy = (along_x * math.sin(psi) + along_y * math.cos(psi)) / period
        start = (centre_x - radius * ux, centre_y - radius * uy)
        stop = (centre_x + radius * ux, centre_y + radius * uy)
        lines.append(_presence_line(aligner, start, stop, period))

    def score(kx: int, ky: int) -> int:
        placement = aligner.placement_for(psi, anchor(kx, ky))
        return sum(_score(aligner, line, placement) for line in lines)

    kx, ky = kx0, ky0
    for _ in range(3):  # coordinate ascent: the x and y offsets barely interact
        kx = max(range(kx0 - search_x, kx0 + search_x + 1), key=lambda k: (score(k, ky), -abs(k - kx0)))
        ky = max(range(ky0 - search_y, ky0 + search_y + 1), key=lambda k: (score(kx, k), -abs(k - ky0)))
    placement = aligner.placement_for(psi, anchor(kx, ky))
    residual = _residual(aligner, placement)
    sites = np.array(aligner.sites, dtype=SITE_DTYPE)
    _check(recipe, placement, residual, lines=lines)
    return AlignmentResult(placement=placement, residual_um=residual, sites=sites)


def _check(recipe: Recipe, placement: Placement, residual_um: float, *, lines: list[_PresenceLine]) -> None:
    """Refuse an alignment that cannot be trusted, with what to do about it."""
    grid, limits = recipe.grid, recipe.alignment
    if min(line.prominence for line in lines) < 6:  # noise scores ~3; a wafer 10 (25 chips across) to ~500
        raise AlignmentError(
            "no chip grid seen along the alignment lines: check that a wafer is loaded, the laser emits and the "
            "spot is in focus"
        )
    for line, pitch in zip(lines[:2], (grid.pitch_x_um, grid.pitch_y_um), strict=True):
        if abs(line.measured_pitch_um / pitch - 1) > 0.005:
            raise AlignmentError(
                f"the chips on the wafer repeat every {line.measured_pitch_um:.1f} µm, not every {pitch:g} µm as "
                "the recipe says: check the recipe's grid"
            )
    if not residual_um <= 0.1 * min(grid.pitch_x_um, grid.pitch_y_um):
        raise AlignmentError(
            f"the grid fit is inconsistent (residual {residual_um:.1f} µm for a {grid.pitch_x_um:g} µm pitch): "
            "check the recipe's pitch against the wafer"
        )
    offset = float(np.hypot(placement.offset_x_um, placement.offset_y_um))
    if offset > limits.max_offset_um or abs(placement.rotation_deg) > limits.max_rotation_deg:
        raise AlignmentError(
            f"the wafer lies {offset:.0f} µm off-centre and rotated {placement.rotation_deg:.2f}°, beyond the "
            f"recipe's {limits.max_offset_um:g} µm and {limits.max_rotation_deg:g}°: reload it"
        )


@dataclass(frozen=True)
class _PresenceLine:
    """Chip positions along a full-diameter line, whether each emitted PL, and what the line says of the grid."""

    x_um: np.ndarray
    y_um: np.ndarray
    present: np.ndarray
    prominence: float  # the comb's strength at its period over the median strength at nearby periods
    measured_pitch_um: float  # the period with the strongest comb near the recipe's pitch


def _presence_line(
    aligner: _Aligner, start: tuple[float, float], stop: tuple[float, float], pitch_um: float
) -> _PresenceLine:
    """Acquire a line along a row (or column) and tell, at each chip position on it, whether a chip emitted."""
    along, samples = aligner._line(start, stop)
    length = math.hypot(stop[0] - start[0], stop[1] - start[1])
    direction = ((stop[0] - start[0]) / length, (stop[1] - start[1]) / length)
    phase = grid_phase(along, samples, pitch_um)[0]
    centres = phase + pitch_um * np.arange(math.ceil(-phase / pitch_um), math.floor((along[-1] - phase) / pitch_um) + 1)
    # the peak within a third of a pitch around each chip centre along the line
    window = max(1, int(pitch_um / 3 / aligner.sample_pitch_um))
    index = np.clip(np.searchsorted(along, centres), 0, samples.size - 1)
    peaks = np.array([samples[max(i - window, 0) : i + window + 1].max() for i in index])
    background = np.percentile(samples, 5)
    bright = np.percentile(peaks, 90)
    present = peaks - background > 0.3 * (bright - background)
    measured_pitch_um, prominence = _strongest_period(along, samples, pitch_um)
    return _PresenceLine(
        x_um=start[0] + direction[0] * centres,
        y_um=start[1] + direction[1] * centres,
        present=present,
        prominence=prominence,
        measured_pitch_um=measured_pitch_um,
    )


def _strongest_period(along: np.ndarray, samples: np.ndarray, pitch_um: float) -> tuple[float, float]:
    """The period between 0.8 and 1.25 pitch at which the line's comb is strongest (0.1 % steps), and how much
    stronger it is there than the median over that range (a grid stands out; noise does not)."""
    step = max(1, samples.size // 20_000)  # a long line resolves the period finely even decimated
    positions, values = along[::step], samples[::step] - samples.mean()
    periods = pitch_um * np.exp(np.arange(np.log(0.8), np.log(1.25), 0.001))
    amplitudes = np.array([abs(np.sum(values * np.exp(-2j * np.pi * positions / period))) for period in periods])
    best = int(np.argmax(amplitudes))
    return float(periods[best]), float(amplitudes[best] / max(float(np.median(amplitudes)), 1e-300))


def _predicted_presence(aligner: _Aligner, line: _PresenceLine, placement: Placement) -> np.ndarray:
    # the nearest chip, not only a chip right under the point: where the line runs near a street the spot still
    # lights the chip beside it, and street crossings are the same for every whole-pitch hypothesis anyway
    x_wafer, y_wafer = placement.stage_to_wafer(line.x_um, line.y_um)
    col, row = aligner.layout.nearest_chip(np.asarray(x_wafer), np.asarray(y_wafer))
    return aligner.layout.chip_on_substrate(col, row)


def _score(aligner: _Aligner, line: _PresenceLine, placement: Placement) -> int:
    return int(np.count_nonzero(_predicted_presence(aligner, line, placement) == line.present))


def _residual(aligner: _Aligner, placement: Placement) -> float:
    """RMS distance between the measured grid phases and those the placement predicts (µm)."""
    errors = []
    grid = aligner.grid
    stage_x, stage_y = (float(v) for v in placement.wafer_to_stage(grid.origin_x_um, grid.origin_y_um))
    psi = math.radians(placement.rotation_deg + grid.rotation_deg)
    for kind, x_um, y_um, phase, _ in aligner.sites:
        if kind == "columns":
            period = grid.pitch_x_um / math.cos(psi)
            predicted = stage_x - math.tan(psi) * (y_um - stage_y)
        else:
            period = grid.pitch_y_um / math.cos(psi)
            predicted = stage_y + math.tan(psi) * (x_um - stage_x)
        errors.append(wrap(predicted - phase, period))
    return float(np.sqrt(np.mean(np.square(errors)))) if errors else math.nan
