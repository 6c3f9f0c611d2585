"""The virtual station's shared state: clock, stage motion, laser, trigger line, faults.

Every instrument twin (the protocol servers in this package) reads and changes one :class:`VirtualBench`; the
physics of the wafer lives in :class:`drivers.virtual.world.WaferWorld`, which the bench asks for what the
detector, the spectrometer and the source-meter see.

Frames
------
Stage positions are where the laser spot is in the chuck frame (µm). The wafer lies on the chuck with an offset
and a rotation (its *placement*); the spot in wafer coordinates is ``placement.stage_to_wafer(x, y)``.

Time
----
:class:`SimClock` runs at ``time_scale`` × real time (1 = real time for demos). At ``time_scale = 0`` time stands
still until something must have happened: every command first moves the clock to the end of all pending
activity (:meth:`VirtualBench.settle`), so moves, sweeps and acquisitions complete as fast as the computer can
compute them, while their timing (trigger instants, sample times) stays exactly what the hardware would do.
"""

from __future__ import annotations

import bisect
import copy
import math
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
from cext.pl_render import spot_path_um

from drivers.interfaces import Axis, TriggerDirection
from inspection.wafer import Placement

# -- clock ---------------------------------------------------------------------------------------------------


class SimClock:
    """Virtual time in seconds since the station started.

    Parameters
    ----------
    time_scale
        Real seconds per virtual second: 1 is real time, 0.1 is ten times faster, 0 is "as fast as possible"
        (time stands still and only jumps forward, see :meth:`advance_to`).
    """

    def __init__(self, time_scale: float) -> None:
        if not (time_scale >= 0 and math.isfinite(time_scale)):
            raise ValueError(f"time_scale: {time_scale!r} must be a finite number >= 0")
        self.time_scale = time_scale
        self._real_start = time.monotonic()
        self._jumped_s = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            if self.time_scale == 0:
                return self._jumped_s
            return self._jumped_s + (time.monotonic() - self._real_start) / self.time_scale

    def advance_to(self, t_s: float) -> None:
        """Jump forward to ``t_s`` (as-fast-as-possible mode); with a running clock, time gets there by itself."""
        with self._lock:
            if self.time_scale == 0:
                self._jumped_s = max(self._jumped_s, t_s)


# -- stage kinematics -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionPhase:
    """Constant acceleration from ``t0_s`` on: ``p(t) = p0 + v0·τ + a·τ²/2`` with ``τ = t - t0_s``."""

    t0_s: float
    p0_um: float
    v0_um_s: float
    accel_um_s2: float


