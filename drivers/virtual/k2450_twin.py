"""Virtual Keithley 2450 SourceMeter speaking the native SCPI command set over the shared bench.

What it emulates
----------------
The subset :mod:`drivers.keithley_2450` uses, in the forms the 2450 Reference Manual documents: headers in short or
long form, any case, optional nodes (``SOURce[1]``, ``[:LEVel][:IMMediate][:AMPLitude]``, ``OUTPut[1][:STATe]``,
``FUNCtion[:MODE]``, ``SYSTem:ERRor[:NEXT]``, ``INITiate[:IMMediate]``, ``[:DC]``), ``MINimum``/``MAXimum``/
``DEFault`` for levels and limits; a channel suffix other than 1 is -114. Each header's template is in
``Keithley2450Twin._handlers``, matched by :mod:`drivers.virtual.scpi`. A rejected command or query is not
answered; it posts an event that ``:SYST:ERR?`` returns as ``<code>,"<message>;<severity>;<yyyy/mm/dd
hh:mm:ss.mmm>"`` (``0,"No error;0;0 0"`` when the queue is empty), e.g. ``-113,"Undefined header;1;..."`` or
``-222,"Parameter data out of range;1;..."``; the event log holds 100 entries (SCPI overflow).

Physics comes from the bench: readings are :meth:`VirtualBench.smu_voltage_v` / :meth:`VirtualBench.smu_current_a`
for the chip the probes touch, and :attr:`VirtualBench.smu` carries the output state, the active source function,
its level and its limit. The 2450 keeps a level and a limit per source function; the twin keeps both and copies
the active pair into the bench.

A sweep (``:SOUR:SWE:<f>:LIN`` then ``:INIT``) runs its trigger model at once: output on, the source level stepped
through the points with one (source readback, reading) pair per point appended to the buffer, output off at the
end, the source left at the last level. Virtual time is held busy for the sweep's duration, so at time scale 0
the clock jumps by it. Not emulated: ``;``-separated compound commands, infinite sweep counts, buffer elements
other than ``READ`` and ``SOUR``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from drivers.virtual.bench import VirtualBench
from drivers.virtual.scpi import (
    ErrorQueue,
    ScpiError,
    check_range,
    find_command,
    format_nr3,
    matches_mnemonic,
    parse_number,
    scpi_header,
    split_arguments,
    split_command,
    unquote,
)
from drivers.virtual.server import InstrumentTwin

IDENTITY = "KEITHLEY INSTRUMENTS,MODEL 2450,04412345,1.7.3c"
NO_ERROR = '0,"No error;0;0 0"'
MEASURE_TIME_S = 0.02  # one reading at 1 NPLC on 50 Hz mains
AUTO_DELAY_S = 0.001  # what a sweep delay of -1 (autodelay) costs per point here
_EPOCH = datetime.datetime(2024, 1, 1)  # the event log's clock reads this date plus virtual time
_MAX_EVENTS = 100
_OUT_OF_RANGE = "Parameter data out of range"  # the 2450's text for -222

_CURRENT_MAX_A = 1.05
_VOLTAGE_MAX_V = 210.0
_LIMITS = {
    # source function: (largest |level|, level default, smallest limit, largest limit, limit default); limits
    # are magnitudes in the other quantity (V for the current source, A for the voltage source)
    "CURR": (_CURRENT_MAX_A, 0.0, 0.02, _VOLTAGE_MAX_V, 21.0),
    "VOLT": (_VOLTAGE_MAX_V, 0.0, 1e-9, _CURRENT_MAX_A, 105e-6),
}
_BUFFERS = ("defbuffer1", "defbuffer2")

Handler = Callable[[list[str]], str | None]


def _illegal_value() -> ScpiError:
    return ScpiError(-224, "Illegal parameter value")


@dataclass
class _Sweep:
    function: str
    levels: list[float]
    delay_s: float
    fail_abort: bool
    buffer: str


@dataclass
class _State:
    """The instrument settings ``*RST`` restores."""

    source_function: str = "VOLT"
    levels: dict[str, float] = field(default_factory=lambda: {"CURR": 0.0, "VOLT": 0.0})
    limits: dict[str, float] = field(default_factory=lambda: {name: row[4] for name, row in _LIMITS.items()})
    sense_function: str = "CURR"
    autorange: dict[str, bool] = field(default_factory=lambda: {"CURR": True, "VOLT": True})
    sweep: _Sweep | None = None


def _boolean(text: str) -> bool:
    word = text.upper()
    if word in ("ON", "1"):
        return True
    if word in ("OFF", "0"):
        return False
    raise _illegal_value()


def _function_word(text: str) -> str:
    for mnemonic in ("CURRent", "VOLTage"):
        if matches_mnemonic(text, mnemonic):
            return mnemonic[:4].upper()
    raise _illegal_value()


def _bit(on: bool) -> str:
    return "1" if on else "0"


def _plain(function: Callable[[], str | None]) -> Handler:
    """A handler for a command that takes no parameters (any given are -108)."""

    def handler(arguments: list[str]) -> str | None:
        if arguments:
            raise ScpiError(-108, "Parameter not allowed")
        return function()

    return handler


def _one_argument(arguments: list[str]) -> str:
    if not arguments:
        raise ScpiError(-109, "Missing parameter")
    if len(arguments) > 1:
        raise ScpiError(-108, "Parameter not allowed")
    return arguments[0]


class Keithley2450Twin(InstrumentTwin):
    """A Keithley 2450 on the virtual bench (role ``"smu"``, ``\\n`` terminations both ways)."""

    role: ClassVar[str] = "smu"
    input_termination: ClassVar[bytes] = b"\n"
    output_termination: ClassVar[bytes] = b"\n"

    def __init__(self, bench: VirtualBench) -> None:
        super().__init__(bench)
        # one instrument, many connections: its settings, event log and buffers live here, not in a session
        self.events = ErrorQueue(_MAX_EVENTS)
        self.buffers: dict[str, list[tuple[float, float]]] = {name: [] for name in _BUFFERS}
        self.state = _State()
        self._commands = [(scpi_header(template), handler) for template, handler in self._handlers()]
        with bench.lock:
            self._reset()

    # -- dispatch --------------------------------------------------------------------------------------------------
    def handle(self, command: str, session: dict[str, Any]) -> bytes | None:
        header, argument_text = split_command(command)
        try:
            reply = find_command(self._commands, header)(split_arguments(argument_text))
        except ScpiError as error:
            self.events.push(error.code, error.message, time_s=self.bench.now())
            return None
        if reply is None:
            return None
        return reply.encode("ascii") + self.output_termination

    def _handlers(self) -> list[tuple[str, Handler]]:
        """(header template in the manual's notation, handler taking the parameter list)."""
        source, sense = ":SOURce[1]", ":SENSe[1]"
        level, limit = "[:LEVel][:IMMediate][:AMPLitude]", "[:LEVel]"
        return [
            ("*IDN?", _plain(lambda: IDENTITY)),
            ("*RST", _plain(self._reset)),
            ("*CLS", _plain(self.events.clear)),
            ("*WAI", _plain(lambda: None)),  # the sweep already ran during :INIT
            ("*OPC?", _plain(lambda: "1")),
            (f"{source}:FUNCtion[:MODE]", self._set_source_function),
            (f"{source}:FUNCtion[:MODE]?", _plain(lambda: self.state.source_function)),
            (f"{source}:CURRent[:DC]{level}", lambda args: self._set_level("CURR", args)),
            (f"{source}:VOLTage[:DC]{level}", lambda args: self._set_level("VOLT", args)),
            (f"{source}:CURRent[:DC]{level}?", _plain(lambda: format_nr3(self.state.levels["CURR"]))),
            (f"{source}:VOLTage[:DC]{level}?", _plain(lambda: format_nr3(self.state.levels["VOLT"]))),
            (f"{source}:CURRent[:DC]:VLIMit{limit}", lambda args: self._set_limit("CURR", args)),
            (f"{source}:VOLTage[:DC]:ILIMit{limit}", lambda args: self._set_limit("VOLT", args)),
            (f"{source}:CURRent[:DC]:VLIMit{limit}?", _plain(lambda: format_nr3(self.state.limits["CURR"]))),
            (f"{source}:VOLTage[:DC]:ILIMit{limit}?", _plain(lambda: format_nr3(self.state.limits["VOLT"]))),
            (f"{source}:CURRent[:DC]:VLIMit{limit}:TRIPped?", _plain(lambda: _bit(self._tripped("CURR")))),
            (f"{source}:VOLTage[:DC]:ILIMit{limit}:TRIPped?", _plain(lambda: _bit(self._tripped("VOLT")))),
            (f"{sense}:FUNCtion[:MODE]", self._set_sense_function),
            (f"{sense}:FUNCtion[:MODE]?", _plain(lambda: f'"{self.state.sense_function}:DC"')),
            (f"{sense}:CURRent[:DC]:RANGe:AUTO", lambda args: self._set_autorange("CURR", args)),
            (f"{sense}:VOLTage[:DC]:RANGe:AUTO", lambda args: self._set_autorange("VOLT", args)),
            (f"{sense}:CURRent[:DC]:RANGe:AUTO?", _plain(lambda: _bit(self.state.autorange["CURR"]))),
            (f"{sense}:VOLTage[:DC]:RANGe:AUTO?", _plain(lambda: _bit(self.state.autorange["VOLT"]))),
            (":OUTPut[1][:STATe]", self._set_output),
            (":OUTPut[1][:STATe]?", _plain(lambda: _bit(self.bench.smu.output_on))),
            (":READ?", lambda args: self._read(None, args)),
            (":MEASure?", lambda args: self._read(None, args)),
            (":MEASure:CURRent[:DC]?", lambda args: self._read("CURR", args)),
            (":MEASure:VOLTage[:DC]?", lambda args: self._read("VOLT", args)),
            (f"{source}:SWEep:CURRent[:DC]:LINear", lambda args: self._configure_sweep("CURR", args)),
            (f"{source}:SWEep:VOLTage[:DC]:LINear", lambda args: self._configure_sweep("VOLT", args)),
            (":INITiate[:IMMediate]", _plain(self._run_sweep)),
            (":TRACe:CLEar", self._clear_buffer),
            (":TRACe:ACTual?", lambda args: str(len(self.buffers[self._buffer_name(args, 0, last=True)]))),
            (":TRACe:DATA?", self._trace_data),
            (":SYSTem:ERRor[:NEXT]?", _plain(self._next_event)),
        ]

    # -- helpers -------------------------------------------------------------------------------------------------
    def _next_event(self) -> str:
        code, message, time_s = self.events.pop()
        if code == 0:
            return NO_ERROR
        stamp = _EPOCH + datetime.timedelta(seconds=time_s)
        return f'{code},"{message};1;{stamp:%Y/%m/%d %H:%M:%S}.{stamp.microsecond // 1000:03d}"'

    def _sync_bench(self) -> None:
        """Copy the active source function's level and limit into the bench, where the physics reads them."""
        function = self.state.source_function
        self.bench.smu.source_function = function
        self.bench.smu.source_level = self.state.levels[function]
        self.bench.smu.compliance = self.state.limits[function]

    def _reset(self) -> None:
        self.state = _State()
        for readings in self.buffers.values():
            readings.clear()
        self.bench.smu.output_on = False
        self._sync_bench()

    def _buffer_name(self, arguments: list[str], index: int, *, last: bool = False) -> str:
        """The quoted buffer name at ``arguments[index]`` (``defbuffer1`` when absent); with ``last``, nothing may
        follow it."""
        if last and len(arguments) > index + 1:
            raise ScpiError(-108, "Parameter not allowed")
        if len(arguments) <= index:
            return "defbuffer1"
        name = unquote(arguments[index])
        if name not in self.buffers:
            raise _illegal_value()
        return name

    # -- source ------------------------------------------------------------------------------------------------
    def _set_source_function(self, arguments: list[str]) -> None:
        self.state.source_function = _function_word(_one_argument(arguments))
        self._sync_bench()

    def _set_level(self, function: str, arguments: list[str]) -> None:
        maximum, default, *_ = _LIMITS[function]
        value = parse_number(_one_argument(arguments), minimum=-maximum, maximum=maximum, default=default)
        self.state.levels[function] = check_range(value, -maximum, maximum, message=_OUT_OF_RANGE)
        self._sync_bench()

    def _set_limit(self, function: str, arguments: list[str]) -> None:
        _, _, minimum, maximum, default = _LIMITS[function]
        value = abs(parse_number(_one_argument(arguments), minimum=minimum, maximum=maximum, default=default))
        self.state.limits[function] = check_range(value, minimum, maximum, message=_OUT_OF_RANGE)  # magnitudes
        self._sync_bench()

    def _limit_tripped(self) -> bool:
        smu = self.bench.smu
        if not smu.output_on:
            return False
        measured = self.bench.smu_voltage_v() if smu.source_function == "CURR" else self.bench.smu_current_a()
        # the bench clamps exactly at the limit, so "at the limit" is the tripped state
        return abs(measured) >= smu.compliance * (1.0 - 1e-12)

    def _tripped(self, function: str) -> bool:
        return self.state.source_function == function and self._limit_tripped()

    def _set_output(self, arguments: list[str]) -> None:
        self.bench.smu.output_on = _boolean(_one_argument(arguments))

    # -- measure -----------------------------------------------------------------------------------------------
    def _set_sense_function(self, arguments: list[str]) -> None:
        name = unquote(_one_argument(arguments)).upper()
        name = name.removesuffix(":DC")
        self.state.sense_function = _function_word(name)

    def _set_autorange(self, function: str, arguments: list[str]) -> None:
        self.state.autorange[function] = _boolean(_one_argument(arguments))

    def _measure(self) -> tuple[float, float]:
        """(source readback, reading) now: the 2450 reads back the sourced quantity by default."""
        current, voltage = self.bench.smu_current_a(), self.bench.smu_voltage_v()
        source = current if self.state.source_function == "CURR" else voltage
        reading = current if self.state.sense_function == "CURR" else voltage
        return source, reading

    def _read(self, function: str | None, arguments: list[str]) -> str:
        buffer = self._buffer_name(arguments, 0, last=True)
        if function is not None:
            self.state.sense_function = function  # :MEASure:<function>? selects the function
        source, reading = self._measure()
        self.buffers[buffer].append((source, reading))
        self.bench.hold_busy_until(self.role, self.bench.now() + MEASURE_TIME_S)
        return format_nr3(reading)

    # -- sweep and buffer ----------------------------------------------------------------------------------------
    def _configure_sweep(self, function: str, arguments: list[str]) -> None:
        """``<start>, <stop>, <points>[, <delay>[, <count>[, <rangeType>[, <failAbort>[, <dual>[, "<buffer>"]]]]]]``"""
        if len(arguments) < 3:
            raise ScpiError(-109, "Missing parameter")
        if len(arguments) > 9:
            raise ScpiError(-108, "Parameter not allowed")
        if function != self.state.source_function:
            raise ScpiError(-221, "Settings conflict")
        maximum = _LIMITS[function][0]
        start, stop = parse_number(arguments[0]), parse_number(arguments[1])
        points_value = parse_number(arguments[2])
        if not (-maximum <= start <= maximum and -maximum <= stop <= maximum):
            raise ScpiError(-222, _OUT_OF_RANGE)
        if not math.isfinite(points_value) or points_value != int(points_value) or not 2 <= points_value <= 1_000_000:
            raise ScpiError(-222, _OUT_OF_RANGE)
        points = int(points_value)
        delay_s = parse_number(arguments[3]) if len(arguments) > 3 else -1.0
        if not (delay_s in (-1.0, 0.0) or 50e-6 <= delay_s <= 10_000.0):
            raise ScpiError(-222, _OUT_OF_RANGE)
        count_value = parse_number(arguments[4]) if len(arguments) > 4 else 1.0
        if count_value != int(count_value) or not 1 <= count_value <= 268_435_455:
            raise ScpiError(-222, _OUT_OF_RANGE)  # count 0 (run forever) cannot be emulated
        if len(arguments) > 5 and arguments[5].upper() not in ("AUTO", "BEST", "FIX", "FIXED"):
            raise _illegal_value()
        fail_abort = _boolean(arguments[6]) if len(arguments) > 6 else True
        dual = _boolean(arguments[7]) if len(arguments) > 7 else False
        buffer = self._buffer_name(arguments, 8)
        step = (stop - start) / (points - 1)
        one_way = [start + index * step for index in range(points)]
        one_run = one_way + one_way[::-1] if dual else one_way
        self.state.sweep = _Sweep(function, one_run * int(count_value), delay_s, fail_abort, buffer)

    def _run_sweep(self) -> None:
        sweep = self.state.sweep
        if sweep is None:
            return  # an empty trigger model: nothing to run
        smu = self.bench.smu
        self.state.source_function = sweep.function
        smu.output_on = True
        per_point_s = (AUTO_DELAY_S if sweep.delay_s < 0 else sweep.delay_s) + MEASURE_TIME_S
        done = 0
        for level in sweep.levels:
            self.state.levels[sweep.function] = level
            self._sync_bench()
            self.buffers[sweep.buffer].append(self._measure())
            done += 1
            if sweep.fail_abort and self._limit_tripped():
                break
        smu.output_on = False
        self.bench.hold_busy_until(self.role, self.bench.now() + done * per_point_s)

    def _clear_buffer(self, arguments: list[str]) -> None:
        self.buffers[self._buffer_name(arguments, 0, last=True)].clear()

    def _trace_data(self, arguments: list[str]) -> str:
        if len(arguments) < 2:
            raise ScpiError(-109, "Missing parameter")
        start, end = parse_number(arguments[0]), parse_number(arguments[1])
        buffer = self.buffers[self._buffer_name(arguments, 2)]
        elements = [word.upper() for word in arguments[3:]] or ["READ"]
        if any(element not in ("READ", "READING", "SOUR", "SOURCE") for element in elements):
            raise _illegal_value()
        if start != int(start) or end != int(end) or not 1 <= start <= end <= len(buffer):
            raise ScpiError(-222, _OUT_OF_RANGE)
        values: list[str] = []
        for source, reading in buffer[int(start) - 1 : int(end)]:
            for element in elements:
                values.append(format_nr3(source if element.startswith("SOUR") else reading))
        return ",".join(values)
