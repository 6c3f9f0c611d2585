"""Virtual Yokogawa AQ6373 (AQ6370-series OSA) measuring the PL spectrum under the laser spot.

Speaks the subset :mod:`drivers.yokogawa` uses, byte for byte: ``\\r\\n`` after every reply; no reply to a command;
SCPI long and short forms (:mod:`drivers.virtual.scpi`). A rejected command or query is silent and leaves
``<code>,"<message>"`` in the error queue (1000 entries, SCPI overflow; ``:SYST:ERR?`` → ``0,"No error"`` when
empty).

Log-in
------
Per connection, as on the LAN port of the real instrument: ``OPEN "<user>"`` → ``AUTHENTICATE CRAM-MD5.``, then
the password → ``ready``. ``anonymous`` takes any password; other users are those in :attr:`AQ6370Twin.accounts`.
A wrong password is answered with ``error`` and the log-in starts over. Anything sent before the log-in is complete
gets no reply and is not executed. (The reply to a refused log-in and the silence before it are this twin's
reading of the behaviour; the manual documents only the successful exchange.)

Sweep
-----
``:INIT`` in single-sweep mode starts a sweep of ``0.2 s + 0.2 ms × points`` (``bench.hold_busy_until``, so at time
scale 0 it is complete by the next command). The trace is computed when the sweep starts, from what is under the
spot then: ``bench.world.pl_spectrum_w_per_nm`` at ``bench.spot_wafer_um(t)`` for ``bench.laser_power_w(t)``,
convolved with a Gaussian slit function whose FWHM is the resolution bandwidth, plus a noise floor of
:attr:`AQ6370Twin.noise_floor_w` in the resolution bandwidth. It replaces trace A when the sweep completes, and bit 0
of the operation event register is set. Levels are reported in the unit of ``:DISP:TRAC:Y1:UNIT`` (W/nm, W, dBm/nm
or dBm; W is power in the resolution bandwidth).

Limits of the twin: trace A only, single-sweep mode only, wavelength X axis only, ASCII data only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from scipy.ndimage import gaussian_filter1d

from drivers.virtual.bench import VirtualBench
from drivers.virtual.scpi import (
    ErrorQueue,
    ScpiError,
    find_command,
    format_error,
    format_nr3_list,
    matches_mnemonic,
    require_form,
    scpi_header,
    split_command,
)
from drivers.virtual.server import InstrumentTwin

MIN_WAVELENGTH_NM = 350.0
MAX_WAVELENGTH_NM = 1200.0
RESOLUTIONS_NM = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
SWEEP_OVERHEAD_S = 0.2
SWEEP_S_PER_POINT = 0.2e-3
LEVEL_UNITS = ("DBM", "W", "DBM/NM", "W/NM")  # :DISP:TRAC:Y1:UNIT? answers the index
ERROR_QUEUE_LENGTH = 1000
_FINE_GRID_MAX = 400_000  # fine-grid samples for the slit convolution (bounds the cost of one sweep)
_NUMBER_WITH_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:E[+-]?\d+)?)\s*(NM|UM|PM|M)?\s*$", re.IGNORECASE)
_NM_PER_UNIT = {"NM": 1.0, "UM": 1e3, "PM": 1e-3, "M": 1e9, None: 1e9}

Handler = Callable[[bool, str], str | None]


def format_nr3(values: np.ndarray) -> str:
    """Comma-separated values in the AQ6370's ASCII form, e.g. ``+4.50000000E-007`` (three-digit exponents)."""
    return format_nr3_list(np.asarray(values, dtype=np.float64), digits=8, plus_sign=True, exponent_digits=3)


def parse_wavelength_nm(text: str) -> float:
    """``400NM`` / ``0.4UM`` / ``4E-7`` (metres when no unit) → nm, rounded to 1 fm so that ``1.2E-6`` is 1200."""
    match = _NUMBER_WITH_UNIT.match(text)
    if match is None:
        raise ScpiError(-104, "Data type error")
    return round(float(match.group(1)) * _NM_PER_UNIT[match.group(2).upper() if match.group(2) else None], 6)


