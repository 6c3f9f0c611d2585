"""Virtual Keithley 2450 SourceMeter speaking the native SCPI command set over the shared bench.

What it emulates
----------------
The subset :mod:`drivers.keithley_2450` uses, in the forms the 2450 Reference Manual documents: headers in short or
long form, any case, optional nodes (``SOURce[1]``, ``[:LEVel][:IMMediate][:AMPLitude]``, ``OUTPut[1][:STATe]``,
``FUNCtion[:MODE]``, ``SYSTem:ERRor[:NEXT]``, ``INITiate[:IMMediate]``, ``[:DC]``), ``MINimum``/``MAXimum``/
``DEFault`` for levels and limits. A rejected command or query is not answered; it posts an event that
``:SYST:ERR?`` returns as ``<code>,"<message>;<severity>;<yyyy/mm/dd hh:mm:ss.mmm>"`` (``0,"No error;0;0 0"`` when
the queue is empty), e.g. ``-113,"Undefined header;1;..."`` or ``-222,"Parameter data out of range;1;..."``.

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
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from drivers.virtual.bench import VirtualBench
from drivers.virtual.server import InstrumentTwin

IDENTITY = "KEITHLEY INSTRUMENTS,MODEL 2450,04412345,1.7.3c"
NO_ERROR = '0,"No error;0;0 0"'
MEASURE_TIME_S = 0.02  # one reading at 1 NPLC on 50 Hz mains
AUTO_DELAY_S = 0.001  # what a sweep delay of -1 (autodelay) costs per point here
_EPOCH = datetime.datetime(2024, 1, 1)  # the event log's clock reads this date plus virtual time
_MAX_EVENTS = 100

# long form → short form of every mnemonic the twin knows (the SCPI rule: either exact form, any case)
_MNEMONICS = {
    "SOURCE": "SOUR",
    "SENSE": "SENS",
    "CURRENT": "CURR",
    "VOLTAGE": "VOLT",
    "LEVEL": "LEV",
    "IMMEDIATE": "IMM",
    "AMPLITUDE": "AMPL",
    "VLIMIT": "VLIM",
    "ILIMIT": "ILIM",
    "TRIPPED": "TRIP",
    "FUNCTION": "FUNC",
    "MODE": "MODE",
    "RANGE": "RANG",
    "AUTO": "AUTO",
    "OUTPUT": "OUTP",
    "STATE": "STAT",
    "MEASURE": "MEAS",
    "READ": "READ",
    "SWEEP": "SWE",
    "LINEAR": "LIN",
    "INITIATE": "INIT",
    "TRACE": "TRAC",
    "DATA": "DATA",
    "CLEAR": "CLE",
    "ACTUAL": "ACT",
    "SYSTEM": "SYST",
    "ERROR": "ERR",
    "NEXT": "NEXT",
    "DC": "DC",
}
_SHORT_FORMS = {**_MNEMONICS, **{short: short for short in _MNEMONICS.values()}}
# nodes that may have a numeric suffix, which must be 1 on a single-channel instrument
_SUFFIXED = {"SOUR", "SENS", "OUTP"}
# (node, the node before it or None for anywhere) that may be left out
_OPTIONAL = {("LEV", None), ("IMM", None), ("AMPL", None), ("STAT", "OUTP"), ("MODE", "FUNC"), ("NEXT", "ERR")}

_CURRENT_MAX_A = 1.05
_VOLTAGE_MAX_V = 210.0
_LIMITS = {
    # source function: (largest |level|, level default, smallest limit, largest limit, limit default); limits
    # are magnitudes in the other quantity (V for the current source, A for the voltage source)
    "CURR": (_CURRENT_MAX_A, 0.0, 0.02, _VOLTAGE_MAX_V, 21.0),
    "VOLT": (_VOLTAGE_MAX_V, 0.0, 1e-9, _CURRENT_MAX_A, 105e-6),
}
_BUFFERS = ("defbuffer1", "defbuffer2")


class _CommandError(Exception):
    """A command the 2450 rejects: becomes an event in the error queue and no reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _undefined_header() -> _CommandError:
    return _CommandError(-113, "Undefined header")


