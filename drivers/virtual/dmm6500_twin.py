"""Virtual Keithley DMM6500 in digitize mode, sampling the bench's photodetector voltage.

Speaks the subset :mod:`drivers.keithley_dmm6500` uses, byte for byte: ``\\n`` after every reply; no reply to a
command; SCPI long and short forms (``:TRIGger:BLOCk:MDIGitize`` = ``:TRIG:BLOC:MDIG``, optional ``[:SENSe[1]]``); a
rejected command or query is silent and leaves ``<code>,"<message>;1;<date time>"`` in the error queue (1000
entries, SCPI overflow), read with ``:SYST:ERR?`` (``0,"No error;0;0 0"`` when empty; the time is the computer's
clock when the entry is read). Binary data (``:FORM:DATA REAL|SREAL``) is an indefinite-length block ``#0<bytes>\\n``
in the byte order of ``:FORM:BORD`` (``SWAP`` = little-endian, the power-on default). The SCPI plumbing is
:mod:`drivers.virtual.scpi`.

Trigger model
-------------
Blocks are built with ``:TRIG:LOAD "Empty"`` and ``:TRIG:BLOC:BUFF:CLE`` / ``:WAIT <n>, EXT[, ENT|NEV]`` /
``:MDIG <n>, "defbuffer1", <count>|AUTO``; ``:INIT`` runs them in order. ``:INIT`` records the arm time; with a
wait block the acquisition starts at the first trigger the bench recorded at or after it
(:meth:`~drivers.virtual.bench.VirtualBench.first_trigger_after`, fired by the stage twin's position trigger);
sample ``i`` is taken at ``t_start + i / f_s``. Once the start is known the twin registers
``bench.hold_busy_until("detector", t_end)`` and settles the clock again, so at time scale 0 the acquisition is
complete by the next command. The samples are ``bench.detector_signal_v(t)``, computed once per acquisition (at the
first command after it completes) and cached, so serving a line costs a slice and a ``tobytes``.

Limits of the twin: one line buffer (``defbuffer1``; DC readings go to ``defbuffer2`` and are only counted), no
compound commands (``;``), only the ``"Empty"`` template, only the external input as a wait event (``NEVer`` is
treated like ``ENTer``: edges before ``:INIT`` never start a line), and only the digitize-voltage function can fill
the line buffer.
"""

from __future__ import annotations

import math
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from drivers.virtual.bench import DetectorView, VirtualBench
from drivers.virtual.scpi import (
    ErrorQueue,
    ScpiError,
    check_range,
    find_command,
    format_nr3,
    format_nr3_list,
    matches_mnemonic,
    parse_number,
    require_form,
    scpi_header,
    split_arguments,
    split_command,
    split_program_message,
)
from drivers.virtual.server import InstrumentTwin

OVERFLOW_READING_V = 9.9e37
LINE_BUFFER = "defbuffer1"
DC_BUFFER = "defbuffer2"
RANGES_V = (0.1, 1.0, 10.0, 100.0, 1000.0)
MAX_BUFFER_POINTS = 7_000_000
MIN_BUFFER_POINTS = 10
ERROR_QUEUE_LENGTH = 1000


# -- the twin ------------------------------------------------------------------------------------------------------


@dataclass
class _Acquisition:
    """One run of the trigger model that fills the line buffer."""

    armed_at_s: float
    waits_for_trigger: bool
    count: int
    sample_rate_hz: float
    start_s: float | None = None
    aborted_count: int | None = None  # samples kept when :ABOR stopped it early
    samples_v: np.ndarray | None = None  # cached once complete
    rendering: _BackgroundRender | None = None  # the complete line's samples, on their way

    def cached_samples(self) -> np.ndarray | None:
        """The complete line's samples (waiting for the background render if need be), or None."""
        if self.samples_v is None and self.rendering is not None:
            self.samples_v, self.rendering = self.rendering.result(), None
        return self.samples_v

    def acquired(self, now_s: float) -> int:
        if self.start_s is None or now_s < self.start_s:
            taken = 0
        else:
            # sample i is taken at start + i/fs; the small epsilon keeps exact instants from rounding down
            taken = min(self.count, math.floor((now_s - self.start_s) * self.sample_rate_hz + 1e-9) + 1)
        return taken if self.aborted_count is None else min(taken, self.aborted_count)

    def end_s(self) -> float | None:
        return None if self.start_s is None else self.start_s + self.count / self.sample_rate_hz


