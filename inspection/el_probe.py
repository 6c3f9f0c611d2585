"""EL reference measured on the station itself: probe a sample of chips with the source-meter.

:func:`run_el_probe` (``plmapper probe``) reads a scan file's recipe and alignment, picks the chips (given, or a
random sample of usable ones), probes them with :func:`probe_chips` and stores the results as the file's
``/el_reference`` (format in :mod:`inspection.el_reference` and docs/el-reference.md).

Procedure
---------
1. *Presence check* (optional, on by default). An open contact and a missing chip look the same to the
   source-meter: no current, the compliance voltage, no light. What tells them apart is whether anything is there
   to scatter the laser, as a prober's camera would show. With Z at the recipe's focus height, one short
   position-triggered line across the middle of each chip is digitized at ``presence_power_w`` (after one dark line
   with the laser off); a chip whose mean signal rises less than ``presence_min_signal_v_per_w × power`` above
   the dark level is missing. Then the laser goes off, and is checked to be off, before any needle touches a chip.
2. *Probing*, chip by chip in serpentine order: Z to the safe height, XY to the chip centre (layout + alignment
   placement, as the scan engine places its spots), Z up to ``contact_z_um − approach_gap_um`` at travel speed and
   on to ``contact_z_um + overdrive_um`` at ``approach_velocity_um_s``; a detector reading with the output off
   (dark); a forward current sweep of ``sweep_points`` currents up to the test current with the compliance
   limit (Vf = the voltage at the test current); the test current again with the output on and a detector
   reading (EL = reading − dark); output off; the reverse test voltage with ``reverse_current_limit_a`` and a
   current reading (Ir); output off; Z back to the safe height.
3. The fail modes are decided together by :func:`inspection.el_reference.decide_fail_modes` with the
   configuration's :class:`~inspection.el_reference.ElTestCriteria` (the virtual wafer's ground truth uses the
   same function), so light limits refer to the median of the probed chips unless ``el_reference_intensity``
   is set: a sample should be mostly ordinary chips.

Safety
------
On every way out (success, an instrument error, an abort, Ctrl-C, any exception) the source-meter output goes off
first, then Z goes to the safe height, then the laser is made safe; an instrument whose connection dropped is
reconnected to do so. XY never moves unless Z is at the safe height (probing) or the focus height (presence
check, below contact). A failure to make the station safe is raised (or attached as a note to the error already
on its way out). Nothing is written to the scan file unless every chip was probed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomli_w

from drivers.errors import InstrumentError
from drivers.interfaces import Axis
from drivers.station import Station, StationConfig, connect
from inspection.el_reference import (
    EL_DTYPE,
    ElFailMode,
    ElReference,
    ElTestCriteria,
    JoinReport,
    decide_fail_modes,
    join_to_layout,
    write_el_reference,
)
from inspection.recipe import _declared_problems, recipe_from_text
from inspection.scan import TRAVEL_SPEED_UM_S, LineMotion, ScanOptions, acquire_line, stage_acceleration_um_s2
from inspection.scanfile import ScanFile, ScanFileError, ScanStatus
from inspection.settings import from_mapping, load_toml, setting, to_mapping
from inspection.wafer import Placement, WaferLayout

__all__ = [
    "EL_INTENSITY_UNIT",
    "ElProbeAborted",
    "ElProbeConfig",
    "ElProbeOutcome",
    "ElProbeProgress",
    "ElProbeSettings",
    "choose_probe_chips",
    "el_probe_config_to_toml",
    "load_el_probe_config",
    "probe_chips",
    "run_el_probe",
    "travel_order",
]

EL_INTENSITY_UNIT = "V (photodetector, dark subtracted)"
"""Unit of a station probe's EL intensity: the PL digitizer's volts with the output on minus with it off."""


@dataclass(frozen=True)
class ElProbeSettings:
    """How the station probes a chip (TOML section ``[probe]``). ``contact_z_um`` has no default: a wrong one
    crashes the probe card, so the station's own value must be stated."""

    contact_z_um: float = setting(
        minimum=0.0, maximum=100_000.0, unit="µm", doc="Z at which the needles first touch the chip pads"
    )
    overdrive_um: float = setting(20.0, minimum=0.0, maximum=100.0, unit="µm", doc="Z beyond first contact")
    safe_z_um: float = setting(0.0, minimum=0.0, maximum=100_000.0, unit="µm", doc="Z for XY travel")
    approach_gap_um: float = setting(
        200.0, minimum=0.0, maximum=10_000.0, unit="µm", doc="the last part of the touchdown, taken slowly"
    )
    approach_velocity_um_s: float = setting(1000.0, minimum=1.0, maximum=100_000.0, unit="µm/s")
    sweep_points: int = setting(5, minimum=2, maximum=1000, doc="forward currents from test/points to test")
    settle_s: float = setting(0.0, minimum=0.0, maximum=10.0, unit="s", doc="wait after touchdown and output on")
    reverse_current_limit_a: float = setting(1e-4, minimum=1e-9, maximum=0.1, unit="A", doc="at reverse voltage")
    presence_check: bool = setting(True, doc="tell missing chips from open ones by laser scatter (see module)")
    presence_power_w: float = setting(0.02, minimum=1e-5, maximum=1.0, unit="W")
    presence_min_signal_v_per_w: float = setting(
        0.02, minimum=0.0, maximum=1e6, unit="V/W", doc="a chip is there if its signal rises this × power above dark"
    )
    presence_samples: int = setting(200, minimum=10, maximum=100_000, doc="samples of each presence line")
    presence_sample_rate_hz: float = setting(10_000.0, minimum=1.0, maximum=1e6, unit="Hz")
    move_timeout_s: float = setting(120.0, minimum=1.0, maximum=3600.0, unit="s")

    def __post_init__(self) -> None:
        problems = _declared_problems(self)
        if not problems and self.safe_z_um + self.approach_gap_um > self.contact_z_um:
            problems.append(
                f"safe_z_um: {self.safe_z_um:g} µm + approach_gap_um {self.approach_gap_um:g} µm must be at most "
                f"contact_z_um = {self.contact_z_um:g} µm (XY travels below the contact height)"
            )
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def touchdown_z_um(self) -> float:
        """Z while probing: first contact plus the overdrive."""
        return self.contact_z_um + self.overdrive_um


