"""Yokogawa AQ6373 OSA: log-in and exact protocol, error replies, range checks, and the driver against its twin."""

from __future__ import annotations

import math
import socket
from typing import ClassVar

import numpy as np
import pytest

from drivers.errors import InstrumentConnectionError, InstrumentReplyError, InstrumentTimeoutError
from drivers.interfaces import Spectrometer
from drivers.testing import TIMEOUT, expected_protocol
from drivers.virtual.aq6370_twin import AQ6370Twin, format_nr3, slit_convolved
from drivers.virtual.bench import FaultKind, FaultRule, VirtualBench
from drivers.yokogawa import YokogawaAQ6373
from tests.twin_fixtures import UniformWorld, make_bench, serve_twin

NO_ERROR = b'0,"No error"\r\n'


def write(command: str) -> list[tuple[bytes, bytes | None]]:
    """A command and the error-queue check that follows it."""
    return [(command.encode() + b"\r\n", None), (b":SYST:ERR?\r\n", NO_ERROR)]


LOGIN = [
    (b'OPEN "anonymous"\r\n', b"AUTHENTICATE CRAM-MD5.\r\n"),
    (b"anonymous\r\n", b"ready\r\n"),
]
SESSION_SETUP = [
    *write("CFORM1"),
    *write(":UNIT:X WAV"),
    *write(":DISP:TRAC:Y1:UNIT W/NM"),
    *write(":FORM:DATA ASC"),
    *write(":TRAC:ACT TRA"),
    *write(":TRAC:ATTR:TRA WRIT"),
]


# -- protocol ------------------------------------------------------------------------------------------------------


def test_connect_logs_in_and_selects_scpi_units_and_trace() -> None:
    with expected_protocol(YokogawaAQ6373, [*LOGIN, *SESSION_SETUP], connect=True) as osa:
        assert isinstance(osa, Spectrometer)


def test_login_with_a_named_user() -> None:
    exchanges = [
        (b'OPEN "lab"\r\n', b"AUTHENTICATE CRAM-MD5.\r\n"),
        (b"s3cret\r\n", b"ready\r\n"),
        *SESSION_SETUP,
    ]
    with expected_protocol(YokogawaAQ6373, exchanges, connect=True, username="lab", password="s3cret"):
        pass


def test_identity() -> None:
    with expected_protocol(YokogawaAQ6373, [(b"*IDN?\r\n", b"YOKOGAWA,AQ6373,91N123456,01.05\r\n")]) as osa:
        identity = osa.identity()
    assert (identity.manufacturer, identity.model, identity.serial, identity.firmware) == (
        "YOKOGAWA",
        "AQ6373",
        "91N123456",
        "01.05",
    )


def test_configure_sets_span_resolution_points_and_single_sweep() -> None:
    exchanges = [
        *write(":SENS:WAV:STAR 400NM"),
        *write(":SENS:WAV:STOP 500.5NM"),
        *write(":SENS:BAND:RES 0.02NM"),
        *write(":SENS:SWE:POIN 1001"),
        *write(":INIT:SMOD SING"),
    ]
    with expected_protocol(YokogawaAQ6373, exchanges) as osa:
        osa.configure(400, 500.5, 0.02, 1001)


def test_settings_read_back_in_nm() -> None:
    exchanges = [
        (b":SENS:WAV:STAR?\r\n", b"+4.00000000E-007\r\n"),
        (b":SENS:WAV:STOP?\r\n", b"+5.00000000E-007\r\n"),
        (b":SENS:BAND:RES?\r\n", b"+5.00000000E-010\r\n"),
        (b":SENS:SWE:POIN?\r\n", b"1001\r\n"),
    ]
    with expected_protocol(YokogawaAQ6373, exchanges) as osa:
        assert osa.start_nm == pytest.approx(400.0)
        assert osa.stop_nm == pytest.approx(500.0)
        assert osa.resolution_nm == pytest.approx(0.5)
        assert osa.points == 1001


def test_acquire_clears_the_event_starts_polls_and_reads_trace_a() -> None:
    exchanges = [
        (b":STAT:OPER:EVEN?\r\n", b"1\r\n"),  # an old sweep's completion, read and thereby cleared
        *write(":INIT"),
        (b":STAT:OPER:EVEN?\r\n", b"0\r\n"),
        (b":STAT:OPER:EVEN?\r\n", b"3\r\n"),  # bit 0: sweep complete (other bits do not matter)
        (b":TRAC:X? TRA\r\n", b"+4.50000000E-007,+4.51000000E-007,+4.52000000E-007\r\n"),
        (b":TRAC:Y? TRA\r\n", b"+1.00000000E-009,+2.50000000E-009,-1.00000000E-012\r\n"),
    ]
    with expected_protocol(YokogawaAQ6373, exchanges, poll_interval_s=0.001) as osa:
        spectrum = osa.acquire(timeout_s=5.0)
    np.testing.assert_allclose(spectrum.wavelength_nm, [450.0, 451.0, 452.0])
    np.testing.assert_allclose(spectrum.power_w_per_nm, [1e-9, 2.5e-9, -1e-12])
    assert spectrum.wavelength_nm.dtype == np.float64


