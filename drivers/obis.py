"""Coherent OBIS LX/LS CW laser (e.g. OBIS 405 nm LX 100 mW), the station's excitation laser.

Protocol
--------
SCPI-like ASCII over the laser's USB virtual COM port or RS-232 (in fabs often through a serial-to-Ethernet
converter, hence the raw socket resources), ``\\r\\n`` terminations both ways. With handshaking on
(``SYST:COMM:HAND ON``, which :meth:`CoherentOBIS.connect` sets) every command is answered:

==========================  =================================================
sent                        answered with
==========================  =================================================
a command                   ``OK``
a query                     the value line, then ``OK``
anything the laser refuses  one line ``ERR-nnn`` in place of value and ``OK``
==========================  =================================================

Subset used here (short forms; the laser also takes the long forms such as ``SOURce:AM:STATe``)::

    *IDN?                       Coherent, Inc - OBIS 405nm 100mW C - V1.0.1 - Dec 14 2010
    SYST:INF:SNUM?              serial number
    SYST:INF:WAV?               nominal wavelength, nm
    SYST:COMM:HAND ON           handshaking (OK after each command)
    SOUR:AM:INT CWP             internal modulation, CW constant-power mode
    SOUR:POW:LIM:LOW?           lowest settable power, W
    SOUR:POW:LIM:HIGH?          highest settable power, W
    SOUR:POW:LEV:IMM:AMPL <W>   power setpoint (and its query)
    SOUR:POW:LEV?               output power measured by the laser's monitor photodiode, W
    SOUR:AM:STAT ON|OFF         emission (and its query)
    SYST:LOCK?                  interlock: ON = loop closed (emission possible), OFF = open
    SYST:STAT?                  system status word, 8 hex digits (:class:`OBISStatus`)
    SYST:FAUL?                  fault word, 8 hex digits (:class:`OBISFault`)

Error codes are the ones in the OBIS host-command error table, e.g. ``ERR-100`` unrecognized command/query,
``ERR-220`` invalid parameter, ``ERR-241`` device unavailable. Emission is not switched on while the interlock
is open: ``SYST:LOCK?`` is checked before ``SOUR:AM:STAT ON`` is sent; if the laser refuses the on command with
``ERR-241`` anyway (the loop opened in between), that is reported as :class:`OBISInterlockError`, an
:class:`~drivers.errors.InterlockOpenError` that also carries the command and the reply.
"""

from __future__ import annotations

import math
from enum import IntFlag
from typing import Any

import numpy as np

from drivers.base import Instrument, measurement, parse_bool, strict_range
from drivers.errors import InstrumentReplyError, InterlockOpenError
from drivers.interfaces import InstrumentIdentity, Laser

ERROR_CODES: dict[str, str] = {
    "ERR-000": "no error",
    "ERR-100": "unrecognized command/query",
    "ERR-102": "syntax error",
    "ERR-109": "parameter missing",
    "ERR-200": "execution error",
    "ERR-203": "command protected",
    "ERR-220": "invalid parameter",
    "ERR-221": "settings conflict",
    "ERR-241": "device unavailable",
    "ERR-256": "file does not exist",
    "ERR-257": "file to open not named",
    "ERR-310": "system error",
    "ERR-321": "out of memory",
    "ERR-350": "queue overflow",
    "ERR-400": "query unavailable",
    "ERR-500": "CCB fault",
    "ERR-510": "I2C bus fault",
    "ERR-520": "controller time out",
    "ERR-900": "CCB message timed out",
}
"""The OBIS error replies and what they mean."""

EMISSION_REFUSED_CODES = frozenset({"ERR-241"})
"""Replies to ``SOUR:AM:STAT ON`` that mean the laser cannot emit now (interlock or key switch open)."""

EMISSION_ON_COMMAND = "SOUR:AM:STAT ON"


class OBISStatus(IntFlag):
    """Bits of the ``SYST:STAT?`` status word."""

    LASER_FAULT = 0x0000_0001
    LASER_EMISSION = 0x0000_0002
    LASER_READY = 0x0000_0004
    LASER_STANDBY = 0x0000_0008
    CDRH_DELAY = 0x0000_0010
    LASER_HARDWARE_FAULT = 0x0000_0020
    LASER_ERROR = 0x0000_0040
    LASER_POWER_CALIBRATION = 0x0000_0080
    LASER_WARM_UP = 0x0000_0100
    LASER_NOISE = 0x0000_0200
    EXTERNAL_OPERATING_MODE = 0x0000_0400
    FIELD_CALIBRATION = 0x0000_0800
    LASER_POWER_VOLTAGE = 0x0000_1000
    CONTROLLER_STANDBY = 0x0200_0000  # key switch off
    CONTROLLER_INTERLOCK = 0x0400_0000  # interlock loop open