@dataclass(frozen=True)
class ElProbeConfig:
    """A probe configuration file: ``[probe]`` (:class:`ElProbeSettings`) and ``[el_test]``
    (:class:`~inspection.el_reference.ElTestCriteria`, optional: its defaults are the virtual profile's)."""

    probe: ElProbeSettings
    el_test: ElTestCriteria = field(default_factory=ElTestCriteria)


def load_el_probe_config(path: str | Path) -> ElProbeConfig:
    """Read a probe configuration TOML file; every bad field is reported at once (``SettingsError``)."""
    return from_mapping(ElProbeConfig, load_toml(path), source=str(path))


def el_probe_config_to_toml(config: ElProbeConfig) -> str:
    """The configuration as TOML that :func:`load_el_probe_config` reads back equal."""
    return tomli_w.dumps(to_mapping(config))


class ElProbeAborted(Exception):  # noqa: N818 - an operator's request, not an error
    """The operator aborted probing; the station was made safe and nothing was written."""


@dataclass(frozen=True)
class ElProbeProgress:
    """A small progress message (never carries data)."""

    phase: str  # "presence" or "probing"
    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class ElProbeOutcome:
    """What :func:`run_el_probe` did."""

    path: Path
    reference: ElReference
    report: JoinReport


# ---------------------------------------------------------------------------------------------------------------------
# Choosing chips
# ---------------------------------------------------------------------------------------------------------------------


def travel_order(cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chips in serpentine order (rows from the bottom, columns alternately left-right and right-left), so
    the stage travels little between them.

    Examples
    --------
    >>> travel_order(np.array([3, 1, 2, 0]), np.array([0, 1, 0, 1]))
    (array([2, 3, 1, 0]), array([0, 0, 1, 1]))
    """
    cols, rows = np.asarray(cols, dtype=np.int64), np.asarray(rows, dtype=np.int64)
    _, rank = np.unique(rows, return_inverse=True)
    direction = np.where(rank % 2 == 0, cols, -cols)
    order = np.lexsort((direction, rows))
    return cols[order], rows[order]


def choose_probe_chips(layout: WaferLayout, count: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random sample of ``count`` usable chips (all of them if there are fewer), in :func:`travel_order`.

    The same seed gives the same sample; int64 (col, row) arrays.
    """
    if count < 0:
        raise ValueError(f"count: {count!r} must be >= 0")
    cols, rows = layout.usable_chips()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(cols.size, size=min(count, cols.size), replace=False))
    return travel_order(cols[chosen], rows[chosen])