def slit_convolved(
    spectrum: Callable[[np.ndarray], np.ndarray], wavelength_nm: np.ndarray, resolution_nm: float
) -> np.ndarray:
    """``spectrum`` seen through a Gaussian slit of FWHM ``resolution_nm`` (unit area), at ``wavelength_nm``.

    The spectrum is sampled on a grid finer than both the trace spacing and the slit, padded by five slit widths
    so the trace ends are not biased, filtered, and interpolated back onto the trace wavelengths.
    """
    sigma_nm = resolution_nm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    spacing_nm = (wavelength_nm[-1] - wavelength_nm[0]) / max(wavelength_nm.size - 1, 1)
    pad_nm = 5.0 * sigma_nm
    low, high = wavelength_nm[0] - pad_nm, wavelength_nm[-1] + pad_nm
    step_nm = min(spacing_nm, sigma_nm / 3.0)
    count = min(math.ceil((high - low) / step_nm) + 1, _FINE_GRID_MAX)
    fine_nm = np.linspace(low, high, count)
    fine = np.asarray(spectrum(fine_nm), dtype=np.float64)
    sigma_samples = sigma_nm / (fine_nm[1] - fine_nm[0])
    if sigma_samples > 0.1:  # a slit much narrower than the grid changes nothing
        fine = gaussian_filter1d(fine, sigma_samples, mode="nearest", truncate=5.0)
    return np.interp(wavelength_nm, fine_nm, fine)


