"""Thorlabs PM100D driver: exact protocol bytes, error-queue checks, validation, and driver ↔ twin over a socket."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator

import pytest

from drivers.errors import InstrumentConnectionError, InstrumentReplyError, InstrumentTimeoutError
from drivers.interfaces import InstrumentIdentity, PowerMeter
from drivers.testing import TIMEOUT, expected_protocol
from drivers.thorlabs import ThorlabsPM100D
from drivers.virtual.bench import FaultKind, FaultRule, VirtualBench, silicon_responsivity
from drivers.virtual.pm100d_twin import PM100DTwin, scpi_header
from tests.twin_fixtures import make_bench, serve_twin

NO_ERROR = (b"SYST:ERR?\n", b'0,"No error"\n')
CONNECT = [
    (b"*CLS\n", None),
    NO_ERROR,
    (b"CONF:POW\n", None),
    NO_ERROR,
    (b"SENS:POW:UNIT W\n", None),
    NO_ERROR,
    (b"SENS:POW:RANG:AUTO ON\n", None),
    NO_ERROR,
    (b"SENS:CORR:WAV? MIN\n", b"4.000000E+02\n"),
    (b"SENS:CORR:WAV? MAX\n", b"1.100000E+03\n"),
]


# -- protocol ----------------------------------------------------------------------------------------------------


def test_implements_the_power_meter_interface() -> None:
    assert issubclass(ThorlabsPM100D, PowerMeter)
    assert not inspect.isabstract(ThorlabsPM100D)


def test_connect_clears_errors_configures_power_and_reads_the_sensor_range() -> None:
    with expected_protocol(ThorlabsPM100D, CONNECT, connect=True) as meter:
        assert meter.wavelength_range_nm() == (400.0, 1100.0)  # cached: no second query


def test_every_command_and_query_byte_for_byte() -> None:
    script = [
        (b"*IDN?\n", b"Thorlabs,PM100D,P0012345,2.8.0\n"),
        (b"SENS:CORR:WAV 405\n", None),
        NO_ERROR,
        (b"SENS:CORR:WAV?\n", b"4.050000E+02\n"),
        (b"SENS:CORR:WAV 632.8\n", None),
        NO_ERROR,
        (b"SENS:AVER:COUN 100\n", None),
        NO_ERROR,
        (b"SENS:AVER:COUN?\n", b"100\n"),
        (b"MEAS:POW?\n", b"1.234567E-03\n"),
    ]
    with expected_protocol(ThorlabsPM100D, CONNECT + script, connect=True) as meter:
        assert meter.identity() == InstrumentIdentity("Thorlabs", "PM100D", "P0012345", "2.8.0")
        meter.set_wavelength_nm(405)
        assert meter.wavelength_nm() == 405.0
        meter.set_wavelength_nm(632.8)
        meter.average_count = 100
        assert meter.average_count == 100
        assert meter.power_w() == 1.234567e-3


def test_sensor_range_is_read_on_first_use_without_connect() -> None:
    script = [
        (b"SENS:CORR:WAV? MIN\n", b"4.000000E+02\n"),
        (b"SENS:CORR:WAV? MAX\n", b"1.100000E+03\n"),
        (b"SENS:CORR:WAV 1064\n", None),
        NO_ERROR,
    ]
    with expected_protocol(ThorlabsPM100D, script) as meter:
        meter.set_wavelength_nm(1064.0)


def test_close_sends_nothing() -> None:
    with expected_protocol(ThorlabsPM100D, []) as meter:
        meter.close()
    assert meter._resource.closed


# -- error replies -----------------------------------------------------------------------------------------------


def test_error_after_a_command_names_command_and_error() -> None:
    script = [
        (b"SENS:AVER:COUN 5\n", None),
        (b"SYST:ERR?\n", b'-222,"Data out of range"\n'),
        NO_ERROR,
    ]
    with (
        expected_protocol(ThorlabsPM100D, script) as meter,
        pytest.raises(InstrumentReplyError, match="Data out of range") as caught,
    ):
        meter.average_count = 5
    assert caught.value.command == "SENS:AVER:COUN 5"
    assert caught.value.reply == '-222,"Data out of range"'


def test_the_whole_error_queue_is_read_so_the_next_command_is_not_blamed() -> None:
    script = [
        (b"CONF:POW\n", None),
        (b"SYST:ERR?\n", b'-113,"Undefined header"\n'),
        (b"SYST:ERR?\n", b'-222,"Data out of range"\n'),
        NO_ERROR,
        (b"SENS:AVER:COUN 1\n", None),
        NO_ERROR,
    ]
    with expected_protocol(ThorlabsPM100D, script) as meter:
        with pytest.raises(InstrumentReplyError, match="then -222") as caught:
            meter.write("CONF:POW")
        assert caught.value.reply == '-113,"Undefined header"'
        meter.average_count = 1  # its check reads only its own (empty) queue


def test_unreadable_error_queue_reply_is_a_reply_error() -> None:
    script = [(b"CONF:POW\n", None), (b"SYST:ERR?\n", b"what?\n")]
    with expected_protocol(ThorlabsPM100D, script) as meter, pytest.raises(InstrumentReplyError) as caught:
        meter.write("CONF:POW")
    assert caught.value.command == "CONF:POW"
    assert caught.value.reply == "what?"


def test_over_range_reading_is_a_reply_error() -> None:
    with (
        expected_protocol(ThorlabsPM100D, [(b"MEAS:POW?\n", b"9.910000E+37\n")]) as meter,
        pytest.raises(InstrumentReplyError, match="over range") as caught,
    ):
        meter.power_w()
    assert caught.value.command == "MEAS:POW?"


def test_unparsable_reading_is_a_reply_error() -> None:
    with (
        expected_protocol(ThorlabsPM100D, [(b"MEAS:POW?\n", b"NaN-ish\n")]) as meter,
        pytest.raises(InstrumentReplyError) as caught,
    ):
        meter.power_w()
    assert caught.value.reply == "NaN-ish"


def test_identity_with_missing_fields_is_a_reply_error() -> None:
    with (
        expected_protocol(ThorlabsPM100D, [(b"*IDN?\n", b"Thorlabs,PM100D\n")]) as meter,
        pytest.raises(InstrumentReplyError, match="manufacturer,model,serial,firmware"),
    ):
        meter.identity()


def test_silence_is_a_timeout_naming_the_command() -> None:
    with (
        expected_protocol(ThorlabsPM100D, [(b"MEAS:POW?\n", TIMEOUT)]) as meter,
        pytest.raises(InstrumentTimeoutError) as caught,
    ):
        meter.power_w()
    assert caught.value.command == "MEAS:POW?"


def test_silent_error_queue_is_a_timeout_naming_the_command() -> None:
    with (
        expected_protocol(ThorlabsPM100D, [(b"CONF:POW\n", None), (b"SYST:ERR?\n", TIMEOUT)]) as meter,
        pytest.raises(InstrumentTimeoutError) as caught,
    ):
        meter.write("CONF:POW")
    assert caught.value.command == "CONF:POW"


# -- validation: nothing is sent ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, -3, 10_001, 1.5, True, "3", None])
def test_bad_average_count_is_refused_without_sending(count: object) -> None:
    with expected_protocol(ThorlabsPM100D, []) as meter, pytest.raises(ValueError, match="average_count"):
        meter.average_count = count


@pytest.mark.parametrize("wavelength_nm", [-405.0, math.nan, math.inf, "blue", None])
def test_impossible_wavelength_is_refused_without_talking_to_the_meter(wavelength_nm: object) -> None:
    with expected_protocol(ThorlabsPM100D, []) as meter, pytest.raises(ValueError, match="wavelength_nm"):
        meter.set_wavelength_nm(wavelength_nm)  # type: ignore[arg-type]


@pytest.mark.parametrize("wavelength_nm", [399.9, 1200.0])
def test_wavelength_outside_the_sensor_range_is_refused_before_sending(wavelength_nm: float) -> None:
    with (
        expected_protocol(ThorlabsPM100D, CONNECT, connect=True) as meter,
        pytest.raises(ValueError, match=r"wavelength_nm: .* outside the allowed range 400 to 1100 nm"),
    ):
        meter.set_wavelength_nm(wavelength_nm)


# -- driver ↔ twin over a real loopback socket -----------------------------------------------------------------


@pytest.fixture
def bench() -> VirtualBench:
    return make_bench()


@pytest.fixture
def meter(bench: VirtualBench) -> Iterator[ThorlabsPM100D]:
    with serve_twin(PM100DTwin, bench) as resource_name:
        meter = ThorlabsPM100D.open(resource_name, timeout_s=0.3)
        yield meter
        meter.close()


def _laser(bench: VirtualBench, power_w: float, *, emission: bool = True) -> None:
    with bench.lock:
        bench.laser.setpoint_w = power_w
        bench.laser.emission = emission


def _fault_on_next_command(bench: VirtualBench, kind: FaultKind) -> None:
    with bench.lock:
        next_command = bench.faults.command_counts.get("power_meter", 0) + 1
        bench.faults.add(FaultRule("power_meter", kind, at_command=next_command))


def test_twin_round_trip(meter: ThorlabsPM100D) -> None:
    assert meter.identity() == InstrumentIdentity("Thorlabs", "PM100D", "P0012345", "2.8.0")
    assert meter.wavelength_range_nm() == (400.0, 1100.0)
    meter.set_wavelength_nm(405)
    assert meter.wavelength_nm() == 405.0
    meter.average_count = 20
    assert meter.average_count == 20
    assert meter.query("SENSe:POWer:DC:RANGe:AUTO?") == "1"
    assert meter.query("SENS:POW:UNIT?") == "W"
    assert abs(meter.power_w()) < 1e-7  # laser off: only the meter's noise floor


def test_reading_follows_the_laser_setpoint(meter: ThorlabsPM100D, bench: VirtualBench) -> None:
    meter.set_wavelength_nm(405)
    _laser(bench, 0.02)
    low = meter.power_w()
    _laser(bench, 0.06)
    high = meter.power_w()
    assert low == pytest.approx(0.02, rel=0.01)
    assert high == pytest.approx(0.06, rel=0.01)
    assert high / low == pytest.approx(3.0, rel=0.01)
    _laser(bench, 0.06, emission=False)
    assert abs(meter.power_w()) < 1e-7


def test_wrong_correction_wavelength_scales_the_reading_by_the_responsivity_ratio(
    meter: ThorlabsPM100D, bench: VirtualBench
) -> None:
    _laser(bench, 0.05)
    meter.set_wavelength_nm(405)
    right = meter.power_w()
    meter.set_wavelength_nm(532)
    wrong = meter.power_w()
    expected_ratio = float(silicon_responsivity(405.0) / silicon_responsivity(532.0))
    assert expected_ratio < 0.7  # the blue laser is read low through a green correction
    assert wrong / right == pytest.approx(expected_ratio, rel=0.01)


def test_twin_queues_scpi_errors_that_the_driver_reports(meter: ThorlabsPM100D) -> None:
    with pytest.raises(InstrumentReplyError) as caught:
        meter.write("SENS:FOO 3")
    assert caught.value.reply == '-113,"Undefined header"'
    with pytest.raises(InstrumentReplyError) as caught:
        meter.write("SENS:CORR:WAV 2000")  # past the driver's validation, the meter refuses it itself
    assert caught.value.reply == '-222,"Data out of range"'
    assert meter.wavelength_nm() == 633.0  # unchanged
    meter.write("SENSe:CORRection:WAVelength 450")  # long forms are SCPI too
    assert meter.wavelength_nm() == 450.0


def test_twin_unknown_query_gets_no_answer_but_queues_the_error(meter: ThorlabsPM100D) -> None:
    with pytest.raises(InstrumentTimeoutError):
        meter.query("SENS:FOO?")
    assert meter.query("SYST:ERR?") == '-113,"Undefined header"'
    assert meter.query("SYST:ERR?") == '0,"No error"'


def test_twin_garbage_reply_is_a_reply_error_and_the_session_recovers(
    meter: ThorlabsPM100D, bench: VirtualBench
) -> None:
    _fault_on_next_command(bench, FaultKind.GARBAGE)
    with pytest.raises(InstrumentReplyError) as caught:
        meter.power_w()
    assert caught.value.command == "MEAS:POW?"
    assert meter.wavelength_nm() == 633.0


def test_twin_dropped_connection_is_a_connection_error(meter: ThorlabsPM100D, bench: VirtualBench) -> None:
    _fault_on_next_command(bench, FaultKind.DISCONNECT)
    with pytest.raises(InstrumentConnectionError) as caught:
        meter.power_w()
    assert caught.value.command == "MEAS:POW?"
    meter.close()  # nothing to make safe, so closing a dead connection is quiet


def test_scpi_header_matches_short_and_long_forms_only() -> None:
    pattern = scpi_header("[:SENSe]:POWer[:DC]:RANGe:AUTO?")
    for header in (":SENS:POW:RANG:AUTO?", ":POW:DC:RANG:AUTO?", ":sense:power:dc:range:auto?"):
        assert pattern.match(header), header
    for header in (":SENS:POWE:RANG:AUTO?", ":SENS:POW:RANG:AUTO", ":SENS:POW:RANG:AUTO?X"):
        assert not pattern.match(header), header
