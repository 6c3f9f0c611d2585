"""Keithley DMM6500 6½-digit multimeter in digitize mode: the PL intensity digitizer.

The photodetector (or PMT) voltage goes into the front terminals. For fast mapping the stage's position trigger
drives the DMM6500's EXTERNAL TRIGGER IN; the trigger model then digitizes a fixed number of samples at a fixed
rate into ``defbuffer1``, and the scan engine reads the line back as binary doubles.

Command subset
--------------
Native SCPI command set (``*LANG SCPI``, the factory default), ``\\n`` in both directions (LAN raw socket, port
5025). Checked against the Model DMM6500 Reference Manual (DMM6500-901-01), section "SCPI command reference":

- ``*IDN?`` → ``KEITHLEY INSTRUMENTS,MODEL DMM6500,<serial>,<firmware>``; ``*RST``; ``*CLS`` (clears the event
  log, so errors left by an earlier session are not blamed on our first command).
- ``:DIG:FUNC "VOLT"`` selects digitize voltage (``[:SENSe[1]]:DIGitize:FUNCtion``).
- ``:DIG:VOLT:RANG <V>`` (100 mV, 1 V, 10 V, 100 V, 1000 V), ``:DIG:VOLT:SRAT <Hz>`` (1 kHz to 1 MHz),
  ``:DIG:COUN <n>`` and their queries.
- ``:TRAC:POIN <n>, "defbuffer1"`` sizes the reading buffer; ``:TRAC:CLE "defbuffer1"`` empties it;
  ``:TRAC:ACT? "defbuffer1"`` counts the readings in it.
- Trigger model, built block by block after ``:TRIG:LOAD "Empty"``:
  ``:TRIG:BLOC:BUFF:CLE 1, "defbuffer1"``, ``:TRIG:BLOC:WAIT 2, EXT, ENT`` (wait for the external input; ``ENT``
  forgets edges that arrived before the block was entered, so an edge from the previous line cannot start this
  one), ``:TRIG:BLOC:MDIG 3, "defbuffer1", AUTO`` (``AUTO`` = the digitize count). ``:TRIG:EXT:IN:EDGE RIS``
  selects the rising edge. ``:INIT`` starts the model, ``:ABOR`` stops it.
- ``:FORM:DATA SREal`` (IEEE-754 single precision: 7 significant digits, far finer than the digitizer's 16-bit
  resolution, in half the bytes of ``REAL``) and ``:FORM:BORD SWAP`` (little-endian); then
  ``:TRAC:DATA? <first>, <last>, "defbuffer1", READ`` (1-based, inclusive). The DMM6500 answers binary data as an
  IEEE 488.2 *indefinite*-length block: ``#0`` + 4 bytes per reading + ``\\n`` (the manual: binary responses "start
  with #0 and end with a new line"). The block carries no length, so the driver tells pyvisa how many readings to
  expect (``data_points``); a ``0x0A`` byte inside the data is then not mistaken for the end.
- ``:FORM:DATA ASC`` and ``:MEAS:VOLT:DC? "defbuffer2"`` for an untriggered DC reading. ``MEAS`` switches the
  active function to DC volts; storing the reading in ``defbuffer2`` keeps the digitized line in ``defbuffer1``
  intact. :meth:`KeithleyDMM6500.arm` re-selects the digitize function if a DC reading came in between.
- ``:SYST:ERR?`` → ``0,"No error;0;0 0"`` or ``<code>,"<message>;<severity>;<date time>"`` such as
  ``-222,"Data out of range;1;2024/01/01 00:00:12.345"``.

The DMM6500 does not acknowledge commands, so every write is followed by ``:SYST:ERR?``: the queue is drained and
the first error raised as :class:`~drivers.errors.InstrumentReplyError` naming the command. A query the instrument
rejects gets no reply, which surfaces as :class:`~drivers.errors.InstrumentTimeoutError`.

An over-range reading is ``9.9E+37``; :meth:`KeithleyDMM6500.read_samples_v` returns such samples as ``±inf`` so
no analysis mistakes them for a huge voltage, and :meth:`KeithleyDMM6500.read_voltage_v` raises.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from drivers.base import Instrument, control, one_of, strict_integer_range, strict_range
from drivers.errors import InstrumentReplyError
from drivers.interfaces import InstrumentIdentity, IntensityDetector
from drivers.scpi import drain_error_queue, format_number, raise_first_error

DIGITIZE_RANGES_V = (0.1, 1.0, 10.0, 100.0, 1000.0)
MIN_SAMPLE_RATE_HZ = 1e3
MAX_SAMPLE_RATE_HZ = 1e6
# The DMM6500 holds at most 7 000 000 readings, and only with the other default buffer shrunk; 6 000 000 fits next
# to defbuffer2 at its power-on size.
MAX_SAMPLE_COUNT = 6_000_000
MIN_BUFFER_POINTS = 10  # a reading buffer cannot be made smaller than 10 readings
OVERFLOW_READING_V = 9.9e37
LINE_BUFFER = "defbuffer1"
DC_BUFFER = "defbuffer2"


def _parse_count(reply: str) -> int:
    count = int(reply)
    if count < 0:
        raise ValueError("a reading count cannot be negative")
    return count


def _parse_reading(reply: str) -> float:
    value = float(reply)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


class KeithleyDMM6500(Instrument, IntensityDetector):
    """Keithley DMM6500 digitizing the PL photodetector voltage on an external (stage position) trigger.

    Parameters
    ----------
    resource
        An open pyvisa resource (``TCPIP0::<host>::5025::SOCKET``) or a protocol-test stand-in.
    name
        How errors name this instrument.
    digitize_range_v
        Digitize voltage range sent by :meth:`configure_triggered_acquisition`: 0.1, 1, 10, 100 or 1000 V. Pick
        the smallest range above the largest detector voltage expected; samples beyond it read as ``inf``.

    Examples
    --------
    >>> dmm = KeithleyDMM6500.open("TCPIP0::192.168.0.20::5025::SOCKET")  # doctest: +SKIP
    >>> dmm.configure_triggered_acquisition(100e3, 100_000)  # doctest: +SKIP
    >>> dmm.arm()  # doctest: +SKIP
    """

    model = "Keithley DMM6500"
    read_termination = "\n"
    write_termination = "\n"
    check_errors_after_write = True

    max_samples_per_query = 500_000
    """Readings per ``:TRAC:DATA?``: 4 MB, well inside the default 2 s timeout on a 100 Mbit/s LAN."""
    max_queued_errors = 32
    """How many error-queue entries one check drains at most (the queue cannot grow without bound)."""

    digitize_range_v = control(
        ":DIG:VOLT:RANG?",
        ":DIG:VOLT:RANG {}",
        "Digitize voltage range (V): 0.1, 1, 10, 100 or 1000.",
        validator=one_of(DIGITIZE_RANGES_V),
        format_value=format_number,
    )
    sample_rate_hz = control(
        ":DIG:VOLT:SRAT?",
        ":DIG:VOLT:SRAT {}",
        "Digitize sample rate (Hz), 1 kHz to 1 MHz.",
        validator=strict_range(MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ, unit="Hz"),
        format_value=format_number,
    )
    sample_count = control(
        ":DIG:COUN?",
        ":DIG:COUN {}",
        "Samples per trigger (the count the ``MDIG ... AUTO`` block takes).",
        validator=strict_integer_range(1, MAX_SAMPLE_COUNT),
        parse=_parse_count,
    )

    def __init__(self, resource: Any, *, name: str | None = None, digitize_range_v: float = 10.0) -> None:
        super().__init__(resource, name=name)
        self._range_v = float(one_of(DIGITIZE_RANGES_V)("digitize_range_v", digitize_range_v))
        # What the driver last selected; None = unknown. Switching costs a write and an error check, so it is only
        # sent when the state differs from what the next exchange needs.
        self._binary_format: bool | None = None
        self._digitize_selected = False
        self._line_setup: tuple[float, float] | None = None  # (rate, range) of the loaded line trigger model
        self._buffer_points = 0
        self._next_count: int | None = None  # the count the next arm() sets, if not sent yet

    # -- connection ----------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Clear the event log so errors from an earlier session are not reported against our commands."""
        self.write("*CLS")

    def identity(self) -> InstrumentIdentity:
        reply = self.query("*IDN?")
        parts = [part.strip() for part in reply.split(",")]
        if len(parts) != 4 or not parts[0]:
            raise InstrumentReplyError(self.name, "expected 4 comma-separated fields", command="*IDN?", reply=reply)
        return InstrumentIdentity(parts[0], parts[1].removeprefix("MODEL "), parts[2], parts[3])

    def reset(self) -> None:
        """``*RST``: factory settings (DC volts, ASCII data, empty trigger model)."""
        with self.lock:
            self.write("*RST")
            self._binary_format = False
            self._digitize_selected = False
            self._line_setup = self._next_count = None

    def make_safe(self) -> None:
        """Stop the trigger model: the DMM drives nothing, so idle is safe."""
        self.write(":ABOR")

    # -- IntensityDetector ---------------------------------------------------------------------------------------
    def max_sample_rate_hz(self) -> float:
        return MAX_SAMPLE_RATE_HZ

    def configure_triggered_acquisition(self, sample_rate_hz: float, sample_count: int) -> None:
        """Digitize ``sample_count`` samples at ``sample_rate_hz`` after the next rising edge on EXTERNAL IN.

        Sample ``i`` (0-based) is taken ``i / sample_rate_hz`` after the trigger edge.
        """
        rate_hz = strict_range(MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ, unit="Hz")("sample_rate_hz", sample_rate_hz)
        count = strict_integer_range(1, MAX_SAMPLE_COUNT)("sample_count", sample_count)
        with self.lock:
            if self._line_setup == (rate_hz, self._range_v) and count <= self._buffer_points:
                # same line set-up as last time (a scan's next line): at most the count changes, and arm()
                # sends it in the same message as :INIT; the trigger model, its external wait and the buffer
                # stay loaded, and block 1 clears the buffer at :INIT
                self._next_count = count
                return
            self._line_setup = self._next_count = None  # unknown until every setting below has been accepted
            self.write(":ABOR")  # settings are refused while a trigger model runs
            self.write(':DIG:FUNC "VOLT"')
            self._digitize_selected = True
            self.digitize_range_v = self._range_v
            self.sample_rate_hz = rate_hz
            self.sample_count = count
            self.write(f':TRAC:POIN {max(count, MIN_BUFFER_POINTS)}, "{LINE_BUFFER}"')
            self.write(f':TRAC:CLE "{LINE_BUFFER}"')
            self._select_binary_format(True)
            self.write(":FORM:BORD SWAP")
            self.write(":TRIG:EXT:IN:EDGE RIS")
            self.write(':TRIG:LOAD "Empty"')
            self.write(f':TRIG:BLOC:BUFF:CLE 1, "{LINE_BUFFER}"')
            self.write(":TRIG:BLOC:WAIT 2, EXT, ENT")
            self.write(f':TRIG:BLOC:MDIG 3, "{LINE_BUFFER}", AUTO')
            self._buffer_points = max(count, MIN_BUFFER_POINTS)
            self._line_setup = (rate_hz, self._range_v)

    def arm(self) -> None:
        """Start the trigger model: clear the buffer, then wait for the external edge.

        Settings still pending from :meth:`configure_triggered_acquisition` go in the same message (SCPI
        ``;``-separated units), so a scan's next line costs one write and one error check.
        """
        with self.lock:
            pending = self._next_count is not None
            units = [":ABOR"] if pending else []  # settings are refused while a trigger model runs
            if not self._digitize_selected:  # a DC reading switched the function since the last configure
                units.append(':DIG:FUNC "VOLT"')
            if pending:
                units.append(f":DIG:COUN {self._next_count}")  # costs nothing in this message, changed or not
            units.append(":INIT")
            self._next_count = None
            self.write(";".join(units))
            self._digitize_selected = True

    def samples_acquired(self) -> int:
        return int(self.query_parsed(f':TRAC:ACT? "{LINE_BUFFER}"', _parse_count))

    def read_samples_v(self, start: int, count: int) -> np.ndarray:
        """Read ``count`` samples from 0-based index ``start`` of ``defbuffer1``, in chunks of
        :attr:`max_samples_per_query`. Over-range samples come back as ``±inf``."""
        first = strict_integer_range(0, MAX_SAMPLE_COUNT)("start", start)
        total = strict_integer_range(0, MAX_SAMPLE_COUNT)("count", count)
        if first + total > MAX_SAMPLE_COUNT:
            raise ValueError(
                f"start + count: {first} + {total} is beyond the largest buffer of {MAX_SAMPLE_COUNT} samples"
            )
        samples = np.empty(total, dtype=np.float32)
        if total == 0:
            return samples.astype(np.float64)
        with self.lock:
            self._select_binary_format(True)
            for offset in range(0, total, self.max_samples_per_query):
                chunk = min(self.max_samples_per_query, total - offset)
                index = first + offset + 1  # buffer indices are 1-based and the end index is inclusive
                command = f':TRAC:DATA? {index}, {index + chunk - 1}, "{LINE_BUFFER}", READ'
                samples[offset : offset + chunk] = self.query_binary(
                    command, datatype="f", big_endian=False, count=chunk
                )
        # compared in single precision: 9.9E37 as a float32 is a little below 9.9E37 as a double
        overflow = np.abs(samples) >= np.float32(OVERFLOW_READING_V)
        samples[overflow] = np.copysign(np.inf, samples[overflow])
        return samples.astype(np.float64)

    def abort(self) -> None:
        self.write(":ABOR")

    def read_voltage_v(self) -> float:
        """One DC-volts reading (autoranged), stored in ``defbuffer2`` so the digitized line stays untouched."""
        command = f':MEAS:VOLT:DC? "{DC_BUFFER}"'
        with self.lock:
            self._select_binary_format(False)
            self._digitize_selected = False  # MEAS selects DC volts even if its reply is lost
            self._line_setup = None  # the next line loads its trigger model afresh
            value = float(self.query_parsed(command, _parse_reading))
        if abs(value) >= OVERFLOW_READING_V:
            raise InstrumentReplyError(self.name, "input over range", command=command, reply=f"{value:.6E}")
        return value

    # -- protocol hooks --------------------------------------------------------------------------------------------
    def _check_errors(self, command: str) -> None:
        raise_first_error(self, command, drain_error_queue(self, max_reads=self.max_queued_errors))

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _select_binary_format(self, binary: bool) -> None:
        if self._binary_format is not binary:
            self._binary_format = None  # unknown until the instrument has accepted the change
            self.write(":FORM:DATA SRE" if binary else ":FORM:DATA ASC")
            self._binary_format = binary
