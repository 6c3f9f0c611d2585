"""Zaber X-MCC multi-axis stepper controller (X-MCC4, firmware 7) driving the station's XYZ stage.

Protocol
--------
Zaber ASCII protocol over the controller's USB virtual COM port or RS-232 (115200 baud, in fabs often through a
serial-to-Ethernet converter, hence the raw socket resources). Commands end with ``\\n``, replies with
``\\r\\n``. Every command is answered by exactly one reply line::

    /1 1 move abs 20159          device 1, axis 1 (X), command "move abs", data in microsteps
    @01 1 OK BUSY -- 0           device, axis, OK|RJ, IDLE|BUSY, highest-priority warning flag or --, data

    /1 get pos                   axis omitted (= 0): the whole device; axis settings then list every axis
    @01 0 OK IDLE -- 20159 -40318 0 0

    /1 1 move abs 999999999      a rejected command: RJ and the reason in the data field
    @01 1 RJ IDLE -- BADDATA

Subset used here (X = axis 1, Y = axis 2, Z = axis 3)::

    /1 get deviceid                   device ID (30342 = X-MCC4)
    /1 get system.serial              serial number
    /1 get version                    firmware version, e.g. 7.38
    /1                                status poll of the whole device (IDLE/BUSY, warning flag)
    /1 <a>                            status poll of one axis
    /1 <a> get pos                    position, microsteps
    /1 get pos                        positions of all axes
    /1 <a> get limit.min|limit.max    soft travel limits, microsteps
    /1 <a> move abs|rel <N>           move to / by N microsteps
    /1 <a> home, /1 home              home one axis / all axes
    /1 stop                           decelerate all axes to rest
    /1 <a> set maxspeed <N>           maximum speed; N = microsteps/s × 1.6384 (and ``get maxspeed``)
    /1 <a> set accel <N>              acceleration; N = microsteps/s² × 1.6384 / 10000 (and ``get accel``)
    /1 <a> warnings                   active warning flags: count, then the flags (``02 FS NI``; ``00`` for none)
    /1 <a> warnings clear             clear them (the reply still lists what was active)
    /1 trigger 1 disable              position trigger 1 off
    /1 trigger 1 when <a> pos >= <N>  its condition (``<=`` for a falling crossing)
    /1 trigger 1 action a io set do 1 1   its action: digital output 1 high (the digitizer's trigger input)
    /1 trigger 1 enable 1             arm it to fire once
    /1 io set do 1 0                  reset digital output 1

Rejection reasons (data of an ``RJ`` reply) include ``BADCOMMAND``, ``BADDATA``, ``BADAXIS``, ``DEVICEONLY``,
``AGAIN``, ``STATUSBUSY``, ``PARKED``; they become :class:`~drivers.errors.InstrumentReplyError`. A move
refused with ``BADDATA`` (target outside ``limit.min``..``limit.max``) is a :class:`ZaberLimitRejectedError`, which is
also a :class:`~drivers.errors.StageLimitError`. Moves outside the limits are caught before anything is sent
(:class:`OutsideTravelError`, a ``StageLimitError`` and a ``ValueError``).

Warning flags starting with ``F`` are faults (``FS`` stalled and stopped, ``FD`` driver disabled, ``FQ`` encoder
error, ...), ``W`` warnings (``WR`` no reference position, ``WL`` unexpected limit trigger, ...) and ``N`` notices
(``NI`` command interrupted, ...). The flag field of every reply shows the highest-priority one, so a status
poll that ends with an ``F`` flag makes :meth:`ZaberXMCC.wait_idle` read each axis' warnings and raise
:class:`ZaberFaultError` (a :class:`~drivers.errors.StageFaultError`) naming the axis.

Units
-----
The controller counts microsteps; the driver speaks µm. The microstep size is a property of the peripheral
(stage) on each axis, given to the constructor. Defaults, which the virtual station's peripherals use too:

* X and Y: lead-screw linear stages with a 6.35 mm lead (X-LRQ-DE "HL" class), 200 full steps per turn and
  Zaber's default 64 microsteps per step: 6350 µm / 12800 = 0.49609375 µm per microstep.
* Z: a vertical lift with a 1.27 mm lead: 1270 µm / 12800 = 0.09921875 µm per microstep.

Speed data is microsteps/s × 1.6384 and acceleration data microsteps/s² × 1.6384 / 10000 (the controller's
internal time base, Zaber ASCII protocol manual). The highest speed is a property of the peripheral that the
controller does not report, so it is a constructor option checked before ``set maxspeed`` is sent; the defaults
(300 mm/s for X and Y, 5 mm/s for Z) are the virtual station profile's. Give a real stage's datasheet value in
the station file (``options = { max_velocity_um_s = { x = 200000, y = 200000 } }``); a speed the controller
still finds too high is refused with ``BADDATA``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drivers.base import Instrument, strict_range
from drivers.errors import (
    InstrumentReplyError,
    InstrumentTimeoutError,
    StageFaultError,
    StageLimitError,
)
from drivers.interfaces import Axis, InstrumentIdentity, Stage, TriggerDirection

AXIS_NUMBERS: dict[Axis, int] = {Axis.X: 1, Axis.Y: 2, Axis.Z: 3}
"""Which controller axis (connector) drives which stage axis."""

DEFAULT_MICROSTEP_UM: dict[Axis, float] = {Axis.X: 6350.0 / 12800, Axis.Y: 6350.0 / 12800, Axis.Z: 1270.0 / 12800}
"""Microstep size of the default peripherals (lead / (200 steps × 64 microsteps)), µm."""

DEFAULT_MAX_VELOCITY_UM_S: dict[Axis, float] = {Axis.X: 300_000.0, Axis.Y: 300_000.0, Axis.Z: 5_000.0}
"""Highest speed allowed by default, µm/s (the virtual station profile's peripherals)."""

SPEED_DATA_PER_MICROSTEP_S = 1.6384
"""``maxspeed`` data units per microstep/s."""

ACCEL_DATA_PER_MICROSTEP_S2 = 1.6384 / 10_000
"""``accel`` data units per microstep/s²."""

MAX_ACCEL_DATA = 32_767
"""Largest ``accel`` value the controller takes."""

TRIGGER_NUMBER = 1
"""The controller trigger used for the position trigger."""

TRIGGER_OUTPUT = 1
"""The digital output wired to the digitizer's external trigger input."""

DEVICE_MODELS: dict[int, str] = {30342: "X-MCC4"}
"""Device IDs (``get deviceid``) of the X-MCC controllers we know."""

REJECTION_REASONS: dict[str, str] = {
    "AGAIN": "the command cannot be processed now, retry",
    "BADAXIS": "the axis number is not valid for this command",
    "BADCOMMAND": "the command or setting is not recognised",
    "BADDATA": "the data is out of range or malformed",
    "BADMESSAGEID": "the message ID is invalid",
    "DEVICEONLY": "the command applies to the whole device, not to an axis",
    "FULL": "the controller's buffer is full",
    "LOCKSTEP": "the axis is in a lockstep group",
    "NOACCESS": "the command needs a higher access level",
    "PARKED": "the axis is parked",
    "STATUSBUSY": "the command cannot run while the axis moves",
}
"""What the data of an ``RJ`` reply means (Zaber ASCII protocol manual, reply data)."""

WARNING_FLAGS: dict[str, str] = {
    "FD": "driver disabled",
    "FQ": "encoder error",
    "FS": "stalled and stopped",
    "FT": "excessive twist",
    "FB": "stream bounds error",
    "FP": "interpolated path deviation",
    "FE": "limit error",
    "FM": "peripheral not supported",
    "FO": "driver over temperature",
    "FC": "firmware incompatible",
    "FH": "device database error",
    "WH": "device not homed",
    "WL": "unexpected limit trigger",
    "WP": "invalid calibration",
    "WV": "voltage out of range",
    "WT": "controller temperature high",
    "WM": "displaced when stationary",
    "WR": "no reference position",
    "NC": "manual control",
    "NI": "command interrupted",
    "ND": "stream discontinuity",
    "NU": "setting update pending",
    "NJ": "joystick calibrating",
}
"""The warning flags we name in messages, highest priority first."""

_REPLY = re.compile(
    r"^@(?P<device>\d{2}) (?P<axis>\d+) (?P<flag>OK|RJ) (?P<status>IDLE|BUSY) (?P<warning>--|[A-Z]{2}) (?P<data>\S.*)$"
)
_COMMAND_ADDRESS = re.compile(r"^/(?P<device>\d+)(?: (?P<axis>\d+)(?= |$))?")


@dataclass(frozen=True)
class ZaberReply:
    """One parsed reply line ``@dd a OK|RJ IDLE|BUSY ww data``."""

    device: int
    axis: int
    rejected: bool
    busy: bool
    warning_flag: str  # "--" when there is none
    data: str
    line: str  # the reply as received, for error messages

    @property
    def fault(self) -> bool:
        """True when the highest-priority warning is a fault (an ``F`` flag)."""
        return self.warning_flag.startswith("F")


class ZaberLimitRejectedError(StageLimitError, InstrumentReplyError):
    """The controller refused a move as outside the axis' travel (``RJ ... BADDATA``), with command and reply.

    Catch it as :class:`~drivers.errors.StageLimitError` or :class:`~drivers.errors.InstrumentReplyError`.
    """


class OutsideTravelError(StageLimitError, ValueError):
    """A requested position is outside the axis' soft travel limits; raised before anything is sent.

    It is a ``ValueError`` like every other range check and a :class:`~drivers.errors.StageLimitError` like the
    controller's own refusal, so callers can catch either.
    """


class ZaberFaultError(StageFaultError, InstrumentReplyError):
    """An axis reported a fault flag (``FS`` stall, ``FD`` driver disabled, ...).

    Attributes
    ----------
    faults
        The fault flags of each faulted axis.
    """

    def __init__(
        self, instrument: str, message: str, *, command: str, reply: str, faults: Mapping[Axis, frozenset[str]]
    ) -> None:
        self.faults = dict(faults)
        super().__init__(instrument, message, command=command, reply=reply)


def _parse_ints(data: str, count: int) -> list[int]:
    values = [int(word) for word in data.split()]
    if len(values) < count:
        raise ValueError(f"expected {count} values, got {len(values)}")
    return values


def _describe_flags(flags: frozenset[str]) -> str:
    return ", ".join(f"{flag} ({WARNING_FLAGS.get(flag, 'unknown flag')})" for flag in sorted(flags))


def _finite(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{name}: {value!r} is not a finite number")
    return number


def _positive_finite(name: str, value: Any) -> float:
    number = _finite(name, value)
    if number <= 0:
        raise ValueError(f"{name}: {value!r} must be a finite number > 0")
    return number


class ZaberXMCC(Instrument, Stage):
    """A Zaber X-MCC controller driving the X, Y and Z stage axes on its axes 1, 2 and 3.

    Parameters
    ----------
    resource
        An open pyvisa resource (``ASRL...`` at 115200 baud or ``TCPIP0::...::SOCKET``) or a protocol-test
        resource.
    name
        How errors name this stage.
    device_number
        The controller's address on the daisy chain (``comm.address``), 1 to 99.
    microstep_um
        Microstep size of the peripheral on each axis, µm, keyed by ``"x"``, ``"y"``, ``"z"`` (or :class:`Axis`);
        axes not given keep :data:`DEFAULT_MICROSTEP_UM`.
    max_velocity_um_s
        Highest speed of the peripheral on each axis, µm/s; defaults :data:`DEFAULT_MAX_VELOCITY_UM_S`.
    motion_timeout_s
        How long a waiting move may take before :class:`~drivers.errors.InstrumentTimeoutError`.
    home_timeout_s
        How long homing may take.
    poll_interval_s
        Pause between status polls while waiting for motion to end.

    Notes
    -----
    The soft travel limits are read from the controller the first time a move or trigger on an axis needs them
    and kept (only this driver would change them); :meth:`limits_um` always reads them afresh.

    Settings are plain methods rather than :func:`~drivers.base.control` declarations because every command
    carries the device address and the axis number, which are per instance and per call.
    """

    model = "Zaber X-MCC"
    read_termination = "\r\n"
    write_termination = "\n"

    def __init__(
        self,
        resource: Any,
        *,
        name: str | None = None,
        device_number: int = 1,
        microstep_um: Mapping[str, float] | None = None,
        max_velocity_um_s: Mapping[str, float] | None = None,
        motion_timeout_s: float = 60.0,
        home_timeout_s: float = 120.0,
        poll_interval_s: float = 0.01,
    ) -> None:
        super().__init__(resource, name=name)
        if isinstance(device_number, bool) or not isinstance(device_number, int) or not 1 <= device_number <= 99:
            raise ValueError(f"device_number: {device_number!r} is outside the allowed range 1 to 99")
        self.device_number = device_number
        self.microstep_um = self._per_axis("microstep_um", DEFAULT_MICROSTEP_UM, microstep_um)
        self.max_velocity_um_s = self._per_axis("max_velocity_um_s", DEFAULT_MAX_VELOCITY_UM_S, max_velocity_um_s)
        self.motion_timeout_s = _positive_finite("motion_timeout_s", motion_timeout_s)
        self._settings_sent: dict[tuple[Axis, str], int] = {}
        self.home_timeout_s = _positive_finite("home_timeout_s", home_timeout_s)
        self.poll_interval_s = _positive_finite("poll_interval_s", poll_interval_s)
        self._limits_steps: dict[Axis, tuple[int, int]] = {}
        self._last_reply: ZaberReply | None = None
        # What the driver knows of the position trigger, to skip commands a scan would repeat on every line.
        # False = unknown (the start, or a command that may not have been obeyed): everything is sent again.
        self._trigger_idle = False  # disabled, with its output low
        self._trigger_action_set = False  # action a raises the output

    @staticmethod
    def _per_axis(name: str, defaults: Mapping[Axis, float], given: Mapping[str, float] | None) -> dict[Axis, float]:
        values = dict(defaults)
        for key, value in (given or {}).items():
            try:
                axis = Axis(str(key).lower())
            except ValueError:
                raise ValueError(f"{name}: unknown axis {key!r}; axes are x, y, z") from None
            values[axis] = _positive_finite(f"{name}[{axis.value}]", value)
        return values

    # -- protocol -------------------------------------------------------------------------------------------
    def _command(self, text: str, axis: Axis | None = None) -> str:
        address = f"/{self.device_number}" if axis is None else f"/{self.device_number} {AXIS_NUMBERS[axis]}"
        return f"{address} {text}" if text else address

    def _parse(self, command: str, line: str) -> ZaberReply:
        match = _REPLY.match(line)
        if match is None:
            raise InstrumentReplyError(self.name, "not a Zaber reply line", command=command, reply=line)
        reply = ZaberReply(
            device=int(match["device"]),
            axis=int(match["axis"]),
            rejected=match["flag"] == "RJ",
            busy=match["status"] == "BUSY",
            warning_flag=match["warning"],
            data=match["data"],
            line=line,
        )
        # a reply from another address means the exchange is out of step; using its data would be wrong
        address = _COMMAND_ADDRESS.match(command)
        expected_axis = int(address["axis"] or 0) if address else 0
        if reply.device != self.device_number or reply.axis != expected_axis:
            raise InstrumentReplyError(
                self.name,
                f"reply from device {reply.device} axis {reply.axis}, expected device {self.device_number} "
                f"axis {expected_axis}",
                command=command,
                reply=line,
            )
        if reply.rejected:
            reason = REJECTION_REASONS.get(reply.data, "unknown reason")
            if reply.data == "BADDATA" and " move " in f"{command} ":
                raise ZaberLimitRejectedError(
                    self.name, "move refused: target outside the travel limits", command=command, reply=line
                )
            raise InstrumentReplyError(
                self.name, f"command rejected: {reply.data} ({reason})", command=command, reply=line
            )
        return reply

    def _read_reply(self, command: str) -> str:
        line = self.read_line(command)
        self._last_reply = self._parse(command, line)
        return self._last_reply.data

    def _reply_to_write(self, command: str) -> None:
        self._read_reply(command)

    def _exchange(self, command: str) -> ZaberReply:
        """Send ``command`` and return its whole checked reply (status and warning flag included)."""
        with self.lock:
            self._last_reply = None
            self.query(command)
            reply = self._last_reply
        if reply is None:  # only if a subclass reads replies differently
            raise InstrumentReplyError(self.name, "no reply was parsed", command=command)
        return reply

    def _query_int(self, command: str) -> int:
        return self.query_parsed(command, int)

    def _query_ints(self, command: str, count: int) -> list[int]:
        return self.query_parsed(command, lambda data: _parse_ints(data, count))

    # -- conversions ----------------------------------------------------------------------------------------
    def _steps(self, axis: Axis, distance_um: float) -> int:
        return round(distance_um / self.microstep_um[axis])

    def _um(self, axis: Axis, steps: float) -> float:
        return steps * self.microstep_um[axis]

    @staticmethod
    def _check_axis(axis: Any) -> Axis:
        try:
            return Axis(axis)
        except ValueError:
            raise ValueError(f"axis: {axis!r} is not one of {', '.join(a.value for a in Axis)}") from None

    def _check_inside_travel(self, name: str, axis: Axis, position_um: float) -> float:
        position = _finite(name, position_um)
        low, high = self._cached_limits_um(axis)
        if not low <= position <= high:
            raise OutsideTravelError(
                self.name,
                f"{name}: {position_um!r} is outside the {axis.value} travel limits {low:g} to {high:g} µm",
            )
        return position

    # -- identity, safety -----------------------------------------------------------------------------------
    def identity(self) -> InstrumentIdentity:
        """Read device ID, serial number and firmware version."""
        device_id = self._query_int(self._command("get deviceid"))
        serial = self.query(self._command("get system.serial"))
        firmware = self.query(self._command("get version"))
        model = DEVICE_MODELS.get(device_id, f"X-MCC (device ID {device_id})")
        return InstrumentIdentity("Zaber", model, serial, firmware)

    def make_safe(self) -> None:
        """Stop all axes, disable the position trigger and reset its output."""
        self.stop()
        self.disarm_position_trigger()

    # -- positions and limits -------------------------------------------------------------------------------
    def position_um(self, axis: Axis) -> float:
        axis = self._check_axis(axis)
        return self._um(axis, self._query_int(self._command("get pos", axis)))

    def positions_um(self) -> dict[Axis, float]:
        """Positions of all three axes from one query (they are sampled at the same instant)."""
        values = self._query_ints(self._command("get pos"), len(AXIS_NUMBERS))
        return {axis: self._um(axis, values[number - 1]) for axis, number in AXIS_NUMBERS.items()}

    def limits_um(self, axis: Axis) -> tuple[float, float]:
        axis = self._check_axis(axis)
        low = self._query_int(self._command("get limit.min", axis))
        high = self._query_int(self._command("get limit.max", axis))
        if low > high:
            raise InstrumentReplyError(
                self.name, f"limit.min {low} is above limit.max {high}", command=self._command("get limit.max", axis)
            )
        self._limits_steps[axis] = (low, high)
        return self._um(axis, low), self._um(axis, high)

    def _cached_limits_um(self, axis: Axis) -> tuple[float, float]:
        if axis not in self._limits_steps:
            return self.limits_um(axis)
        low, high = self._limits_steps[axis]
        return self._um(axis, low), self._um(axis, high)

    # -- motion ---------------------------------------------------------------------------------------------
    def move_absolute_um(self, axis: Axis, position_um: float, *, wait: bool = True) -> None:
        axis = self._check_axis(axis)
        target = self._check_inside_travel("position_um", axis, position_um)
        self.write(self._command(f"move abs {self._steps(axis, target)}", axis))
        if wait:
            self._wait_idle(axis, self.motion_timeout_s)

    def move_relative_um(self, axis: Axis, distance_um: float, *, wait: bool = True) -> None:
        axis = self._check_axis(axis)
        distance = _finite("distance_um", distance_um)
        # the limits are absolute, so the target is checked from where the axis is now
        self._check_inside_travel("position_um", axis, self.position_um(axis) + distance)
        self.write(self._command(f"move rel {self._steps(axis, distance)}", axis))
        if wait:
            self._wait_idle(axis, self.motion_timeout_s)

    def home(self, axis: Axis | None = None) -> None:
        """Home one axis, or all axes; returns when homing is complete.

        Homing all axes lowers Z first and only then moves X and Y, so the wafer never slides sideways under the
        probe card or the objective.
        """
        if axis is not None:
            axis = self._check_axis(axis)
            self.write(self._command("home", axis))
            self._wait_idle(axis, self.home_timeout_s)
            return
        self.write(self._command("home", Axis.Z))
        self._wait_idle(Axis.Z, self.home_timeout_s)
        self.write(self._command("home", Axis.X))
        self.write(self._command("home", Axis.Y))
        self._wait_idle(None, self.home_timeout_s)

    def stop(self) -> None:
        self.write(self._command("stop"))

    def is_busy(self) -> bool:
        return self._exchange(self._command("")).busy

    def wait_idle(self, timeout_s: float) -> None:
        timeout = strict_range(0, math.inf, unit="s")("timeout_s", timeout_s)
        self._wait_idle(None, timeout)

    def wait_idle_positions_um(self, timeout_s: float) -> dict[Axis, float]:
        """Poll with ``get pos`` (its reply carries the device's BUSY/IDLE status and warning flag, as the bare
        status poll does) until IDLE; return the positions of that last reply. A fault raises as in
        :meth:`wait_idle`."""
        timeout = strict_range(0, math.inf, unit="s")("timeout_s", timeout_s)
        command = self._command("get pos")
        reply = self._poll_until_idle(command, None, timeout)
        values = self.parse_reply(command, reply.data, lambda data: _parse_ints(data, len(AXIS_NUMBERS)))
        return {axis: self._um(axis, values[number - 1]) for axis, number in AXIS_NUMBERS.items()}

    def _wait_idle(self, axis: Axis | None, timeout_s: float) -> None:
        """Poll the status of ``axis`` (None: the whole device) until IDLE, then raise if it shows a fault."""
        self._poll_until_idle(self._command("", axis), axis, timeout_s)

    def _poll_until_idle(self, command: str, axis: Axis | None, timeout_s: float) -> ZaberReply:
        """Send ``command`` (addressed to ``axis``, None: the device) until its reply says IDLE; raise if that
        reply shows a fault; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._exchange(command)
            if not reply.busy:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InstrumentTimeoutError(self.name, f"still moving after {timeout_s:g} s", command=command)
            time.sleep(min(self.poll_interval_s, remaining))
        if reply.fault:
            self._raise_faults([axis] if axis is not None else list(AXIS_NUMBERS), reply.warning_flag)
        return reply

    def _raise_faults(self, axes: list[Axis], status_flag: str) -> None:
        faults: dict[Axis, frozenset[str]] = {}
        command, reply = "", ""
        for axis in axes:
            flags = frozenset(flag for flag in self.warnings(axis) if flag.startswith("F"))
            if flags:
                faults[axis] = flags
                if not command:
                    command, reply = self._command("warnings", axis), self._last_reply.line if self._last_reply else ""
        if not faults:
            # the fault belongs to the controller itself (or an axis we do not use): still not safe to go on
            command = self._command("")
            raise ZaberFaultError(
                self.name,
                f"controller reports fault {_describe_flags(frozenset({status_flag}))}",
                command=command,
                reply=status_flag,
                faults={},
            )
        described = "; ".join(f"axis {axis.value}: {_describe_flags(flags)}" for axis, flags in faults.items())
        raise ZaberFaultError(self.name, f"axis fault, {described}", command=command, reply=reply, faults=faults)

    # -- speed and acceleration -------------------------------------------------------------------------------
    def set_velocity_um_s(self, axis: Axis, velocity_um_s: float) -> None:
        axis = self._check_axis(axis)
        # the slowest settable speed is one data unit
        slowest = self.microstep_um[axis] / SPEED_DATA_PER_MICROSTEP_S
        velocity = strict_range(slowest, self.max_velocity_um_s[axis], unit="µm/s")("velocity_um_s", velocity_um_s)
        data = round(velocity / self.microstep_um[axis] * SPEED_DATA_PER_MICROSTEP_S)
        self._send_setting(axis, "maxspeed", data)

    def _send_setting(self, axis: Axis, name: str, data: int) -> None:
        """``set <name> <data>`` unless this connection already set that value: a scan sets the same speeds for
        every line, and each exchange costs a round trip. (The driver assumes it alone drives the controller.)"""
        key = (axis, name)
        if self._settings_sent.get(key) == data:
            return
        self._settings_sent.pop(key, None)  # unknown if the write fails half-way
        self.write(self._command(f"set {name} {data}", axis))
        self._settings_sent[key] = data

    def velocity_um_s(self, axis: Axis) -> float:
        axis = self._check_axis(axis)
        data = self._query_int(self._command("get maxspeed", axis))
        return data / SPEED_DATA_PER_MICROSTEP_S * self.microstep_um[axis]

    def set_acceleration_um_s2(self, axis: Axis, acceleration_um_s2: float) -> None:
        """Set the acceleration (and deceleration) of ``axis`` for subsequent moves."""
        axis = self._check_axis(axis)
        step = self.microstep_um[axis]
        lowest, highest = (data / ACCEL_DATA_PER_MICROSTEP_S2 * step for data in (1, MAX_ACCEL_DATA))
        acceleration = strict_range(lowest, highest, unit="µm/s²")("acceleration_um_s2", acceleration_um_s2)
        # rounded up: a move planned with this acceleration must not ramp longer than planned (the unit is coarse,
        # ~1 mm/s² per data step on fine-pitch axes)
        data = math.ceil(acceleration / step * ACCEL_DATA_PER_MICROSTEP_S2 - 1e-9)
        self._send_setting(axis, "accel", data)

    def acceleration_um_s2(self, axis: Axis) -> float:
        """The acceleration of ``axis``."""
        axis = self._check_axis(axis)
        data = self._query_int(self._command("get accel", axis))
        return data / ACCEL_DATA_PER_MICROSTEP_S2 * self.microstep_um[axis]

    # -- warnings -------------------------------------------------------------------------------------------
    def warnings(self, axis: Axis) -> frozenset[str]:
        axis = self._check_axis(axis)
        return self.query_parsed(self._command("warnings", axis), self._parse_warnings)

    def clear_warnings(self, axis: Axis) -> frozenset[str]:
        """Clear the warnings of ``axis``; return the flags that were active."""
        axis = self._check_axis(axis)
        return self.query_parsed(self._command("warnings clear", axis), self._parse_warnings)

    @staticmethod
    def _parse_warnings(data: str) -> frozenset[str]:
        count, *flags = data.split()
        if int(count) != len(flags) or not all(re.fullmatch(r"[A-Z]{2}", flag) for flag in flags):
            raise ValueError("expected a warning count followed by that many two-letter flags")
        return frozenset(flags)

    # -- position trigger -----------------------------------------------------------------------------------
    def arm_position_trigger(self, axis: Axis, position_um: float, direction: TriggerDirection) -> None:
        """Raise digital output 1 once when ``axis`` crosses ``position_um`` in ``direction``.

        The output is reset first so the digitizer sees a fresh rising edge.
        """
        axis = self._check_axis(axis)
        try:
            direction = TriggerDirection(direction)
        except ValueError:
            allowed = ", ".join(d.value for d in TriggerDirection)
            raise ValueError(f"direction: {direction!r} is not one of {allowed}") from None
        position = self._check_inside_travel("position_um", axis, position_um)
        trigger = f"trigger {TRIGGER_NUMBER}"
        with self.lock:
            if not self._trigger_idle:
                self.disarm_position_trigger()
            self._trigger_idle = False
            steps = self._steps(axis, position)
            self.write(self._command(f"{trigger} when {AXIS_NUMBERS[axis]} pos {direction.value} {steps}"))
            if not self._trigger_action_set:
                self.write(self._command(f"{trigger} action a io set do {TRIGGER_OUTPUT} 1"))
                self._trigger_action_set = True
            self.write(self._command(f"{trigger} enable 1"))

    def disarm_position_trigger(self) -> None:
        with self.lock:
            self._trigger_idle = False
            self.write(self._command(f"trigger {TRIGGER_NUMBER} disable"))
            self.write(self._command(f"io set do {TRIGGER_OUTPUT} 0"))
            self._trigger_idle = True