class AxisModel:
    """One stage axis with trapezoidal velocity profiles, soft limits and a stall fault.

    Motion is a list of :class:`MotionPhase`; positions at any past or future time are evaluated from it, which
    is how the digitizer learns where the spot was at each of its sample instants.
    """

    def __init__(
        self,
        axis: Axis,
        *,
        limits_um: tuple[float, float],
        max_velocity_um_s: float,
        accel_um_s2: float,
        position_um: float = 0.0,
    ) -> None:
        self.axis = axis
        self.limits_um = limits_um
        self.max_velocity_um_s = max_velocity_um_s
        self.velocity_um_s = max_velocity_um_s
        self.accel_um_s2 = accel_um_s2
        self.phases: list[MotionPhase] = [MotionPhase(0.0, position_um, 0.0, 0.0)]
        self.warnings: set[str] = set()
        self.homed = False

    # evaluation
    def _phase_index(self, t_s: np.ndarray) -> np.ndarray:
        starts = np.array([p.t0_s for p in self.phases])
        return np.clip(np.searchsorted(starts, t_s, side="right") - 1, 0, len(self.phases) - 1)

    def position_um(self, t_s: np.ndarray | float) -> np.ndarray:
        if isinstance(t_s, float | np.floating):
            # a single instant (every status reply, trigger and readback asks for one): plain floats, about 20×
            # cheaper than the array path below, with the same IEEE operations in the same order, so the same bits
            return np.float64(self._position_at_um(float(t_s)))
        t = np.asarray(t_s, dtype=np.float64)
        if t.ndim == 1 and t.size > 256 and np.all(t[1:] >= t[:-1]):
            return self._position_sorted_um(t)
        index = self._phase_index(t)
        t0 = np.array([p.t0_s for p in self.phases])[index]
        p0 = np.array([p.p0_um for p in self.phases])[index]
        v0 = np.array([p.v0_um_s for p in self.phases])[index]
        acc = np.array([p.accel_um_s2 for p in self.phases])[index]
        tau = np.maximum(t - t0, 0.0)
        return p0 + v0 * tau + 0.5 * acc * tau * tau

    def _phase_at(self, t_s: float) -> MotionPhase:
        """The phase in force at ``t_s`` (the first one for earlier times), as :meth:`_phase_index` finds it."""
        phases = self.phases
        index = bisect.bisect_right([phase.t0_s for phase in phases], t_s) - 1
        return phases[min(max(index, 0), len(phases) - 1)]

    def _position_at_um(self, t_s: float) -> float:
        phase = self._phase_at(t_s)
        tau = max(t_s - phase.t0_s, 0.0)
        return phase.p0_um + phase.v0_um_s * tau + 0.5 * phase.accel_um_s2 * tau * tau

    def _position_sorted_um(self, t: np.ndarray) -> np.ndarray:
        """:meth:`position_um` for ascending times (a digitizer's sample instants): one slice per phase."""
        out = np.empty_like(t)
        starts = np.array([phase.t0_s for phase in self.phases])
        bounds = np.searchsorted(t, starts, side="left")
        bounds[0] = 0  # times before the first phase hold its start position
        ends = [*bounds[1:], t.size]
        for phase, begin, end in zip(self.phases, bounds, ends, strict=True):
            if end > begin:
                tau = np.maximum(t[begin:end] - phase.t0_s, 0.0)
                out[begin:end] = phase.p0_um + phase.v0_um_s * tau + 0.5 * phase.accel_um_s2 * tau * tau
        return out

    def velocity_at(self, t_s: float) -> float:
        phase = self._phase_at(float(t_s))
        return phase.v0_um_s + phase.accel_um_s2 * max(t_s - phase.t0_s, 0.0)

    def phase_table(self) -> np.ndarray:
        """The phases as rows ``(t0_s, p0_um, v0_um_s, accel_um_s2)``, for :func:`cext.pl_render.spot_path_um`."""
        return np.array([(p.t0_s, p.p0_um, p.v0_um_s, p.accel_um_s2) for p in self.phases], dtype=np.float64)

    def copy(self) -> AxisModel:
        """A copy whose motion later commands to this axis do not change."""
        twin = copy.copy(self)
        twin.phases = list(self.phases)  # the phases themselves are frozen
        twin.warnings = set(self.warnings)
        return twin

    def busy_until_s(self) -> float:
        """When the last phase starts: after it the axis rests."""
        return self.phases[-1].t0_s

    def is_busy(self, t_s: float) -> bool:
        return t_s < self.busy_until_s()

    # commands
    def _truncate(self, t_s: float) -> tuple[float, float]:
        """Drop phases after ``t_s``; return position and velocity at ``t_s``."""
        position = float(self.position_um(t_s))
        velocity = self.velocity_at(t_s)
        self.phases = [p for p in self.phases if p.t0_s <= t_s]
        return position, velocity

    def stop(self, t_s: float) -> None:
        """Decelerate to rest at the axis' acceleration."""
        position, velocity = self._truncate(t_s)
        if velocity == 0.0:
            self.phases.append(MotionPhase(t_s, position, 0.0, 0.0))
            return
        decel = -math.copysign(self.accel_um_s2, velocity)
        duration = abs(velocity) / self.accel_um_s2
        self.phases.append(MotionPhase(t_s, position, velocity, decel))
        self.phases.append(MotionPhase(t_s + duration, position + velocity * duration / 2, 0.0, 0.0))

    def stall(self, t_s: float) -> None:
        """Stop dead (a stall) and raise the stall warning ``FS``."""
        position, _ = self._truncate(t_s)
        self.phases.append(MotionPhase(t_s, position, 0.0, 0.0))
        self.warnings.add("FS")

    def move_to(self, t_s: float, target_um: float) -> float:
        """Plan a move to ``target_um`` starting at ``t_s``; return the time it ends.

        A move commanded while the axis is still moving first decelerates to rest, then goes to the target.
        """
        lo, hi = self.limits_um
        if not lo <= target_um <= hi:
            raise ValueError(f"target {target_um} µm outside limits {lo}..{hi} µm")
        self.stop(t_s)
        start_s = self.phases[-1].t0_s
        start_um = self.phases[-1].p0_um
        self.phases.pop()
        distance = target_um - start_um
        sign = math.copysign(1.0, distance)
        length = abs(distance)
        vmax, acc = self.velocity_um_s, self.accel_um_s2
        if length == 0.0:
            self.phases.append(MotionPhase(start_s, start_um, 0.0, 0.0))
            return start_s
        ramp_um = vmax * vmax / acc
        if length >= ramp_um:
            t_ramp = vmax / acc
            t_cruise = (length - ramp_um) / vmax
            v_peak = vmax
        else:
            v_peak = math.sqrt(length * acc)
            t_ramp = v_peak / acc
            t_cruise = 0.0
        ramp_distance = 0.5 * acc * t_ramp * t_ramp
        t1 = start_s + t_ramp
        t2 = t1 + t_cruise
        t3 = t2 + t_ramp
        self.phases.append(MotionPhase(start_s, start_um, 0.0, sign * acc))
        self.phases.append(MotionPhase(t1, start_um + sign * ramp_distance, sign * v_peak, 0.0))
        self.phases.append(
            MotionPhase(t2, start_um + sign * (ramp_distance + v_peak * t_cruise), sign * v_peak, -sign * acc)
        )
        self.phases.append(MotionPhase(t3, target_um, 0.0, 0.0))
        self.phases = self.phases[-16:]  # the recent past is enough to serve any acquisition in flight
        return t3

    def first_crossing_s(self, t_from_s: float, threshold_um: float, direction: TriggerDirection) -> float | None:
        """The first time at or after ``t_from_s`` when ``position >= threshold`` (RISING) or ``<=`` (FALLING)."""
        sign = 1.0 if direction is TriggerDirection.RISING else -1.0
        for index, phase in enumerate(self.phases):
            end = self.phases[index + 1].t0_s if index + 1 < len(self.phases) else math.inf
            if end < t_from_s:
                continue
            begin = max(phase.t0_s, t_from_s)
            if sign * (float(self.position_um(begin)) - threshold_um) >= 0:
                return begin
            # solve p0 + v0·τ + a·τ²/2 = threshold for the smallest τ in the phase after `begin`
            a, b, c = 0.5 * phase.accel_um_s2, phase.v0_um_s, phase.p0_um - threshold_um
            roots: list[float] = []
            if a == 0.0:
                if b != 0.0:
                    roots.append(-c / b)
            else:
                disc = b * b - 4 * a * c
                if disc >= 0:
                    root = math.sqrt(disc)
                    roots += [(-b - root) / (2 * a), (-b + root) / (2 * a)]
            for tau in sorted(roots):
                t = phase.t0_s + tau
                if begin <= t <= end:
                    return t
        return None