class OBISFault(IntFlag):
    """Bits of the ``SYST:FAUL?`` fault word (0 when all is well)."""

    BASE_PLATE_TEMPERATURE = 0x0000_0001
    DIODE_TEMPERATURE = 0x0000_0002
    INTERNAL_TEMPERATURE = 0x0000_0004
    LASER_POWER_SUPPLY = 0x0000_0008
    I2C_ERROR = 0x0000_0010
    DIODE_OVER_CURRENT = 0x0000_0020
    MEMORY_CHECKSUM = 0x0000_0040
    CHECKSUM_RECOVERY = 0x0000_0080
    BUFFER_OVERFLOW = 0x0000_0100
    WARM_UP_TIME_LIMIT = 0x0000_0200
    TEC_DRIVER = 0x0000_0400
    CCB_ERROR = 0x0000_0800
    DIODE_TEMPERATURE_LIMIT = 0x0000_1000
    LASER_READY = 0x0000_2000
    PHOTODIODE = 0x0000_4000
    FATAL = 0x0000_8000
    STARTUP = 0x0001_0000
    WATCHDOG_TIMER_RESET = 0x0002_0000
    FIELD_CALIBRATION = 0x0004_0000
    LASER_OVER_POWER = 0x0010_0000


class OBISInterlockError(InterlockOpenError, InstrumentReplyError):
    """Emission refused because the interlock (or key switch) is open, with the command and the reply that said so.

    Catch it as :class:`~drivers.errors.InterlockOpenError` (what the :class:`~drivers.interfaces.Laser` interface
    promises) or as :class:`~drivers.errors.InstrumentReplyError` (it carries ``command`` and ``reply``).
    """


def _parse_hex_word(reply: str) -> int:
    text = reply.strip()
    if not text or len(text) > 8:
        raise ValueError("expected up to 8 hex digits")
    return int(text, 16)


def _parse_finite(reply: str) -> float:
    value = float(reply)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _format_watts(power_w: float) -> str:
    # 1 µW steps: fine enough that no setpoint a caller would ask for is rounded away before it is sent
    return f"{power_w:.6f}"


