"""The small interfaces the rest of plmapper sees: one per hardware role.

The scan engine, the GUI and the CLI only use these; a new instrument model is one new class that implements
one of them (and a protocol test). All quantities carry their unit in the name. Every method that talks to the
instrument may raise the typed errors of :mod:`drivers.errors`; values out of range raise ``ValueError`` before
anything is sent.

Roles
-----
``Stage``             XYZ positioning with position-triggered output (fast mapping trigger).
``Laser``             excitation laser: power, emission, interlock.
``PowerMeter``        laser power monitor (drift correction).
``IntensityDetector`` PL intensity digitizer (photodetector into a sampling voltmeter).
``Spectrometer``      spectra of what is under the spot.
``SourceMeter``       EL probing: source current/voltage, measure the other.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Axis(StrEnum):
    """Stage axes. Z points up, away from the chuck: a larger Z brings the wafer towards the probes/objective."""

    X = "x"
    Y = "y"
    Z = "z"


class TriggerDirection(StrEnum):
    """Which crossing of a trigger position fires the trigger."""

    RISING = ">="
    FALLING = "<="


@dataclass(frozen=True)
class InstrumentIdentity:
    """What an instrument says it is (``*IDN?`` or equivalent), recorded in every scan file."""

    manufacturer: str
    model: str
    serial: str
    firmware: str

    def __str__(self) -> str:
        return f"{self.manufacturer} {self.model} (s/n {self.serial}, fw {self.firmware})"


class HardwareRole(abc.ABC):
    """What every role has: an identity, a safe state, and a connection to close."""

    name: str

    @abc.abstractmethod
    def identity(self) -> InstrumentIdentity:
        """Query the instrument's identity."""

    @abc.abstractmethod
    def make_safe(self) -> None:
        """Put the instrument in its safe state (no emission, no output, no motion)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Make safe, then close the connection."""


class Stage(HardwareRole):
    """An XYZ stage. Positions are in µm in the stage frame; velocities in µm/s."""

    @abc.abstractmethod
    def position_um(self, axis: Axis) -> float:
        """Current position of ``axis``."""

    def positions_um(self) -> dict[Axis, float]:
        """Positions of all axes. Stages that can read them in one exchange (at one instant) override this."""
        return {axis: self.position_um(axis) for axis in Axis}

    @abc.abstractmethod
    def move_absolute_um(self, axis: Axis, position_um: float, *, wait: bool = True) -> None:
        """Move ``axis`` to ``position_um``; with ``wait`` return once the axis is idle."""

    @abc.abstractmethod
    def move_relative_um(self, axis: Axis, distance_um: float, *, wait: bool = True) -> None:
        """Move ``axis`` by ``distance_um``."""

    @abc.abstractmethod
    def set_velocity_um_s(self, axis: Axis, velocity_um_s: float) -> None:
        """Set the maximum (constant-velocity) speed of ``axis`` for subsequent moves."""

    @abc.abstractmethod
    def velocity_um_s(self, axis: Axis) -> float:
        """The maximum speed of ``axis``."""

    @abc.abstractmethod
    def set_acceleration_um_s2(self, axis: Axis, acceleration_um_s2: float) -> None:
        """Set the acceleration (and deceleration) of ``axis`` for subsequent moves."""

    @abc.abstractmethod
    def acceleration_um_s2(self, axis: Axis) -> float:
        """The acceleration (and deceleration) of ``axis``: with the velocity it sets the run-up a
        constant-velocity line needs."""

    @abc.abstractmethod
    def limits_um(self, axis: Axis) -> tuple[float, float]:
        """Soft travel limits (minimum, maximum) of ``axis``."""

    @abc.abstractmethod
    def home(self, axis: Axis | None = None) -> None:
        """Home one axis, or all axes; returns when homing is complete."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop all axes now (decelerating)."""

    @abc.abstractmethod
    def is_busy(self) -> bool:
        """True while any axis moves."""

    @abc.abstractmethod
    def wait_idle(self, timeout_s: float) -> None:
        """Block until all axes are idle; raise :class:`~drivers.errors.InstrumentTimeoutError` after ``timeout_s``
        and :class:`~drivers.errors.StageFaultError` if an axis faulted."""

    def wait_idle_positions_um(self, timeout_s: float) -> dict[Axis, float]:
        """:meth:`wait_idle`, then :meth:`positions_um`. Stages whose position reply also carries the motion status
        override this to poll with it: one exchange fewer, at every end of a move a scan reads back."""
        self.wait_idle(timeout_s)
        return self.positions_um()

    @abc.abstractmethod
    def warnings(self, axis: Axis) -> frozenset[str]:
        """The axis' active warning and fault flags (empty when all is well)."""

    @abc.abstractmethod
    def arm_position_trigger(self, axis: Axis, position_um: float, direction: TriggerDirection) -> None:
        """Fire the trigger output once when ``axis`` crosses ``position_um`` in ``direction``."""

    @abc.abstractmethod
    def disarm_position_trigger(self) -> None:
        """Disable the position trigger and reset the trigger output."""


