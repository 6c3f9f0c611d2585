"""Virtual Thorlabs PM100D with a silicon photodiode sensor (S120C-like, 400–1100 nm) watching the laser.

Speaks the PM100D's SCPI subset byte for byte (``\\n`` terminated, no acknowledgement of commands): a command
the instrument does not know or cannot execute is silently queued as an SCPI error for ``SYST:ERR?``, exactly
as the real meter does, and an unknown *query* gets no answer at all (the controller times out).

The reading is what a silicon sensor corrected for the set wavelength reports for the laser's true output
(:meth:`drivers.virtual.bench.VirtualBench.power_meter_w`): a correction wavelength different from the laser's
scales it by the ratio of the sensor's responsivities.

Also home of :func:`scpi_header`, the SCPI header matcher the twins share.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from drivers.virtual.bench import VirtualBench
from drivers.virtual.server import InstrumentTwin


def scpi_header(template: str, *, suffix: str = "") -> re.Pattern[str]:
    """Compile a SCPI header template such as ``[:SENSe]:CORRection:WAVelength?`` into a regular expression.

    Each mnemonic matches its short form (its capitals) or its long form, in any case; ``[...]`` nodes are
    optional; common commands (``*IDN?``) match literally. ``suffix`` is a pattern allowed after every mnemonic
    (``"1?"`` accepts the OBIS channel number as in ``SOUR1:AM:STAT``). Match it against the header with a
    leading colon (see :func:`normalized_header`).

    Examples
    --------
    >>> bool(scpi_header("[:SENSe]:CORRection:WAVelength?").match(":sens:correction:wav?"))
    True
    >>> bool(scpi_header("[:SENSe]:CORRection:WAVelength?").match(":CORR:WAVE?"))
    False
    """
    if template.startswith("*"):
        return re.compile(re.escape(template) + r"\Z", re.IGNORECASE)
    query = template.endswith("?")
    nodes = []
    for bracket, mnemonic in re.findall(r"(\[?):([A-Za-z]+)\]?", template.removesuffix("?")):
        short = re.match(r"[A-Z]+", mnemonic)
        if short is None:
            raise ValueError(f"mnemonic {mnemonic!r} in {template!r} has no short form in capitals")
        node = f":(?:{mnemonic.upper()}|{short.group()}){suffix}"
        nodes.append(f"(?:{node})?" if bracket else node)
    return re.compile("".join(nodes) + (r"\?" if query else "") + r"\Z", re.IGNORECASE)


def normalized_header(header: str) -> str:
    """The header with exactly one leading colon (common commands unchanged), ready for :func:`scpi_header`."""
    return header if header.startswith("*") else ":" + header.lstrip(":")


def format_nr3(value: float) -> str:
    """A number the way the PM100D sends it: ``1.234567E-03``."""
    return f"{value:.6E}"


Handler = Callable[[str], str | None]


class PM100DTwin(InstrumentTwin):
    """The PM100D protocol over the bench; instrument state lives in the twin (it outlives a connection)."""

    role = "power_meter"
    input_termination = b"\n"
    output_termination = b"\n"

    identification: ClassVar[str] = "Thorlabs,PM100D,P0012345,2.8.0"
    sensor_range_nm: ClassVar[tuple[float, float]] = (400.0, 1100.0)
    average_count_range: ClassVar[tuple[int, int]] = (1, 100_000)
    error_queue_length: ClassVar[int] = 10

    def __init__(self, bench: VirtualBench) -> None:
        super().__init__(bench)
        self._errors: deque[tuple[int, str]] = deque()
        self._reset()
        self._commands: list[tuple[re.Pattern[str], Handler]] = [
            (scpi_header(template), handler)
            for template, handler in [
                ("*IDN?", self._identify),
                ("*CLS", self._clear_status),
                ("*RST", self._reset_command),
                (":SYSTem:ERRor[:NEXT]?", self._next_error),
                ("[:SENSe]:CORRection:WAVelength", self._set_wavelength),
                ("[:SENSe]:CORRection:WAVelength?", self._get_wavelength),
                ("[:SENSe]:POWer[:DC]:RANGe:AUTO", self._set_auto_range),
                ("[:SENSe]:POWer[:DC]:RANGe:AUTO?", self._get_auto_range),
                ("[:SENSe]:POWer[:DC]:UNIT", self._set_unit),
                ("[:SENSe]:POWer[:DC]:UNIT?", self._get_unit),
                ("[:SENSe]:AVERage[:COUNt]", self._set_average_count),
                ("[:SENSe]:AVERage[:COUNt]?", self._get_average_count),
                (":CONFigure[:SCALar]:POWer", self._configure_power),
                (":CONFigure?", self._get_configuration),
                (":MEASure[:SCALar]:POWer?", self._measure_power),
            ]
        ]

    def _reset(self) -> None:
        self.wavelength_nm = 633.0
        self.auto_range = True
        self.unit = "W"
        self.average_count = 1
        self.configuration = "POW"

    # -- dispatch --------------------------------------------------------------------------------------------
    def handle(self, command: str, session: dict[str, Any]) -> bytes | None:
        header, _, argument = command.strip().partition(" ")
        header = normalized_header(header)
        for pattern, handler in self._commands:
            if pattern.match(header):
                reply = handler(argument.strip())
                return None if reply is None else reply.encode("ascii") + self.output_termination
        self._push_error(-113, "Undefined header")
        return None

    def _push_error(self, code: int, message: str) -> None:
        if len(self._errors) >= self.error_queue_length:
            # SCPI: a full queue keeps its oldest entries and replaces the newest with "Queue overflow"
            self._errors[-1] = (-350, "Queue overflow")
            return
        self._errors.append((code, message))

    def _number(self, argument: str, minimum: float, maximum: float) -> float | None:
        """Parse a numeric parameter (or MIN/MAX); queue the SCPI error and return None when it is unusable."""
        text = argument.upper()
        if not text:
            self._push_error(-109, "Missing parameter")
            return None
        if text in ("MIN", "MINIMUM"):
            return minimum
        if text in ("MAX", "MAXIMUM"):
            return maximum
        try:
            value = float(text)
        except ValueError:
            self._push_error(-104, "Data type error")
            return None
        if not (math.isfinite(value) and minimum <= value <= maximum):
            self._push_error(-222, "Data out of range")
            return None
        return value

    def _switch(self, argument: str) -> bool | None:
        text = argument.upper()
        if text in ("ON", "1"):
            return True
        if text in ("OFF", "0"):
            return False
        self._push_error(-109 if not text else -104, "Missing parameter" if not text else "Data type error")
        return None

    # -- commands --------------------------------------------------------------------------------------------
    def _identify(self, argument: str) -> str:
        return self.identification

    def _clear_status(self, argument: str) -> None:
        self._errors.clear()

    def _reset_command(self, argument: str) -> None:
        self._reset()

    def _next_error(self, argument: str) -> str:
        code, message = self._errors.popleft() if self._errors else (0, "No error")
        return f'{code},"{message}"'

    def _set_wavelength(self, argument: str) -> None:
        value = self._number(argument, *self.sensor_range_nm)
        if value is not None:
            self.wavelength_nm = value

    def _get_wavelength(self, argument: str) -> str | None:
        which = argument.upper()
        if which in ("MIN", "MINIMUM"):
            return format_nr3(self.sensor_range_nm[0])
        if which in ("MAX", "MAXIMUM"):
            return format_nr3(self.sensor_range_nm[1])
        if which:
            self._push_error(-104, "Data type error")
            return None
        return format_nr3(self.wavelength_nm)

    def _set_auto_range(self, argument: str) -> None:
        state = self._switch(argument)
        if state is not None:
            self.auto_range = state

    def _get_auto_range(self, argument: str) -> str:
        return "1" if self.auto_range else "0"

    def _set_unit(self, argument: str) -> None:
        text = argument.upper()
        if text in ("W", "DBM"):
            self.unit = text
        else:
            self._push_error(-109 if not text else -224, "Missing parameter" if not text else "Illegal parameter value")

    def _get_unit(self, argument: str) -> str:
        return self.unit

    def _set_average_count(self, argument: str) -> None:
        value = self._number(argument, *self.average_count_range)
        if value is not None:
            self.average_count = round(value)

    def _get_average_count(self, argument: str) -> str:
        return str(self.average_count)

    def _configure_power(self, argument: str) -> None:
        self.configuration = "POW"

    def _get_configuration(self, argument: str) -> str:
        return self.configuration

    def _measure_power(self, argument: str) -> str:
        self.configuration = "POW"
        power_w = self.bench.power_meter_w(self.wavelength_nm)
        if self.unit == "DBM":
            # the meter floors dBm at its noise level rather than sending the log of a non-positive number
            return format_nr3(10.0 * math.log10(max(power_w, 1e-12) / 1e-3))
        return format_nr3(power_w)