def test_close_stops_the_sweep() -> None:
    with expected_protocol(YokogawaAQ6373, write(":ABOR")) as osa:
        osa.close()


# -- error replies ---------------------------------------------------------------------------------------------------


def test_unexpected_login_challenge_is_a_reply_error() -> None:
    exchanges = [(b'OPEN "anonymous"\r\n', b"hello\r\n")]
    with pytest.raises(InstrumentReplyError) as caught, expected_protocol(YokogawaAQ6373, exchanges, connect=True):
        pass
    assert caught.value.command == 'OPEN "anonymous"' and caught.value.reply == "hello"


def test_refused_password_is_a_connection_error_that_does_not_show_it() -> None:
    exchanges = [(b'OPEN "lab"\r\n', b"AUTHENTICATE CRAM-MD5.\r\n"), (b"wrong-one\r\n", b"error\r\n")]
    with (
        pytest.raises(InstrumentConnectionError, match="log-in as 'lab' refused") as caught,
        expected_protocol(YokogawaAQ6373, exchanges, connect=True, username="lab", password="wrong-one"),
    ):
        pass
    assert "wrong-one" not in str(caught.value)


def test_rejected_command_raises_with_command_and_reply() -> None:
    exchanges = [
        (b":SENS:SWE:POIN 1001\r\n", None),
        (b":SYST:ERR?\r\n", b'-222,"Data out of range"\r\n'),
        (b":SYST:ERR?\r\n", NO_ERROR),
    ]
    with expected_protocol(YokogawaAQ6373, exchanges) as osa, pytest.raises(InstrumentReplyError) as caught:
        osa.points = 1001
    assert caught.value.command == ":SENS:SWE:POIN 1001"
    assert caught.value.reply == '-222,"Data out of range"'
    assert "-222" in str(caught.value)


@pytest.mark.parametrize(
    ("x_reply", "y_reply", "message"),
    [
        (b"+4.5E-007,+4.6E-007\r\n", b"+1.0E-009\r\n", "2 wavelengths but 1 levels"),
        (b"+4.5E-007,oops\r\n", b"+1.0E-009,+1.0E-009\r\n", "unexpected reply"),
        (b"\r\n", b"+1.0E-009\r\n", "unexpected reply"),
    ],
)
def test_malformed_trace_is_a_reply_error(x_reply: bytes, y_reply: bytes, message: str) -> None:
    exchanges = [
        (b":STAT:OPER:EVEN?\r\n", b"0\r\n"),
        *write(":INIT"),
        (b":STAT:OPER:EVEN?\r\n", b"1\r\n"),
        (b":TRAC:X? TRA\r\n", x_reply),
        (b":TRAC:Y? TRA\r\n", y_reply),
    ]
    if message == "unexpected reply":
        exchanges.pop()  # the X trace is already refused
    with expected_protocol(YokogawaAQ6373, exchanges) as osa, pytest.raises(InstrumentReplyError, match=message):
        osa.acquire(timeout_s=1.0)


def test_malformed_status_register_is_a_reply_error() -> None:
    exchanges = [(b":STAT:OPER:EVEN?\r\n", b"-1\r\n")]
    with expected_protocol(YokogawaAQ6373, exchanges) as osa, pytest.raises(InstrumentReplyError) as caught:
        osa.acquire(timeout_s=1.0)
    assert caught.value.command == ":STAT:OPER:EVEN?"


# -- timeouts ---------------------------------------------------------------------------------------------------------


def test_silent_instrument_times_out_naming_the_command() -> None:
    with (
        expected_protocol(YokogawaAQ6373, [(b"*IDN?\r\n", TIMEOUT)]) as osa,
        pytest.raises(InstrumentTimeoutError) as caught,
    ):
        osa.identity()
    assert caught.value.command == "*IDN?"


def test_sweep_that_never_completes_is_stopped_and_times_out() -> None:
    exchanges = [
        (b":STAT:OPER:EVEN?\r\n", b"0\r\n"),
        *write(":INIT"),
        (b":STAT:OPER:EVEN?\r\n", b"0\r\n"),
        *write(":ABOR"),
    ]
    with expected_protocol(YokogawaAQ6373, exchanges) as osa, pytest.raises(InstrumentTimeoutError) as caught:
        osa.acquire(timeout_s=0.0)  # the deadline has passed at the first poll: exactly one poll, then stop
    assert caught.value.command == ":INIT"


