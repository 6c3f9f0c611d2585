"""Keithley 2450 SourceMeter, native SCPI command set (not TSP, not the "SCPI 2400" emulation).

The EL-probing source-measure unit: it forces a current through the chip the probes touch and measures the
forward voltage, or applies a reverse voltage and measures the leakage current.

Command subset
--------------
Checked against the Model 2450 Reference Manual (2450-901-01), section 6 "SCPI command reference":

- ``*IDN?`` → ``KEITHLEY INSTRUMENTS,MODEL 2450,<serial>,<firmware>``; ``*RST``; ``*CLS`` (clears the event log);
  ``*WAI`` (holds later commands until the trigger model is done).
- ``:SOUR:FUNC CURR|VOLT`` and ``:SOUR:FUNC?``.
- ``:SOUR:CURR:LEV <A>``, ``:SOUR:VOLT:LEV <V>`` and their queries (``:SOURce[1]:<function>[:LEVel][:IMMediate]
  [:AMPLitude]``).
- ``:SOUR:CURR:VLIM <V>``, ``:SOUR:VOLT:ILIM <A>``: the source limit ("compliance"), an absolute value;
  ``:SOUR:CURR:VLIM:TRIP?``, ``:SOUR:VOLT:ILIM:TRIP?`` answer ``1`` while the source is clamped at it.
- ``:SENS:FUNC "VOLT"|"CURR"``, ``:SENS:VOLT:RANG:AUTO ON``, ``:SENS:CURR:RANG:AUTO ON``.
- ``:OUTP ON|OFF``, ``:OUTP?`` (``1``/``0``).
- ``:READ?`` (present measure function), ``:MEAS:VOLT?``, ``:MEAS:CURR?`` (these also select the function); an
  overflow reads ``9.9E+37``.
- ``:SOUR:SWE:CURR:LIN <start>, <stop>, <points>, <delay>, <count>, <rangeType>, <failAbort>`` builds the
  linear-sweep trigger model (sent with count ``1``, range ``BEST``, failAbort ``OFF``); ``:TRAC:CLE "defbuffer1"``;
  ``:INIT`` runs it; ``:TRAC:DATA? 1, <n>, "defbuffer1", SOUR, READ`` → ``src1,read1,src2,read2,...`` (ASCII).
- ``:SYST:ERR?`` → ``0,"No error;0;0 0"``, or ``<code>,"<message>;<severity>;<date time>"`` such as
  ``-113,"Undefined header;1;2024/01/01 00:00:12.345"``.

The 2450 does not acknowledge commands, so every write is followed by ``:SYST:ERR?`` (the error queue is drained
and the first error raised as :class:`~drivers.errors.InstrumentReplyError` naming the command). A query the
instrument rejects gets no reply at all, which surfaces as :class:`~drivers.errors.InstrumentTimeoutError`.

Ranges (2450 specification): source ±1.05 A / ±210 V; voltage limit 0.02 V to 210 V; current limit 1 nA to
1.05 A. Everything is range-checked before anything is sent.

Raw-socket transport (``TCPIP0::<host>::5025::SOCKET``) through pyvisa-py 0.8 needs two helps, both provided by
the base class (TCP_NODELAY on socket resources, dropped connections reported as such).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import numpy as np

from drivers.base import Instrument, control, measurement, one_of, parse_bool, strict_integer_range, strict_range
from drivers.errors import InstrumentReplyError
from drivers.interfaces import InstrumentIdentity, SourceMeter
from drivers.scpi import drain_error_queue, format_number

MAX_CURRENT_A = 1.05
MAX_VOLTAGE_V = 210.0
MIN_VOLTAGE_LIMIT_V = 0.02
MIN_CURRENT_LIMIT_A = 1e-9
MAX_SWEEP_POINTS = 100_000  # the default reading buffer holds 100 000 readings; a longer sweep would wrap it
MIN_SWEEP_DELAY_S = 50e-6
MAX_SWEEP_DELAY_S = 10_000.0
OVERFLOW_READING = 9.9e37  # what the 2450 returns for a reading beyond the top of its range

# A generous per-point time for the sweep wait: one NPLC reading plus autozero and autorange at 50 Hz mains.
_SWEEP_SECONDS_PER_POINT = 0.1
_MAX_ERROR_READS = 32  # the error queue is drained after each write; stop if it never reports "No error"
_ERROR_QUERY = ":SYST:ERR?"

_validate_current = strict_range(-MAX_CURRENT_A, MAX_CURRENT_A, unit="A")
_validate_voltage = strict_range(-MAX_VOLTAGE_V, MAX_VOLTAGE_V, unit="V")
_validate_voltage_limit = strict_range(MIN_VOLTAGE_LIMIT_V, MAX_VOLTAGE_V, unit="V")
_validate_current_limit = strict_range(MIN_CURRENT_LIMIT_A, MAX_CURRENT_A, unit="A")
_validate_points = strict_integer_range(2, MAX_SWEEP_POINTS)


class SmuFunction(StrEnum):
    """What the 2450 sources or measures; the values are the SCPI mnemonics."""

    CURRENT = "CURR"
    VOLTAGE = "VOLT"


def _format_number(value: float) -> str:
    """A number as sent to the instrument: up to 9 significant digits, no float noise (``0.3``, ``1e-09``)."""
    return format_number(value, significant_digits=9)


def _format_on_off(on: bool) -> str:
    return "ON" if on else "OFF"


def parse_reading(reply: str) -> float:
    """Parse one reading; the 2450's overflow value is an error, not a number to compute with."""
    value = float(reply)
    if abs(value) >= OVERFLOW_READING:
        raise ValueError("measurement overflow (reading beyond the top of the range)")
    return value