# -- other instruments' physical state --------------------------------------------------------------------------


@dataclass
class LaserModel:
    """A CW laser whose real output drifts slowly around its setpoint."""

    wavelength_nm: float
    min_power_w: float
    max_power_w: float
    drift_fraction: float
    seed: int
    setpoint_w: float = 0.0
    emission: bool = False
    interlock_closed: bool = True

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 7])
        # three incommensurate slow periods: smooth, deterministic, never periodic within a scan
        self._periods_s = np.array([37.0, 151.0, 613.0]) * rng.uniform(0.8, 1.2, 3)
        self._phases = rng.uniform(0, 2 * np.pi, 3)
        self._weights = np.array([0.25, 0.35, 0.4])

    def output_power_w(self, t_s: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t_s, dtype=np.float64)
        if not (self.emission and self.interlock_closed):
            return np.zeros_like(t)
        if t.ndim == 1 and t.size > 1000:
            # the drift is slow (periods >= 30 s): evaluate it every 1/1000 of the shortest period and
            # interpolate, which is exact to ~1e-8 of the power and saves a sine per sample
            step_s = self._periods_s.min() / 1000
            grid = np.arange(t.min(), t.max() + 2 * step_s, step_s)
            return np.interp(t, grid, self._power_at(grid))
        return self._power_at(t)

    def _power_at(self, t: np.ndarray) -> np.ndarray:
        wobble = np.sin(2 * np.pi * t[..., None] / self._periods_s + self._phases) @ self._weights
        return self.setpoint_w * (1.0 + self.drift_fraction * wobble)

    def open_interlock(self) -> None:
        self.interlock_closed = False
        self.emission = False


