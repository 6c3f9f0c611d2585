"""Virtual Thorlabs PM100D with a silicon photodiode sensor (S120C-like, 400–1100 nm) watching the laser.

Speaks the PM100D's SCPI subset byte for byte (``\\n`` terminated, no acknowledgement of commands): a command
the instrument does not know or cannot execute is silently queued as an SCPI error for ``SYST:ERR?``, exactly
as the real meter does, and an unknown *query* gets no answer at all (the controller times out).

The reading is what a silicon sensor corrected for the set wavelength reports for the laser's true output
(:meth:`drivers.virtual.bench.VirtualBench.power_meter_w`): a correction wavelength different from the laser's
scales it by the ratio of the sensor's responsivities.

The SCPI plumbing (header matching, parameters, the error queue) is :mod:`drivers.virtual.scpi`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

from drivers.virtual.bench import VirtualBench
from drivers.virtual.scpi import (
    ErrorQueue,
    ScpiError,
    check_range,
    find_command,
    format_error,
    format_nr3,
    matches_mnemonic,
    parse_number,
    require_argument,
    scpi_header,
    split_command,
)
from drivers.virtual.server import InstrumentTwin

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
        self._errors = ErrorQueue(self.error_queue_length)
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
        header, argument = split_command(command)
        try:
            reply = find_command(self._commands, header)(argument)
        except ScpiError as error:
            self._errors.push(error.code, error.message)
            return None
        return None if reply is None else reply.encode("ascii") + self.output_termination

    @staticmethod
    def _number(argument: str, minimum: float, maximum: float) -> float:
        """A numeric parameter (or MIN/MAX) in ``[minimum, maximum]``."""
        value = parse_number(require_argument(argument), minimum=minimum, maximum=maximum)
        return check_range(value, minimum, maximum)

    @staticmethod
    def _switch(argument: str) -> bool:
        text = require_argument(argument).upper()
        if text in ("ON", "1"):
            return True
        if text in ("OFF", "0"):
            return False
        raise ScpiError(-104, "Data type error")

    # -- commands --------------------------------------------------------------------------------------------
    def _identify(self, argument: str) -> str:
        return self.identification

    def _clear_status(self, argument: str) -> None:
        self._errors.clear()

    def _reset_command(self, argument: str) -> None:
        self._reset()

    def _next_error(self, argument: str) -> str:
        code, message, _ = self._errors.pop()
        return format_error(code, message)

    def _set_wavelength(self, argument: str) -> None:
        self.wavelength_nm = self._number(argument, *self.sensor_range_nm)

    def _get_wavelength(self, argument: str) -> str:
        if matches_mnemonic(argument, "MINimum"):
            return format_nr3(self.sensor_range_nm[0])
        if matches_mnemonic(argument, "MAXimum"):
            return format_nr3(self.sensor_range_nm[1])
        if argument:
            raise ScpiError(-104, "Data type error")
        return format_nr3(self.wavelength_nm)

    def _set_auto_range(self, argument: str) -> None:
        self.auto_range = self._switch(argument)

    def _get_auto_range(self, argument: str) -> str:
        return "1" if self.auto_range else "0"

    def _set_unit(self, argument: str) -> None:
        text = require_argument(argument).upper()
        if text not in ("W", "DBM"):
            raise ScpiError(-224, "Illegal parameter value")
        self.unit = text

    def _get_unit(self, argument: str) -> str:
        return self.unit

    def _set_average_count(self, argument: str) -> None:
        self.average_count = round(self._number(argument, *self.average_count_range))

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
