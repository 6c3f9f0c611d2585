"""Station self-check: exercise every instrument through its role interface and report what it measured.

It is the station's smoke test before a shift (and the main job on the virtual station until the scan engine
exists): identities, stage motion and read-back, laser power against the power meter, a position-triggered PL
line on the digitizer, a spectrum at the brightest chip, and an EL probe of that chip with the source-meter.
Whatever happens, it ends with the laser off, the source-meter output off and the probe lifted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drivers.errors import InstrumentError
from drivers.interfaces import Axis, TriggerDirection
from drivers.station import Station


@dataclass(frozen=True)
class CheckResult:
    """One line of the self-check report."""

    role: str
    check: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class CheckSettings:
    """What the self-check does (defaults suit the virtual station's demo wafer)."""

    laser_power_w: float = 0.01
    power_tolerance_fraction: float = 0.05
    line_half_length_um: float = 2000.0
    line_velocity_um_s: float = 20_000.0
    sample_rate_hz: float = 100_000.0
    probe_contact_z_um: float = 5000.0
    probe_current_a: float = 5e-4
    probe_compliance_v: float = 10.0
    spectrum_start_nm: float = 380.0
    spectrum_stop_nm: float = 560.0
    spectrum_resolution_nm: float = 0.5
    spectrum_points: int = 361
    timeout_s: float = 30.0


def run_station_check(
    station: Station, settings: CheckSettings | None = None, *, report: Callable[[CheckResult], None] | None = None
) -> list[CheckResult]:
    """Run every check on ``station``; return (and pass to ``report`` as they come) the results.

    An instrument error ends the check early with a failed line naming it; the station is made safe in every
    case.
    """
    settings = settings or CheckSettings()
    results: list[CheckResult] = []

    def record(role: str, check: str, passed: bool, detail: str) -> None:
        result = CheckResult(role, check, bool(passed), detail)
        results.append(result)
        if report is not None:
            report(result)

    try:
        _check(station, settings, record)
    except (InstrumentError, ValueError) as error:
        record("station", "aborted", False, str(error))
    finally:
        for role, make_safe in [("laser", station.laser.make_safe), ("smu", station.smu.make_safe)]:
            try:
                make_safe()
            except InstrumentError as error:
                record(role, "make safe", False, str(error))
        try:
            station.stage.move_absolute_um(Axis.Z, 0.0)
        except InstrumentError as error:
            record("stage", "lift probe", False, str(error))
    return results


def _check(station: Station, settings: CheckSettings, record: Callable[[str, str, bool, str], None]) -> None:
    for role, identity in station.identities().items():
        record(role, "identity", True, str(identity))

    stage = station.stage
    stage.home()
    for axis in (Axis.X, Axis.Y):
        low, high = stage.limits_um(axis)
        target = 1000.0 if axis is Axis.X else -1000.0
        stage.move_absolute_um(axis, target)
        position = stage.position_um(axis)
        record(
            "stage",
            f"move {axis.value}",
            abs(position - target) < 1.0,
            f"to {target:g} µm, read back {position:.2f} µm (travel {low:g}..{high:g} µm)",
        )
    flags = stage.warnings(Axis.X) | stage.warnings(Axis.Y)
    record("stage", "warnings", not flags, ", ".join(sorted(flags)) or "none")

    laser = station.laser
    interlock = laser.interlock_closed()
    record("laser", "interlock", interlock, "closed" if interlock else "OPEN: close the enclosure")
    if not interlock:
        return
    low_w, high_w = laser.power_limits_w()
    laser.set_power_w(settings.laser_power_w)
    laser.set_emission(True)
    measured = laser.measured_power_w()
    record(
        "laser",
        "emission",
        laser.emission() and _close(measured, settings.laser_power_w, settings.power_tolerance_fraction),
        f"{laser.wavelength_nm():g} nm, set {settings.laser_power_w * 1e3:g} mW, laser reads {measured * 1e3:.3f} mW "
        f"(range {low_w * 1e3:g}..{high_w * 1e3:g} mW)",
    )
    meter = station.power_meter
    meter.set_wavelength_nm(laser.wavelength_nm())
    reading = meter.power_w()
    record(
        "power_meter",
        "reading",
        _close(reading, measured, settings.power_tolerance_fraction),
        f"{reading * 1e3:.3f} mW at {meter.wavelength_nm():g} nm",
    )

    # a position-triggered PL line through the wafer centre
    detector = station.detector
    half = settings.line_half_length_um
    start, trigger_at, stop = -half - 500.0, -half, half
    stage.move_absolute_um(Axis.Y, 0.0)
    stage.move_absolute_um(Axis.X, start)
    stage.set_velocity_um_s(Axis.X, settings.line_velocity_um_s)
    sample_count = int(2 * half / settings.line_velocity_um_s * settings.sample_rate_hz)
    detector.configure_triggered_acquisition(settings.sample_rate_hz, sample_count)
    detector.arm()
    stage.arm_position_trigger(Axis.X, trigger_at, TriggerDirection.RISING)
    stage.move_absolute_um(Axis.X, stop)
    deadline = time.monotonic() + settings.timeout_s
    while detector.samples_acquired() < sample_count:
        if time.monotonic() > deadline:
            raise InstrumentError("detector", f"acquisition incomplete after {settings.timeout_s:g} s")
        time.sleep(0.01)
    samples = detector.read_samples_v(0, sample_count)
    stage.disarm_position_trigger()
    low_v, high_v = np.percentile(samples, [5, 99.5])
    contrast = high_v / max(low_v, 1e-6)
    record(
        "detector",
        "triggered line",
        samples.size == sample_count and contrast > 3.0,
        f"{samples.size} samples at {settings.sample_rate_hz / 1e3:g} kHz over {2 * half / 1000:g} mm: "
        f"{low_v * 1e3:.2f}..{high_v * 1e3:.1f} mV (contrast {contrast:.0f}×)",
    )
    brightest_x = trigger_at + int(np.argmax(samples)) * settings.line_velocity_um_s / settings.sample_rate_hz

    stage.move_absolute_um(Axis.X, brightest_x)
    spectrometer = station.spectrometer
    spectrometer.configure(
        settings.spectrum_start_nm, settings.spectrum_stop_nm, settings.spectrum_resolution_nm, settings.spectrum_points
    )
    spectrum = spectrometer.acquire(settings.timeout_s)
    peak_nm = float(spectrum.wavelength_nm[int(np.argmax(spectrum.power_w_per_nm))])
    record(
        "spectrometer",
        "spectrum",
        settings.spectrum_start_nm < peak_nm < settings.spectrum_stop_nm and spectrum.power_w_per_nm.max() > 0,
        f"peak {peak_nm:.1f} nm at x = {brightest_x:.0f} µm ({spectrum.wavelength_nm.size} points)",
    )

    laser.set_emission(False)
    smu = station.smu
    stage.move_absolute_um(Axis.Z, settings.probe_contact_z_um)
    smu.source_current(settings.probe_current_a, voltage_limit_v=settings.probe_compliance_v)
    smu.set_output(True)
    forward_v = smu.measure_voltage_v()
    el_light_v = detector.read_voltage_v()
    smu.set_output(False)
    stage.move_absolute_um(Axis.Z, 0.0)
    record(
        "smu",
        "EL probe",
        0.5 < forward_v < settings.probe_compliance_v * 0.99,
        f"{settings.probe_current_a * 1e3:g} mA → Vf {forward_v:.3f} V, EL light {el_light_v * 1e3:.2f} mV",
    )


def _close(value: float, reference: float, tolerance: float) -> bool:
    return math.isfinite(value) and abs(value - reference) <= tolerance * abs(reference)