@dataclass
class SourceMeterModel:
    """The SMU's output state; the world answers what a contacted chip does with it."""

    output_on: bool = False
    source_function: str = "CURR"  # "CURR" or "VOLT"
    source_level: float = 0.0
    compliance: float = 1.0  # V when sourcing current, A when sourcing voltage


# -- faults ----------------------------------------------------------------------------------------------------


class FaultKind(StrEnum):
    """Faults the virtual station injects on request."""

    DISCONNECT = "disconnect"  # the server drops the connection instead of answering
    TIMEOUT = "timeout"  # the server swallows the command and never answers
    GARBAGE = "garbage"  # the server answers with bytes that are not a valid reply
    STALL = "stall"  # the stage stalls during its next move (warning FS)
    LIMIT = "limit"  # the stage refuses its next move as out of range
    INTERLOCK = "interlock"  # the laser interlock opens (emission stops)


PROTOCOL_FAULTS = frozenset({FaultKind.DISCONNECT, FaultKind.TIMEOUT, FaultKind.GARBAGE})


@dataclass
class FaultRule:
    """Inject ``kind`` on instrument ``role``: on ``count`` commands in a row starting with its ``at_command``-th
    command (1-based), or at random with probability ``rate`` per command, at most ``count`` times (0 = unlimited).
    """

    role: str
    kind: FaultKind
    at_command: int | None = None
    rate: float = 0.0
    count: int = 1
    fired: int = 0


@dataclass
class FaultPlan:
    """The faults requested so far, checked by every twin on every command."""

    seed: int = 0
    rules: list[FaultRule] = field(default_factory=list)
    command_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng([self.seed, 99])

    def add(self, rule: FaultRule) -> None:
        self.rules.append(rule)

    def next_command(self, role: str) -> list[FaultKind]:
        """Count one more command for ``role`` and return the faults that fire on it."""
        count = self.command_counts.get(role, 0) + 1
        self.command_counts[role] = count
        fired = []
        for rule in self.rules:
            if rule.role != role or (rule.count and rule.fired >= rule.count):
                continue
            # scheduled: from that command on, `count` commands in a row; otherwise at random
            due = count >= rule.at_command if rule.at_command is not None else self._rng.random() < rule.rate
            if due:
                rule.fired += 1
                fired.append(rule.kind)
        return fired


# -- the bench ------------------------------------------------------------------------------------------------