# -- range validation: nothing is sent ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "pattern"),
    [
        ((349.9, 500, 0.5, 1001), r"start_nm: 349.9 is outside the allowed range 350 to 1200 nm"),
        ((400, 1200.1, 0.5, 1001), r"stop_nm: 1200.1 is outside"),
        ((500, 400, 0.5, 1001), r"start_nm: 500 must be below stop_nm 400"),
        ((400, 400, 0.5, 1001), r"must be below"),
        ((400, 500, 0.3, 1001), r"resolution_nm: 0.3 is not one of 0.02, 0.05"),
        ((400, 500, 0.5, 100), r"points: 100 is outside the allowed range 101 to 50001"),
        ((400, 500, 0.5, 50_002), r"points: 50002 is outside"),
        ((400, 500, 0.5, 1001.5), r"points: 1001.5 is not an integer"),
        ((math.nan, 500, 0.5, 1001), r"start_nm: nan is outside"),
    ],
)
def test_configure_checks_ranges_before_sending(arguments: tuple[float, float, float, float], pattern: str) -> None:
    with expected_protocol(YokogawaAQ6373, []) as osa, pytest.raises(ValueError, match=pattern):
        osa.configure(*arguments)  # type: ignore[arg-type]


def test_other_values_are_checked_before_sending() -> None:
    with expected_protocol(YokogawaAQ6373, []) as osa:
        with pytest.raises(ValueError, match=r"timeout_s: -1 is outside"):
            osa.acquire(timeout_s=-1)
        with pytest.raises(ValueError, match=r"stop_nm: 1300 is outside"):
            osa.stop_nm = 1300
    with pytest.raises(ValueError, match="username"):
        YokogawaAQ6373(None, username='a"b')
    with pytest.raises(ValueError, match="password"):
        YokogawaAQ6373(None, password="a\nb")


# -- the twin's pieces ---------------------------------------------------------------------------------------------


def test_twin_number_format_has_three_digit_exponents() -> None:
    assert format_nr3(np.array([4.5e-7, -1e-12, 0.0])) == "+4.50000000E-007,-1.00000000E-012,+0.00000000E+000"


def test_slit_convolution_widens_a_gaussian_in_quadrature_and_keeps_its_area() -> None:
    wavelength_nm = np.linspace(400.0, 500.0, 2001)
    sigma_nm = 20.0 / (2 * math.sqrt(2 * math.log(2)))

    def line(grid_nm: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * ((grid_nm - 450.0) / sigma_nm) ** 2)

    seen = slit_convolved(line, wavelength_nm, 10.0)
    above_half = wavelength_nm[seen >= seen.max() / 2]
    assert above_half[-1] - above_half[0] == pytest.approx(math.hypot(20.0, 10.0), abs=0.1)
    assert np.trapezoid(seen, wavelength_nm) == pytest.approx(np.trapezoid(line(wavelength_nm), wavelength_nm), 1e-3)


# -- against the twin -----------------------------------------------------------------------------------------------


class LabAccountTwin(AQ6370Twin):
    """The twin with one named user and a record of its instances."""

    accounts: ClassVar[dict[str, str]] = {"lab": "s3cret"}
    instances: ClassVar[list[AQ6370Twin]] = []

    def __init__(self, bench: VirtualBench) -> None:
        super().__init__(bench)
        LabAccountTwin.instances.append(self)


def lit_bench(power_w: float = 0.05) -> VirtualBench:
    bench = make_bench()
    with bench.lock:
        bench.laser.setpoint_w = power_w
        bench.laser.emission = True
    return bench


@pytest.mark.parametrize("resolution_nm", [0.5, 2.0, 10.0])
def test_spectrum_through_the_twin_peaks_at_450_nm(resolution_nm: float) -> None:
    bench = lit_bench()
    with serve_twin(AQ6370Twin, bench) as resource, YokogawaAQ6373.open(resource) as osa:
        assert osa.identity().model == "AQ6373"
        osa.configure(400.0, 500.0, resolution_nm, 1001)
        spectrum = osa.acquire(timeout_s=5.0)
    assert spectrum.wavelength_nm.shape == spectrum.power_w_per_nm.shape == (1001,)
    np.testing.assert_allclose(spectrum.wavelength_nm[[0, -1]], [400.0, 500.0])
    peak_nm = spectrum.wavelength_nm[np.argmax(spectrum.power_w_per_nm)]
    assert abs(peak_nm - UniformWorld.peak_nm) <= resolution_nm
    # W/nm: the 1e-6 /nm × 50 mW peak density, lowered only by the slit's widening of the 20 nm line
    widening = UniformWorld.fwhm_nm / math.hypot(UniformWorld.fwhm_nm, resolution_nm)
    assert spectrum.power_w_per_nm.max() == pytest.approx(1e-6 * 0.05 * widening, rel=0.01)
    assert abs(spectrum.power_w_per_nm[0]) < 1e-3 * spectrum.power_w_per_nm.max()  # 50 nm off the line: floor only