# ---------------------------------------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Measured:
    forward_v: float = math.nan
    light_v: float = math.nan
    reverse_a: float = math.nan
    sweep_a: np.ndarray | None = None
    sweep_v: np.ndarray | None = None


def probe_chips(
    station: Station,
    layout: WaferLayout,
    placement: Placement,
    chips: tuple[np.ndarray, np.ndarray],
    config: ElProbeConfig,
    *,
    focus_z_um: float | None = None,
    on_progress: Callable[[ElProbeProgress], None] | None = None,
    abort: threading.Event | None = None,
) -> ElReference:
    """Probe ``chips`` in the given order and decide their fail modes (see the module).

    Parameters
    ----------
    station
        The open station.
    layout, placement
        The recipe's chip layout and the wafer's measured placement on the chuck (alignment).
    chips
        ``(cols, rows)`` of the chips to probe, each on the substrate and none twice.
    config
        Probe settings and EL test criteria.
    focus_z_um
        Z of the laser focus for the presence check (the recipe's ``focus.focus_z_um``); required when
        ``config.probe.presence_check`` is on.
    on_progress
        Called with an :class:`ElProbeProgress` after each chip.
    abort
        Set it (from another thread) to stop after the current chip: :class:`ElProbeAborted` is raised.

    Raises
    ------
    ValueError
        Bad chips or Z heights outside the stage's travel, before anything moves.
    ElProbeAborted, drivers.errors.InstrumentError
        Probing stopped; the station is safe (see the module), nothing is returned.
    """
    settings, criteria = config.probe, config.el_test
    cols = np.asarray(chips[0], dtype=np.int64).ravel()
    rows = np.asarray(chips[1], dtype=np.int64).ravel()
    _check_chips(layout, cols, rows)
    if settings.presence_check and focus_z_um is None:
        raise ValueError("focus_z_um is needed for the presence check (the recipe's focus.focus_z_um)")
    if settings.presence_check and focus_z_um is not None and focus_z_um >= settings.contact_z_um:
        raise ValueError(
            f"focus_z_um {focus_z_um:g} µm is at or above the probe contact height {settings.contact_z_um:g} µm: "
            "the presence check would touch the chips"
        )
    x_um, y_um = layout.chip_center_um(cols, rows)
    stage_x, stage_y = placement.wafer_to_stage(x_um, y_um)
    report = on_progress or (lambda progress: None)
    _check_travel(station, settings)
    with _kept_safe(station, settings.safe_z_um):
        station.smu.set_output(False)
        signal_v: np.ndarray | None = None
        presence: dict[str, float] = {}
        if settings.presence_check and cols.size and focus_z_um is not None:  # None was refused above
            signal_v, presence = _presence_check(
                station, layout, (stage_x, stage_y), settings, focus_z_um=focus_z_um, abort=abort, report=report
            )
        station.laser.set_emission(False)
        if station.laser.emission():
            raise InstrumentError(station.laser.name, "the laser still emits after switching it off: not probing")
        station.stage.move_absolute_um(Axis.Z, settings.safe_z_um)
        for axis in (Axis.X, Axis.Y):
            station.stage.set_velocity_um_s(axis, TRAVEL_SPEED_UM_S)  # the presence lines left them slow
        z_velocity_um_s = station.stage.velocity_um_s(Axis.Z)
        measured: list[_Measured] = []
        for index in range(cols.size):
            if abort is not None and abort.is_set():
                raise ElProbeAborted(f"aborted after {index} of {cols.size} chips; nothing was written")
            target = (float(stage_x[index]), float(stage_y[index]))
            measured.append(_probe_one(station, target, settings, criteria, z_velocity_um_s=z_velocity_um_s))
            report(ElProbeProgress("probing", index + 1, cols.size, f"chip ({cols[index]}, {rows[index]})"))
        identities = {f"identity_{role}": str(identity) for role, identity in station.identities().items()}
    return _reference(
        (cols, rows),
        signal_v,
        measured,
        config,
        provenance={"station": station.name, **identities, **presence},
    )