def _out_of_range() -> _CommandError:
    return _CommandError(-222, "Parameter data out of range")


def _illegal_value() -> _CommandError:
    return _CommandError(-224, "Illegal parameter value")


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


def _format(value: float) -> str:
    return f"{value:.6E}"


def _split_arguments(text: str) -> list[str]:
    """Split a parameter list at commas outside quotes; strip blanks."""
    arguments, current, quote = [], "", ""
    for char in text:
        if quote:
            current += char
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
            current += char
        elif char == ",":
            arguments.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip() or arguments:
        arguments.append(current.strip())
    return arguments


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    raise _CommandError(-104, "Data type error")


def _number(text: str, *, special: dict[str, float] | None = None) -> float:
    word = text.upper()
    for long, short in (("MINIMUM", "MIN"), ("MAXIMUM", "MAX"), ("DEFAULT", "DEF")):
        if special is not None and word in (long, short):
            return special[short]
    try:
        return float(text)
    except ValueError:
        raise _CommandError(-104, "Data type error") from None


def _boolean(text: str) -> bool:
    word = text.upper()
    if word in ("ON", "1"):
        return True
    if word in ("OFF", "0"):
        return False
    raise _illegal_value()


def _function_word(text: str) -> str:
    word = _SHORT_FORMS.get(text.upper())
    if word not in ("CURR", "VOLT"):
        raise _illegal_value()
    return word


def _bit(on: bool) -> str:
    return "1" if on else "0"


def _plain(function: Callable[[], str | None]) -> Callable[[list[str]], str | None]:
    """A handler for a command that takes no parameters (any given are -108)."""

    def handler(arguments: list[str]) -> str | None:
        if arguments:
            raise _CommandError(-108, "Parameter not allowed")
        return function()

    return handler


def _one_argument(arguments: list[str]) -> str:
    if not arguments:
        raise _CommandError(-109, "Missing parameter")
    if len(arguments) > 1:
        raise _CommandError(-108, "Parameter not allowed")
    return arguments[0]


def _canonical_header(header: str) -> str:
    """``:SOURce1:CURRent:LEVel:IMMediate:AMPLitude`` → ``SOUR:CURR``; unknown mnemonics raise -113."""
    nodes: list[str] = []
    for raw in header.lstrip(":").split(":"):
        match = re.fullmatch(r"([A-Za-z]+)(\d*)", raw)
        if match is None:
            raise _undefined_header()
        word, suffix = match.group(1).upper(), match.group(2)
        short = _SHORT_FORMS.get(word)
        if short is None:
            raise _undefined_header()
        if suffix and (short not in _SUFFIXED or suffix != "1"):
            raise _CommandError(-114, "Header suffix out of range")
        nodes.append(short)
    kept: list[str] = []
    for index, node in enumerate(nodes):
        before = nodes[index - 1] if index else None
        if (node, None) in _OPTIONAL or (node, before) in _OPTIONAL:
            continue
        if node == "DC" and before in ("CURR", "VOLT"):
            continue
        kept.append(node)
    return ":".join(kept)


