"""Thorlabs PM100D optical power meter, the station's laser power monitor (drift correction).

Protocol
--------
SCPI over USBTMC (``USB0::0x1313::0x8078::<serial>::INSTR``), or over a raw socket through a converter
(``TCPIP0::host::port::SOCKET``), ``\\n`` terminations. Commands are not acknowledged: after every command the
driver reads the error queue with ``SYST:ERR?`` and raises :class:`~drivers.errors.InstrumentReplyError`
naming the command and the error if the queue is not ``0,"No error"`` (the rest of the queue is read out too and
added to the message, so a later command is not blamed for it).

Subset used here::

    *IDN?                     Thorlabs,PM100D,P0012345,2.8.0
    *CLS                      clear the error queue (connect)
    SYST:ERR?                 next error: 0,"No error" / -222,"Data out of range"
    CONF:POW                  measure power (connect)
    SENS:POW:UNIT W           readings in watts, not dBm (connect)
    SENS:POW:RANG:AUTO ON     auto ranging (connect)
    SENS:CORR:WAV? MIN|MAX    the sensor's wavelength range, nm (connect)
    SENS:CORR:WAV <nm>        correction wavelength (and its query)
    SENS:AVER:COUN <n>        samples averaged per reading, ~3 ms each (and its query)
    MEAS:POW?                 one reading, W, e.g. 1.234567E-03
"""

from __future__ import annotations

import math
from typing import Any

from drivers.base import Instrument, control, strict_integer_range, strict_range
from drivers.errors import InstrumentReplyError
from drivers.interfaces import InstrumentIdentity, PowerMeter
from drivers.scpi import drain_error_queue

MAX_ERRORS_READ = 32
"""More than the instrument's queue holds; a bound so a misbehaving instrument cannot keep the driver reading."""

MAX_AVERAGE_COUNT = 10_000
"""Driver policy, not an instrument limit: 10 000 samples take ~30 s per reading, far longer than a drift check
should; a larger count is almost certainly a typing mistake."""

OVERRANGE_W = 9.9e37
"""SCPI's "not a number" reading (9.91E+37), sent when the sensor is saturated or absent."""


def _parse_count(reply: str) -> int:
    value = float(reply)
    if not value.is_integer():
        raise ValueError("expected an integer")
    return int(value)


def _parse_finite(reply: str) -> float:
    value = float(reply)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _split_identity(reply: str) -> tuple[str, str, str, str]:
    parts = [part.strip() for part in reply.split(",")]
    if len(parts) != 4 or not all(parts):
        raise ValueError("expected 'manufacturer,model,serial,firmware'")
    return parts[0], parts[1], parts[2], parts[3]


class ThorlabsPM100D(Instrument, PowerMeter):
    """A Thorlabs PM100D console with a photodiode sensor, measuring CW power in watts.

    Parameters
    ----------
    resource
        An open pyvisa resource or a protocol-test resource.
    name
        How errors name this meter.

    Notes
    -----
    :meth:`connect` clears the error queue, configures power measurement in watts with auto ranging, and
    reads the sensor's wavelength range once; :meth:`set_wavelength_nm` refuses wavelengths outside it before
    sending anything.
    """

    model = "Thorlabs PM100D"
    read_termination = "\n"
    write_termination = "\n"
    check_errors_after_write = True

    average_count = control(
        "SENS:AVER:COUN?",
        "SENS:AVER:COUN {}",
        "Samples averaged per reading (1 to 10 000; each takes about 3 ms).",
        validator=strict_integer_range(1, MAX_AVERAGE_COUNT),
        parse=_parse_count,
    )
    _wavelength = control(
        "SENS:CORR:WAV?",
        "SENS:CORR:WAV {}",
        "Correction wavelength (nm); validated by :meth:`set_wavelength_nm` against the sensor's range.",
        parse=_parse_finite,
        format_value=lambda wavelength_nm: f"{wavelength_nm:g}",
    )

    def __init__(self, resource: Any, *, name: str | None = None) -> None:
        super().__init__(resource, name=name)
        self._wavelength_range_nm: tuple[float, float] | None = None

    # -- connection -------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Clear old errors, measure power in watts with auto ranging, read the sensor's wavelength range."""
        # errors left by an earlier session would otherwise be blamed on the first command sent here
        self.write("*CLS")
        self.write("CONF:POW")
        self.write("SENS:POW:UNIT W")
        self.write("SENS:POW:RANG:AUTO ON")
        self._wavelength_range_nm = None
        self.wavelength_range_nm()

    def make_safe(self) -> None:
        """Nothing to do: a power meter only listens; it emits nothing and moves nothing."""

    # -- PowerMeter interface ---------------------------------------------------------------------------------
    def identity(self) -> InstrumentIdentity:
        return InstrumentIdentity(*self.query_parsed("*IDN?", _split_identity))

    def wavelength_range_nm(self) -> tuple[float, float]:
        """The attached sensor's correction wavelength range, read once per connection."""
        if self._wavelength_range_nm is None:
            low = self.query_parsed("SENS:CORR:WAV? MIN", _parse_finite)
            high = self.query_parsed("SENS:CORR:WAV? MAX", _parse_finite)
            if not 0.0 < low <= high:
                raise InstrumentReplyError(
                    self.name, f"inconsistent sensor range {low:g} nm to {high:g} nm", command="SENS:CORR:WAV? MAX"
                )
            self._wavelength_range_nm = (low, high)
        return self._wavelength_range_nm

    def set_wavelength_nm(self, wavelength_nm: float) -> None:
        """Set the correction wavelength.

        Raises
        ------
        ValueError
            ``wavelength_nm`` is not a number or outside the sensor's range; nothing is sent.
        """
        # a negative or non-finite wavelength is wrong for any sensor: refuse it without asking the meter
        strict_range(0.0, math.inf, unit="nm")("wavelength_nm", wavelength_nm)
        low, high = self.wavelength_range_nm()
        self._wavelength = strict_range(low, high, unit="nm")("wavelength_nm", wavelength_nm)

    def wavelength_nm(self) -> float:
        return float(self._wavelength)

    def power_w(self) -> float:
        """Take one reading (``MEAS:POW?``), in watts.

        Raises
        ------
        InstrumentReplyError
            The meter answered with SCPI's not-a-number (sensor saturated or unplugged) or something unreadable.
        """
        power_w = self.query_parsed("MEAS:POW?", _parse_finite)
        if abs(power_w) >= OVERRANGE_W:
            raise InstrumentReplyError(
                self.name, "reading over range (sensor saturated or absent)", command="MEAS:POW?", reply=f"{power_w:E}"
            )
        return float(power_w)

    # -- protocol hooks -------------------------------------------------------------------------------------

    def _check_errors(self, command: str) -> None:
        """Read ``SYST:ERR?`` until ``0,"No error"``; raise naming ``command`` if anything else came first."""
        queued = drain_error_queue(self, query="SYST:ERR?", max_reads=MAX_ERRORS_READ, command=command)
        errors = [reply for _, _, reply in queued]
        if errors:
            more = f" (then {'; '.join(errors[1:])})" if len(errors) > 1 else ""
            raise InstrumentReplyError(
                self.name, f"instrument error {errors[0]}{more}", command=command, reply=errors[0]
            )