def _check_chips(layout: WaferLayout, cols: np.ndarray, rows: np.ndarray) -> None:
    if cols.shape != rows.shape:
        raise ValueError(f"cols and rows differ in length ({cols.size} and {rows.size})")
    problems = []
    off = np.flatnonzero(~layout.chip_on_substrate(cols, rows))
    if off.size:
        shown = ", ".join(f"({cols[i]}, {rows[i]})" for i in off[:10])
        problems.append(f"{off.size} chip(s) not on the substrate: {shown}{' ...' if off.size > 10 else ''}")
    keys = rows * (2**32) + cols
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        twice = unique[counts > 1][:10]
        problems.append("chips given twice: " + ", ".join(f"({key % 2**32}, {key // 2**32})" for key in twice))
    if problems:
        raise ValueError("cannot probe these chips:\n" + "\n".join(f"  - {problem}" for problem in problems))


def _check_travel(station: Station, settings: ElProbeSettings) -> None:
    low, high = station.stage.limits_um(Axis.Z)
    problems = []
    if not low <= settings.safe_z_um <= high:
        problems.append(f"safe_z_um {settings.safe_z_um:g} µm")
    if not low <= settings.touchdown_z_um <= high:
        problems.append(f"contact_z_um + overdrive_um = {settings.touchdown_z_um:g} µm")
    if problems:
        raise ValueError(f"outside the stage's Z travel {low:g}..{high:g} µm: {', '.join(problems)}")


def _presence_check(
    station: Station,
    layout: WaferLayout,
    stage_xy_um: tuple[np.ndarray, np.ndarray],
    settings: ElProbeSettings,
    *,
    focus_z_um: float,
    abort: threading.Event | None,
    report: Callable[[ElProbeProgress], None],
) -> tuple[np.ndarray, dict[str, float]]:
    """Whether something scatters the laser at each chip (see the module); the laser is off afterwards."""
    stage, laser = station.stage, station.laser
    stage_x, stage_y = stage_xy_um
    half_um = 0.25 * layout.grid.chip_width_um  # the middle half of the chip: far from the street and neighbours
    motion = LineMotion(
        velocity_um_s=2 * half_um * settings.presence_sample_rate_hz / settings.presence_samples,
        sample_rate_hz=settings.presence_sample_rate_hz,
        accel_um_s2=stage_acceleration_um_s2(station),
        run_up_um=min(2 * half_um, 200.0),
    )
    options = ScanOptions(move_timeout_s=settings.move_timeout_s)

    def line_mean_v(x_um: float, y_um: float) -> float:
        start, stop = (x_um - half_um, y_um), (x_um + half_um, y_um)
        line = acquire_line(station, start, stop, settings.presence_samples, motion=motion, options=options)
        return float(np.mean(line.samples_v))

    laser.set_emission(False)
    stage.move_absolute_um(Axis.Z, settings.safe_z_um)  # XY never travels at an unknown Z
    stage.move_absolute_um(Axis.Z, focus_z_um)
    dark_v = line_mean_v(float(stage_x[0]), float(stage_y[0]))
    laser.set_power_w(settings.presence_power_w)
    laser.set_emission(True)
    signal_v = np.zeros(stage_x.size)
    try:
        for index in range(stage_x.size):
            if abort is not None and abort.is_set():
                raise ElProbeAborted(f"aborted in the presence check ({index} of {stage_x.size}); nothing was written")
            signal_v[index] = line_mean_v(float(stage_x[index]), float(stage_y[index])) - dark_v
            report(ElProbeProgress("presence", index + 1, stage_x.size))
    finally:
        laser.set_emission(False)
    threshold_v = settings.presence_min_signal_v_per_w * settings.presence_power_w
    return signal_v, {"presence_dark_v": dark_v, "presence_threshold_v": threshold_v}