def _parse_identity(reply: str) -> InstrumentIdentity:
    fields = [field.strip() for field in reply.split(",")]
    if len(fields) != 4:
        raise ValueError("expected manufacturer,model,serial,firmware")
    manufacturer, model, serial, firmware = fields
    return InstrumentIdentity(manufacturer, model.removeprefix("MODEL ").strip(), serial, firmware)


def _validate_delay(name: str, value: Any) -> float:
    delay_s = strict_range(0.0, MAX_SWEEP_DELAY_S, unit="s")(name, value)
    if 0.0 < delay_s < MIN_SWEEP_DELAY_S:
        allowed = f"0 or {MIN_SWEEP_DELAY_S:g} to {MAX_SWEEP_DELAY_S:g} s"
        raise ValueError(f"{name}: {value!r} is outside the allowed values {allowed}")
    return delay_s


class Keithley2450(Instrument, SourceMeter):
    """Keithley 2450 SourceMeter over its native SCPI command set.

    Parameters
    ----------
    resource
        An open pyvisa resource (``TCPIP0::<host>::5025::SOCKET`` for the raw socket, or USB/GPIB), or a
        :class:`drivers.testing.ProtocolResource`.
    name
        How errors name this instrument.

    Examples
    --------
    >>> with Keithley2450.open("TCPIP0::192.168.0.20::5025::SOCKET") as smu:  # doctest: +SKIP
    ...     smu.source_current(1e-3, voltage_limit_v=5.0)
    ...     smu.set_output(True)
    ...     forward_v = smu.measure_voltage_v()
    ...     open_contact = smu.in_compliance()
    """

    model = "Keithley 2450"
    read_termination = "\n"
    write_termination = "\n"
    check_errors_after_write = True

    # -- declared settings and readings ------------------------------------------------------------------------
    source_function = control(
        ":SOUR:FUNC?",
        ":SOUR:FUNC {}",
        "What the output sources (:class:`SmuFunction`).",
        validator=one_of(list(SmuFunction)),
        parse=SmuFunction,
    )
    source_current_a = control(
        ":SOUR:CURR:LEV?",
        ":SOUR:CURR:LEV {}",
        "Current source level (A), -1.05 to 1.05; used while the source function is current.",
        validator=_validate_current,
        format_value=_format_number,
    )
    source_voltage_v = control(
        ":SOUR:VOLT:LEV?",
        ":SOUR:VOLT:LEV {}",
        "Voltage source level (V), -210 to 210; used while the source function is voltage.",
        validator=_validate_voltage,
        format_value=_format_number,
    )
    voltage_limit_v = control(
        ":SOUR:CURR:VLIM?",
        ":SOUR:CURR:VLIM {}",
        "Voltage limit (compliance) of the current source (V), 0.02 to 210.",
        validator=_validate_voltage_limit,
        format_value=_format_number,
    )
    current_limit_a = control(
        ":SOUR:VOLT:ILIM?",
        ":SOUR:VOLT:ILIM {}",
        "Current limit (compliance) of the voltage source (A), 1e-9 to 1.05.",
        validator=_validate_current_limit,
        format_value=_format_number,
    )
    output_enabled = control(
        ":OUTP?",
        ":OUTP {}",
        "True while the output is on.",
        validator=one_of([True, False]),
        parse=parse_bool(),
        format_value=_format_on_off,
    )
    voltage_limit_tripped = measurement(
        ":SOUR:CURR:VLIM:TRIP?",
        "True while the current source is clamped at its voltage limit (an open contact, say).",
        parse=parse_bool(),
    )
    current_limit_tripped = measurement(
        ":SOUR:VOLT:ILIM:TRIP?",
        "True while the voltage source is clamped at its current limit (a short, say).",
        parse=parse_bool(),
    )
    reading = measurement(
        ":READ?",
        "One reading of the present measure function (V or A), stored in the default buffer.",
        parse=parse_reading,
    )

    # -- connection ------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Check that a 2450 answers, then clear its event log so old errors are not blamed on our commands."""
        identity = self.identity()
        if identity.model != "2450":
            raise InstrumentReplyError(
                self.name, f"this driver is for the Model 2450, not {identity.model!r}", command="*IDN?"
            )
        self.write("*CLS")

    def identity(self) -> InstrumentIdentity:
        """Query ``*IDN?``; the model is reported without the ``MODEL`` prefix (``"2450"``)."""
        return self.query_parsed("*IDN?", _parse_identity)

    def reset(self) -> None:
        """``*RST``: output off, voltage source at 0 V, default limits, buffers cleared."""
        self.write("*RST")

    def make_safe(self) -> None:
        """Output off first (what matters most), then both source levels to 0 so a later ``:OUTP ON`` is harmless."""
        self.set_output(False)
        self.source_current_a = 0.0
        self.source_voltage_v = 0.0

    # -- SourceMeter ---------------------------------------------------------------------------------------------
    def source_current(self, current_a: float, *, voltage_limit_v: float) -> None:
        """Source ``current_a`` with a voltage limit; the limit is set before the level (output state unchanged)."""
        current_a = _validate_current("current_a", current_a)
        voltage_limit_v = _validate_voltage_limit("voltage_limit_v", voltage_limit_v)
        with self.lock:
            self.source_function = SmuFunction.CURRENT
            self.voltage_limit_v = voltage_limit_v
            self.source_current_a = current_a

    def source_voltage(self, voltage_v: float, *, current_limit_a: float) -> None:
        """Source ``voltage_v`` with a current limit; the limit is set before the level (output state unchanged)."""
        voltage_v = _validate_voltage("voltage_v", voltage_v)
        current_limit_a = _validate_current_limit("current_limit_a", current_limit_a)
        with self.lock:
            self.source_function = SmuFunction.VOLTAGE
            self.current_limit_a = current_limit_a
            self.source_voltage_v = voltage_v

    def set_output(self, on: bool) -> None:
        """Switch the output on or off."""
        self.output_enabled = on

    def output(self) -> bool:
        """True while the output is on."""
        return bool(self.output_enabled)

    def set_measure_function(self, function: SmuFunction) -> None:
        """Select what ``:READ?`` and sweeps measure, with autorange on for it."""
        function = one_of(list(SmuFunction))("function", function)
        with self.lock:
            self.write(f':SENS:FUNC "{function}"')
            self.write(f":SENS:{function}:RANG:AUTO ON")

    def measure_voltage_v(self) -> float:
        """Measure the voltage (``:MEAS:VOLT?`` also makes voltage the measure function)."""
        return float(self.query_parsed(":MEAS:VOLT?", parse_reading))

    def measure_current_a(self) -> float:
        """Measure the current (``:MEAS:CURR?`` also makes current the measure function)."""
        return float(self.query_parsed(":MEAS:CURR?", parse_reading))

    def in_compliance(self) -> bool:
        """True while the source is clamped at its limit: the voltage limit when sourcing current (an open or
        high-resistance contact), the current limit when sourcing voltage (a short). A reading taken while this
        is True is the limit, not a property of the chip."""
        with self.lock:
            if self.source_function is SmuFunction.CURRENT:
                return bool(self.voltage_limit_tripped)
            return bool(self.current_limit_tripped)

    def sweep_current(
        self, start_a: float, stop_a: float, points: int, *, voltage_limit_v: float, delay_s: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run a linear current sweep measuring voltage; return (source readback A, measured voltage V).

        The sweep's trigger model turns the output on for the sweep and off at its end; the source level stays at
        the last point. It runs to the end even where the voltage limit is reached (``failAbort OFF``), so an
        open chip gives ``points`` readings at the limit rather than a truncated buffer; the source readback then
        shows the current that really flowed.

        Parameters
        ----------
        start_a, stop_a
            First and last current, each -1.05 to 1.05 A.
        points
            Number of source-measure points, 2 to 100 000 (the default buffer's size).
        voltage_limit_v
            Voltage limit during the sweep, 0.02 to 210 V.
        delay_s
            Extra delay before each measurement: 0, or 50 µs to 10 000 s.
        """
        start_a = _validate_current("start_a", start_a)
        stop_a = _validate_current("stop_a", stop_a)
        points = _validate_points("points", points)
        voltage_limit_v = _validate_voltage_limit("voltage_limit_v", voltage_limit_v)
        delay_s = _validate_delay("delay_s", delay_s)
        sweep = ", ".join([_format_number(start_a), _format_number(stop_a), str(points), _format_number(delay_s)])
        with self.lock:
            self.source_function = SmuFunction.CURRENT
            self.voltage_limit_v = voltage_limit_v
            self.set_measure_function(SmuFunction.VOLTAGE)
            self.write(f":SOUR:SWE:CURR:LIN {sweep}, 1, BEST, OFF")
            self.write(':TRAC:CLE "defbuffer1"')
            self.write(":INIT")
            # *WAI holds back the following error query until the sweep is done, so that query needs the time
            with self._timeout_extended_by_s(points * (delay_s + _SWEEP_SECONDS_PER_POINT)):
                self.write("*WAI")
            values = self.query_parsed(
                f':TRAC:DATA? 1, {points}, "defbuffer1", SOUR, READ', lambda reply: _parse_pairs(reply, points)
            )
        return values[:, 0].copy(), values[:, 1].copy()

    # -- protocol hooks --------------------------------------------------------------------------------------------
    def _check_errors(self, command: str) -> None:
        """Drain ``:SYST:ERR?``; raise the first error as an :class:`InstrumentReplyError` naming ``command``.

        A failure of the check itself (silence, garbage, a lost connection) is reported against ``command`` too:
        that is what the operator sent, the error query is ours.
        """
        errors = drain_error_queue(self, query=_ERROR_QUERY, max_reads=_MAX_ERROR_READS, command=command)
        if errors:
            code, message, reply = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise InstrumentReplyError(
                self.name, f"instrument error {code} {message}{more}", command=command, reply=reply
            )

    @contextlib.contextmanager
    def _timeout_extended_by_s(self, extra_s: float) -> Iterator[None]:
        """Lengthen the resource timeout for one long exchange; a resource without a numeric timeout is left alone."""
        original = getattr(self._resource, "timeout", None)
        if not isinstance(original, (int, float)) or math.isinf(original):
            yield
            return
        self._resource.timeout = original + extra_s * 1000.0
        try:
            yield
        finally:
            self._resource.timeout = original


def _parse_pairs(reply: str, points: int) -> np.ndarray:
    """``src1,read1,src2,read2,...`` → an array of shape (points, 2)."""
    fields = reply.split(",")
    if len(fields) != 2 * points:
        raise ValueError(f"expected {2 * points} values (source, reading for {points} points), got {len(fields)}")
    values = np.array([float(field) for field in fields], dtype=np.float64).reshape(points, 2)
    if np.any(np.abs(values[:, 1]) >= OVERFLOW_READING):
        raise ValueError("measurement overflow in the sweep (reading beyond the top of the range)")
    return values