class Keithley2450Twin(InstrumentTwin):
    """A Keithley 2450 on the virtual bench (role ``"smu"``, ``\\n`` terminations both ways)."""

    role: ClassVar[str] = "smu"
    input_termination: ClassVar[bytes] = b"\n"
    output_termination: ClassVar[bytes] = b"\n"

    def __init__(self, bench: VirtualBench) -> None:
        super().__init__(bench)
        # one instrument, many connections: its settings, event log and buffers live here, not in a session
        self.events: list[str] = []
        self.buffers: dict[str, list[tuple[float, float]]] = {name: [] for name in _BUFFERS}
        self.state = _State()
        self._dispatch = self._handlers()
        with bench.lock:
            self._reset()

    # -- dispatch --------------------------------------------------------------------------------------------------
    def handle(self, command: str, session: dict[str, Any]) -> bytes | None:
        text = command.strip()
        header, _, argument_text = text.partition(" ")
        arguments = _split_arguments(argument_text)
        try:
            reply = self._execute(header, arguments)
        except _CommandError as error:
            self._post_event(error.code, error.message)
            return None
        if reply is None:
            return None
        return reply.encode("ascii") + self.output_termination

    def _execute(self, header: str, arguments: list[str]) -> str | None:
        is_query = header.endswith("?")
        name = header.rstrip("?")
        key = name.upper() if name.startswith("*") else _canonical_header(name)
        handler = self._dispatch.get((key, is_query))
        if handler is None:
            raise _undefined_header()
        return handler(arguments)

    def _handlers(self) -> dict[tuple[str, bool], Callable[[list[str]], str | None]]:
        """(canonical header, is query) → handler taking the parameter list."""
        return {
            ("*IDN", True): _plain(lambda: IDENTITY),
            ("*RST", False): _plain(self._reset),
            ("*CLS", False): _plain(self.events.clear),
            ("*WAI", False): _plain(lambda: None),  # the sweep already ran during :INIT
            ("*OPC", True): _plain(lambda: "1"),
            ("SOUR:FUNC", False): self._set_source_function,
            ("SOUR:FUNC", True): _plain(lambda: self.state.source_function),
            ("SOUR:CURR", False): lambda args: self._set_level("CURR", args),
            ("SOUR:VOLT", False): lambda args: self._set_level("VOLT", args),
            ("SOUR:CURR", True): _plain(lambda: _format(self.state.levels["CURR"])),
            ("SOUR:VOLT", True): _plain(lambda: _format(self.state.levels["VOLT"])),
            ("SOUR:CURR:VLIM", False): lambda args: self._set_limit("CURR", args),
            ("SOUR:VOLT:ILIM", False): lambda args: self._set_limit("VOLT", args),
            ("SOUR:CURR:VLIM", True): _plain(lambda: _format(self.state.limits["CURR"])),
            ("SOUR:VOLT:ILIM", True): _plain(lambda: _format(self.state.limits["VOLT"])),
            ("SOUR:CURR:VLIM:TRIP", True): _plain(lambda: _bit(self._tripped("CURR"))),
            ("SOUR:VOLT:ILIM:TRIP", True): _plain(lambda: _bit(self._tripped("VOLT"))),
            ("SENS:FUNC", False): self._set_sense_function,
            ("SENS:FUNC", True): _plain(lambda: f'"{self.state.sense_function}:DC"'),
            ("SENS:CURR:RANG:AUTO", False): lambda args: self._set_autorange("CURR", args),
            ("SENS:VOLT:RANG:AUTO", False): lambda args: self._set_autorange("VOLT", args),
            ("SENS:CURR:RANG:AUTO", True): _plain(lambda: _bit(self.state.autorange["CURR"])),
            ("SENS:VOLT:RANG:AUTO", True): _plain(lambda: _bit(self.state.autorange["VOLT"])),
            ("OUTP", False): self._set_output,
            ("OUTP", True): _plain(lambda: _bit(self.bench.smu.output_on)),
            ("READ", True): lambda args: self._read(None, args),
            ("MEAS", True): lambda args: self._read(None, args),
            ("MEAS:CURR", True): lambda args: self._read("CURR", args),
            ("MEAS:VOLT", True): lambda args: self._read("VOLT", args),
            ("SOUR:SWE:CURR:LIN", False): lambda args: self._configure_sweep("CURR", args),
            ("SOUR:SWE:VOLT:LIN", False): lambda args: self._configure_sweep("VOLT", args),
            ("INIT", False): _plain(self._run_sweep),
            ("TRAC:CLE", False): self._clear_buffer,
            ("TRAC:ACT", True): lambda args: str(len(self.buffers[self._buffer_name(args, 0, last=True)])),
            ("TRAC:DATA", True): self._trace_data,
            ("SYST:ERR", True): _plain(self._next_event),
        }

    # -- helpers -------------------------------------------------------------------------------------------------
    def _post_event(self, code: int, message: str) -> None:
        stamp = _EPOCH + datetime.timedelta(seconds=self.bench.now())
        text = f"{stamp:%Y/%m/%d %H:%M:%S}.{stamp.microsecond // 1000:03d}"
        if len(self.events) >= _MAX_EVENTS:
            self.events[-1] = f'-350,"Queue overflow;1;{text}"'
            return
        self.events.append(f'{code},"{message};1;{text}"')

    def _next_event(self) -> str:
        return self.events.pop(0) if self.events else NO_ERROR

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
            raise _CommandError(-108, "Parameter not allowed")
        if len(arguments) <= index:
            return "defbuffer1"
        name = _unquote(arguments[index])
        if name not in self.buffers:
            raise _illegal_value()
        return name

    # -- source ------------------------------------------------------------------------------------------------
    def _set_source_function(self, arguments: list[str]) -> None:
        self.state.source_function = _function_word(_one_argument(arguments))
        self._sync_bench()

    def _set_level(self, function: str, arguments: list[str]) -> None:
        maximum, default, *_ = _LIMITS[function]
        value = _number(_one_argument(arguments), special={"MIN": -maximum, "MAX": maximum, "DEF": default})
        if not -maximum <= value <= maximum:
            raise _out_of_range()
        self.state.levels[function] = value
        self._sync_bench()

    def _set_limit(self, function: str, arguments: list[str]) -> None:
        _, _, minimum, maximum, default = _LIMITS[function]
        value = abs(_number(_one_argument(arguments), special={"MIN": minimum, "MAX": maximum, "DEF": default}))
        if not minimum <= value <= maximum:  # limits are absolute values
            raise _out_of_range()
        self.state.limits[function] = value
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
        name = _unquote(_one_argument(arguments)).upper()
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
        return _format(reading)

    # -- sweep and buffer ----------------------------------------------------------------------------------------
    def _configure_sweep(self, function: str, arguments: list[str]) -> None:
        """``<start>, <stop>, <points>[, <delay>[, <count>[, <rangeType>[, <failAbort>[, <dual>[, "<buffer>"]]]]]]``"""
        if len(arguments) < 3:
            raise _CommandError(-109, "Missing parameter")
        if len(arguments) > 9:
            raise _CommandError(-108, "Parameter not allowed")
        if function != self.state.source_function:
            raise _CommandError(-221, "Settings conflict")
        maximum = _LIMITS[function][0]
        start, stop = _number(arguments[0]), _number(arguments[1])
        points_value = _number(arguments[2])
        if not (-maximum <= start <= maximum and -maximum <= stop <= maximum):
            raise _out_of_range()
        if points_value != int(points_value) or not 2 <= points_value <= 1_000_000:
            raise _out_of_range()
        points = int(points_value)
        delay_s = _number(arguments[3]) if len(arguments) > 3 else -1.0
        if not (delay_s in (-1.0, 0.0) or 50e-6 <= delay_s <= 10_000.0):
            raise _out_of_range()
        count_value = _number(arguments[4]) if len(arguments) > 4 else 1.0
        if count_value != int(count_value) or not 1 <= count_value <= 268_435_455:
            raise _out_of_range()  # count 0 (run forever) cannot be emulated
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
            raise _CommandError(-109, "Missing parameter")
        start, end = _number(arguments[0]), _number(arguments[1])
        buffer = self.buffers[self._buffer_name(arguments, 2)]
        elements = [word.upper() for word in arguments[3:]] or ["READ"]
        if any(element not in ("READ", "READING", "SOUR", "SOURCE") for element in elements):
            raise _illegal_value()
        if start != int(start) or end != int(end) or not 1 <= start <= end <= len(buffer):
            raise _out_of_range()
        values: list[str] = []
        for source, reading in buffer[int(start) - 1 : int(end)]:
            for element in elements:
                values.append(_format(source if element.startswith("SOUR") else reading))
        return ",".join(values)