def _probe_one(
    station: Station,
    stage_xy_um: tuple[float, float],
    settings: ElProbeSettings,
    criteria: ElTestCriteria,
    *,
    z_velocity_um_s: float,
) -> _Measured:
    stage, smu, detector = station.stage, station.smu, station.detector
    x_um, y_um = stage_xy_um
    stage.move_absolute_um(Axis.Z, settings.safe_z_um)  # needles clear before any XY move
    stage.move_absolute_um(Axis.X, x_um, wait=False)
    stage.move_absolute_um(Axis.Y, y_um, wait=False)
    stage.wait_idle(settings.move_timeout_s)
    stage.move_absolute_um(Axis.Z, settings.contact_z_um - settings.approach_gap_um)
    stage.set_velocity_um_s(Axis.Z, min(settings.approach_velocity_um_s, z_velocity_um_s))
    try:
        stage.move_absolute_um(Axis.Z, settings.touchdown_z_um)
    finally:
        stage.set_velocity_um_s(Axis.Z, z_velocity_um_s)
    time.sleep(settings.settle_s)
    result = _Measured()
    try:
        dark_v = detector.read_voltage_v()  # output off: the detector's own level under the probe card
        test_a = criteria.test_current_a
        sweep_a, sweep_v = smu.sweep_current(
            test_a / settings.sweep_points, test_a, settings.sweep_points, voltage_limit_v=criteria.compliance_v
        )
        result.sweep_a, result.sweep_v = sweep_a, sweep_v
        result.forward_v = float(sweep_v[-1])
        smu.source_current(test_a, voltage_limit_v=criteria.compliance_v)
        smu.set_output(True)
        time.sleep(settings.settle_s)
        result.light_v = detector.read_voltage_v() - dark_v
        smu.set_output(False)
        smu.source_voltage(criteria.reverse_voltage_v, current_limit_a=settings.reverse_current_limit_a)
        smu.set_output(True)
        time.sleep(settings.settle_s)
        result.reverse_a = smu.measure_current_a()
    finally:
        # the needles never leave a chip with the output on (an arc would damage the pads)
        smu.set_output(False)
    stage.move_absolute_um(Axis.Z, settings.safe_z_um)
    return result


@contextlib.contextmanager
def _kept_safe(station: Station, safe_z_um: float) -> Iterator[None]:
    """Make the station safe however the block ends: output off, Z to the safe height, laser off."""
    error: BaseException | None = None
    try:
        yield
    except BaseException as raised:
        error = raised
        raise
    finally:
        failures = _make_safe(station, safe_z_um)
        if failures:
            message = "making the station safe failed: " + "; ".join(failures)
            if error is None:
                raise InstrumentError("station", message + " (check the probe and the source-meter by hand)")
            error.add_note(message)


def _make_safe(station: Station, safe_z_um: float) -> list[str]:
    # lambdas, not bound methods: after a reconnect the station holds a new instrument object
    actions: list[tuple[str, Callable[[], None]]] = [
        ("smu", lambda: station.smu.make_safe()),  # noqa: PLW0108
        ("stage", lambda: station.stage.move_absolute_um(Axis.Z, safe_z_um)),
        ("laser", lambda: station.laser.make_safe()),  # noqa: PLW0108
    ]
    failures = []
    for role, action in actions:
        try:
            action()
        except Exception:  # noqa: BLE001 - a dropped connection: try once more on a fresh one
            try:
                station.reconnect(role)
                action()
            except Exception as error:  # noqa: BLE001 - collected and raised by the caller
                failures.append(f"{role}: {error}")
    return failures


def _reference(
    chips: tuple[np.ndarray, np.ndarray],
    presence_signal_v: np.ndarray | None,
    measured: list[_Measured],
    config: ElProbeConfig,
    *,
    provenance: dict[str, object],
) -> ElReference:
    cols, rows = chips
    if presence_signal_v is None:
        present = np.ones(cols.size, dtype=bool)
    else:
        present = presence_signal_v >= config.probe.presence_min_signal_v_per_w * config.probe.presence_power_w
    records = np.zeros(cols.size, dtype=EL_DTYPE)
    records["col"], records["row"] = cols, rows
    records["forward_v"] = [chip.forward_v for chip in measured]
    records["el_intensity"] = [chip.light_v for chip in measured]
    records["reverse_current_a"] = [chip.reverse_a for chip in measured]
    modes = decide_fail_modes(
        present=present,
        forward_v=records["forward_v"].astype(np.float64),
        reverse_current_a=records["reverse_current_a"].astype(np.float64),
        el_intensity=records["el_intensity"].astype(np.float64),
        criteria=config.el_test,
    )
    records["fail_mode"] = modes
    records["passed"] = modes == ElFailMode.PASS
    records["fail_code"] = [ElFailMode(mode).name.encode() for mode in modes]
    records["source_line"] = np.arange(1, cols.size + 1)
    points = config.probe.sweep_points
    sweep_a = np.array([chip.sweep_a for chip in measured], dtype=np.float32).reshape(cols.size, points)
    sweep_v = np.array([chip.sweep_v for chip in measured], dtype=np.float32).reshape(cols.size, points)
    described = {
        "source": "station probe",
        "probed_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config_toml": el_probe_config_to_toml(config),
        "chips_probed": str(cols.size),
        "presence_check": "on" if config.probe.presence_check else "off (every chip taken as present)",
        **{key: value if isinstance(value, str) else repr(value) for key, value in provenance.items()},
    }
    return ElReference(
        records,
        EL_INTENSITY_UNIT,
        described,
        criteria=config.el_test,
        forward_sweep_current_a=sweep_a,
        forward_sweep_voltage_v=sweep_v,
        presence_signal_v=presence_signal_v,
    )