Handler = Callable[[bool, str], str | bytes | None]


def _sample_times_s(start_s: float, sample_rate_hz: float, count: int) -> np.ndarray:
    """Sample ``i`` is taken at ``start + i / f_s``."""
    return start_s + np.arange(count, dtype=np.float64) / sample_rate_hz


def _digitize(view: DetectorView, times_s: np.ndarray, range_v: float) -> np.ndarray:
    """The readings at ``times_s`` on ``range_v``: the digitizer's usable span is 120 % of range, beyond it the
    reading is the overflow value."""
    samples = np.asarray(view.signal_v(times_s), dtype=np.float64)
    over = np.abs(samples) > 1.2 * range_v
    if not over.any():  # the usual case: the samples as they are, without building a copy
        return samples
    return np.where(over, np.copysign(OVERFLOW_READING_V, samples), samples)


class _BackgroundRender:
    """One line's readings, computed on the render thread from a view of the bench taken under its lock (the
    world is immutable and the view a copy, so no lock is needed; NumPy and the render kernel release the GIL).

    One long-lived thread serves every twin of the process: a thread per line would also start a new OpenMP
    team and a new malloc arena for every line, whose fresh pages cost more than the render saves.
    """

    _jobs: ClassVar[queue.SimpleQueue[_BackgroundRender]] = queue.SimpleQueue()
    _worker: ClassVar[threading.Thread | None] = None
    _worker_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, view: DetectorView, times_s: np.ndarray, range_v: float) -> None:
        self._arguments: tuple[DetectorView, np.ndarray, float] | None = (view, times_s, range_v)
        self._samples: np.ndarray | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        with _BackgroundRender._worker_lock:
            if _BackgroundRender._worker is None:
                _BackgroundRender._worker = threading.Thread(
                    target=_BackgroundRender._serve, name="virtual-detector-render", daemon=True
                )
                _BackgroundRender._worker.start()
        _BackgroundRender._jobs.put(self)

    @staticmethod
    def _serve() -> None:
        while True:
            _BackgroundRender._jobs.get()._run()

    def _run(self) -> None:
        try:
            if self._arguments is not None:
                self._samples = _digitize(*self._arguments)
        except BaseException as error:  # noqa: BLE001 - raised in the twin's thread by result()
            self._error = error
        finally:
            self._arguments = None  # the view holds the axes' motion: let it go
            self._done.set()

    def result(self) -> np.ndarray:
        """The readings, once computed; the exception raised computing them, if any."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        if self._samples is None:
            raise RuntimeError("the render thread finished a line without samples")
        return self._samples


class DMM6500Twin(InstrumentTwin):
    """The DMM6500 SCPI protocol over the shared bench (role ``"detector"``)."""

    role = "detector"
    input_termination = b"\n"
    output_termination = b"\n"

    identification: ClassVar[str] = "KEITHLEY INSTRUMENTS,MODEL DMM6500,04512345,1.7.12b"

    def __init__(self, bench: VirtualBench) -> None:
        super().__init__(bench)
        self._errors = ErrorQueue(ERROR_QUEUE_LENGTH)
        self._acquisition: _Acquisition | None = None
        self._line_buffer_cleared = True
        self._dc_readings = 0
        self._reset()
        self._commands: list[tuple[re.Pattern[str], Handler]] = [
            (scpi_header(pattern), handler)
            for pattern, handler in (
                ("*IDN", self._idn),
                ("*RST", self._rst),
                ("*CLS", self._cls),
                ("*OPC", self._opc),
                (":SYSTem:ERRor[:NEXT]", self._error_next),
                ("[:SENSe[1]]:DIGitize:FUNCtion[:ON]", self._digitize_function),
                ("[:SENSe[1]]:FUNCtion[:ON]", self._measure_function),
                ("[:SENSe[1]]:DIGitize:VOLTage:RANGe[:UPPer]", self._range),
                ("[:SENSe[1]]:DIGitize:VOLTage:SRATe", self._sample_rate),
                ("[:SENSe[1]]:DIGitize:COUNt", self._count),
                (":TRACe:POINts", self._trace_points),
                (":TRACe:CLEar", self._trace_clear),
                (":TRACe:ACTual", self._trace_actual),
                (":TRACe:DATA", self._trace_data),
                (":FORMat[:DATA]", self._format),
                (":FORMat:BORDer", self._byte_order),
                (":TRIGger:EXTernal:IN:EDGE", self._external_edge),
                (":TRIGger:LOAD", self._trigger_load),
                (":TRIGger:BLOCk:BUFFer:CLEar", self._block_buffer_clear),
                (":TRIGger:BLOCk:WAIT", self._block_wait),
                (":TRIGger:BLOCk:MDIGitize", self._block_mdigitize),
                (":INITiate[:IMMediate]", self._initiate),
                (":ABORt", self._abort),
                (":MEASure:VOLTage[:DC]", self._measure_dc),
            )
        ]

    # -- protocol ------------------------------------------------------------------------------------------------
    def handle(self, command: str, session: dict[str, Any]) -> bytes | None:
        """Run each unit of the message in turn; an error drops the units after it, as the parser does."""
        replies: list[str | bytes] = []
        for unit in split_program_message(command):
            self._follow_acquisition()
            header, arguments = split_command(unit)
            query = header.endswith("?")
            try:
                reply = find_command(self._commands, header.removesuffix("?"))(query, arguments)
            except ScpiError as error:
                self._errors.push(error.code, error.message)
                break
            if reply is not None:
                replies.append(reply)
        if not replies:
            return None
        # a binary block (``#0...``) carries its own end of message; text replies get the terminator
        encoded = [reply if isinstance(reply, bytes) else reply.encode("ascii") for reply in replies]
        ending = b"" if isinstance(replies[-1], bytes) else self.output_termination
        return b";".join(encoded) + ending

    # -- state ---------------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.digitize_function = "NONE"
        self.measure_function = "VOLT:DC"
        self.range_v = 10.0
        self.sample_rate_hz = 1e6
        self.digitize_count = 1
        self.buffer_points = 100_000
        self.data_format = "ASC"
        self.big_endian = False
        self.external_edge = "FALL"
        self.blocks: list[tuple[str, tuple[Any, ...]]] = []
        self._stop_acquisition()
        self._line_buffer_cleared = True

    @property
    def running(self) -> bool:
        """True while the trigger model waits for its trigger or digitizes."""
        acquisition = self._acquisition
        if acquisition is None or acquisition.aborted_count is not None:
            return False
        return acquisition.acquired(self.bench.now()) < acquisition.count

    def _follow_acquisition(self) -> None:
        """Learn the trigger time once the stage has fired, and cache the samples once the line is complete."""
        acquisition = self._acquisition
        if acquisition is None:
            return
        if acquisition.start_s is None and acquisition.aborted_count is None:
            acquisition.start_s = self.bench.first_trigger_after(acquisition.armed_at_s)
            end_s = acquisition.end_s()
            if end_s is not None:
                self.bench.hold_busy_until(self.role, end_s)
                self.bench.settle()
        now_s = self.bench.now()
        if acquisition.samples_v is None and acquisition.start_s is not None:
            taken = acquisition.acquired(now_s)
            if acquisition.aborted_count is not None:
                acquisition.samples_v = self._render(acquisition.start_s, acquisition.sample_rate_hz, taken)
            elif taken == acquisition.count and acquisition.rendering is None:
                # the line is complete: the bench is read now, as a render here would read it, and the samples
                # computed on a thread of their own while the engine's next exchanges (stage status, trigger reset,
                # positions, power meter, the next run-up) are served; the first read of the samples waits for it
                times_s = _sample_times_s(acquisition.start_s, acquisition.sample_rate_hz, taken)
                acquisition.rendering = _BackgroundRender(self.bench.detector_view(), times_s, self.range_v)

    def _render(self, start_s: float, sample_rate_hz: float, count: int) -> np.ndarray:
        times_s = _sample_times_s(start_s, sample_rate_hz, count)
        return _digitize(self.bench.detector_view(), times_s, self.range_v)

    def _stop_acquisition(self) -> None:
        acquisition = self._acquisition
        if acquisition is not None and acquisition.aborted_count is None and self.running:
            acquisition.aborted_count = acquisition.acquired(self.bench.now())
        self.bench.hold_busy_until(self.role, self.bench.now())

    def _line_span(self) -> tuple[_Acquisition, int, int] | None:
        """The line buffer's readings as ``(acquisition, first, taken)``: the line's samples ``first .. taken - 1``
        (defbuffer1 fills continuously: a line longer than the buffer keeps only its newest readings); None when
        the buffer is empty."""
        acquisition = self._acquisition
        if acquisition is None or acquisition.start_s is None or self._line_buffer_cleared:
            return None
        taken = acquisition.acquired(self.bench.now())
        return acquisition, taken - min(taken, self.buffer_points), taken

    def _line_count(self) -> int:
        """How many readings the line buffer holds (what :meth:`_line_samples` would return, without them)."""
        span = self._line_span()
        return 0 if span is None else span[2] - span[1]

    def _line_samples(self) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
        """Samples in the line buffer (oldest first), and a function that gives their times relative to the first
        one (computed only for the rare reads that ask for them)."""
        span = self._line_span()
        if span is None:
            empty = np.empty(0, dtype=np.float64)
            return empty, lambda: empty
        acquisition, first, taken = span
        samples = acquisition.cached_samples()
        if samples is None or samples.size < taken:  # mid-line: render what exists so far, without caching
            samples = self._render(acquisition.start_s, acquisition.sample_rate_hz, taken)
        rate_hz = acquisition.sample_rate_hz
        return samples[first:taken], lambda: np.arange(first, taken, dtype=np.float64) / rate_hz

    # -- commands --------------------------------------------------------------------------------------------------
    def _idn(self, query: bool, arguments: str) -> str:
        require_form(query)
        return self.identification

    def _rst(self, query: bool, arguments: str) -> None:
        require_form(not query)
        self._reset()

    def _cls(self, query: bool, arguments: str) -> None:
        require_form(not query)
        self._errors.clear()

    def _opc(self, query: bool, arguments: str) -> str | None:
        return "1" if query else None

    def _error_next(self, query: bool, arguments: str) -> str:
        require_form(query)
        code, message, _ = self._errors.pop()
        if code == 0:
            return '0,"No error;0;0 0"'
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime())
        return f'{code},"{message};1;{stamp}.000"'

    def _digitize_function(self, query: bool, arguments: str) -> str | None:
        if query:
            return f'"{self.digitize_function}"' if self.digitize_function != "NONE" else "NONE"
        names = _parameters(arguments)
        if len(names) != 1:
            raise ScpiError(-109, "Missing parameter")
        if matches_mnemonic(names[0], "VOLTage"):
            self.digitize_function = "VOLT"
        elif matches_mnemonic(names[0], "CURRent"):
            self.digitize_function = "CURR"
        else:
            raise ScpiError(-224, "Illegal parameter value")
        self.measure_function = "NONE"
        return None

    def _measure_function(self, query: bool, arguments: str) -> str | None:
        if query:
            return f'"{self.measure_function}"' if self.measure_function != "NONE" else "NONE"
        names = _parameters(arguments)
        if len(names) != 1 or names[0].upper() not in {"VOLT:DC", "VOLTAGE:DC", "VOLT", "VOLTAGE"}:
            raise ScpiError(-224, "Illegal parameter value")  # the twin only measures DC volts
        self._select_dc_volts()
        return None

    def _select_dc_volts(self) -> None:
        self.measure_function = "VOLT:DC"
        self.digitize_function = "NONE"

    def _range(self, query: bool, arguments: str) -> str | None:
        if query:
            return format_nr3(self.range_v)
        wanted = abs(_number(arguments, -1000.0, 1000.0))
        self.range_v = next(level for level in RANGES_V if wanted <= level)  # the smallest range that fits
        return None

    def _sample_rate(self, query: bool, arguments: str) -> str | None:
        if query:
            return format_nr3(self.sample_rate_hz)
        self._require_idle()
        self.sample_rate_hz = _number(arguments, 1e3, 1e6)
        return None

    def _count(self, query: bool, arguments: str) -> str | None:
        if query:
            return str(self.digitize_count)
        self._require_idle()
        self.digitize_count = int(_number(arguments, 1, 55_000_000))
        return None

    def _buffer_name(self, arguments: list[str], position: int) -> str:
        name = arguments[position] if len(arguments) > position else LINE_BUFFER
        if name not in (LINE_BUFFER, DC_BUFFER):
            raise ScpiError(-224, "Illegal parameter value")
        return name

    def _trace_points(self, query: bool, arguments: str) -> str | None:
        parts = _parameters(arguments)
        if query:
            return str(self.buffer_points) if self._buffer_name(parts, 0) == LINE_BUFFER else "100000"
        if not parts:
            raise ScpiError(-109, "Missing parameter")
        self._require_idle()
        points = int(_number(parts[0], MIN_BUFFER_POINTS, MAX_BUFFER_POINTS))
        if self._buffer_name(parts, 1) == LINE_BUFFER:
            self.buffer_points = points
            self._line_buffer_cleared = True  # resizing a buffer clears it
        return None

    def _trace_clear(self, query: bool, arguments: str) -> None:
        require_form(not query)
        if self._buffer_name(_parameters(arguments), 0) == LINE_BUFFER:
            self._require_idle()
            self._line_buffer_cleared = True
        else:
            self._dc_readings = 0

    def _trace_actual(self, query: bool, arguments: str) -> str:
        require_form(query)
        if self._buffer_name(_parameters(arguments), 0) == DC_BUFFER:
            return str(self._dc_readings)
        return str(self._line_count())

    def _trace_data(self, query: bool, arguments: str) -> bytes:
        require_form(query)
        parts = _parameters(arguments)
        if len(parts) < 2:
            raise ScpiError(-109, "Missing parameter")
        if self._buffer_name(parts, 2) != LINE_BUFFER:
            raise ScpiError(-224, "Illegal parameter value")  # the twin keeps no DC readings
        samples, relative_s = self._line_samples()
        first = int(_number(parts[0], 1, MAX_BUFFER_POINTS))
        last = int(_number(parts[1], 1, MAX_BUFFER_POINTS))
        if not first <= last <= samples.size:
            raise ScpiError(-222, "Data out of range")
        columns = []
        for element in parts[3:] or ["READ"]:
            if matches_mnemonic(element, "READing"):
                columns.append(samples[first - 1 : last])
            elif matches_mnemonic(element, "RELative"):
                columns.append(relative_s()[first - 1 : last])
            else:
                raise ScpiError(-224, "Illegal parameter value")  # binary formats allow only these elements
        values = columns[0] if len(columns) == 1 else np.column_stack(columns).ravel()
        return self._values_reply(values)

    def _values_reply(self, values: np.ndarray) -> bytes:
        if self.data_format == "ASC":
            return format_nr3_list(values).encode("ascii") + self.output_termination
        dtype = "f8" if self.data_format == "REAL" else "f4"
        data = np.ascontiguousarray(values, dtype=(">" if self.big_endian else "<") + dtype)
        return b"".join((b"#0", data.data, self.output_termination))  # one copy of a line's MBs, not three

    def _format(self, query: bool, arguments: str) -> str | None:
        if query:
            return self.data_format
        for mnemonic, name in (("ASCii", "ASC"), ("REAL", "REAL"), ("SREal", "SRE")):
            if matches_mnemonic(arguments, mnemonic):
                self.data_format = name
                return None
        raise ScpiError(-224, "Illegal parameter value")

    def _byte_order(self, query: bool, arguments: str) -> str | None:
        if query:
            return "NORM" if self.big_endian else "SWAP"
        if matches_mnemonic(arguments, "NORMal"):
            self.big_endian = True
        elif matches_mnemonic(arguments, "SWAPped"):
            self.big_endian = False
        else:
            raise ScpiError(-224, "Illegal parameter value")
        return None

    def _external_edge(self, query: bool, arguments: str) -> str | None:
        if query:
            return self.external_edge
        for mnemonic, name in (("FALLing", "FALL"), ("RISing", "RIS"), ("EITHer", "EITH")):
            if matches_mnemonic(arguments, mnemonic):
                self.external_edge = name
                return None
        raise ScpiError(-224, "Illegal parameter value")

    def _trigger_load(self, query: bool, arguments: str) -> None:
        require_form(not query)
        self._require_idle()
        parts = _parameters(arguments)
        if not parts or parts[0].upper() != "EMPTY":
            raise ScpiError(-224, "Illegal parameter value")  # the twin offers only the "Empty" template
        self.blocks = []

    def _add_block(self, number_text: str, kind: str, parameters: tuple[Any, ...]) -> None:
        self._require_idle()
        number = int(_number(number_text, 1, 63))
        if number > len(self.blocks) + 1:
            raise ScpiError(-222, "Data out of range")  # blocks are numbered without gaps
        if number == len(self.blocks) + 1:
            self.blocks.append((kind, parameters))
        else:
            self.blocks[number - 1] = (kind, parameters)

    def _block_buffer_clear(self, query: bool, arguments: str) -> None:
        require_form(not query)
        parts = _parameters(arguments)
        if not parts:
            raise ScpiError(-109, "Missing parameter")
        self._add_block(parts[0], "clear", (self._buffer_name(parts, 1),))

    def _block_wait(self, query: bool, arguments: str) -> None:
        require_form(not query)
        parts = _parameters(arguments)
        if len(parts) < 2:
            raise ScpiError(-109, "Missing parameter")
        if not matches_mnemonic(parts[1], "EXTernal"):
            raise ScpiError(-224, "Illegal parameter value")  # the twin's only event is the external input
        clear = parts[2] if len(parts) > 2 else "ENT"
        if not (matches_mnemonic(clear, "ENTer") or matches_mnemonic(clear, "NEVer")):
            raise ScpiError(-224, "Illegal parameter value")
        self._add_block(parts[0], "wait", (matches_mnemonic(clear, "ENTer"),))

    def _block_mdigitize(self, query: bool, arguments: str) -> None:
        require_form(not query)
        parts = _parameters(arguments)
        if len(parts) < 2:
            raise ScpiError(-109, "Missing parameter")
        if self._buffer_name(parts, 1) != LINE_BUFFER:
            raise ScpiError(-224, "Illegal parameter value")
        count_text = parts[2] if len(parts) > 2 else "AUTO"
        count = None if count_text.upper() == "AUTO" else int(_number(count_text, 1, 55_000_000))
        self._add_block(parts[0], "digitize", (count,))

    def _initiate(self, query: bool, arguments: str) -> None:
        require_form(not query)
        if self.running:
            raise ScpiError(-213, "Init ignored")
        now_s = self.bench.now()
        waits, count = False, None
        for kind, parameters in self.blocks:
            if kind == "clear":
                self._line_buffer_cleared = True
            elif kind == "wait":
                waits = True
            elif kind == "digitize":
                if self.digitize_function != "VOLT":
                    raise ScpiError(-221, "Settings conflict")  # the twin only digitizes voltage into the line
                count = parameters[0] or self.digitize_count
                break
        if count is None:
            return  # a model without a digitize block finishes at once
        self._acquisition = _Acquisition(now_s, waits, count, self.sample_rate_hz)
        self._line_buffer_cleared = False
        if not waits:
            self._acquisition.start_s = now_s
            self.bench.hold_busy_until(self.role, now_s + count / self.sample_rate_hz)
            self.bench.settle()
        else:
            self._follow_acquisition()  # the stage may already have fired after the arm time

    def _abort(self, query: bool, arguments: str) -> None:
        require_form(not query)
        self._stop_acquisition()
        self._follow_acquisition()

    def _measure_dc(self, query: bool, arguments: str) -> str | bytes:
        require_form(query)
        if self.running:
            raise ScpiError(-221, "Settings conflict")
        buffer = self._buffer_name(_parameters(arguments), 0)
        self._select_dc_volts()
        value = float(self.bench.detector_signal_v(np.array([self.bench.now()]))[0])
        if buffer == DC_BUFFER:
            self._dc_readings += 1
        else:
            self._line_buffer_cleared = True  # the twin keeps one kind of data per buffer
        if self.data_format == "ASC":
            return format_nr3(value)
        return self._values_reply(np.array([value]))

    # -- checks ------------------------------------------------------------------------------------------------------
    def _require_idle(self) -> None:
        if self.running:
            raise ScpiError(-221, "Settings conflict")


def _parameters(arguments: str) -> list[str]:
    """Comma-separated parameters with their quotes removed (``'1, "defbuffer1", AUTO'`` → ``['1', 'defbuffer1',
    'AUTO']``): the twin takes a buffer name with or without quotes."""
    return [part.strip('"').strip("'") for part in split_arguments(arguments)]


def _number(text: str, minimum: float, maximum: float) -> float:
    """A numeric parameter in ``[minimum, maximum]`` (the twin takes no MIN/MAX/DEF keywords)."""
    return check_range(parse_number(text), minimum, maximum)