class WorldModel(Protocol):
    """What the bench needs from the wafer physics (implemented by :class:`drivers.virtual.world.WaferWorld`)."""

    def pl_signal_v(self, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """Photodetector voltage at spot positions (wafer frame) for the laser power at each sample, with noise."""

    def pl_spectrum_w_per_nm(self, x_um: float, y_um: float, power_w: float, wavelength_nm: np.ndarray) -> np.ndarray:
        """PL spectrum collected at spot position (wafer frame), noiseless."""

    def chip_under(self, x_um: float, y_um: float) -> tuple[int, int] | None:
        """Index (column, row) of the chip whose pads are under (x, y), or None between chips / off the wafer."""

    def el_voltage_v(self, chip: tuple[int, int], current_a: float) -> float:
        """Terminal voltage of ``chip`` when ``current_a`` is forced through it (negative: reverse)."""

    def el_current_a(self, chip: tuple[int, int], voltage_v: float) -> float:
        """Current through ``chip`` when ``voltage_v`` is applied."""

    def el_light_v(self, chip: tuple[int, int], current_a: float) -> float:
        """Photodetector voltage from the chip's EL at ``current_a``."""


@dataclass(frozen=True)
class DetectorView:
    """What the photodetector's signal depends on at one moment (see :meth:`VirtualBench.detector_view`): copies,
    so the signal can be computed on another thread while the twins go on changing the bench."""

    world: WorldModel
    placement: Placement
    x_axis: AxisModel
    y_axis: AxisModel
    laser: LaserModel
    el_v: float | None  # EL light of a probed chip with the source-meter on, else None

    def signal_v(self, t_s: np.ndarray) -> np.ndarray:
        """Photodetector voltage at the sample instants ``t_s``: the PL under the spot, plus the EL light."""
        t = np.asarray(t_s, dtype=np.float64)
        if t.ndim == 1 and t.size > 1 and np.all(t[1:] >= t[:-1]):
            # a digitizer's ascending sample instants: the path in one compiled pass, the same bits as below
            rotation = math.radians(self.placement.rotation_deg)
            x, y = spot_path_um(
                np.ascontiguousarray(t),
                self.x_axis.phase_table(),
                self.y_axis.phase_table(),
                self.placement.offset_x_um,
                self.placement.offset_y_um,
                math.cos(rotation),
                math.sin(rotation),
            )
        else:
            x, y = self.placement.stage_to_wafer(self.x_axis.position_um(t), self.y_axis.position_um(t))
        signal = self.world.pl_signal_v(np.asarray(x), np.asarray(y), self.laser.output_power_w(t), t)
        if self.el_v is not None:
            signal = signal + self.el_v
        return signal


@dataclass
class PositionTrigger:
    axis: Axis
    threshold_um: float
    direction: TriggerDirection
    armed_at_s: float


class VirtualBench:
    """Everything the twins share. Hold :attr:`lock` while reading or changing it.

    Parameters
    ----------
    world
        The wafer physics.
    placement
        Where the wafer lies on the chuck.
    axes
        The stage axes.
    laser
        The laser.
    clock
        Virtual time.
    faults
        Requested faults.
    probe_contact_z_um
        Z at which the probe needles touch the chip surface; the SMU sees the chip from there on.
    probe_overtravel_um
        How far past contact Z may go before the probe card is crushed (the stage stalls there).
    """

    def __init__(
        self,
        *,
        world: WorldModel,
        placement: Placement,
        axes: dict[Axis, AxisModel],
        laser: LaserModel,
        clock: SimClock,
        faults: FaultPlan,
        probe_contact_z_um: float,
        probe_overtravel_um: float = 150.0,
        power_meter_noise_fraction: float = 0.002,
        seed: int = 0,
    ) -> None:
        self.world = world
        self.placement = placement
        self.axes = axes
        self.laser = laser
        self.clock = clock
        self.faults = faults
        self.probe_contact_z_um = probe_contact_z_um
        self.probe_overtravel_um = probe_overtravel_um
        self.power_meter_noise_fraction = power_meter_noise_fraction
        self.smu = SourceMeterModel()
        self.lock = threading.RLock()
        self.trigger: PositionTrigger | None = None
        self.trigger_output_high = False
        self.trigger_times_s: list[float] = []
        self._activity_end_s: dict[str, float] = {}
        self.stall_next_move = False  # set by an injected STALL fault, consumed by the stage twin
        self.refuse_next_move = False  # set by an injected LIMIT fault, consumed by the stage twin
        self._rng = np.random.default_rng([seed, 3])

    # time
    def now(self) -> float:
        return self.clock.now()

    def hold_busy_until(self, owner: str, t_s: float) -> None:
        """Record that ``owner`` (an acquisition, a sweep) is busy until ``t_s`` (used by :meth:`settle`)."""
        self._activity_end_s[owner] = t_s

    def settle(self) -> float:
        """At time scale 0, jump to the end of all pending activity; return the current time."""
        if self.clock.time_scale == 0:
            ends = [axis.busy_until_s() for axis in self.axes.values()]
            ends += list(self._activity_end_s.values())
            self.clock.advance_to(max(ends, default=0.0))
        return self.clock.now()

    # stage and trigger line
    def spot_wafer_um(self, t_s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Where the spot is on the wafer (wafer frame) at the given times."""
        x = self.axes[Axis.X].position_um(t_s)
        y = self.axes[Axis.Y].position_um(t_s)
        return self.placement.stage_to_wafer(x, y)

    def arm_trigger(self, axis: Axis, threshold_um: float, direction: TriggerDirection) -> None:
        self.trigger = PositionTrigger(axis, threshold_um, direction, self.now())
        self.update_trigger()

    def disarm_trigger(self) -> None:
        self.trigger = None
        self.trigger_output_high = False

    def update_trigger(self) -> None:
        """Called after every motion change: fire the armed trigger if the planned motion crosses it."""
        if self.trigger is None:
            return
        axis = self.axes[self.trigger.axis]
        crossing = axis.first_crossing_s(
            max(self.trigger.armed_at_s, self.now()), self.trigger.threshold_um, self.trigger.direction
        )
        if crossing is not None:
            self.trigger_times_s.append(crossing)
            self.trigger_times_s = self.trigger_times_s[-64:]
            self.trigger_output_high = True
            self.trigger = None  # fires once

    def first_trigger_after(self, t_s: float) -> float | None:
        later = [t for t in self.trigger_times_s if t >= t_s]
        return min(later) if later else None

    # what the sensors see
    def laser_power_w(self, t_s: np.ndarray | float) -> np.ndarray:
        return self.laser.output_power_w(t_s)

    def power_meter_w(self, correction_wavelength_nm: float) -> float:
        """Reading of a silicon power meter corrected for ``correction_wavelength_nm`` watching the laser."""
        true_power = float(self.laser_power_w(self.now()))
        wrong_correction = silicon_responsivity(self.laser.wavelength_nm) / silicon_responsivity(
            correction_wavelength_nm
        )
        noise = 1.0 + self.power_meter_noise_fraction * self._rng.standard_normal()
        return true_power * wrong_correction * noise + 2e-9 * self._rng.standard_normal()

    def contacted_chip(self) -> tuple[int, int] | None:
        """The chip the probes touch, if Z is at contact height and the spot axis is over a chip."""
        t = self.now()
        if float(self.axes[Axis.Z].position_um(t)) < self.probe_contact_z_um:
            return None
        x, y = self.spot_wafer_um(t)
        return self.world.chip_under(float(x), float(y))

    def detector_signal_v(self, t_s: np.ndarray) -> np.ndarray:
        """Photodetector voltage at the sample instants ``t_s``: PL of what is under the spot, plus EL light
        from a probed chip (:meth:`detector_view`, then its :meth:`~DetectorView.signal_v`)."""
        return self.detector_view().signal_v(t_s)

    def detector_view(self) -> DetectorView:
        """A copy of what the photodetector's signal depends on (hold :attr:`lock`): the XY stage's motion, the
        laser, a probed chip's EL. Cheap; the view then computes signals without the lock, on any thread, bit for
        bit as the bench would have at this moment."""
        chip = self.contacted_chip()
        el_v = self.world.el_light_v(chip, self.smu_current_a()) if chip is not None and self.smu.output_on else None
        return DetectorView(
            self.world, self.placement, self.axes[Axis.X].copy(), self.axes[Axis.Y].copy(), copy.copy(self.laser), el_v
        )

    # SMU
    def smu_current_a(self) -> float:
        """Current through the SMU's terminals (0 with no chip contacted or the output off)."""
        chip = self.contacted_chip()
        if not self.smu.output_on or chip is None:
            return 0.0
        if self.smu.source_function == "CURR":
            # the compliance voltage caps what can be forced through a chip that is open
            voltage = self.world.el_voltage_v(chip, self.smu.source_level)
            if abs(voltage) > self.smu.compliance:
                return self.world.el_current_a(chip, math.copysign(self.smu.compliance, voltage))
            return self.smu.source_level
        current = self.world.el_current_a(chip, self.smu.source_level)
        return float(np.clip(current, -self.smu.compliance, self.smu.compliance))

    def smu_voltage_v(self) -> float:
        """Voltage across the SMU's terminals."""
        if not self.smu.output_on:
            return 0.0
        chip = self.contacted_chip()
        if self.smu.source_function == "VOLT":
            if chip is None:
                return self.smu.source_level
            current = self.world.el_current_a(chip, self.smu.source_level)
            if abs(current) > self.smu.compliance:
                return self.world.el_voltage_v(chip, math.copysign(self.smu.compliance, current))
            return self.smu.source_level
        if chip is None:  # open circuit: the SMU goes to its compliance voltage
            return math.copysign(self.smu.compliance, self.smu.source_level or 1.0)
        voltage = self.world.el_voltage_v(chip, self.smu.source_level)
        return float(np.clip(voltage, -self.smu.compliance, self.smu.compliance))


def silicon_responsivity(wavelength_nm: float | np.ndarray) -> np.ndarray:
    """Approximate responsivity (A/W) of a silicon photodiode sensor (Thorlabs S120C-like), 350–1100 nm."""
    wavelengths = np.array([350, 400, 450, 500, 600, 700, 800, 900, 960, 1000, 1100], dtype=float)
    amps_per_watt = np.array([0.10, 0.14, 0.20, 0.26, 0.36, 0.45, 0.53, 0.60, 0.62, 0.55, 0.10])
    return np.interp(wavelength_nm, wavelengths, amps_per_watt)