# ---------------------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------------------


def run_el_probe(
    scan_path: str | Path,
    config: ElProbeConfig | str | Path,
    *,
    station_config: StationConfig | None = None,
    station: Station | None = None,
    chips: tuple[np.ndarray, np.ndarray] | None = None,
    sample_count: int = 20,
    seed: int = 0,
    on_progress: Callable[[ElProbeProgress], None] | None = None,
    abort: threading.Event | None = None,
) -> ElProbeOutcome:
    """Probe chips of the wafer scanned into ``scan_path`` and store the results as its ``/el_reference``
    (one call for ``plmapper probe``).

    Parameters
    ----------
    scan_path
        A scan file with a recipe and an alignment (the wafer must still lie on the chuck as scanned).
    config
        An :class:`ElProbeConfig` or its TOML file.
    station_config, station
        The station to connect to (the virtual one is started if the file says so), or an open station.
    chips
        ``(cols, rows)`` to probe; default: ``sample_count`` random usable chips chosen with ``seed``
        (:func:`choose_probe_chips`). They are probed in :func:`travel_order`.
    on_progress, abort
        As for :func:`probe_chips`.

    Raises
    ------
    ValueError, inspection.settings.SettingsError, inspection.scanfile.ScanFileError
        A bad configuration, a scan file without recipe or alignment or still being written, bad chips:
        before anything moves.
    ElProbeAborted, drivers.errors.InstrumentError
        Probing stopped; the station is safe and the scan file unchanged.
    """
    scan_path = Path(scan_path)
    if not isinstance(config, ElProbeConfig):
        config = load_el_probe_config(config)
    if station is None and station_config is None:
        raise ValueError("give station_config or an open station")
    with ScanFile(scan_path) as scan:
        status, recipe_text, alignment = scan.status, scan.recipe_toml, scan.alignment()
    if status is ScanStatus.RUNNING:
        raise ScanFileError(f"{scan_path}: a scan is still writing this file; wait until it has stopped")
    if not recipe_text:
        raise ValueError(f"{scan_path}: the file holds no recipe; the chip grid is unknown")
    if alignment is None:
        raise ValueError(f"{scan_path}: the file holds no alignment, so the chips cannot be found on the chuck")
    recipe = recipe_from_text(recipe_text, source=f"{scan_path}:/settings/recipe_toml")
    layout = recipe.layout()
    placement = Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
    cols, rows = chips if chips is not None else choose_probe_chips(layout, sample_count, seed=seed)
    cols, rows = np.asarray(cols, dtype=np.int64).ravel(), np.asarray(rows, dtype=np.int64).ravel()
    _check_chips(layout, cols, rows)
    cols, rows = travel_order(cols, rows)
    opened = contextlib.nullcontext(station) if station is not None else connect(station_config)  # type: ignore[arg-type]
    with opened as station_in_use:
        reference = probe_chips(
            station_in_use,
            layout,
            placement,
            (cols, rows),
            config,
            focus_z_um=recipe.focus.focus_z_um,
            on_progress=on_progress,
            abort=abort,
        )
    report = join_to_layout(reference, layout)
    write_el_reference(scan_path, reference)
    return ElProbeOutcome(scan_path, reference, report)