class AQ6370Twin(InstrumentTwin):
    """The AQ6370-series LAN protocol over the shared bench (role ``"spectrometer"``), as an AQ6373."""

    role = "spectrometer"
    input_termination = b"\n"  # the \r of \r\n is stripped by the server
    output_termination = b"\r\n"

    identification: ClassVar[str] = "YOKOGAWA,AQ6373,91N123456,01.05"
    accounts: ClassVar[dict[str, str]] = {}
    """Users other than ``anonymous`` and their passwords."""
    noise_floor_w: ClassVar[float] = 1e-11
    """RMS noise power in the resolution bandwidth (about -80 dBm)."""

    def __init__(self, bench: VirtualBench) -> None:
        super().__init__(bench)
        self._errors = ErrorQueue(ERROR_QUEUE_LENGTH)
        self._rng = np.random.default_rng(6373)
        self.command_format = 1
        self.start_nm = 1000.0  # the AQ6373's power-on span is not modelled; any in-range default serves
        self.stop_nm = 1100.0
        self.resolution_nm = 1.0
        self.points = 1001
        self.sweep_mode = "SING"
        self.level_unit = "DBM"
        self.active_trace = "TRA"
        self.trace_attribute = "WRIT"
        self.operation_event = 0
        self.trace_nm = np.linspace(self.start_nm, self.stop_nm, self.points)
        self.trace_w_per_nm = np.zeros(self.points)
        self.trace_resolution_nm = self.resolution_nm
        self._sweep: tuple[float, np.ndarray, np.ndarray, float] | None = None  # end, wavelengths, levels, rbw
        self._commands: list[tuple[re.Pattern[str], Handler]] = [
            (scpi_header(pattern), handler)
            for pattern, handler in (
                ("*IDN", self._idn),
                ("*CLS", self._cls),
                (":CFORM0", self._cform),
                (":CFORM1", self._cform),
                (":SYSTem:ERRor[:NEXT]", self._error_next),
                ("[:SENSe]:WAVelength:STARt", self._start),
                ("[:SENSe]:WAVelength:STOP", self._stop),
                ("[:SENSe]:BANDwidth[:RESolution]", self._resolution),
                ("[:SENSe]:BWIDth[:RESolution]", self._resolution),
                ("[:SENSe]:SWEep:POINts", self._points),
                (":INITiate:SMODe", self._sweep_mode),
                (":INITiate[:IMMediate]", self._initiate),
                (":ABORt", self._abort),
                (":STATus:OPERation[:EVENt]", self._operation_event),
                (":UNIT:X", self._unit_x),
                (":DISPlay[:WINDow]:TRACe:Y1[:SCALe]:UNIT", self._level_unit),
                (":FORMat[:DATA]", self._format),
                (":TRACe:ACTive", self._trace_active),
                (":TRACe:ATTRibute:TRA", self._trace_attribute),
                (":TRACe[:DATA]:X", self._trace_x),
                (":TRACe[:DATA]:Y", self._trace_y),
            )
        ]

    # -- protocol ------------------------------------------------------------------------------------------------
    def new_session(self) -> dict[str, Any]:
        return {"state": "user", "user": None}

    def handle(self, command: str, session: dict[str, Any]) -> bytes | None:
        if session["state"] != "ready":
            return self._log_in(command, session)
        self._follow_sweep()
        header, arguments = split_command(command)
        query = header.endswith("?")
        header = header.removesuffix("?")
        try:
            if self.command_format != 1 and header.upper() not in (":CFORM1", ":CFORM0", ":*IDN"):
                raise ScpiError(-113, "Undefined header")  # AQ6317-format commands are not modelled
            reply = find_command(self._commands, header)(query, arguments)
        except ScpiError as error:
            self._errors.push(error.code, error.message)
            return None
        return None if reply is None else reply.encode("ascii") + self.output_termination

    def _log_in(self, command: str, session: dict[str, Any]) -> bytes | None:
        if session["state"] == "user":
            match = re.fullmatch(r'\s*OPEN\s+"([^"]*)"\s*', command, re.IGNORECASE)
            if match is None:
                return None  # not logged in: nothing is executed or answered
            session["user"] = match.group(1)
            session["state"] = "password"
            return b"AUTHENTICATE CRAM-MD5." + self.output_termination
        user, password = session["user"], command
        if user == "anonymous" or (user in self.accounts and self.accounts[user] == password):
            session["state"] = "ready"
            return b"ready" + self.output_termination
        session["state"], session["user"] = "user", None
        return b"error" + self.output_termination

    # -- sweep ---------------------------------------------------------------------------------------------------
    def _follow_sweep(self) -> None:
        if self._sweep is not None and self.bench.now() >= self._sweep[0]:
            if self.trace_attribute == "WRIT":  # a FIXed trace keeps its data
                _, self.trace_nm, self.trace_w_per_nm, self.trace_resolution_nm = self._sweep
            self._sweep = None
            self.operation_event |= 0x01

    def _render(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        wavelength_nm = np.linspace(self.start_nm, self.stop_nm, self.points)
        x_um, y_um = self.bench.spot_wafer_um(t_s)
        power_w = float(self.bench.laser_power_w(t_s))
        world = self.bench.world

        def spectrum(grid_nm: np.ndarray) -> np.ndarray:
            return world.pl_spectrum_w_per_nm(float(x_um), float(y_um), power_w, grid_nm)

        density = slit_convolved(spectrum, wavelength_nm, self.resolution_nm)
        noise = self._rng.standard_normal(wavelength_nm.size) * self.noise_floor_w / self.resolution_nm
        return wavelength_nm, density + noise

    def _levels(self) -> np.ndarray:
        density = self.trace_w_per_nm
        if self.level_unit == "W/NM":
            return density
        if self.level_unit == "W":
            return density * self.trace_resolution_nm
        per_nm = self.level_unit == "DBM/NM"
        watts = density if per_nm else density * self.trace_resolution_nm
        return 10.0 * np.log10(np.maximum(watts, 1e-21) / 1e-3)  # the display floor: -180 dBm

    # -- commands --------------------------------------------------------------------------------------------------
    def _idn(self, query: bool, arguments: str) -> str:
        require_form(query)
        return self.identification

    def _cls(self, query: bool, arguments: str) -> None:
        require_form(not query)
        self._errors.clear()
        self.operation_event = 0

    def _cform(self, query: bool, arguments: str) -> None:
        require_form(not query)

    def _error_next(self, query: bool, arguments: str) -> str:
        require_form(query)
        code, message, _ = self._errors.pop()
        return format_error(code, message)

    def _wavelength(self, query: bool, arguments: str) -> float | None:
        if query:
            return None
        wavelength_nm = parse_wavelength_nm(arguments)
        if not MIN_WAVELENGTH_NM <= wavelength_nm <= MAX_WAVELENGTH_NM:
            raise ScpiError(-222, "Data out of range")
        return wavelength_nm

    def _start(self, query: bool, arguments: str) -> str | None:
        value = self._wavelength(query, arguments)
        if value is None:
            return format_nr3(np.array([self.start_nm * 1e-9]))
        self.start_nm = value
        return None

    def _stop(self, query: bool, arguments: str) -> str | None:
        value = self._wavelength(query, arguments)
        if value is None:
            return format_nr3(np.array([self.stop_nm * 1e-9]))
        self.stop_nm = value
        return None

    def _resolution(self, query: bool, arguments: str) -> str | None:
        if query:
            return format_nr3(np.array([self.resolution_nm * 1e-9]))
        wanted_nm = parse_wavelength_nm(arguments)
        match = [value for value in RESOLUTIONS_NM if math.isclose(value, wanted_nm, rel_tol=1e-6)]
        if not match:
            raise ScpiError(-222, "Data out of range")
        self.resolution_nm = match[0]
        return None

    def _points(self, query: bool, arguments: str) -> str | None:
        if query:
            return str(self.points)
        try:
            points = int(arguments)
        except ValueError:
            raise ScpiError(-104, "Data type error") from None
        if not 101 <= points <= 50_001:
            raise ScpiError(-222, "Data out of range")
        self.points = points
        return None

    def _sweep_mode(self, query: bool, arguments: str) -> str | None:
        modes = (("SINGle", "SING"), ("REPeat", "REP"), ("AUTO", "AUTO"), ("SEGMent", "SEGM"))
        if query:
            return str(1 + [name for _, name in modes].index(self.sweep_mode))
        for index, (mnemonic, name) in enumerate(modes, start=1):
            if matches_mnemonic(arguments, mnemonic) or arguments.strip() == str(index):
                self.sweep_mode = name
                return None
        raise ScpiError(-224, "Illegal parameter value")

    def _initiate(self, query: bool, arguments: str) -> None:
        require_form(not query)
        if self.sweep_mode != "SING" or not self.start_nm < self.stop_nm:
            raise ScpiError(-221, "Settings conflict")  # the twin sweeps single sweeps over a positive span only
        now_s = self.bench.now()
        wavelength_nm, density = self._render(now_s)
        end_s = now_s + SWEEP_OVERHEAD_S + SWEEP_S_PER_POINT * self.points
        self._sweep = (end_s, wavelength_nm, density, self.resolution_nm)
        self.bench.hold_busy_until(self.role, end_s)

    def _abort(self, query: bool, arguments: str) -> None:
        require_form(not query)
        self._sweep = None
        self.bench.hold_busy_until(self.role, self.bench.now())

    def _operation_event(self, query: bool, arguments: str) -> str:
        require_form(query)
        value, self.operation_event = self.operation_event, 0  # reading the event register clears it
        return str(value)

    def _unit_x(self, query: bool, arguments: str) -> str | None:
        if query:
            return "0"
        if not matches_mnemonic(arguments, "WAVelength") and arguments.strip() != "0":
            raise ScpiError(-224, "Illegal parameter value")  # the twin has a wavelength axis only
        return None

    def _level_unit(self, query: bool, arguments: str) -> str | None:
        if query:
            return str(LEVEL_UNITS.index(self.level_unit))
        unit = arguments.strip().upper()
        if unit not in LEVEL_UNITS:
            raise ScpiError(-224, "Illegal parameter value")
        self.level_unit = unit
        return None

    def _format(self, query: bool, arguments: str) -> str | None:
        if query:
            return "ASCII"
        if not matches_mnemonic(arguments, "ASCii"):
            raise ScpiError(-224, "Illegal parameter value")  # binary trace transfer is not modelled
        return None

    def _trace_active(self, query: bool, arguments: str) -> str | None:
        if query:
            return self.active_trace
        if arguments.strip().upper() != "TRA":
            raise ScpiError(-224, "Illegal parameter value")
        return None

    def _trace_attribute(self, query: bool, arguments: str) -> str | None:
        if query:
            return self.trace_attribute
        for mnemonic, name in (("WRITe", "WRIT"), ("FIX", "FIX")):
            if matches_mnemonic(arguments, mnemonic):
                self.trace_attribute = name
                return None
        raise ScpiError(-224, "Illegal parameter value")

    def _trace_x(self, query: bool, arguments: str) -> str:
        self._require_trace_a(query, arguments)
        return format_nr3(self.trace_nm * 1e-9)

    def _trace_y(self, query: bool, arguments: str) -> str:
        self._require_trace_a(query, arguments)
        return format_nr3(self._levels())

    def _require_trace_a(self, query: bool, arguments: str) -> None:
        require_form(query)
        if arguments.strip().upper() != "TRA":
            raise ScpiError(-224, "Illegal parameter value")  # the twin keeps trace A only