def test_spectrum_follows_the_laser() -> None:
    bench = lit_bench(power_w=0.0)
    with serve_twin(AQ6370Twin, bench) as resource, YokogawaAQ6373.open(resource) as osa:
        osa.configure(420.0, 480.0, 1.0, 601)
        dark = osa.acquire(timeout_s=5.0)
        with bench.lock:
            bench.laser.setpoint_w = 0.02
        lit = osa.acquire(timeout_s=5.0)
    assert np.abs(dark.power_w_per_nm).max() < 1e-10  # noise floor: 1e-11 W in a 1 nm bandwidth
    assert lit.power_w_per_nm.max() == pytest.approx(2e-8, rel=0.01)


def test_sweep_takes_virtual_time() -> None:
    bench = lit_bench()
    with serve_twin(AQ6370Twin, bench) as resource, YokogawaAQ6373.open(resource) as osa:
        osa.configure(400.0, 500.0, 1.0, 1001)
        with bench.lock:
            before_s = bench.now()
        osa.acquire(timeout_s=5.0)
        with bench.lock:
            after_s = bench.now()
    assert after_s - before_s == pytest.approx(0.2 + 1001 * 0.2e-3)


def test_named_login_through_the_twin() -> None:
    bench = lit_bench()
    with serve_twin(LabAccountTwin, bench) as resource:
        with YokogawaAQ6373.open(resource, driver_options={"username": "lab", "password": "s3cret"}) as osa:
            assert osa.identity().manufacturer == "YOKOGAWA"
        with pytest.raises(InstrumentConnectionError, match="refused"):
            YokogawaAQ6373.open(resource, driver_options={"username": "lab", "password": "guess"})


def test_twin_ignores_commands_before_login() -> None:
    bench = lit_bench()
    with serve_twin(AQ6370Twin, bench) as resource:
        _, host, port, _ = resource.split("::")
        with socket.create_connection((host, int(port)), timeout=0.2) as sock:
            sock.sendall(b"*IDN?\r\n")
            with pytest.raises(TimeoutError):
                sock.recv(100)
            sock.sendall(b'OPEN "anonymous"\r\n')
            assert sock.recv(100) == b"AUTHENTICATE CRAM-MD5.\r\n"
            sock.sendall(b"x\r\n")
            assert sock.recv(100) == b"ready\r\n"
            sock.sendall(b"*IDN?\r\n")
            assert sock.recv(100) == b"YOKOGAWA,AQ6373,91N123456,01.05\r\n"


def test_twin_rejects_bad_commands_in_the_real_error_format() -> None:
    bench = lit_bench()
    with serve_twin(AQ6370Twin, bench) as resource, YokogawaAQ6373.open(resource) as osa:
        with pytest.raises(InstrumentReplyError) as caught:
            osa.write(":SENS:WAV:STAR 300NM")  # bypasses the driver's own range check
        assert caught.value.reply == '-222,"Data out of range"'
        with pytest.raises(InstrumentReplyError, match="-113 'Undefined header'"):
            osa.write(":BOGUS")


def test_twin_garbage_reply_is_a_reply_error() -> None:
    bench = lit_bench()
    # commands 1-2 are the log-in, 3-14 the session set-up with their error checks; 15 is *IDN?
    bench.faults.add(FaultRule("spectrometer", FaultKind.GARBAGE, at_command=15))
    with serve_twin(AQ6370Twin, bench) as resource, YokogawaAQ6373.open(resource) as osa:
        with pytest.raises(InstrumentReplyError) as caught:
            osa.identity()
        assert caught.value.command == "*IDN?"


def test_twin_dropped_connection_is_a_connection_error() -> None:
    bench = lit_bench()
    bench.faults.add(FaultRule("spectrometer", FaultKind.DISCONNECT, at_command=15))
    with serve_twin(AQ6370Twin, bench) as resource:
        osa = YokogawaAQ6373.open(resource, timeout_s=0.3)
        with pytest.raises(InstrumentConnectionError) as caught:
            osa.identity()
        assert caught.value.command == "*IDN?"
        osa._close_resource()  # the instrument is gone: nothing to make safe


def test_close_stops_a_running_sweep() -> None:
    bench = make_bench(time_scale=1.0)  # real time: the 10 s sweep is still running when close() comes
    LabAccountTwin.instances.clear()
    with serve_twin(LabAccountTwin, bench) as resource:
        osa = YokogawaAQ6373.open(resource)
        osa.configure(400.0, 500.0, 1.0, 50_001)
        osa.write(":INIT")  # start a 10 s sweep and leave it running
        (twin,) = LabAccountTwin.instances
        with bench.lock:
            assert twin._sweep is not None
        osa.close()
        with bench.lock:
            assert twin._sweep is None