class CoherentOBIS(Instrument, Laser):
    """A Coherent OBIS LX/LS laser run in CW constant-power mode.

    Parameters
    ----------
    resource
        An open pyvisa resource (``ASRL...`` for the virtual COM port, opened with the laser's baud rate, or
        ``TCPIP0::...::SOCKET`` through a serial-to-Ethernet converter) or a protocol-test resource.
    name
        How errors name this laser.

    Notes
    -----
    :meth:`connect` switches handshaking on (every reply is then checked against ``OK``), selects CW
    constant-power mode and reads the power limits once; :meth:`set_power_w` refuses values outside them
    before sending anything.
    """

    model = "Coherent OBIS"
    read_termination = "\r\n"
    write_termination = "\r\n"

    _wavelength_nm = measurement("SYST:INF:WAV?", "Nominal emission wavelength (nm).", parse=_parse_finite)
    _power_low_w = measurement("SOUR:POW:LIM:LOW?", "Lowest settable output power (W).", parse=_parse_finite)
    _power_high_w = measurement("SOUR:POW:LIM:HIGH?", "Highest settable output power (W).", parse=_parse_finite)
    _setpoint_w = measurement("SOUR:POW:LEV:IMM:AMPL?", "Output power setpoint (W).", parse=_parse_finite)
    _output_w = measurement("SOUR:POW:LEV?", "Output power from the internal monitor (W).", parse=_parse_finite)
    _emission_on = measurement("SOUR:AM:STAT?", "True while the laser emits.", parse=parse_bool())
    _interlock_closed = measurement("SYST:LOCK?", "True while the interlock loop is closed.", parse=parse_bool())
    _status_word = measurement("SYST:STAT?", "System status word.", parse=_parse_hex_word)
    _fault_word = measurement("SYST:FAUL?", "Fault word.", parse=_parse_hex_word)
    _serial_number = measurement("SYST:INF:SNUM?", "Serial number.", parse=str)

    def __init__(self, resource: Any, *, name: str | None = None) -> None:
        super().__init__(resource, name=name)
        self._power_limits_w: tuple[float, float] | None = None

    # -- connection -------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Switch handshaking on, select CW constant-power mode and read the power limits."""
        self.write("SYST:COMM:HAND ON")
        self.write("SOUR:AM:INT CWP")
        self._power_limits_w = None
        self.power_limits_w()

    def make_safe(self) -> None:
        """Switch emission off (the setpoint stays, so the next session starts where this one ended)."""
        self.write("SOUR:AM:STAT OFF")

    # -- Laser interface --------------------------------------------------------------------------------------
    def identity(self) -> InstrumentIdentity:
        """``*IDN?`` (manufacturer, model, firmware) plus ``SYST:INF:SNUM?`` (the IDN string has no serial)."""
        manufacturer, model, firmware = self.query_parsed("*IDN?", _split_identity)
        return InstrumentIdentity(manufacturer, model, self._serial_number.strip(), firmware)

    def wavelength_nm(self) -> float:
        return float(self._wavelength_nm)

    def power_limits_w(self) -> tuple[float, float]:
        """Lowest and highest settable power, read from the laser once per connection."""
        if self._power_limits_w is None:
            low, high = float(self._power_low_w), float(self._power_high_w)
            if not 0.0 <= low <= high:
                raise InstrumentReplyError(
                    self.name, f"inconsistent power limits {low:g} W to {high:g} W", command="SOUR:POW:LIM:HIGH?"
                )
            self._power_limits_w = (low, high)
        return self._power_limits_w

    def set_power_w(self, power_w: float) -> None:
        """Set the output power setpoint.

        Raises
        ------
        ValueError
            ``power_w`` is not a number, or outside :meth:`power_limits_w`; nothing is sent.
        """
        # no laser sets a negative or non-finite power: refuse those without asking the laser for its limits
        strict_range(0.0, math.inf, unit="W")("power_w", power_w)
        low, high = self.power_limits_w()
        value = strict_range(low, high, unit="W")("power_w", power_w)
        self.write(f"SOUR:POW:LEV:IMM:AMPL {_format_watts(value)}")

    def power_setpoint_w(self) -> float:
        return float(self._setpoint_w)

    def measured_power_w(self) -> float:
        return float(self._output_w)

    def set_emission(self, on: bool) -> None:
        """Switch emission on or off.

        Raises
        ------
        ValueError
            ``on`` is not a bool; nothing is sent.
        InterlockOpenError
            Switching on with the interlock open (``SYST:LOCK?`` answers ``OFF``; the on command is then not
            sent), or the laser refused the on command as unavailable (:class:`OBISInterlockError`).
        """
        if not isinstance(on, (bool, np.bool_)):
            raise ValueError(f"on: {on!r} is not True or False")
        if not on:
            self.write("SOUR:AM:STAT OFF")
            return
        if not self.interlock_closed():
            raise OBISInterlockError(self.name, "interlock open, emission refused", command="SYST:LOCK?", reply="OFF")
        self.write(EMISSION_ON_COMMAND)

    def emission(self) -> bool:
        return bool(self._emission_on)

    def interlock_closed(self) -> bool:
        return bool(self._interlock_closed)

    # -- diagnostics -----------------------------------------------------------------------------------------
    def system_status(self) -> OBISStatus:
        """The ``SYST:STAT?`` word as flags (bits not named in :class:`OBISStatus` are kept)."""
        return OBISStatus(self._status_word)

    def system_faults(self) -> OBISFault:
        """The ``SYST:FAUL?`` word as flags; empty when the laser reports no fault."""
        return OBISFault(self._fault_word)

    # -- protocol hooks -------------------------------------------------------------------------------------

    def _reply_to_write(self, command: str) -> None:
        reply = self.read_line(command).strip()
        if reply != "OK":
            self._raise_for_reply(command, reply, expected="OK")

    def _read_reply(self, command: str) -> str:
        value = self.read_line(command).strip()
        if value.startswith("ERR"):
            self._raise_for_reply(command, value, expected="a value")
        acknowledgement = self.read_line(command).strip()
        if acknowledgement != "OK":
            self._raise_for_reply(command, acknowledgement, expected="OK after the value")
        return value

    def _raise_for_reply(self, command: str, reply: str, *, expected: str) -> None:
        if reply in ERROR_CODES or reply.startswith("ERR-"):
            meaning = ERROR_CODES.get(reply, "unknown error code")
            if command == EMISSION_ON_COMMAND and reply in EMISSION_REFUSED_CODES:
                raise OBISInterlockError(
                    self.name,
                    f"emission refused ({meaning}): interlock or key switch open",
                    command=command,
                    reply=reply,
                )
            raise InstrumentReplyError(self.name, f"laser refused the command: {meaning}", command=command, reply=reply)
        raise InstrumentReplyError(self.name, f"expected {expected}", command=command, reply=reply)


def _split_identity(reply: str) -> tuple[str, str, str]:
    """``Coherent, Inc - OBIS 405nm 100mW C - V1.0.1 - Dec 14 2010`` → manufacturer, model, firmware (with date)."""
    parts = [part.strip() for part in reply.split(" - ")]
    if len(parts) < 3 or not parts[0].lower().startswith("coherent") or not parts[1]:
        raise ValueError("expected 'Coherent, Inc - <model> - <firmware> - <date>'")
    firmware = parts[2] if len(parts) == 3 else f"{parts[2]} ({' - '.join(parts[3:])})"
    return parts[0], parts[1], firmware