class Laser(HardwareRole):
    """A CW excitation laser."""

    @abc.abstractmethod
    def wavelength_nm(self) -> float:
        """Emission wavelength."""

    @abc.abstractmethod
    def power_limits_w(self) -> tuple[float, float]:
        """Lowest and highest settable output power."""

    @abc.abstractmethod
    def set_power_w(self, power_w: float) -> None:
        """Set the output power setpoint (validated against :meth:`power_limits_w`)."""

    @abc.abstractmethod
    def power_setpoint_w(self) -> float:
        """The output power setpoint."""

    @abc.abstractmethod
    def measured_power_w(self) -> float:
        """The output power the laser measures on its internal monitor."""

    @abc.abstractmethod
    def set_emission(self, on: bool) -> None:
        """Switch emission on or off. Switching on with the interlock open raises
        :class:`~drivers.errors.InterlockOpenError`."""

    @abc.abstractmethod
    def emission(self) -> bool:
        """True while the laser emits."""

    @abc.abstractmethod
    def interlock_closed(self) -> bool:
        """True when the interlock loop is closed (emission allowed)."""


class PowerMeter(HardwareRole):
    """An optical power meter."""

    @abc.abstractmethod
    def set_wavelength_nm(self, wavelength_nm: float) -> None:
        """Set the wavelength the sensor's responsivity is corrected for."""

    @abc.abstractmethod
    def wavelength_nm(self) -> float:
        """The correction wavelength."""

    @abc.abstractmethod
    def power_w(self) -> float:
        """Measure the optical power."""


class IntensityDetector(HardwareRole):
    """A digitizer sampling the PL photodetector voltage."""

    @abc.abstractmethod
    def max_sample_rate_hz(self) -> float:
        """Highest supported sample rate."""

    @abc.abstractmethod
    def configure_triggered_acquisition(self, sample_rate_hz: float, sample_count: int) -> None:
        """Prepare to take ``sample_count`` samples at ``sample_rate_hz`` after the next external trigger."""

    @abc.abstractmethod
    def arm(self) -> None:
        """Start waiting for the external trigger."""

    @abc.abstractmethod
    def samples_acquired(self) -> int:
        """How many samples of the current acquisition are in the buffer."""

    @abc.abstractmethod
    def read_samples_v(self, start: int, count: int) -> np.ndarray:
        """Read ``count`` samples from index ``start`` of the buffer (volts, float64)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop waiting or acquiring."""

    @abc.abstractmethod
    def read_voltage_v(self) -> float:
        """Take one untriggered DC voltage reading (for EL light and live readouts)."""


@dataclass(frozen=True)
class Spectrum:
    """One spectrum: wavelengths (nm, ascending) and the power density at each (W/nm as the OSA reports)."""

    wavelength_nm: np.ndarray
    power_w_per_nm: np.ndarray


class Spectrometer(HardwareRole):
    """A scanning spectrometer (optical spectrum analyser)."""

    @abc.abstractmethod
    def configure(self, start_nm: float, stop_nm: float, resolution_nm: float, points: int) -> None:
        """Set the sweep span, resolution bandwidth and number of points."""

    @abc.abstractmethod
    def acquire(self, timeout_s: float) -> Spectrum:
        """Run one single sweep, wait for it, and return the trace."""


class SourceMeter(HardwareRole):
    """A source-measure unit for EL probing."""

    @abc.abstractmethod
    def source_current(self, current_a: float, *, voltage_limit_v: float) -> None:
        """Source a current with a voltage compliance limit (output state unchanged)."""

    @abc.abstractmethod
    def source_voltage(self, voltage_v: float, *, current_limit_a: float) -> None:
        """Source a voltage with a current compliance limit (output state unchanged)."""

    @abc.abstractmethod
    def set_output(self, on: bool) -> None:
        """Switch the output on or off."""

    @abc.abstractmethod
    def output(self) -> bool:
        """True while the output is on."""

    @abc.abstractmethod
    def measure_voltage_v(self) -> float:
        """Measure the voltage (output must be on)."""

    @abc.abstractmethod
    def measure_current_a(self) -> float:
        """Measure the current (output must be on)."""

    @abc.abstractmethod
    def sweep_current(
        self, start_a: float, stop_a: float, points: int, *, voltage_limit_v: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run a linear current sweep; return (sourced current A, measured voltage V)."""
