"""Yokogawa AQ6373 visible optical spectrum analyser (AQ6370 series, 350–1200 nm) as the PL spectrometer.

Command subset
--------------
AQ6370-series remote commands over LAN (raw socket, port 10001), ``\\r\\n`` in both directions. Checked against the
AQ6370C/AQ6370D remote control manuals (IM AQ6370C-17EN) and well-used open drivers:

- Log-in. The LAN port accepts commands only after user authentication: the client sends ``OPEN "<user>"``, the
  instrument answers ``AUTHENTICATE CRAM-MD5.``; the client sends the password, the instrument answers ``ready``.
  The user ``anonymous`` is accepted with any password (scripts commonly send a single space; the default here is
  the word ``anonymous`` because the virtual station's server skips blank lines).
- ``CFORM1`` selects the AQ6370 (SCPI) command format rather than the AQ6317-compatible one.
- ``*IDN?`` → ``YOKOGAWA,AQ6373,<serial>,<firmware>``.
- ``:SENS:WAV:STAR <n>NM``, ``:SENS:WAV:STOP <n>NM`` (queries answer in metres).
- ``:SENS:BAND:RES <n>NM``: resolution bandwidth, one of 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10 nm.
- ``:SENS:SWE:POIN <n>``: sampling points, 101 to 50001.
- ``:INIT:SMOD SING`` (single sweep), ``:INIT`` (start), ``:ABOR`` (stop).
- ``:STAT:OPER:EVEN?``: operation event register; bit 0 is set when a sweep completes, and reading the register
  clears it. :meth:`YokogawaAQ6373.acquire` reads it once before ``:INIT`` (discarding an old completion) and polls
  it afterwards with a monotonic deadline.
- ``:UNIT:X WAV`` (wavelength axis, so X data are wavelengths in metres), ``:DISP:TRAC:Y1:UNIT W/NM`` (linear power
  density), ``:FORM:DATA ASC``, ``:TRAC:ACT TRA``, ``:TRAC:ATTR:TRA WRIT`` (sweeps write trace A).
- ``:TRAC:X? TRA`` and ``:TRAC:Y? TRA``: ASCII, comma-separated.
- ``:SYST:ERR?`` → ``0,"No error"`` or ``<code>,"<message>"``.

Units
-----
The level unit is set to ``W/NM`` on connection: the OSA divides the power it measures in the resolution bandwidth
by that bandwidth and reports W/nm, which is :attr:`~drivers.interfaces.Spectrum.power_w_per_nm` unchanged. X data
come in metres and are converted to nm. The wavelength medium (air or vacuum) is whatever the instrument is set to.

The AQ6373 does not acknowledge commands, so every write is followed by ``:SYST:ERR?``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from drivers.base import Instrument, control, one_of, strict_integer_range, strict_range
from drivers.errors import InstrumentConnectionError, InstrumentReplyError, InstrumentTimeoutError
from drivers.interfaces import InstrumentIdentity, Spectrometer, Spectrum
from drivers.scpi import drain_error_queue, format_number, raise_first_error

MIN_WAVELENGTH_NM = 350.0
MAX_WAVELENGTH_NM = 1200.0
RESOLUTIONS_NM = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
MIN_POINTS = 101
MAX_POINTS = 50_001
SWEEP_COMPLETE = 0x01  # bit 0 of the operation event register
LOGIN_CHALLENGE = "AUTHENTICATE CRAM-MD5."
LOGIN_ACCEPTED = "ready"
_PASSWORD_LABEL = "<password>"  # how errors name the password exchange: the password itself is never shown


def _metres_to_nm(reply: str) -> float:
    value = float(reply) * 1e9
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _parse_register(reply: str) -> int:
    value = int(reply)
    if value < 0:
        raise ValueError("a status register is never negative")
    return value


def _parse_values(reply: str) -> np.ndarray:
    """Comma-separated ASCII numbers → float64 array (an empty trace is an error, not an empty array)."""
    values = np.array([float(field) for field in reply.split(",")], dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("expected finite comma-separated numbers")
    return values


class YokogawaAQ6373(Instrument, Spectrometer):
    """Yokogawa AQ6373 OSA reached over LAN, logged in on connection.

    Parameters
    ----------
    resource
        An open pyvisa resource (``TCPIP0::<host>::10001::SOCKET``) or a protocol-test stand-in.
    name
        How errors name this instrument.
    username, password
        The LAN log-in. ``anonymous`` is accepted with any password.
    poll_interval_s
        Pause between sweep-status polls in :meth:`acquire`.

    Examples
    --------
    >>> osa = YokogawaAQ6373.open("TCPIP0::192.168.0.30::10001::SOCKET")  # doctest: +SKIP
    >>> osa.configure(400.0, 500.0, 0.5, 1001)  # doctest: +SKIP
    >>> spectrum = osa.acquire(timeout_s=10.0)  # doctest: +SKIP
    """

    model = "Yokogawa AQ6373"
    read_termination = "\r\n"
    write_termination = "\r\n"
    check_errors_after_write = True
    max_queued_errors = 32

    start_nm = control(
        ":SENS:WAV:STAR?",
        ":SENS:WAV:STAR {}NM",
        "Sweep start wavelength (nm).",
        validator=strict_range(MIN_WAVELENGTH_NM, MAX_WAVELENGTH_NM, unit="nm"),
        parse=_metres_to_nm,
        format_value=format_number,
    )
    stop_nm = control(
        ":SENS:WAV:STOP?",
        ":SENS:WAV:STOP {}NM",
        "Sweep stop wavelength (nm).",
        validator=strict_range(MIN_WAVELENGTH_NM, MAX_WAVELENGTH_NM, unit="nm"),
        parse=_metres_to_nm,
        format_value=format_number,
    )
    resolution_nm = control(
        ":SENS:BAND:RES?",
        ":SENS:BAND:RES {}NM",
        "Resolution bandwidth (nm): 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5 or 10.",
        validator=one_of(RESOLUTIONS_NM),
        parse=_metres_to_nm,
        format_value=format_number,
    )
    points = control(
        ":SENS:SWE:POIN?",
        ":SENS:SWE:POIN {}",
        "Sampling points per sweep, 101 to 50001.",
        validator=strict_integer_range(MIN_POINTS, MAX_POINTS),
        parse=int,
    )

    def __init__(
        self,
        resource: Any,
        *,
        name: str | None = None,
        username: str = "anonymous",
        password: str = "anonymous",
        poll_interval_s: float = 0.05,
    ) -> None:
        super().__init__(resource, name=name)
        if not username or any(character in username for character in '"\r\n'):
            raise ValueError(f"username: {username!r} must be non-empty, without quotes or line breaks")
        if any(character in password for character in "\r\n"):
            raise ValueError("password: must not contain line breaks")
        self._username = username
        self._password = password
        self.poll_interval_s = float(strict_range(1e-3, 10.0, unit="s")("poll_interval_s", poll_interval_s))

    # -- connection ----------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Log in, select the SCPI command format, and fix the units and the trace the driver reads."""
        self._log_in()
        self.write("CFORM1")
        self.write(":UNIT:X WAV")
        self.write(":DISP:TRAC:Y1:UNIT W/NM")
        self.write(":FORM:DATA ASC")
        self.write(":TRAC:ACT TRA")
        self.write(":TRAC:ATTR:TRA WRIT")

    def _log_in(self) -> None:
        request = f'OPEN "{self._username}"'
        challenge = self.query(request)
        if challenge != LOGIN_CHALLENGE:
            raise InstrumentReplyError(
                self.name, "unexpected reply to the log-in request", command=request, reply=challenge
            )
        with self.lock, self._translate_errors(_PASSWORD_LABEL):
            self._resource.write(self._password)
            answer = self.read_line(_PASSWORD_LABEL).strip()
        if answer != LOGIN_ACCEPTED:
            raise InstrumentConnectionError(
                self.name, f"log-in as {self._username!r} refused (reply {answer!r})", command=_PASSWORD_LABEL
            )

    def identity(self) -> InstrumentIdentity:
        reply = self.query("*IDN?")
        parts = [part.strip() for part in reply.split(",")]
        if len(parts) != 4 or not parts[0]:
            raise InstrumentReplyError(self.name, "expected 4 comma-separated fields", command="*IDN?", reply=reply)
        return InstrumentIdentity(*parts)

    def make_safe(self) -> None:
        """Stop any sweep (the OSA emits nothing, so idle is safe)."""
        self.write(":ABOR")

    # -- Spectrometer --------------------------------------------------------------------------------------------
    def configure(self, start_nm: float, stop_nm: float, resolution_nm: float, points: int) -> None:
        """Set span, resolution bandwidth and sampling points for single sweeps; everything is checked first."""
        wavelength = strict_range(MIN_WAVELENGTH_NM, MAX_WAVELENGTH_NM, unit="nm")
        start = wavelength("start_nm", start_nm)
        stop = wavelength("stop_nm", stop_nm)
        if not start < stop:
            raise ValueError(f"start_nm: {start_nm!r} must be below stop_nm {stop_nm!r}")
        resolution = one_of(RESOLUTIONS_NM)("resolution_nm", resolution_nm)
        count = strict_integer_range(MIN_POINTS, MAX_POINTS)("points", points)
        with self.lock:
            self.start_nm = start
            self.stop_nm = stop
            self.resolution_nm = resolution
            self.points = count
            self.write(":INIT:SMOD SING")

    def acquire(self, timeout_s: float) -> Spectrum:
        """Run one single sweep, wait for it (polling the sweep-complete bit), and read trace A.

        Raises :class:`~drivers.errors.InstrumentTimeoutError` (after stopping the sweep) if it has not completed
        within ``timeout_s``.
        """
        limit_s = strict_range(0.0, 3600.0, unit="s")("timeout_s", timeout_s)
        deadline = time.monotonic() + limit_s
        with self.lock:
            self.query_parsed(":STAT:OPER:EVEN?", _parse_register)  # reading clears an earlier sweep's completion
            self.write(":INIT")
            while not self.query_parsed(":STAT:OPER:EVEN?", _parse_register) & SWEEP_COMPLETE:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    self.write(":ABOR")
                    raise InstrumentTimeoutError(self.name, f"sweep not complete within {limit_s:g} s", command=":INIT")
                time.sleep(min(self.poll_interval_s, remaining_s))
            wavelength_m = self.query_parsed(":TRAC:X? TRA", _parse_values)
            level_w_per_nm = self.query_parsed(":TRAC:Y? TRA", _parse_values)
        if wavelength_m.shape != level_w_per_nm.shape:
            raise InstrumentReplyError(
                self.name,
                f"trace has {wavelength_m.size} wavelengths but {level_w_per_nm.size} levels",
                command=":TRAC:Y? TRA",
                reply=f"{level_w_per_nm.size} values",
            )
        return Spectrum(wavelength_nm=wavelength_m * 1e9, power_w_per_nm=level_w_per_nm)

    # -- protocol hooks --------------------------------------------------------------------------------------------
    def _check_errors(self, command: str) -> None:
        raise_first_error(self, command, drain_error_queue(self, max_reads=self.max_queued_errors))
