"""Virtual Coherent OBIS LX laser driving the bench's :class:`~drivers.virtual.bench.LaserModel`.

Byte for byte what the laser sends: ``\\r\\n`` after every line; with handshaking on (the power-up default here)
``OK`` after each command and after each query's value; a refused command or query gets the single line
``ERR-nnn`` instead (no ``OK``). Long and short SCPI forms and the channel suffix ``1`` after any mnemonic
(``SOUR1:AM:STAT``) are accepted, as on the real laser; any other header, including another suffix, is
``ERR-100``. Header matching is :mod:`drivers.virtual.scpi`'s.

Physics lives in the bench: the setpoint and emission are ``bench.laser.setpoint_w`` / ``emission``; an open
interlock (``bench.laser.open_interlock()``) has already switched emission off, and ``SOUR:AM:STAT ON`` is then
refused with ``ERR-241`` (device unavailable).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

from drivers.virtual.bench import VirtualBench
from drivers.virtual.scpi import ScpiError, find_command, scpi_header, split_command
from drivers.virtual.server import InstrumentTwin

# SYST:STAT? bits the twin reports (see drivers.obis.OBISStatus)
_EMISSION = 0x0000_0002
_STANDBY = 0x0000_0008
_POWER_VOLTAGE = 0x0000_1000
_INTERLOCK_OPEN = 0x0400_0000

Handler = Callable[[str], str | None]


class _RefusedError(Exception):
    """A command the laser answers with ``ERR-nnn``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class OBISTwin(InstrumentTwin):
    """The OBIS host protocol over the shared bench."""

    role = "laser"
    input_termination = b"\r\n"
    output_termination = b"\r\n"

    serial_number: ClassVar[str] = "123456"
    firmware: ClassVar[str] = "V1.0.1 - Dec 14 2010"

    def __init__(self, bench: VirtualBench) -> None:
        super().__init__(bench)
        self.handshake = True
        self.operating_mode = "CWP"
        self._commands: list[tuple[re.Pattern[str], Handler]] = [
            (scpi_header(_with_channel_suffix(template)), handler)
            for template, handler in [
                ("*IDN?", self._identify),
                (":SYSTem:INFormation:SNUMber?", lambda _: self.serial_number),
                (":SYSTem:INFormation:WAVelength?", lambda _: f"{self.bench.laser.wavelength_nm:.1f}"),
                (":SYSTem:COMMunicate:HANDshaking", self._set_handshake),
                (":SYSTem:COMMunicate:HANDshaking?", lambda _: "ON" if self.handshake else "OFF"),
                (":SYSTem:LOCK?", lambda _: "ON" if self.bench.laser.interlock_closed else "OFF"),
                (":SYSTem:STATus?", lambda _: f"{self._status_word():08X}"),
                (":SYSTem:FAULt?", lambda _: "00000000"),
                (":SOURce:AM:INTernal", self._set_internal_mode),
                (":SOURce:AM:SOURce?", lambda _: self.operating_mode),
                (":SOURce:AM:STATe", self._set_emission),
                (":SOURce:AM:STATe?", lambda _: "ON" if self.bench.laser.emission else "OFF"),
                (":SOURce:POWer:LIMit:LOW?", lambda _: _watts(self.bench.laser.min_power_w)),
                (":SOURce:POWer:LIMit:HIGH?", lambda _: _watts(self.bench.laser.max_power_w)),
                (":SOURce:POWer:LEVel:IMMediate:AMPLitude", self._set_power),
                (":SOURce:POWer:LEVel:IMMediate:AMPLitude?", lambda _: _watts(self.bench.laser.setpoint_w)),
                (":SOURce:POWer:LEVel?", self._output_power),
            ]
        ]

    # -- dispatch --------------------------------------------------------------------------------------------
    def handle(self, command: str, session: dict[str, Any]) -> bytes | None:
        header, argument = split_command(command)
        try:
            handler = find_command(self._commands, header)
        except ScpiError:
            return self._line("ERR-100")
        try:
            value = handler(argument)
        except _RefusedError as refusal:
            return self._line(refusal.code)
        lines = [value] if header.endswith("?") and value is not None else []
        if self.handshake:
            lines.append("OK")
        return b"".join(self._line(line) for line in lines) or None

    def _line(self, text: str) -> bytes:
        return text.encode("ascii") + self.output_termination

    # -- commands --------------------------------------------------------------------------------------------
    def _identify(self, argument: str) -> str:
        laser = self.bench.laser
        return f"Coherent, Inc - OBIS {laser.wavelength_nm:.0f}nm {laser.max_power_w * 1e3:.0f}mW C - {self.firmware}"

    def _set_handshake(self, argument: str) -> None:
        self.handshake = _on_off(argument)

    def _set_internal_mode(self, argument: str) -> None:
        mode = argument.upper()
        if not mode:
            raise _RefusedError("ERR-109")
        if mode not in ("CWP", "CWC"):
            raise _RefusedError("ERR-220")
        self.operating_mode = mode

    def _set_emission(self, argument: str) -> None:
        on = _on_off(argument)
        laser = self.bench.laser
        if on and not laser.interlock_closed:
            raise _RefusedError("ERR-241")
        laser.emission = on

    def _set_power(self, argument: str) -> None:
        if not argument:
            raise _RefusedError("ERR-109")
        try:
            power_w = float(argument)
        except ValueError:
            raise _RefusedError("ERR-220") from None
        laser = self.bench.laser
        if not (math.isfinite(power_w) and laser.min_power_w <= power_w <= laser.max_power_w):
            raise _RefusedError("ERR-220")
        laser.setpoint_w = power_w

    def _output_power(self, argument: str) -> str:
        return _watts(float(self.bench.laser.output_power_w(self.bench.now())))

    def _status_word(self) -> int:
        laser = self.bench.laser
        word = _EMISSION | _POWER_VOLTAGE if laser.emission else _STANDBY
        if not laser.interlock_closed:
            word |= _INTERLOCK_OPEN
        return word


def _with_channel_suffix(template: str) -> str:
    """``:SOURce:AM:STATe?`` → ``:SOURce[1]:AM[1]:STATe[1]?``: the laser takes the channel number after any mnemonic."""
    return template if template.startswith("*") else re.sub(r"([A-Za-z])(?=[:?]|$)", r"\1[1]", template)


def _on_off(argument: str) -> bool:
    text = argument.upper()
    if not text:
        raise _RefusedError("ERR-109")
    if text not in ("ON", "OFF"):
        raise _RefusedError("ERR-220")
    return text == "ON"


def _watts(power_w: float) -> str:
    return f"{power_w:.5f}"
