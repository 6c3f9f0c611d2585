"""Scan recipes: everything one wafer scan needs, read from TOML and validated before anything moves.

A recipe names the substrate and its chip grid, the excitation powers (one pass over the wafer per power), how
the PL line signal is sampled (raster or grid-locked lines, stage velocity, digitizer rate), which chips get a
spectrum, the focus heights and the alignment. Each section is a frozen settings class whose fields are declared
with :func:`inspection.settings.setting` (default, range, unit, documentation); rules that tie fields together
live in ``__post_init__``. :func:`load_recipe` reports *every* bad field of a file at once in one
:class:`~inspection.settings.SettingsError`, each problem naming the field's dotted path, the value and what is
allowed. Every field, its unit, default and range is tabulated in docs/recipes.md.

File layout
-----------
Every section but ``[classification]`` must be present (an empty table takes the defaults of all its fields)::

    name = "demo 2-inch blue"

    [substrate]              # SubstrateSettings: diameter_mm, edge_exclusion_mm
    [grid]                   # GridSettings: pitch, chip size, origin, rotation (wafer frame, µm)
    [excitation]             # ExcitationSettings: laser wavelength, powers_w = [low, …, high]
    [sampling]               # SamplingSettings: mode, velocity_um_s, sample_rate_hz, line_pitch_um, run_up_um
    [spectra]                # SpectraSettings: which chips get a spectrum, OSA span/resolution/points
    [focus]                  # FocusSettings: safe_z_um ≤ focus_z_um ≤ max_z_um
    [alignment]              # AlignmentSettings: sites, radius, scan length, accepted offset/rotation
    [classification]         # ClassificationSettings (optional): rule thresholds of the defect classification

Rules between sections (checked by :class:`Recipe`): the sample pitch ``velocity_um_s / sample_rate_hz`` must
resolve the chips (≤ a quarter of the smallest chip side); raster lines must be at most half the smallest chip
side apart; the longest line must fit in the digitizer's buffer; the edge exclusion must leave usable chips.

Instrument limits (sample rate, buffer size, OSA span, resolutions and points) come from the drivers
(``drivers.keithley_dmm6500``, ``drivers.yokogawa``), so each limit is declared once.

Examples
--------
>>> recipe = load_recipe("resources/recipes/demo-2in.toml")
>>> recipe.sampling.mode, recipe.sampling.sample_pitch_um, recipe.excitation.powers_w
(<ScanMode.RASTER: 'raster'>, 2.0, (0.0005, 0.02))
>>> recipe.layout().chip_count
169949
>>> recipe_from_text(recipe_to_toml(recipe)) == recipe
True
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import tomli_w

from drivers.keithley_dmm6500 import MAX_SAMPLE_COUNT, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ
from drivers.yokogawa import MAX_POINTS, MAX_WAVELENGTH_NM, MIN_POINTS, MIN_WAVELENGTH_NM, RESOLUTIONS_NM
from inspection.scanfile import ScanFile
from inspection.settings import SettingsError, from_mapping, load_toml, range_problem, setting, to_mapping
from inspection.wafer import ROTATION_LIMIT_DEG, SUBSTRATE_DIAMETERS_MM, ChipGrid, Substrate, WaferLayout

__all__ = [
    "MAX_POWERS",
    "AlignmentSettings",
    "ClassificationSettings",
    "ExcitationSettings",
    "FocusSettings",
    "GridSettings",
    "Recipe",
    "SamplingSettings",
    "ScanMode",
    "SpectraSettings",
    "SpectrumPattern",
    "SubstrateSettings",
    "load_recipe",
    "recipe_from_text",
    "recipe_to_toml",
    "stored_recipe",
]

MAX_POWERS = 8
"""Most excitation powers (passes) a recipe may ask for: each one is a full pass over the wafer."""

CHIP_SAMPLES_MIN = 4
"""The sample pitch must be at most the smallest chip side divided by this: ≥ 4 samples across every chip."""

CHIP_LINES_MIN = 2
"""Raster lines must be at most the smallest chip side divided by this apart: ≥ 2 lines cross every chip."""


class ScanMode(StrEnum):
    """How the stage lines are laid over the wafer.

    RASTER: horizontal stage lines at a fixed pitch over the whole usable area, whatever the grid.
    GRID_LOCKED: one line per chip row, through the chip centres (needs a known placement, i.e. alignment).
    """

    RASTER = "raster"
    GRID_LOCKED = "grid-locked"


class SpectrumPattern(StrEnum):
    """Which chips get a spectrum after the intensity passes."""

    NONE = "none"
    EVERY_NTH = "every-nth"
    GRID = "grid"


def _declared_problems(settings: Any) -> list[str]:
    """Range and choice problems of a settings object's own fields (the checks :func:`from_mapping` does).

    :func:`from_mapping` checks them while reading a file; this repeats them for objects built in code
    (``dataclasses.replace`` in the GUI or the engine), so a declared range is enforced on every path.
    """
    problems = []
    for field in dataclasses.fields(settings):
        meta, value = field.metadata, getattr(settings, field.name)
        items = value if isinstance(value, tuple) else (value,)
        for index, item in enumerate(items):
            name = f"{field.name}[{index}]" if isinstance(value, tuple) else field.name
            if meta.get("choices") and item not in meta["choices"]:
                allowed = ", ".join(repr(choice) for choice in meta["choices"])
                problems.append(f"{name}: {item!r} is not one of {allowed}")
            elif (
                isinstance(item, (int, float))
                and not isinstance(item, bool)
                and (meta.get("minimum") is not None or meta.get("maximum") is not None)
                and (problem := range_problem(name, item, meta)) is not None
            ):
                problems.append(problem)
    return problems


def _coerce(settings: Any, name: str, kind: type) -> list[str]:
    """Turn a plain value given in code (``mode="raster"``, a list of powers) into the field's type, in place.

    The loader already converts; this keeps ``is`` comparisons and hashing right for objects built in code.
    """
    value = getattr(settings, name)
    if isinstance(value, kind):
        return []
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        if issubclass(kind, StrEnum):
            allowed = ", ".join(repr(member.value) for member in kind)
            return [f"{name}: {value!r} is not one of {allowed}"]
        return [f"{name}: {value!r} is not a {kind.__name__}"]
    object.__setattr__(settings, name, converted)  # frozen: the dataclass way to set a field during __post_init__
    return []


def _raise_problems(problems: list[str]) -> None:
    """One ValueError, one line per problem: :func:`from_mapping` turns each line into a reported problem."""
    if problems:
        raise ValueError("\n".join(problems))


# ---------------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubstrateSettings:
    """The substrate: SEMI M1 size (flats for 2"–6", notch for 200 mm, at the bottom) and its edge exclusion.

    Examples
    --------
    >>> SubstrateSettings(150.0, edge_exclusion_mm=3.0).substrate().primary_flat_length_mm
    57.5
    """

    diameter_mm: float = setting(choices=SUBSTRATE_DIAMETERS_MM, unit="mm", doc="substrate diameter (2–8 inch)")
    edge_exclusion_mm: float = setting(
        3.0, minimum=0.0, maximum=20.0, unit="mm", doc="unusable band along every edge (circle, flats, notch)"
    )

    def __post_init__(self) -> None:
        _raise_problems(_declared_problems(self))

    def substrate(self) -> Substrate:
        """The :class:`~inspection.wafer.Substrate` (flats or notch at 270°, the wafer frame's default)."""
        return Substrate(self.diameter_mm, edge_exclusion_mm=self.edge_exclusion_mm)


@dataclass(frozen=True)
class GridSettings:
    """The chip grid in the wafer frame (see inspection/wafer.py for the frames and the chip index).

    Examples
    --------
    >>> GridSettings(100.0, 100.0, 60.0, 60.0).grid().street_x_um
    40.0
    >>> GridSettings(100.0, 100.0, 120.0, 60.0)
    Traceback (most recent call last):
    ...
    ValueError: chip_width_um: 120.0 µm is wider than pitch_x_um = 100.0 µm (a chip must fit in its pitch)
    """

    pitch_x_um: float = setting(minimum=1.0, maximum=5000.0, unit="µm", doc="chip centre to centre along grid x")
    pitch_y_um: float = setting(minimum=1.0, maximum=5000.0, unit="µm", doc="chip centre to centre along grid y")
    chip_width_um: float = setting(minimum=1.0, maximum=5000.0, unit="µm", doc="chip size along grid x")
    chip_height_um: float = setting(minimum=1.0, maximum=5000.0, unit="µm", doc="chip size along grid y")
    origin_x_um: float = setting(
        0.0, minimum=-100_000.0, maximum=100_000.0, unit="µm", doc="wafer x of the centre of one chip (the anchor)"
    )
    origin_y_um: float = setting(0.0, minimum=-100_000.0, maximum=100_000.0, unit="µm", doc="wafer y of the anchor")
    rotation_deg: float = setting(
        0.0, minimum=-ROTATION_LIMIT_DEG, maximum=ROTATION_LIMIT_DEG, unit="°", doc="grid axes from the wafer axes"
    )

    def __post_init__(self) -> None:
        problems = _declared_problems(self)
        for size, pitch, word in (("chip_width_um", "pitch_x_um", "wider"), ("chip_height_um", "pitch_y_um", "taller")):
            if not problems and getattr(self, size) > getattr(self, pitch):
                problems.append(
                    f"{size}: {getattr(self, size)!r} µm is {word} than {pitch} = {getattr(self, pitch)!r} µm "
                    "(a chip must fit in its pitch)"
                )
        _raise_problems(problems)

    @property
    def min_chip_um(self) -> float:
        """The smallest chip side, which sets how finely lines and samples must be spaced."""
        return min(self.chip_width_um, self.chip_height_um)

    def grid(self) -> ChipGrid:
        """The :class:`~inspection.wafer.ChipGrid`."""
        return ChipGrid(
            self.pitch_x_um,
            self.pitch_y_um,
            self.chip_width_um,
            self.chip_height_um,
            origin_x_um=self.origin_x_um,
            origin_y_um=self.origin_y_um,
            rotation_deg=self.rotation_deg,
        )


@dataclass(frozen=True)
class ExcitationSettings:
    """The excitation laser: one intensity pass over the wafer per power, lowest first.

    Leakage shows as a low efficiency (PL/P) at low power that recovers at high power, so at least two powers
    are needed; strictly ascending so the passes run from the gentlest excitation up.

    Examples
    --------
    >>> ExcitationSettings(405.0, (0.0005, 0.02)).powers_w
    (0.0005, 0.02)
    >>> ExcitationSettings(405.0, (0.02,))
    Traceback (most recent call last):
    ...
    ValueError: powers_w: [0.02] has 1 power; at least 2 are needed (leakage shows only between a low and a high power)
    """

    laser_wavelength_nm: float = setting(
        minimum=200.0, maximum=1100.0, unit="nm", doc="excitation wavelength (power meter correction)"
    )
    powers_w: tuple[float, ...] = setting(
        minimum=0.0, exclusive_minimum=True, maximum=1.0, unit="W", doc="laser powers, strictly ascending, 2 to 8"
    )
    power_tolerance_fraction: float = setting(
        0.05,
        minimum=0.0,
        exclusive_minimum=True,
        maximum=0.5,
        doc="largest accepted relative deviation of the measured power from the set power",
    )
    settle_s: float = setting(0.2, minimum=0.0, maximum=60.0, unit="s", doc="wait after a power change, per pass")

    def __post_init__(self) -> None:
        problems = _coerce(self, "powers_w", tuple) or _declared_problems(self)
        powers = list(self.powers_w)
        if len(powers) < 2:
            problems.append(
                f"powers_w: {powers!r} has {len(powers)} power{'s' if len(powers) != 1 else ''}; at least 2 are "
                "needed (leakage shows only between a low and a high power)"
            )
        elif len(powers) > MAX_POWERS:
            problems.append(f"powers_w: {powers!r} has {len(powers)} powers; at most {MAX_POWERS} (one pass each)")
        if any(high <= low for low, high in itertools.pairwise(powers)):
            problems.append(f"powers_w: {powers!r} must be strictly ascending (low power first)")
        _raise_problems(problems)


@dataclass(frozen=True)
class SamplingSettings:
    """How the PL line signal is sampled: the stage moves at constant velocity, the digitizer at a fixed rate.

    Sample ``i`` of a line sits ``i × sample_pitch_um`` past the line's start, ``sample_pitch_um = velocity_um_s /
    sample_rate_hz``. ``run_up_um`` is added before each line start (and after its stop) so the stage is at
    constant velocity when the trigger fires; the scan engine, which knows the stage acceleration, checks that it
    is long enough (``velocity² / (2 × acceleration)``).

    Examples
    --------
    >>> SamplingSettings(ScanMode.GRID_LOCKED, 300_000.0, 150_000.0, line_pitch_um=10.0).sample_pitch_um
    2.0
    """

    mode: ScanMode = setting(doc="raster (fixed line pitch) or grid-locked (one line per chip row)")
    velocity_um_s: float = setting(
        minimum=0.0, exclusive_minimum=True, maximum=1_000_000.0, unit="µm/s", doc="stage speed along the line"
    )
    sample_rate_hz: float = setting(
        minimum=MIN_SAMPLE_RATE_HZ, maximum=MAX_SAMPLE_RATE_HZ, unit="Hz", doc="digitizer rate (DMM6500 limits)"
    )
    line_pitch_um: float = setting(
        minimum=0.0, exclusive_minimum=True, maximum=1000.0, unit="µm", doc="raster line spacing (raster mode only)"
    )
    run_up_um: float = setting(
        1000.0, minimum=0.0, exclusive_minimum=True, maximum=50_000.0, unit="µm", doc="acceleration run-up per line"
    )

    def __post_init__(self) -> None:
        _raise_problems(_coerce(self, "mode", ScanMode) or _declared_problems(self))

    @property
    def sample_pitch_um(self) -> float:
        """Distance between consecutive samples along a line, µm."""
        return self.velocity_um_s / self.sample_rate_hz


@dataclass(frozen=True)
class SpectraSettings:
    """Which chips get a spectrum (after the intensity passes) and how the spectrometer (AQ6373) sweeps.

    ``pattern`` picks regular sites: none, every n-th usable chip (row-major from the lower-left), or an
    n × n lattice over the usable area (``grid_sites`` per axis; sites whose nearest chip is not usable are
    skipped). With ``include_flagged`` up to ``max_flagged`` chips flagged by the intensity map get one too.

    Examples
    --------
    >>> SpectraSettings(SpectrumPattern.GRID, grid_sites=9, start_nm=420.0, stop_nm=500.0).points
    1001
    """

    pattern: SpectrumPattern = setting(SpectrumPattern.NONE, doc="none, every-nth chip or a grid of sites")
    every_nth: int = setting(1000, minimum=1, maximum=1_000_000_000, doc="every-nth: one spectrum per this many chips")
    grid_sites: int = setting(5, minimum=1, maximum=1000, doc="grid: sites per axis (n × n lattice)")
    include_flagged: bool = setting(False, doc="also take spectra of chips the intensity map flags")
    max_flagged: int = setting(100, minimum=0, maximum=100_000, doc="most flagged chips to take spectra of")
    start_nm: float = setting(400.0, minimum=MIN_WAVELENGTH_NM, maximum=MAX_WAVELENGTH_NM, unit="nm", doc="span start")
    stop_nm: float = setting(700.0, minimum=MIN_WAVELENGTH_NM, maximum=MAX_WAVELENGTH_NM, unit="nm", doc="span stop")
    resolution_nm: float = setting(0.5, choices=RESOLUTIONS_NM, unit="nm", doc="OSA resolution bandwidth")
    points: int = setting(1001, minimum=MIN_POINTS, maximum=MAX_POINTS, doc="sampling points per sweep")

    def __post_init__(self) -> None:
        problems = _coerce(self, "pattern", SpectrumPattern) or _declared_problems(self)
        if not problems and self.stop_nm <= self.start_nm:
            problems.append(f"stop_nm: {self.stop_nm!r} nm must be greater than start_nm = {self.start_nm!r} nm")
        _raise_problems(problems)


@dataclass(frozen=True)
class FocusSettings:
    """Stage Z heights. Z up brings the wafer towards the objective (and the EL probes).

    The engine moves XY only at ``safe_z_um`` (travel) or ``focus_z_um`` (scanning) and never goes above
    ``max_z_um``, so ``safe_z_um ≤ focus_z_um ≤ max_z_um``.

    Examples
    --------
    >>> FocusSettings(focus_z_um=3000.0, safe_z_um=500.0, max_z_um=4000.0).safe_z_um
    500.0
    """

    focus_z_um: float = setting(minimum=0.0, maximum=100_000.0, unit="µm", doc="Z at which the spot is focused")
    safe_z_um: float = setting(minimum=0.0, maximum=100_000.0, unit="µm", doc="Z for XY travel, below focus")
    max_z_um: float = setting(minimum=0.0, maximum=100_000.0, unit="µm", doc="Z the engine never exceeds")

    def __post_init__(self) -> None:
        problems = _declared_problems(self)
        if not problems and self.safe_z_um > self.focus_z_um:
            problems.append(
                f"safe_z_um: {self.safe_z_um!r} µm must be at most focus_z_um = {self.focus_z_um!r} µm "
                "(XY travel happens below the focus)"
            )
        if not problems and self.focus_z_um > self.max_z_um:
            problems.append(
                f"max_z_um: {self.max_z_um!r} µm must be at least focus_z_um = {self.focus_z_um!r} µm "
                "(the engine never goes above max_z_um)"
            )
        _raise_problems(problems)


@dataclass(frozen=True)
class AlignmentSettings:
    """How the wafer's placement on the chuck (offset, rotation) is measured before the scan.

    Short scans of ``scan_length_um`` at ``sites`` sites on a circle of ``site_radius_fraction`` × the usable
    radius; a placement beyond ``max_offset_um`` / ``max_rotation_deg`` from nominal stops the scan (wrong wafer
    or badly loaded).

    Examples
    --------
    >>> AlignmentSettings(sites=6).site_radius_fraction
    0.7
    """

    enabled: bool = setting(True, doc="measure the placement before scanning (grid-locked lines rely on it)")
    sites: int = setting(4, minimum=3, maximum=64, doc="alignment sites (≥ 3 to fit offset and rotation)")
    site_radius_fraction: float = setting(
        0.7, minimum=0.0, exclusive_minimum=True, maximum=0.95, doc="site circle radius / usable radius"
    )
    scan_length_um: float = setting(
        2000.0, minimum=0.0, exclusive_minimum=True, maximum=20_000.0, unit="µm", doc="length of each alignment scan"
    )
    max_offset_um: float = setting(1000.0, minimum=0.0, maximum=3000.0, unit="µm", doc="largest accepted offset")
    max_rotation_deg: float = setting(1.0, minimum=0.0, maximum=3.0, unit="°", doc="largest accepted rotation")

    def __post_init__(self) -> None:
        _raise_problems(_declared_problems(self))


@dataclass(frozen=True)
class ClassificationSettings:
    """Thresholds of the rule layer of the defect classification (:mod:`inspection.rules` explains each).

    Every threshold is a fraction of the chip's expected value (the wafer trend at its place, or its neighbours),
    so one recipe works on brighter wafers and wafers with process gradients.
    """

    missing_fraction: float = setting(
        2.5e-4, minimum=0.0, maximum=0.1, doc="intensity over trend below which no chip is there"
    )
    dead_fraction: float = setting(
        0.05, minimum=0.0, maximum=1.0, doc="intensity over trend below which a chip is dead"
    )
    dim_fraction: float = setting(0.70, minimum=0.0, maximum=1.0, doc="intensity over trend or neighbours: dim below")
    leakage_ratio_fraction: float = setting(
        0.60, minimum=0.0, maximum=1.0, doc="low/high efficiency ratio over its trend: leaky below"
    )
    bright_fraction: float = setting(1.35, minimum=1.0, maximum=100.0, doc="intensity over trend: bright above")
    wavelength_shift_nm: float = setting(
        2.5, minimum=0.0, maximum=100.0, unit="nm", doc="peak off the wafer's wavelength trend"
    )
    broadened_fraction: float = setting(1.3, minimum=1.0, maximum=10.0, doc="FWHM over the wafer median: broad above")

    def __post_init__(self) -> None:
        problems = []
        if not self.missing_fraction < self.dead_fraction < self.dim_fraction:
            problems.append(
                f"missing_fraction < dead_fraction < dim_fraction is required, got {self.missing_fraction:g}, "
                f"{self.dead_fraction:g}, {self.dim_fraction:g}"
            )
        _raise_problems(_declared_problems(self) + problems)


# ---------------------------------------------------------------------------------------------------------------------
# Recipe
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything one scan needs. Load with :func:`load_recipe`; write with :func:`recipe_to_toml`.

    Raises
    ------
    ValueError
        One line per broken rule between sections, each naming the field as ``section.field``.

    Examples
    --------
    >>> recipe = load_recipe("resources/recipes/demo-2in.toml")
    >>> fast = dataclasses.replace(recipe.sampling, velocity_um_s=1_000_000.0)
    >>> dataclasses.replace(recipe, sampling=fast)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: sampling.sample_rate_hz: 50000.0 Hz at velocity_um_s = 1000000.0 µm/s gives a sample pitch of 20 µm; ...
    """

    name: str = setting(doc="shown to the operator and stored with the results")
    substrate: SubstrateSettings = setting(doc="substrate size and edge exclusion")
    grid: GridSettings = setting(doc="chip grid")
    excitation: ExcitationSettings = setting(doc="laser wavelength and powers")
    sampling: SamplingSettings = setting(doc="scan mode, velocity, sample rate, line pitch")
    spectra: SpectraSettings = setting(doc="spectrum sites and spectrometer settings")
    focus: FocusSettings = setting(doc="Z heights")
    alignment: AlignmentSettings = setting(doc="placement measurement")
    classification: ClassificationSettings = setting(
        ClassificationSettings(), doc="rule thresholds of the defect classification (optional section)"
    )

    def __post_init__(self) -> None:
        problems = []
        if not self.name.strip():
            problems.append(f"name: {self.name!r} must not be empty (it identifies the recipe in results)")
        problems.extend(self._sampling_problems())
        try:
            layout = self.layout()
        except ValueError as error:
            # The geometry module's messages are about the grid as a whole; report them under its section.
            problems.extend(line if line.startswith("grid") else f"grid: {line}" for line in str(error).splitlines())
        else:
            if layout.chip_count == 0:
                problems.append(
                    f"substrate.edge_exclusion_mm: {self.substrate.edge_exclusion_mm!r} mm leaves no usable chip of "
                    f"{self.grid.chip_width_um:g} × {self.grid.chip_height_um:g} µm on the "
                    f"{self.substrate.diameter_mm:g} mm substrate; lower it"
                )
        _raise_problems(problems)

    def _sampling_problems(self) -> list[str]:
        sampling, chip_um = self.sampling, self.grid.min_chip_um
        problems = []
        # A chip's PL is the plateau of its samples; four samples per chip side leave at least two on the plateau
        # after discarding the rising and falling edge under the spot.
        limit_um = chip_um / CHIP_SAMPLES_MIN
        if sampling.sample_pitch_um > limit_um:
            problems.append(
                f"sampling.sample_rate_hz: {sampling.sample_rate_hz!r} Hz at velocity_um_s = "
                f"{sampling.velocity_um_s!r} µm/s gives a sample pitch of {sampling.sample_pitch_um:g} µm; at most "
                f"{limit_um:g} µm is allowed (a quarter of the smallest chip side, {chip_um:g} µm): raise "
                f"sample_rate_hz to >= {sampling.velocity_um_s / limit_um:g} Hz or lower velocity_um_s to "
                f"<= {limit_um * sampling.sample_rate_hz:g} µm/s"
            )
        line_limit_um = chip_um / CHIP_LINES_MIN
        if sampling.mode is ScanMode.RASTER and sampling.line_pitch_um > line_limit_um:
            problems.append(
                f"sampling.line_pitch_um: {sampling.line_pitch_um!r} µm must be at most {line_limit_um:g} µm in "
                f"raster mode (half the smallest chip side, {chip_um:g} µm, so two lines cross every chip)"
            )
        # The longest line (a diameter plus the one-pitch margins) must fit in one digitizer acquisition.
        longest_um = self.substrate.diameter_mm * 1000.0 + 2.0 * max(self.grid.pitch_x_um, self.grid.pitch_y_um)
        samples = math.ceil(longest_um / sampling.sample_pitch_um) + 1
        if samples > MAX_SAMPLE_COUNT:
            problems.append(
                f"sampling.sample_rate_hz: {sampling.sample_rate_hz!r} Hz at velocity_um_s = "
                f"{sampling.velocity_um_s!r} µm/s needs {samples:,} samples for a {longest_um / 1000:g} mm line, "
                f"more than the digitizer's {MAX_SAMPLE_COUNT:,}: lower sample_rate_hz or raise velocity_um_s"
            )
        return problems

    @cached_property
    def _layout(self) -> WaferLayout:
        return WaferLayout(self.substrate.substrate(), self.grid.grid())

    def layout(self) -> WaferLayout:
        """The :class:`~inspection.wafer.WaferLayout` of the substrate and grid (built once, then cached)."""
        return self._layout


# ---------------------------------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------------------------------


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is reported at once.

    Raises
    ------
    SettingsError
        A missing or malformed file, or bad fields: one problem per field, naming the file.

    Examples
    --------
    >>> load_recipe("resources/recipes/blue-6in.toml").sampling.mode
    <ScanMode.GRID_LOCKED: 'grid-locked'>
    """
    return from_mapping(Recipe, load_toml(path), source=str(path))


def recipe_from_text(text: str, *, source: str = "") -> Recipe:
    """A recipe from TOML text; ``source`` names it in messages (a file name, "clipboard", ...).

    Raises
    ------
    SettingsError
        Not valid TOML (naming ``source`` and the line), or bad fields.

    Examples
    --------
    >>> recipe_from_text("name = ", source="pasted.toml")
    Traceback (most recent call last):
    ...
    inspection.settings.SettingsError: 1 problem(s) in pasted.toml:
      - not valid TOML: Invalid value (at end of document)
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SettingsError([f"not valid TOML: {error}"], source=source or "recipe text") from None
    return from_mapping(Recipe, data, source=source or "recipe text")


def stored_recipe(scan_path: str | Path) -> Recipe:
    """The recipe stored in a scan file (``/settings/recipe_toml``).

    Raises
    ------
    ValueError
        The file holds no recipe, so its chip grid is unknown (or the stored recipe is invalid).
    """
    with ScanFile(scan_path) as scan:
        text, where = scan.recipe_toml, scan.path
    if not text:
        raise ValueError(f"{where}: the file holds no recipe; the chip grid is unknown")
    return recipe_from_text(text, source=f"{where}:/settings/recipe_toml")


def recipe_to_toml(recipe: Recipe) -> str:
    """The recipe as TOML text that :func:`recipe_from_text` reads back to an equal recipe.

    Every field is written, defaults included, so a stored recipe does not change meaning when a default does.

    Examples
    --------
    >>> text = recipe_to_toml(load_recipe("resources/recipes/demo-2in.toml"))
    >>> print(text.splitlines()[1])
    name = "demo 2-inch blue"
    """
    return "# plmapper scan recipe; every field is documented in docs/recipes.md\n" + tomli_w.dumps(to_mapping(recipe))
